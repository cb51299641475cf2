"""Timing at conversion: the converters' one loop for "which of these graphs runs faster here"."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def interleaved_ms(calls: Sequence[Callable[[], object]], *, min_runs: int = 3, max_runs: int = 30,
                   budget_s: float = 2.0) -> list[float]:
    """Median milliseconds of each call, after one warm-up each, the calls taking turns so that load
    drift on a shared machine hits them alike: ``min_runs`` rounds, then more up to ``max_runs``
    while ``budget_s`` lasts."""
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    started = time.perf_counter()
    while len(times[0]) < min_runs or (len(times[0]) < max_runs and time.perf_counter() - started < budget_s):
        for call, acc in zip(calls, times):
            t0 = time.perf_counter()
            call()
            acc.append(1000 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]
