"""The graph side of image-model quantization: ONNX Runtime's tools on one graph file, node
sensitivity and census.  :mod:`edgegen.converters.quantization.psnr_gate` runs the families' loops around them.

- :func:`prepare`: ``quant_pre_process`` without its symbolic shape inference (which fails on
  diffusers UNets); Gemm with a constant weight as MatMul + Add (the dynamic quantizer reads only
  MatMul); every node named and every initializer renamed (``w<i>:<name>``), because the static
  quantizer names its copies of shared initializers by appending digits, which collided with
  exporter value names (``val_30`` + ``6`` = ``val_306``) into a QLinearConv that failed to load
  ("Attribute dilations has incorrect size").
- :func:`quantize_graph`: ``convert_float_to_float16`` (keep_io_types), ``quantize_dynamic`` or
  ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on the
  feeds given), with the nodes named in ``exclude`` left in float.
- :func:`ranked`: compute nodes, most int8-sensitive first, measured (:func:`sqnr_loss`, which the causal-LM
  gate shares); :func:`exclusions`: the gate's ladder.
- :func:`census`: which weight-bearing nodes a graph file holds quantized and which in float32.
- :func:`quantize_staged`: one staged graph of an artifact being written, prepared and quantized beside the float
  one and recorded in its place (the audio families' decoders; the caller gates it, then removes the float one).
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ConversionError, EdgegenError

__all__ = ["COMPUTE_OPS", "HANDLES", "STATIC_OP_TYPES", "census", "exclusions", "graph_bytes", "prepare",
           "quantize_graph", "quantize_staged", "quiet_ort", "ranked", "remove_graph", "sqnr_loss", "tool"]

#: The ops whose weights and inputs int8 quantizes (and the gate ranks and excludes).
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: What int8-static quantizes: the compute ops; normalization, SiLU, softmax stay float.  (None: every
#: op ORT's QDQ quantizer knows, which benchmarks/image_quantize.py --all-ops measures against it.)
STATIC_OP_TYPES: tuple[str, ...] | None = COMPUTE_OPS
#: What each scheme converts, for "nothing to quantize" errors.
HANDLES = {"fp16": "float ops", "int8": "Conv and MatMul (ConvTranspose stays float)",
           "int8-static": "Conv, ConvTranspose, MatMul and Gemm"}
#: Calibration inputs that rank node sensitivity.
SENSITIVITY_FEEDS = 4
#: Graphs larger than this are read and written with external data.
EXTERNAL_DATA_BYTES = 1 << 30


def graph_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))


def remove_graph(path: Path) -> None:
    for p in path.parent.glob(f"{path.name}*"):     # the graph and its external data
        p.unlink()


def quiet_ort() -> AbstractContextManager[None]:
    """ORT's quantization tools log notes on the root logger ("Axis 1 is out-of-range for weight ...",
    advice to pre-process): keep them out of the caller's output, errors excepted."""
    from edgegen.converters.quantization.ort_tools import dropping_root_logs

    return dropping_root_logs(lambda record: record.levelno < logging.ERROR and "onnxruntime" in record.pathname)


