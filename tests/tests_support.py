"""Helpers for tests: tiny real ONNX graphs and artifacts built in the test, no downloads.

Importable as ``tests_support`` because pytest puts tests/ (the conftest's folder) on sys.path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgegen.manifest import Source


def tiny_graph(opset: int = 17, op: str = "Add", domain: str = "") -> onnx.ModelProto:
    """y[batch, 4] = x[batch, 4] (op) w, with w a constant; plus a second output z = -x."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tolist())
    nodes = [helper.make_node(op, ["x", "w"], ["y"], domain=domain), helper.make_node("Neg", ["x"], ["z"])]
    graph = helper.make_graph(
        nodes, "tiny",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                 helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)] if domain else
                              [helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def write_tiny_artifact(dest: Path, family: str = "gan", model: onnx.ModelProto | None = None) -> Path:
    from edgegen.converters.writer import ArtifactWriter

    with ArtifactWriter(dest) as writer:
        writer.add_graph("generator", model if model is not None else tiny_graph(), precision="fp32")
        writer.add_asset("notes", "notes.txt", "hello\n")
        writer.write(writer.manifest(family=family, source=Source(model_class="tests.Tiny", converter="tests", opset=17),
                                     sampler={"latent": 4}, validation={"max_abs_error": 0.0}))
        return writer.commit()
