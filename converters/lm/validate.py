"""Validation of a causal-LM artifact: PyTorch reference figures from an :class:`LMSource`, and the
staged artifact run by the causal-LM runtime against them (:mod:`edgegen.converters.text.validation`
says which figures and tolerances)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.lm.source import LMSource
from edgegen.converters.text.validation import GREEDY_TOKENS, NLL_TEXT, PROMPTS, Reference, judge, mean_nll


def _encode(tokenizer: Any, text: str, limit: int) -> list[int]:
    ids = tokenizer.encode(text).ids or [0]
    return ids[:max(1, limit)]


@torch.no_grad()
def reference_figures(source: LMSource, tokenizer: Any, context_length: int | None) -> Reference:
    room = (context_length or 1024) - GREEDY_TOKENS - 1
    prompts, logits, greedy, margins = [], [], [], []
    for text in PROMPTS:
        ids = _encode(tokenizer, text, min(room, 64))
        seq = torch.tensor([ids], dtype=torch.int64)                         # [1, T]
        logits.append(source.full_logits(seq)[0].numpy().astype(np.float32))  # [T, V]
        tokens, gaps = source.greedy(seq, GREEDY_TOKENS)
        prompts.append(ids), greedy.append(tokens), margins.append(gaps)
    nll_ids = _encode(tokenizer, NLL_TEXT, min(context_length or 256, 256))
    nll = mean_nll(source.full_logits(torch.tensor([nll_ids]))[0].numpy(), nll_ids)
    return Reference(prompts, logits, greedy, margins, nll_ids, nll, len(nll_ids) - 1)


def compare(artifact_dir: Path, ref: Reference) -> dict[str, Any]:
    """Run the staged causal-lm artifact with the runtime and compare it with ``ref``."""
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.lm.causal_lm import CausalLM, Generator
    from edgegen.runtimes.session import SessionConfig

    lm = CausalLM.from_artifact(open_artifact(artifact_dir), SessionConfig(provider="cpu"))
    return judge(ref, lambda ids: lm.graph.full_logits(np.array([ids]), np.ones((1, len(ids)), np.int64))[0],
                 lambda settings: Generator(lm.graph, lm.sampler, settings, batch=1))
