"""int8 for encoder-decoders: ``quantize_dynamic`` on the weight MatMuls, measured against fp32 and gated.

Every weight MatMul of the three graphs gets int8 weights (per output channel) and uint8 activations
quantized at run time, except the ones the architecture keeps in float:

- T5 / mT5: the feed-forward output projection ``DenseReluDense/wo`` (transformers keeps it in fp32 even
  in fp16: ``_keep_in_fp32_modules``; its input carries T5's activation outliers) and ``lm_head``.

Fidelity, the int8 graphs against the fp32 ones, both run by the runtime on :data:`TEXTS` (fixed):

- ``logits_error_pct``: per decoder position, max |int8 logit - fp32 logit| as a percentage of the fp32
  logits' range (max - min), averaged over the positions of fp32's greedy continuation (``FORCED_TOKENS``
  tokens, end-of-sequence ignored), teacher-forced through ``decoder`` then ``decoder_with_past``;
  ``logits_error_pct_max`` is the worst position; ``max_abs_logits_error`` the worst logit;
- ``top1_agreement``: share of those positions whose argmax agrees;
- ``greedy_agreement``: share of greedy tokens equal to fp32's, each text counted to its first divergence.

The gate (:data:`MAX_LOGITS_ERROR_PCT`) is on ``logits_error_pct``.  Attempts, as the causal-LM gate:
0. the defaults above; 1. + the first layer of every stack (``block.0`` / ``layers.0``) in float.
The first attempt that meets the gate is kept; none: the conversion is refused (``-q none`` converts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ConversionError, UnsupportedModelError

__all__ = ["MAX_LOGITS_ERROR_PCT", "TEXTS", "fidelity", "float_matmuls", "quantize_int8", "run_gate"]

#: Mean next-token logit error allowed, % of the logits' range.  The tiny random BART measures 0.1%, the
#: tiny random T5 (weights x3) 3.3% after attempt 1 (README "Text-to-text"); 5% leaves the top-1 token
#: unchanged on both (a larger error flips near ties: attempt 0 on that T5, 16%, changed 25% of greedy tokens).
MAX_LOGITS_ERROR_PCT = 5.0
#: Fixed source texts (a tokenizer maps words it lacks to its unknown token: still a valid input).
TEXTS = ("translate English to German: The house is wonderful.",
         "summarize: the cat sat on the mat and looked at the world", "hello world", "a b c d e f")
FORCED_TOKENS = 16
#: model_type -> substrings of the weight MatMuls' node names kept in float at every attempt.
KEEP_FLOAT = {"t5": ("DenseReluDense/wo/", "/lm_head/"), "mt5": ("DenseReluDense/wo/", "/lm_head/")}
_FIRST_LAYER = re.compile(r"/(block|layers)\.0/")
ATTEMPTS = 2
OPTIONS = {"weight_type": "QInt8", "op_types_to_quantize": ["MatMul"], "per_channel": True,
           "MatMulConstBOnly": True}


def float_matmuls(graph: Path, model_type: str, attempt: int) -> list[str]:
    """Names of ``graph``'s weight MatMuls kept in float at ``attempt``."""
    import onnx

    model = onnx.load_model(str(graph), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    keep = KEEP_FLOAT.get(model_type, ())
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not any(i in weights for i in node.input):
            continue
        if any(k in f"{node.name}/" for k in keep) or (attempt >= 1 and _FIRST_LAYER.search(node.name)):
            names.append(node.name)
    return names


def quantize_int8(src: Path, dst: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True, nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # noqa: BLE001  (ORT's quantizers raise bare errors)
        raise ConversionError(f"int8 quantization of {src.name} failed: {str(exc).splitlines()[0][:300]}; "
                              "convert with -q none") from exc


def fidelity(fp32: Any, int8: Any) -> dict[str, Any]:
    """The figures of the module docstring, two :class:`~edgegen.runtimes.seq2seq.seq2seq.Seq2Seq` compared."""
    from edgegen.runtimes.text.settings import GenerationSettings

    greedy = GenerationSettings(max_new_tokens=FORCED_TOKENS, temperature=0, ignore_eos=True)
    rel: list[np.ndarray] = []
    top1: list[np.ndarray] = []
    worst, agree, total = 0.0, 0, 0
    for text in TEXTS:
        ids = fp32.encode(text)
        base, quant = fp32.generate_ids(ids, greedy), int8.generate_ids(ids, greedy)
        agree += next((i for i, (a, b) in enumerate(zip(base, quant)) if a != b), len(base))
        total += len(base)
        a, b = fp32.forced_logits(ids, base), int8.forced_logits(ids, base)             # [T, V] each
        err = np.abs(a - b).max(axis=-1)                                                  # [T]
        rel.append(err / np.maximum(a.max(axis=-1) - a.min(axis=-1), 1e-12))
        top1.append(a.argmax(axis=-1) == b.argmax(axis=-1))
        worst = max(worst, float(err.max()))
    rel_all = np.concatenate(rel)
    return {"logits_error_pct": round(100 * float(rel_all.mean()), 4),
            "logits_error_pct_max": round(100 * float(rel_all.max()), 4),
            "max_abs_logits_error": round(worst, 6), "top1_agreement": round(float(np.concatenate(top1).mean()), 4),
            "greedy_agreement": round(agree / total, 4), "greedy_tokens": total, "positions": int(rel_all.size)}


def run_gate(graphs: dict[str, Path], tmp: Path, model_type: str, measure: Callable[[dict[str, Path]], dict[str, Any]],
             report: Callable[[str], Any], gate: float | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize ``graphs`` (role -> fp32 file) attempt by attempt until ``measure(int8 files)`` meets the gate;
    returns the kept int8 files and validation.quantization, or raises the one-line refusal."""
    gate = MAX_LOGITS_ERROR_PCT if gate is None else gate
    attempts: list[dict[str, Any]] = []
    for attempt in range(ATTEMPTS):
        out: dict[str, Path] = {}
        excluded: dict[str, list[str]] = {}
        for role, src in graphs.items():
            excluded[role] = float_matmuls(src, model_type, attempt)
            out[role] = tmp / f"attempt{attempt}" / f"{role}.onnx"
            out[role].parent.mkdir(parents=True, exist_ok=True)
            quantize_int8(src, out[role], excluded[role])
        figures = measure(out)
        floats = sum(len(v) for v in excluded.values())
        attempts.append({"float_matmuls": floats, **figures})
        report(f"quantize int8 (attempt {attempt + 1}): {floats} weight MatMuls in float, next-token logits off by "
               f"{figures['logits_error_pct']:.2f}% of their range (gate {gate:g}%), top-1 "
               f"{figures['top1_agreement']:.0%}, greedy {figures['greedy_agreement']:.0%} as fp32")
        if figures["logits_error_pct"] <= gate:
            return out, {**figures, "max_logits_error_pct": gate, "tool": "onnxruntime.quantization.quantize_dynamic",
                         "options": OPTIONS, "excluded_nodes": excluded, "attempts": attempts}
    best = min(a["logits_error_pct"] for a in attempts)
    raise UnsupportedModelError(
        f"int8 misses the seq2seq quality gate: next-token logits off by {best:.1f}% of their range on average "
        f"against fp32 (gate {gate:g}%) after {len(attempts)} attempts keeping up to "
        f"{max(a['float_matmuls'] for a in attempts)} weight MatMuls in float; convert with -q none (fp32)")

