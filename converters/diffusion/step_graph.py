"""The scheduler-step graphs the diffusion runtime runs on a GPU, written with ``onnx.helper``.

A diffusion step after the denoiser is a few elementwise operations: classifier-free guidance,
the scheduler's affine update (:class:`edgegen.runtimes.diffusion.schedulers.base.StepCoefficients`) and
the next step's input scaling.  The runtime's device loop (:mod:`edgegen.runtimes.diffusion.device_loop`)
runs them as these small ONNX graphs on the same execution provider as the denoiser, so the
latents stay in GPU memory for the whole loop; the step's numbers come from the numpy schedulers
as one ``coefficients`` vector per step.

The graphs are model-independent (every dimension symbolic), so they ship with the runtime as
package data (``runtimes/diffusion/graphs/*.onnx``): the runtime does not depend on the ``onnx`` package.
``python -m edgegen.converters.diffusion.step_graph`` rewrites them; a test checks the shipped files are
what this module builds.

Inputs::

    prediction    float [M, C', H, W]  the denoiser's output; M = 2N under guidance (uncond rows first),
                                       C' >= C (a learned variance's extra channels are dropped)
    sample        float [N, C, H, W]   x_t
    x0_previous   float [N, C, H, W]   the previous step's x0 (multistep solvers; anything finite otherwise)
    noise         float [N, C, H, W]   standard normal noise (zeros when the step draws none)
    coefficients  float [11]           see COEFFICIENTS

Outputs: ``next_sample`` [N, C, H, W], ``x0`` [N, C, H, W], ``model_input`` [M, C, H, W] (the next
step's denoiser input: ``input_scale * next_sample``, repeated twice under guidance).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgegen.runtimes.diffusion as _diffusion_runtime

#: the order of the values in the ``coefficients`` input
COEFFICIENTS = ("guidance", "x0_x", "x0_out", "clip_low", "clip_high", "x", "out", "x0", "history", "noise",
                "input_scale")
OPSET = 17          # DirectML runs opsets up to 20 (ONNX Runtime 1.18+); 17 has every op used here
IR_VERSION = 8
GRAPHS = {"step": False, "guided_step": True}
#: the diffusion runtime's package data (runtimes/diffusion/graphs/)
GRAPH_DIR = Path(_diffusion_runtime.__file__).resolve().parent / "graphs"


def build(guided: bool) -> onnx.ModelProto:
    """The step graph, with classifier-free guidance (``guided``) or without."""
    rows = "guided_batch" if guided else "batch"
    nodes, inits = [], []

    def scalar(name: str) -> str:
        index, value = f"i_{name}", f"k_{name}"
        inits.append(numpy_helper.from_array(np.array(COEFFICIENTS.index(name), np.int64), index))
        nodes.append(helper.make_node("Gather", ["coefficients", index], [value], axis=0))
        return value

    def op(kind: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    # the first C channels of the prediction (C = the sample's channels)
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    channels = op("Shape", ["sample"], "channels", start=1, end=2)
    out = op("Slice", ["prediction", "zero", channels, "one"], "out_all")
    if guided:                                      # uncond + g * (cond - uncond)
        nodes.append(helper.make_node("Split", [out], ["uncond", "cond"], axis=0))
        diff = op("Sub", ["cond", "uncond"], "diff")
        out = op("Add", ["uncond", op("Mul", [scalar("guidance"), diff], "g_diff")], "guided")
    x0 = op("Add", [op("Mul", [scalar("x0_x"), "sample"], "x0_a"), op("Mul", [scalar("x0_out"), out], "x0_b")],
            "x0_raw")
    # Min/Max rather than Clip: CUDA's Clip reads its bounds from host memory (a copy and a sync per step)
    x0 = op("Max", [op("Min", [x0, scalar("clip_high")], "x0_high"), scalar("clip_low")], "x0")
    terms = [op("Mul", [scalar(c), v], f"t_{c}")
             for c, v in (("x", "sample"), ("out", out), ("x0", x0), ("history", "x0_previous"), ("noise", "noise"))]
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        total = op("Add", [total, term], f"sum{i}")
    nodes[-1].output[0] = "next_sample"
    scaled = op("Mul", [scalar("input_scale"), "next_sample"], "scaled" if guided else "model_input")
    if guided:
        op("Concat", [scaled, scaled], "model_input", axis=0)

    latent = ["batch", "channels", "height", "width"]
    inputs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [rows, "out_channels", "height", "width"]),
              *(helper.make_tensor_value_info(n, TensorProto.FLOAT, latent)
                for n in ("sample", "x0_previous", "noise")),
              helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, [len(COEFFICIENTS)])]
    outputs = [helper.make_tensor_value_info("next_sample", TensorProto.FLOAT, latent),
               helper.make_tensor_value_info("x0", TensorProto.FLOAT, latent),
               helper.make_tensor_value_info("model_input", TensorProto.FLOAT, [rows, "channels", "height", "width"])]
    graph = helper.make_graph(nodes, "guided_step" if guided else "step", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgegen",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def write(directory: Path = GRAPH_DIR) -> list[Path]:
    """Write every step graph into ``directory`` (the runtime's package data)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, guided in GRAPHS.items():
        path = directory / f"{name}.onnx"
        path.write_bytes(build(guided).SerializeToString(deterministic=True))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPH_DIR):
        print(p)
