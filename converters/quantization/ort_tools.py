"""What the quantizers of every family need from a graph before ONNX Runtime's tools read it, and a
filter for the notes those tools log on the root logger.

ONNX Runtime's quantizers only look at ``MatMul(x, initializer)``: :func:`gemm_to_matmul` rewrites a
``Gemm`` with a constant weight (torch exports GPT-2's Conv1D layers, and Linear layers of conv nets,
so) into ``MatMul`` + ``Add``.  This rewrites the graph; it does not quantize anything.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import onnx


@contextmanager
def dropping_root_logs(drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Keep the records ``drop`` picks off the root logger while active (ONNX Runtime's quantization
    tools log their notes there)."""
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not drop(record)

    root, dropper = logging.getLogger(), _Drop()
    root.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for out in model.graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def is_float(t: onnx.TensorProto) -> bool:
    from onnx import TensorProto

    return t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Gemm(A, W[, C]) with a constant 2-D float W (alpha 1, beta 1, no transA) -> MatMul(A, W') [+ Add C].
    W' is W, or W transposed in place when transB=1 (only if nothing else reads W). Names stay."""
    from onnx import helper, numpy_helper

    inits, uses = initializers(model), consumers(model)
    nodes, done = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (w is None or not is_float(w) or len(w.dims) != 2 or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("transA", 0) or (len(node.input) > 2 and node.input[2] and attrs.get("beta", 1.0) != 1.0)
                or (attrs.get("transB", 0) and uses.get(w.name, 0) != 1)):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}/matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w.name], [product], name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}/bias"))
        done += 1
    if done:
        model.graph.ClearField("node")
        model.graph.node.extend(nodes)
    return done
