"""What quantization costs a causal LM, measured against its fp32 artifact graph.

Both graphs run through the runtime's own decoder and generator (the real generation
path), on the same fixed prompts and text as validation:

- ``greedy_agreement``: share of greedy tokens equal to fp32's, counting each prompt's
  tokens up to its first divergence (after one, the two continue from different text);
- ``top1_agreement``: share of positions of the fixed text where the argmax agrees;
- ``nll`` / ``perplexity_delta_pct``: mean NLL of the fixed text, and the perplexity change;
- ``size_ratio`` and ``decode_speedup`` (ms/token of fp32 over quantized, same run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgegen.converters.text.validation import Reference, greedy_runs, mean_nll


def _graph(path: Path) -> Any:
    from edgegen.runtimes.lm.decoder import DecoderGraph
    from edgegen.runtimes.session import SessionConfig, create_session

    return DecoderGraph(create_session(path, SessionConfig(provider="cpu"), "cpu", label=path.name))


def _figures(path: Path, sampler: dict[str, Any], ref: Reference) -> dict[str, Any]:
    from edgegen.runtimes.lm.causal_lm import Generator
    from edgegen.runtimes.lm.sampler import CausalLMSampler

    graph, lm_sampler = _graph(path), CausalLMSampler.from_manifest(sampler)
    tokens, ms = greedy_runs(lambda settings: Generator(graph, lm_sampler, settings, batch=1), ref.prompts)
    logits = graph.full_logits(np.array([ref.nll_ids]), np.ones((1, len(ref.nll_ids)), np.int64))[0]  # [T, V]
    return {"tokens": tokens, "argmax": logits.argmax(-1), "nll": mean_nll(logits, ref.nll_ids), "ms": ms}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))


def quantization_fidelity(fp32: Path, quantized: Path, sampler: dict[str, Any], ref: Reference) -> dict[str, Any]:
    base, quant = _figures(fp32, sampler, ref), _figures(quantized, sampler, ref)
    agree = 0
    for a, b in zip(base["tokens"], quant["tokens"], strict=True):
        agree += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    total = sum(len(t) for t in base["tokens"])
    return {
        "greedy_agreement": agree / total, "greedy_tokens": total,
        "top1_agreement": float(np.mean(base["argmax"] == quant["argmax"])),
        "nll_fp32": base["nll"], "nll": quant["nll"],
        "perplexity_delta_pct": 100 * (float(np.exp(quant["nll"] - base["nll"])) - 1),
        "size_bytes": _size(quantized), "size_ratio": _size(quantized) / _size(fp32),
        "decode_ms_per_token": quant["ms"], "decode_ms_per_token_fp32": base["ms"],
        "decode_speedup": base["ms"] / quant["ms"] if quant["ms"] > 0 else None,
    }
