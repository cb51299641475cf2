"""``--quantize auto``: each family's default scheme for a target, chosen by measurement.

The rules below are what the benchmarks measured on this project's CPU machine (figures in the
README's "Quantization defaults" table); a scheme is the default only where it paid there.
``auto`` resolves per model: the size threshold keeps small models in fp32, where per-step time is
ONNX Runtime's fixed overhead and quantization buys nothing (pycode, 3M parameters: int8 decoded
0.88x fp32).  On GPU targets the default is fp16 for every family that has float weights worth
halving, except flows (exact log-likelihoods) and recurrent LMs (no quantized step graph yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgegen.errors import InvalidArgumentError

TARGETS = ("cpu", "cuda", "dml")


@dataclass(frozen=True)
class Rule:
    scheme: str          # what auto picks when the model has at least min_params parameters
    min_params: int
    why: str


CPU_RULES = {
    "causal-lm": Rule("int8", 50_000_000, "GPT-2 small (124M): int8 decodes 2.64x fp32 (benchmarks/lm.py); the "
                      "bundled trained pycode LM: +0.02% held-out perplexity (benchmarks/lm_quality.py); below "
                      "50M parameters per-token time is mostly ORT overhead"),
    "diffusion": Rule("int8-static", 10_000_000, "DDPM-cifar10 UNet (35.7M): int8-static 1.91x fp32 per step at "
                      "40.7 dB (benchmarks/image_quantize.py); below 10M parameters it does not pay"),
    "gan": Rule("none", 0, "a DCGAN 64x64 generator ran 0.86x fp32 under int8-static: ORT's CPU provider has no "
                "int8 ConvTranspose"),
    "vae": Rule("none", 0, "a conv VAE 64x64 decoder (1.2M: Linear + 4 ConvTranspose2d) ran 0.78x fp32 at batch 1 "
                "and 0.81x at batch 16 under int8-static, at 72 dB (benchmarks/image_quantize.py, 1 thread): ORT's "
                "CPU provider has no int8 ConvTranspose"),
    "vq-vae": Rule("none", 0, "a VQ-VAE 64x64 decoder (0.29M: conv, 2 residual blocks, 2 ConvTranspose2d) ran 1.17x "
                   "fp32 at batch 1 and 1.33x at batch 16 under int8-static, at 55 dB (benchmarks/image_quantize.py, "
                   "1 thread), short of 1.5x: its ConvTransposes stay float"),
    "flow": Rule("none", 0, "flows stay fp32: their log-likelihoods are exact"),
    "rnn-lm": Rule("none", 0, "recurrent step graphs are fp32 (no quantized step graph yet)"),
}
GPU_RULES = {family: Rule("fp16", 0, "fp16 halves weights and uses the GPU's half-precision units")
             for family in ("causal-lm", "diffusion", "gan", "vae", "vq-vae")}


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise InvalidArgumentError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return target


def resolve(family: str, target: str, params: int) -> tuple[str, str]:
    """(scheme, reason) that ``--quantize auto`` means for a ``family`` model of ``params`` parameters."""
    rule = (GPU_RULES.get(family) if check_target(target) != "cpu" else None) or CPU_RULES[family]
    if rule.scheme != "none" and params < rule.min_params:
        return "none", (f"{params / 1e6:.1f}M parameters < {rule.min_params / 1e6:.0f}M: stays fp32 ({rule.why})")
    return rule.scheme, f"{family} on {target}: {rule.why}"


def report_lines(scheme: str, reason: str, width: int = 100) -> list[str]:
    """A conversion report's lines for :func:`resolve`'s choice: the decision on one line, the measurements
    behind it (a rule's ``why``, up to 300 characters) wrapped below, instead of one line too long to read."""
    import textwrap

    why = next((r.why for r in (*CPU_RULES.values(), *GPU_RULES.values()) if r.why in reason), None)
    if why is None:
        return [f"quantize auto: {scheme} ({reason})"]
    decision = reason.replace(f" ({why})", "").replace(f": {why}", "")
    return [f"quantize auto: {scheme} ({decision})",
            *textwrap.wrap(why, width, initial_indent="  why: ", subsequent_indent="       ")]


def graph_params(*paths: Path) -> int:
    """Number of float weights in ONNX graphs (initializers), external data not read."""
    import onnx

    total = 0
    for path in paths:
        model = onnx.load_model(str(path), load_external_data=False)
        for t in model.graph.initializer:
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
                n = 1
                for d in t.dims:
                    n *= d
                total += n
    return total
