"""The quality gate of causal-LM quantization: weight MatMuls are kept in float until the quantized
graph's perplexity meets it.

The gate, ``max_ppl_increase``, is the largest perplexity increase against the fp32 graph allowed, in
percent, on the fixed validation text (``perplexity_delta_pct`` of
:mod:`edgegen.converters.lm.quant_fidelity`; a decrease always passes).  Attempts, as the image gate's
(:func:`edgegen.converters.quantization.graphs.exclusions`):

0. the scheme's defaults (int8, int4: the LM head and the embeddings in 8 bits, or the user's ``lm_head``);
1. + the LM head and the embeddings in float + the first and last body MatMuls;
2. + the 1/8 most sensitive body MatMuls;
3. + the 1/4 most sensitive.

The first attempt that meets the gate is kept.  Sensitivity, measured only when attempt 1 misses:
per body MatMul, the SQNR (dB) of its input minus that of its output, attempt 0's graph against fp32,
on the fixed text run as one full sequence with an empty cache (:func:`sqnr_loss`, shared with the
image gate).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError

__all__ = ["DEFAULT_MAX_PPL_INCREASE", "Attempt", "GateResult", "check_options", "escalate", "exclusions",
           "failure", "gate_figures", "ranked", "run_gate"]

#: Default gate per scheme, % perplexity over fp32 on the fixed text: issue 9's targets (int8 and fp16
#: should cost next to nothing; int4 trades a few percent for a quarter of the bytes).
DEFAULT_MAX_PPL_INCREASE = {"fp16": 1.0, "int8": 2.0, "int4": 5.0}
ATTEMPTS = 4
#: Share of the body MatMuls kept in float by measured sensitivity, at attempts 2 and 3.
MOST_SENSITIVE = {2: 1 / 8, 3: 1 / 4}


@dataclass(frozen=True)
class Attempt:
    excluded: list[str]              # weight MatMuls passed as ``exclude`` (attempt 0: none)
    figures: dict[str, Any]          # quantize_decoder's report + quantization_fidelity's figures

    @property
    def delta(self) -> float:
        return self.figures["perplexity_delta_pct"]


def exclusions(step: int, head: list[str], body: list[str], ranking: list[str]) -> list[str]:
    """The weight MatMuls kept in float at attempt ``step`` (``body`` in graph order, ``ranking``: most
    sensitive first)."""
    if step == 0:
        return []
    ends = list(dict.fromkeys(body[:1] + body[-1:]))
    share = MOST_SENSITIVE.get(step, 0.0)
    worst = [name for name in ranking if name not in ends][:math.ceil(len(body) * share)]
    return sorted({*head, *ends, *worst})


def escalate(scheme: str, gate: float, matmuls: Callable[[], tuple[list[str], list[str]]],
             attempt: Callable[[list[str]], dict[str, Any]], rank: Callable[[list[str]], list[str]],
             report: Callable[[str], Any]) -> list[Attempt]:
    """Run attempts until one's ``perplexity_delta_pct`` is at most ``gate``; ``attempt(exclude)`` quantizes
    and measures.  Called only when an attempt misses: ``matmuls()`` -> (head, body in graph order), before
    attempt 1; ``rank(body)`` -> body most sensitive first, before attempt 2.  The last attempt is the one
    to keep if it met the gate."""
    attempts: list[Attempt] = []
    head: list[str] = []
    body: list[str] = []
    ranking: list[str] = []
    for step in range(ATTEMPTS):
        if step == 1:
            head, body = matmuls()
        if step >= 2 and not ranking:
            ranking = rank(body)
        exclude = exclusions(step, head, body, ranking)
        if attempts and exclude == attempts[-1].excluded:
            continue                                            # nothing new to keep in float
        done = Attempt(exclude, attempt(exclude))
        attempts.append(done)
        report(f"quantize {scheme} (attempt {len(attempts)}): {len(done.figures['float_matmuls'])} weight MatMuls in "
               f"float, perplexity {_pct(done.delta)} vs fp32 (gate {gate:g}%)")
        if done.delta <= gate:
            break
    return attempts


def gate_figures(attempts: list[Attempt], gate: float) -> dict[str, Any]:
    """validation.quantization: the last attempt's figures and the gate's record."""
    return {**attempts[-1].figures, "max_ppl_increase_pct": gate, "excluded_nodes": attempts[-1].excluded,
            "attempts": [{"float_nodes": len(a.figures["float_matmuls"]),
                          "perplexity_delta_pct": round(a.delta, 4)} for a in attempts]}


def failure(scheme: str, attempts: list[Attempt], gate: float) -> str | None:
    """Why the gate was not met (one line, without the fix), or None."""
    if attempts[-1].delta <= gate:
        return None
    return (f"{scheme} missed the quality gate: best perplexity {_pct(min(a.delta for a in attempts))} > "
            f"{gate:g}% vs fp32 after {len(attempts)} attempts keeping up to "
            f"{max(len(a.figures['float_matmuls']) for a in attempts)} weight MatMuls in float")


def _pct(delta: float) -> str:
    """A perplexity change as a signed percentage, small ones not rounded to 0.00%."""
    return f"{delta:+.2f}%" if abs(delta) >= 0.01 or delta == 0 else f"{delta:+.1e}%"


def check_options(quantize: str, lm_head: str, max_ppl_increase: float | None) -> None:
    """Refuse, before any work, gate and head options that cannot apply to ``quantize``."""
    from edgegen.converters.lm.quantize import LM_HEADS

    if lm_head not in ("auto", *LM_HEADS):
        raise InvalidArgumentError(f"lm_head must be auto, {', '.join(LM_HEADS)}, got {lm_head!r}")
    if lm_head != "auto" and not (quantize == "int4" or (quantize == "int8" and lm_head != "int4")):
        raise InvalidArgumentError(f"--lm-head {lm_head} does not apply to --quantize {quantize}: the head is "
                                   "chosen for int8 (float or int8) and int4 (float, int8 or int4); fp16 converts it "
                                   "with the body; drop --lm-head or use --quantize int8/int4")
    if max_ppl_increase is None:
        return
    if isinstance(max_ppl_increase, bool) or not isinstance(max_ppl_increase, (int, float)) \
            or not 0 < max_ppl_increase < math.inf:
        raise InvalidArgumentError(f"max_ppl_increase must be a positive number of percent (e.g. 2.0), "
                                   f"got {max_ppl_increase!r}")
    if quantize == "none":
        raise InvalidArgumentError("max_ppl_increase is the quality gate of quantization, and --quantize none "
                                   "quantizes nothing: drop it or choose a --quantize scheme")


# -- the conversion step -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateResult:
    files: list[str]                 # the kept graph and its data file, in ``dest`` ([] when the gate failed)
    figures: dict[str, Any]          # validation.quantization (gate_figures)
    failure: str | None


def run_gate(fp32: Path, dest: Path, scheme: str, *, lm_head: str, embeddings: str, gate: float, nll_ids: list[int],
             quantize: Callable[..., dict[str, Any]], measure: Callable[[Path], dict[str, Any]],
             report: Callable[[str], Any]) -> GateResult:
    """Quantize ``fp32`` (``quantize(src, dst, scheme, lm_head=, embeddings=, exclude=)``) under the gate, measuring each
    attempt with ``measure(graph)``; the chosen attempt's files are moved into ``dest`` (if the gate is met),
    the others deleted."""
    from edgegen.converters.lm.quantize import weight_matmuls

    file = f"decoder_{scheme}.onnx"
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=dest) as tmp:
        graphs: list[Path] = []

        def attempt(exclude: list[str]) -> dict[str, Any]:
            out = Path(tmp, f"attempt{len(graphs)}", file)
            out.parent.mkdir()
            # attempt 0 excludes nothing: the scheme's defaults; later ones keep the head and embeddings in float
            details = quantize(fp32, out, scheme, lm_head=lm_head if not exclude else "float",
                               embeddings=embeddings if not exclude else "float", exclude=exclude)
            if len(graphs) > 1:                        # attempt 0 stays for the ranking; the others go
                shutil.rmtree(graphs[-1].parent)
            graphs.append(out)
            return {**details, **measure(out)}

        attempts = escalate(scheme, gate, lambda: weight_matmuls(fp32, scheme), attempt,
                            lambda body: ranked(fp32, graphs[0], body, nll_ids, Path(tmp)), report)
        why = failure(scheme, attempts, gate)
        files = [] if why else attempts[-1].figures["files"]
        for name in files:
            (graphs[-1].parent / name).rename(dest / name)
    return GateResult(files, gate_figures(attempts, gate), why)


def ranked(fp32: Path, quantized: Path, body: list[str], nll_ids: list[int], tmp: Path) -> list[str]:
    """Body MatMuls, most sensitive first (see the module docstring).  Tensor names are the fp32 graph's:
    MatMulNBits and ORT's dynamic int8 MatMul keep a MatMul's input and output names (a Gemm made
    MatMul + Add keeps its output name on the Add), the fp16 converter keeps every name; ``sqnr_loss``
    ranks only the nodes whose tensors are found in both graphs (the rest are never kept in float by rank)."""
    import onnx

    from edgegen.converters.quantization.graphs import sqnr_loss

    wanted = set(body)
    model = onnx.load_model(str(fp32), load_external_data=False)
    nodes = [(n.name, [n.input[0]], n.output[0]) for n in model.graph.node if n.name in wanted]  # activation input
    loss = sqnr_loss(fp32, quantized, nodes, [full_sequence_feed(fp32, nll_ids)], tmp)
    return sorted(loss, key=lambda name: -loss[name])


def full_sequence_feed(graph: Path, ids: list[int]) -> dict[str, np.ndarray]:
    """What :meth:`DecoderGraph.full_logits` feeds for ``ids`` as one sequence [1, T] with an empty cache."""
    import onnxruntime as ort

    from edgegen.runtimes.lm.decoder import DecoderGraph

    decoder = DecoderGraph(ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]))
    sequence = np.array([ids], np.int64)                                              # [1, T]
    return decoder.full_feeds(sequence, np.ones_like(sequence))
