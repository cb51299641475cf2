"""Fidelity of a text-family artifact (causal-lm, rnn-lm) against its PyTorch original.

Figures (recorded in the manifest's ``validation`` and printed):

- ``max_abs_logits_error``: max |logits_artifact - logits_torch| over every position of
  the fixed prompts (whole-prompt forward, no cache);
- greedy tokens: 32 tokens per prompt from the artifact's runtime (prefill + KV-cache
  decode, the real generation path) against PyTorch's greedy tokens by full recompute.
  In fp32 they must be identical; a divergence is excused only where PyTorch's top two
  logits are closer than the measured logits error (a tie that rounding decides);
- mean NLL of a fixed text, artifact vs PyTorch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


PROMPTS = ("def fibonacci(n):\n    ", "The quick brown fox", "Once upon a time, in a small town,")


#: Fixed text whose mean NLL is validated (fp32) and gates quantization (perplexity change): code and prose,
#: up to 256 tokens (a ~100-token text measured int4's cost on the bundled LM at +2.88% against +1.20% on
#: its held-out data: too few tokens for a gate).
NLL_TEXT = ('import os\n\n\ndef read_lines(path):\n    """Return the lines of a text file."""\n'
            "    with open(path, encoding=\"utf-8\") as f:\n        return [line.rstrip() for line in f]\n\n\n"
            "The weather was mild for the season, and the market by the river was full of people "
            "buying bread, apples and fish before the evening train left for the city.\n\n"
            "class Counter:\n    def __init__(self):\n        self.counts = {}\n\n"
            "    def add(self, key, n=1):\n        self.counts[key] = self.counts.get(key, 0) + n\n"
            "        return self.counts[key]\n\n    def most_common(self, k=3):\n"
            "        items = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)\n"
            "        return items[:k]\n\n\n"
            "She opened the letter slowly. It said that the old house near the harbour had been sold, and "
            "that the new owners wanted to keep the garden as it was, with its two apple trees and the "
            "wooden bench where her grandfather used to read in the afternoons.\n\n"
            "def mean(values):\n    if not values:\n        raise ValueError(\"mean of an empty list\")\n"
            "    return sum(values) / len(values)\n\n\n"
            "In 1998 the town had 4,200 inhabitants; twenty years later it had almost doubled, and the "
            "school built a second floor for the new classes.\n")


GREEDY_TOKENS = 32


#: fp32 tolerances: relative to the logits' scale, and on the mean NLL.
LOGITS_RTOL = 1e-4


NLL_ATOL = 1e-3


@dataclass(frozen=True)
class Reference:
    prompts: list[list[int]]
    logits: list[np.ndarray]          # per prompt [T, V] float32
    greedy: list[list[int]]           # per prompt, GREEDY_TOKENS ids
    margins: list[list[float]]        # top1 - top2 logit at each greedy step
    nll_ids: list[int]
    nll_torch: float
    nll_tokens: int


def mean_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean negative log-likelihood of ids[1:] under logits[:-1] [T, V]."""
    x = logits[:-1].astype(np.float64)                                        # [T-1, V]
    m = x.max(axis=1, keepdims=True)
    logz = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]       # [T-1]
    target = x[np.arange(len(ids) - 1), ids[1:]]                              # [T-1]
    return float(np.mean(logz - target)) if len(ids) > 1 else 0.0


def greedy_runs(make_generator: Callable[[Any], Any], prompts: list[list[int]]) -> tuple[list[list[int]], float]:
    """GREEDY_TOKENS greedy tokens per prompt through a runtime generator; and decode ms/token.

    ``make_generator(resolved_settings)`` returns a batch-1 generator of the runtime's family.
    """
    from edgegen.runtimes.text.settings import GenerationSettings, resolve

    # Built-in settings only: the artifact's defaults (say, a repetition penalty) must not bend plain greedy.
    settings = resolve(GenerationSettings(temperature=0.0, max_new_tokens=GREEDY_TOKENS, ignore_eos=True),
                       GenerationSettings())
    runs, decode_s, decode_n = [], 0.0, 0
    for ids in prompts:
        gen = make_generator(settings)
        gen.append_tokens([ids])
        gen.generate_next_token()
        started = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        decode_s += time.perf_counter() - started
        runs.append(gen.tokens(0))
        decode_n += len(runs[-1]) - 1
    return runs, 1000 * decode_s / max(decode_n, 1)


def judge(ref: Reference, logits_of: Callable[[list[int]], np.ndarray],
          make_generator: Callable[[Any], Any]) -> dict[str, Any]:
    """The validation figures of a runtime against PyTorch's ``ref``, and whether they pass.

    ``logits_of(ids)`` is the artifact's whole-sequence logits [T, V]; ``make_generator``
    as in :func:`greedy_runs` (the real generation path of the family).
    """
    error, scale = 0.0, 1.0
    for ids, want in zip(ref.prompts, ref.logits, strict=True):
        got = logits_of(ids)                                                    # [T, V]
        error = max(error, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    runs, decode_ms = greedy_runs(make_generator, ref.prompts)
    matching, first_divergence, tie = 0, None, False
    for p, (got, want) in enumerate(zip(runs, ref.greedy, strict=True)):
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        matching += same
        if same < len(want) and first_divergence is None:
            first_divergence = {"prompt": p, "token": same}
            tie = ref.margins[p][same] <= max(2 * error, 1e-5)
    got_nll = mean_nll(logits_of(ref.nll_ids), ref.nll_ids)
    total = GREEDY_TOKENS * len(ref.prompts)
    failures = []
    if error > LOGITS_RTOL * scale:
        failures.append(f"max |logits error| {error:.3g} exceeds {LOGITS_RTOL:g} x logits scale {scale:.3g}")
    if matching < total and not tie:
        failures.append(f"greedy tokens differ from PyTorch at {first_divergence} (not a near tie)")
    if abs(got_nll - ref.nll_torch) > NLL_ATOL:
        failures.append(f"mean NLL {got_nll:.5f} vs PyTorch {ref.nll_torch:.5f}")
    return {
        "passed": not failures, "failure": "; ".join(failures) or None,
        "prompts": len(ref.prompts), "max_abs_logits_error": error, "logits_scale": scale,
        "greedy_tokens": total, "greedy_matching_tokens": matching, "greedy_identical": matching == total,
        "greedy_first_divergence": first_divergence, "greedy_divergence_is_near_tie": tie,
        "nll_torch": ref.nll_torch, "nll_artifact": got_nll, "nll_delta": got_nll - ref.nll_torch,
        "nll_tokens": ref.nll_tokens,
        "decode_ms_per_token": decode_ms,
    }