def prepare(src: Path, dst: Path) -> Path:
    """ORT's quantization pre-processing (no symbolic shape inference: it fails on diffusers UNets);
    Gemm with a constant weight as MatMul + Add (the dynamic quantizer reads only MatMul); every
    node named, every initializer renamed so the static quantizer's names cannot collide."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgegen.converters.quantization.ort_tools import gemm_to_matmul

    large = graph_bytes(src) > EXTERNAL_DATA_BYTES
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=large,
                      all_tensors_to_one_file=True, external_data_location=f"{dst.name}.data")
    model = onnx.load_model(str(dst))
    gemm_to_matmul(model)
    names = {t.name: f"w{i}:{t.name}" for i, t in enumerate(model.graph.initializer)}   # "w3:" ends in no digit
    for t in model.graph.initializer:
        t.name = names[t.name]
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
        node.input[:] = [names.get(x, x) for x in node.input]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = names.get(value.name, value.name)
    remove_graph(dst)
    onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data")
    return dst


def quantize_staged(writer: Any, role: str, scheme: str, precision: str) -> int:
    """The ArtifactWriter ``writer``'s staged ``<role>.onnx`` quantized by ``scheme`` (no calibration: fp16 or
    int8) into ``<role>.<scheme>.onnx``, recorded as the role's graph with ``precision``; its bytes with external
    data.  The float graph stays on disk: the caller removes it once its gate passes."""
    import tempfile

    file = f"{role}.{scheme}.onnx"
    with tempfile.TemporaryDirectory(prefix="edgegen-quantize-") as tmp, quiet_ort():
        prepared = prepare(writer.path(f"{role}.onnx"), Path(tmp) / f"{role}.prepared.onnx")
        quantize_graph(prepared, writer.path(file), scheme, [], [])
    spec = writer.add_graph_file(role, file, precision=precision)
    return sum(writer.path(f).stat().st_size for f in (file, *(r.file for r in spec.external_data)))


def quantize_graph(src: Path, dst: Path, scheme: str, feeds: list[dict[str, np.ndarray]], exclude: list[str]) -> str:
    """Write ``src`` quantized by ``scheme`` at ``dst`` (nodes in ``exclude`` stay float); returns the file name."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    remove_graph(dst)
    large = graph_bytes(src) > EXTERNAL_DATA_BYTES
    try:
        if scheme == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(str(src), keep_io_types=True, node_block_list=exclude or None)
            onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                            location=f"{dst.name}.data")
        elif scheme == "int8":
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul"],
                             nodes_to_exclude=exclude, use_external_data_format=large,
                             extra_options={"MatMulConstBOnly": True})
        else:   # attention's activation products stay float (QDQ ignores MatMulConstBOnly): quantized, ORT fuses
                # their softmax into QLinearSoftmax, 3.5x slower than float Softmax on the DDPM UNet
            exclude = sorted({*exclude, *_activation_products(src)})
            quantize_static(src, dst, _Feeds(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=STATIC_OP_TYPES,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                            use_external_data_format=large, reduce_range=REDUCE_RANGE)
    except EdgegenError:
        raise
    except Exception as exc:  # noqa: BLE001  (ORT's quantizers raise bare errors)
        raise ConversionError(f"{scheme} quantization of {src.name} failed: {str(exc).splitlines()[0][:300]}; "
                              "choose another --quantize scheme") from exc
    return dst.name


#: int8-static weights in 7 bits: x86 CPUs without VNNI (AVX2 and plain AVX-512, most laptops) multiply u8 x s8
#: with VPMADDUBSW, whose 16-bit sums saturate with full-range weights (ONNX Runtime's quantization docs).  On
#: such a CPU (AMD EPYC, AVX2) the samples of the test GAN, VAE and DDPM fell to 26-29 dB against fp32 with
#: 8-bit weights, under the 30 dB gate; an artifact converted on a VNNI machine would run that way on a laptop.
REDUCE_RANGE = True


def tool(scheme: str) -> dict[str, Any]:
    """What made a scheme's graphs, for the manifest."""
    return {
        "fp16": {"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
                 "options": {"keep_io_types": True}},
        "int8": {"tool": "onnxruntime.quantization.quantize_dynamic",
                 "options": {"weight_type": "QInt8", "op_types_to_quantize": ["Conv", "MatMul"],
                             "MatMulConstBOnly": True}},
        "int8-static": {"tool": "onnxruntime.quantization.quantize_static",
                        "options": {"quant_format": "QDQ", "op_types_to_quantize": STATIC_OP_TYPES or "all",
                                    "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
                                    "calibrate_method": "MinMax", "reduce_range": REDUCE_RANGE,
                                    "nodes_to_exclude": "MatMul of two activations (attention) + the gate's"}},
    }[scheme] | {"pre_process": "quant_pre_process(skip_symbolic_shape=True); Gemm as MatMul + Add; "
                                "initializers renamed"}


class _Feeds:
    """ORT's CalibrationDataReader protocol over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _compute_nodes(model: Any) -> list[Any]:
    """The weight-bearing compute nodes (a constant input): what quantization converts and the gate excludes."""
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS and any(x in inits for x in n.input[1:])]


def _activation_products(path: Path) -> list[str]:
    """MatMul nodes of two activations (attention's QK^T and weights x V)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & inits]


def exclusions(step: int, prepared: Path, ranked: list[str]) -> list[str]:
    """The nodes kept in float at gate attempt ``step``: none; first and last compute node; + the
    1/8 most sensitive; + the 1/4 most sensitive (``ranked``: most sensitive first)."""
    import onnx

    if step == 0:
        return []
    nodes = _compute_nodes(onnx.load_model(str(prepared), load_external_data=False))
    ends = [nodes[0].name, nodes[-1].name] if nodes else []
    worst = [name for name in ranked if name not in ends][:math.ceil(len(nodes) * {1: 0, 2: 1 / 8, 3: 1 / 4}[step])]
    return sorted(set(ends) | set(worst))


def ranked(prepared: Path, feeds: list[dict[str, np.ndarray]], tmp: Path) -> list[str]:
    """Compute nodes, most int8-sensitive first: the SQNR (int8-static graph against fp32, same
    calibration inputs) of a node's input minus that of its output, i.e. the dB of signal it loses."""
    import onnx

    qdq = tmp / f"rank_{prepared.name}"
    quantize_graph(prepared, qdq, "int8-static", feeds, [])
    nodes = _compute_nodes(onnx.load_model(str(prepared), load_external_data=False))
    loss = sqnr_loss(prepared, qdq, [(n.name, list(n.input), n.output[0]) for n in nodes],
                     feeds[:SENSITIVITY_FEEDS], tmp)
    return sorted(loss, key=lambda name: -loss[name])


def sqnr_loss(ref: Path, quantized: Path, nodes: list[tuple[str, list[str], str]],
              feeds: list[dict[str, np.ndarray]], tmp: Path) -> dict[str, float]:
    """node name -> dB of signal the node loses in ``quantized`` against ``ref`` on the same ``feeds``:
    the SQNR of its inputs (the lowest) minus that of its output.  ``nodes``: (name, input names, output
    name) as in ``ref``.  Only tensors present in both graphs are compared (a quantizer may rename the
    values it rewrites): a node whose output or activation inputs are missing from either is left out."""
    import onnx

    model = onnx.load_model(str(ref), load_external_data=False)
    inits, inputs = {t.name for t in model.graph.initializer}, {v.name for v in model.graph.input}
    present = _values(model) & _values(onnx.load_model(str(quantized), load_external_data=False))
    nodes = [(name, ins, out) for name, ins, out in nodes if out in present
             and any(x in present or x in inputs for x in ins if x and x not in inits)]
    wanted = sorted({x for _, ins, out in nodes for x in [*ins, out] if x in present and x not in inits | inputs})
    read_ref, read_quantized = _reader(ref, wanted, tmp), _reader(quantized, wanted, tmp)
    signal, noise = dict.fromkeys(wanted, 0.0), dict.fromkeys(wanted, 0.0)
    for feed in feeds:                                       # one feed's activations in memory at a time
        for x, r, q in zip(wanted, read_ref(feed), read_quantized(feed)):
            r = r.astype(np.float64)
            signal[x] += float(np.sum(r * r))
            noise[x] += float(np.sum((r - q.astype(np.float64)) ** 2))
    sqnr = {x: 100.0 if noise[x] <= 1e-10 * signal[x] else min(100.0, 10 * math.log10(signal[x] / noise[x]))
            for x in wanted} | dict.fromkeys(inputs, 100.0)   # dB, at most 100; graph inputs are exact
    return {name: min((sqnr[x] for x in ins if x in sqnr), default=100.0) - sqnr[out] for name, ins, out in nodes}


def _values(model: Any) -> set[str]:
    """Names of the values a graph computes or takes (what a reader can ask for)."""
    return {x for n in model.graph.node for x in n.output} | {v.name for v in model.graph.input}


def _reader(path: Path, names: list[str], tmp: Path) -> Any:
    """feed -> the values of tensors ``names`` (the graph made to output them too)."""
    import onnx
    import onnxruntime as ort

    external = graph_bytes(path) > EXTERNAL_DATA_BYTES
    model = onnx.load_model(str(path), load_external_data=not external)
    outputs = {v.name for v in model.graph.output}
    # no declared type: ONNX Runtime infers it (float16 in an fp16 graph)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in names if x not in outputs)
    if external:   # the weights stay in their file: the augmented graph sits beside it while the session loads
        from edgegen.converters.writer import serialize

        augmented = path.parent / f".outputs_{path.name}"
        serialize(model, augmented)
        try:
            session = ort.InferenceSession(str(augmented), providers=["CPUExecutionProvider"])
        finally:
            augmented.unlink(missing_ok=True)
        return lambda feed: session.run(names, feed)
    augmented = tmp / f"outputs_{path.name}"
    onnx.save_model(model, str(augmented))
    session = ort.InferenceSession(str(augmented), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(names, feed)


def census(paths: dict[str, Path]) -> dict[str, Any]:
    """Weight-bearing compute nodes quantized (by op type) and those left in float32 (by name), per graph role."""
    import onnx
    from onnx import TensorProto

    quantized: dict[str, dict[str, int]] = {}
    kept: dict[str, list[str]] = {}
    for role, path in paths.items():
        model = onnx.load_model(str(path), load_external_data=False)
        inits = {t.name: t.data_type for t in model.graph.initializer}
        producers = {out: n.op_type for n in model.graph.node for out in n.output}
        counts: dict[str, int] = {}
        kept[role] = []
        for n in model.graph.node:
            weight = n.input[1] if len(n.input) > 1 else ""
            if n.op_type in COMPUTE_OPS and inits.get(weight) == TensorProto.FLOAT:
                kept[role].append(n.name)
            elif (n.op_type in COMPUTE_OPS and (producers.get(weight) == "DequantizeLinear"
                                                or inits.get(weight) == TensorProto.FLOAT16)) \
                    or n.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"):
                counts[n.op_type] = counts.get(n.op_type, 0) + 1
        quantized[role] = counts
    return {"quantized_nodes": quantized, "float_nodes": kept}
