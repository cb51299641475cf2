"""The server's counters, gauges and histograms, written in Prometheus' text exposition format (``GET /metrics``).

Standard library only: a few metrics do not need the prometheus_client package.  Every name is declared once
in :data:`METRICS` (its type and help line); updates from any thread go through one lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any

#: name -> (type, help)
METRICS = {
    "edgegen_requests_total": ("counter", "HTTP requests answered, by endpoint, model and status code."),
    "edgegen_prompt_tokens_total": ("counter", "Prompt tokens admitted to a model (once per choice)."),
    "edgegen_generated_tokens_total": ("counter", "Tokens generated."),
    "edgegen_images_total": ("counter", "Images generated."),
    "edgegen_queue_length": ("gauge", "Requests waiting for a model (not yet running)."),
    "edgegen_running_rows": ("gauge", "Rows (choices) a language model is generating now."),
    "edgegen_time_to_first_token_seconds": ("histogram", "From a request's arrival to its first generated token."),
}
#: histogram bucket bounds (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """The values of :data:`METRICS`, keyed by their labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {name: {} for name in METRICS}
        #: labels -> [count per bucket (the last: above every bound), sum, count]
        self._histograms: dict[str, dict[Labels, list[float]]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            table = self._values[name]
            table[key] = table.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][_labels(labels)] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            counts = self._histograms.setdefault(name, {}).setdefault(key, [0.0] * (len(BUCKETS) + 3))
            counts[bisect.bisect_left(BUCKETS, value)] += 1       # the first bucket whose bound >= value
            counts[-2] += value
            counts[-1] += 1

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def render(self) -> str:
        """Every metric in the text format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in METRICS.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    for key, counts in sorted(self._histograms.get(name, {}).items()):
                        total = 0.0
                        for bound, count in zip((*BUCKETS, math.inf), counts):
                            total += count
                            le = "+Inf" if bound == math.inf else repr(bound)
                            lines.append(f"{name}_bucket{_text((*key, ('le', le)))} {_number(total)}")
                        lines.append(f"{name}_sum{_text(key)} {_number(counts[-2])}")
                        lines.append(f"{name}_count{_text(key)} {_number(counts[-1])}")
                    continue
                for key, value in sorted(self._values[name].items()):
                    lines.append(f"{name}{_text(key)} {_number(value)}")
        return "\n".join(lines) + "\n"


class ModelMetrics:
    """What a model's worker reports (the scheduler's ``metrics`` argument)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m, self.model = metrics, model

    def queued(self, n: int) -> None:
        self._m.set("edgegen_queue_length", n, model=self.model)

    def running(self, rows: int) -> None:
        self._m.set("edgegen_running_rows", rows, model=self.model)

    def prompt_tokens(self, n: int) -> None:
        self._m.inc("edgegen_prompt_tokens_total", n, model=self.model)

    def generated_tokens(self, n: int) -> None:
        self._m.inc("edgegen_generated_tokens_total", n, model=self.model)

    def first_token(self, seconds: float) -> None:
        self._m.observe("edgegen_time_to_first_token_seconds", seconds, model=self.model)

    def images(self, n: int) -> None:
        self._m.inc("edgegen_images_total", n, model=self.model)


def _labels(labels: dict[str, Any]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
