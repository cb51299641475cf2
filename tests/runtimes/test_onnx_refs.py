"""Listing and vetting external-data references without onnx (edgegen.runtimes.onnx_refs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.runtimes.onnx_refs import (MAX_GRAPH_DEPTH, ExternalRef, OnnxRefsError, check_external_data,
                                        external_references)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import (ExternalDataInfo, _get_all_tensors, set_external_data,  # noqa: E402
                                       uses_external_data)

FLOAT4 = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])]
OUT4 = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]


def array(seed: float) -> np.ndarray:
    return np.arange(4, dtype=np.float32) + seed


def make_model(nodes, initializers=(), functions=(), sparse=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", FLOAT4, OUT4, list(initializers), sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], functions=list(functions))
    model.ir_version = 9
    return model


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> Path:
    onnx.save_model(model, path, save_as_external_data=True, location=location, size_threshold=0,
                    convert_attribute=True)
    return path


def onnx_refs(path: Path) -> set[tuple[str, str, int | None, int | None]]:
    """What onnx's own helper finds, for comparison."""
    model = onnx.load(path, load_external_data=False)
    infos = [(t.name, ExternalDataInfo(t)) for t in _get_all_tensors(model) if uses_external_data(t)]
    return {(name, info.location, info.offset, info.length) for name, info in infos}


def ours(path: Path) -> set[tuple[str, str, int | None, int | None]]:
    return {(r.tensor, r.location, r.offset, r.length) for r in external_references(path)}


def add_chain(count: int) -> tuple[list, list]:
    names = [f"w{i}" for i in range(count)]
    nodes = [helper.make_node("Add", ["x" if i == 0 else f"t{i}", n], ["y" if i == count - 1 else f"t{i + 1}"])
             for i, n in enumerate(names)]
    return nodes, [numpy_helper.from_array(array(i), n) for i, n in enumerate(names)]


def if_node(branch_init: str) -> onnx.NodeProto:
    out = [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    then = helper.make_graph([helper.make_node("Identity", [branch_init], ["b"])], "then", [], out,
                             [numpy_helper.from_array(array(9), branch_init)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], out)
    return helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)


# ---- (a)-(d): the scanner finds what onnx finds -------------------------------------------------


def test_initializers_match_onnx_helper(tmp_path):
    path = save_external(make_model(*add_chain(3)), tmp_path / "m.onnx")
    found = external_references(path)
    assert ours(path) == onnx_refs(path)
    assert [r.tensor for r in found] == ["w0", "w1", "w2"]
    assert all(isinstance(r, ExternalRef) and r.location == "weights.bin" and r.length == 16 for r in found)
    assert check_external_data(path, tmp_path, {"weights.bin"}) == []
    assert check_external_data(path, tmp_path, {"weights.bin": "sha256"}) == []


def test_constant_attribute_and_function_tensors(tmp_path):
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(array(5), "cval"))
    fn_const = helper.make_node("Constant", [], ["fc"], value=numpy_helper.from_array(array(6), "fval"))
    fn = helper.make_function("local", "F", [], ["fc"], [fn_const], [helper.make_opsetid("", 17)])
    nodes = [const, helper.make_node("F", [], ["f"], domain="local"), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, functions=[fn])
    model.opset_import.append(helper.make_opsetid("local", 1))
    path = save_external(model, tmp_path / "m.onnx")
    assert ours(path) == onnx_refs(path)
    assert {r.tensor for r in external_references(path)} == {"cval", "fval"}


def test_if_subgraph_initializer(tmp_path):
    model = make_model([if_node("inner")], add_chain(1)[1])
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    path = save_external(model, tmp_path / "m.onnx")
    assert ours(path) == onnx_refs(path)
    assert {r.tensor for r in external_references(path)} == {"inner", "w0"}
    assert check_external_data(path, tmp_path, {"weights.bin"}) == []


def test_nested_graphs_attribute_and_deep_if(tmp_path):
    """AttributeProto.graphs (field 11) and an If inside a Loop body are walked too."""
    inner = helper.make_graph([if_node("deep")], "body", [], [])
    node = helper.make_node("Custom", [], [], domain="x")
    node.attribute.append(helper.make_attribute("bodies", [inner]))
    path = save_external(make_model([node]), tmp_path / "m.onnx")
    assert ours(path) == onnx_refs(path)
    assert {r.tensor for r in external_references(path)} == {"deep"}


def external_tensor(tensor: TensorProto, data: bytes, root: Path, location: str, offset: int) -> None:
    with open(root / location, "ab") as fh:
        fh.write(data)
    set_external_data(tensor, location, offset=offset, length=len(data))
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL


def test_sparse_initializer_and_sparse_attribute(tmp_path):
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sv")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "si")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    external_tensor(sparse.values, values.raw_data, tmp_path, "sparse.bin", 0)
    external_tensor(sparse.indices, indices.raw_data, tmp_path, "sparse.bin", 8)
    attr_values = numpy_helper.from_array(np.array([3.0], np.float32), "av")
    attr_sparse = helper.make_sparse_tensor(attr_values, numpy_helper.from_array(np.array([1], np.int64), "ai"), [4])
    external_tensor(attr_sparse.values, attr_values.raw_data, tmp_path, "sparse.bin", 24)
    const = helper.make_node("Constant", [], ["c"], sparse_value=attr_sparse)
    path = tmp_path / "m.onnx"
    path.write_bytes(make_model([const, helper.make_node("Add", ["x", "c"], ["y"])], sparse=[sparse])
                     .SerializeToString())
    assert ours(path) == {("sv", "sparse.bin", 0, 8), ("si", "sparse.bin", 8, 16), ("av", "sparse.bin", 24, 4)}
    assert check_external_data(path, tmp_path, {"sparse.bin"}) == []
    assert len(check_external_data(path, tmp_path, set())) == 3


def test_graph_in_subdirectory_resolves_from_its_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    path = save_external(make_model(*add_chain(1)), tmp_path / "sub" / "m.onnx")
    assert check_external_data(path, tmp_path, {"sub/weights.bin"}) == []
    [problem] = check_external_data(path, tmp_path, {"weights.bin"})
    assert "sub/weights.bin is not listed" in problem


# ---- (e): hostile locations ---------------------------------------------------------------------


def hostile(root: Path, entries: dict[str, str]) -> Path:
    """An artifact whose initializer 'w' has the given external_data entries (weights.bin is 16 bytes)."""
    root.mkdir()
    (root / "weights.bin").write_bytes(array(0).tobytes())
    (root / "extra.bin").write_bytes(bytes(16))
    (root / "adir").mkdir()
    (root / "inside_link.bin").symlink_to(root / "weights.bin")
    (root / "dir_link").symlink_to(root / "adir")
    (root / "adir" / "weights.bin").write_bytes(bytes(16))
    (root.parent / "outside.bin").write_bytes(bytes(16))
    (root / "outside_link.bin").symlink_to(root.parent / "outside.bin")
    tensor = numpy_helper.from_array(array(0), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path = root / "m.onnx"
    path.write_bytes(make_model([helper.make_node("Add", ["x", "w"], ["y"])], [tensor]).SerializeToString())
    return path


LISTED = {"weights.bin", "inside_link.bin", "outside_link.bin", "adir", "dir_link/weights.bin", "missing.bin",
          "../outside.bin"}


@pytest.mark.parametrize(("entries", "reason"), [
    ({"location": "../outside.bin"}, "'..'"),
    ({"location": "adir/../weights.bin"}, "'..'"),
    ({"location": "/etc/passwd"}, "absolute"),
    ({"location": "C:\\x.bin"}, "absolute"),
    ({"location": "C:x.bin"}, "absolute"),
    ({"location": "\\\\server\\share\\x.bin"}, "absolute"),
    ({"location": "sub\\x.bin"}, "backslash"),
    ({"location": "weights.bin:stream"}, "':'"),
    ({"location": "*/_ORT_MEM_ADDR_/*", "offset": "4096"}, "'*'"),
    ({"location": "weights.bin\0.txt"}, "NUL"),
    ({"location": "a//weights.bin"}, "empty or '..' path component"),
    ({"location": "outside_link.bin"}, "symlink outside_link.bin"),
    ({"location": "inside_link.bin"}, "symlink inside_link.bin"),
    ({"location": "dir_link/weights.bin"}, "symlink dir_link"),
    ({"location": "adir"}, "not a regular file"),
    ({"location": "missing.bin"}, "does not exist"),
    ({"location": "extra.bin"}, "not listed"),
    ({"offset": "0"}, "no location"),
    ({"location": "weights.bin", "offset": "-4"}, "not a non-negative integer"),
    ({"location": "weights.bin", "offset": "4.0"}, "not a non-negative integer"),
    ({"location": "weights.bin", "length": "²"}, "not a non-negative integer"),
    ({"location": "weights.bin", "offset": "8", "length": "16"}, "beyond the end"),
    ({"location": "weights.bin", "offset": "17"}, "beyond the end"),
    ({"location": "weights.bin", "basepath": "/etc"}, "unknown external_data keys ['basepath']"),
])
def test_hostile_location_refused(tmp_path, entries, reason):
    path = hostile(tmp_path / "art", entries)
    [problem] = check_external_data(path, tmp_path / "art", LISTED)
    assert reason in problem
    assert "'w'" in problem and repr(entries.get("location", "")) in problem


def test_duplicate_location_key_refused(tmp_path):
    path = hostile(tmp_path / "art", {"location": "weights.bin"})
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].external_data.add(key="location", value="../outside.bin")
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxRefsError, match="'location' appears twice"):
        external_references(path)
    [problem] = check_external_data(path, tmp_path / "art", LISTED)
    assert "appears twice" in problem


def test_external_data_on_default_tensor_is_still_checked(tmp_path):
    path = hostile(tmp_path / "art", {"location": "../outside.bin"})
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].data_location = TensorProto.DEFAULT
    path.write_bytes(model.SerializeToString())
    assert [r.location for r in external_references(path)] == ["../outside.bin"]
    assert check_external_data(path, tmp_path / "art", LISTED)


def test_valid_offsets_accepted(tmp_path):
    path = hostile(tmp_path / "art", {"location": "./weights.bin", "offset": "8", "length": "8", "checksum": "x"})
    assert external_references(path) == [ExternalRef("w", "./weights.bin", 8, 8)]
    assert check_external_data(path, tmp_path / "art", {"weights.bin"}) == []


# ---- (f): no external data ----------------------------------------------------------------------


def test_no_external_data(tmp_path):
    nodes, inits = add_chain(2)
    path = tmp_path / "m.onnx"
    onnx.save_model(make_model(nodes, inits), path)
    assert external_references(path) == []
    assert check_external_data(path, tmp_path, set()) == []


def test_large_inline_initializer_is_skipped(tmp_path):
    big = numpy_helper.from_array(np.ones(5 * 1024 * 1024, np.float32), "big")  # 20 MiB of raw_data
    graph = helper.make_graph([helper.make_node("Identity", ["big"], ["y"])], "g", [], OUT4, [big])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert path.stat().st_size > 20 * 1024 * 1024
    assert external_references(path) == []


def test_graph_that_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(OnnxRefsError, match="not a regular file"):
        external_references(tmp_path / "fifo.onnx")
    assert "not a regular file" in check_external_data(tmp_path / "fifo.onnx", tmp_path, set())[0]


def test_empty_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert external_references(tmp_path / "m.onnx") == []


# ---- (g): malformed bytes -----------------------------------------------------------------------


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def nested_graphs(levels: int) -> bytes:
    """ModelProto.graph -> node -> attribute.g -> ... `levels` graphs deep, an external tensor at the bottom."""
    tensor = ld(8, b"t") + bytes([14 << 3, 1]) + ld(13, ld(1, b"location") + ld(2, b"w.bin"))
    graph = ld(5, tensor)
    for _ in range(levels - 1):
        graph = ld(1, ld(5, ld(6, graph)))
    return ld(7, graph)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    return path


def test_nesting_limit(tmp_path):
    assert [r.tensor for r in external_references(write(tmp_path, nested_graphs(MAX_GRAPH_DEPTH)))] == ["t"]
    with pytest.raises(OnnxRefsError, match="nested deeper than"):
        external_references(write(tmp_path, nested_graphs(MAX_GRAPH_DEPTH + 1)))


@pytest.mark.parametrize(("data", "message"), [
    (b"\x80", "truncated varint"),
    (b"\xff" * 11, "longer than 10 bytes"),
    (b"\x38" + b"\xff" * 9 + b"\x7f", "overflows 64 bits"),
    (b"\x3a\x05ab", "runs past the end"),
    (b"\x39\x00", "truncated fixed-width"),
    (b"\x3b", "wire type 3"),
    (b"\x3c", "wire type 4"),
    (b"\x3e", "wire type 6"),
    (b"\x02\x00", "field number 0"),
    (b"\x38\x01", "wire type 0, expected 2"),
    (ld(7, b"") + ld(7, b""), "appears twice"),
    (ld(7, ld(5, b"\x72\x00")), "field 14 of TensorProto has wire type 2"),
    (ld(7, ld(5, ld(13, ld(1, b"\xff")))), "not UTF-8"),
])
def test_malformed_bytes(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(OnnxRefsError, match=message) as info:
        external_references(path)
    assert "\n" not in str(info.value)
    [problem] = check_external_data(path, tmp_path, set())
    assert message in problem


def test_every_truncation_raises_only_our_error(tmp_path):
    data = save_external(make_model(*add_chain(2)), tmp_path / "src.onnx").read_bytes()
    for cut in range(len(data)):
        path = write(tmp_path, data[:cut])
        try:
            external_references(path)
        except OnnxRefsError:
            pass


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_our_error(tmp_path, data):
    try:
        assert isinstance(external_references(write(tmp_path, data)), list)
    except OnnxRefsError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_model_raises_only_our_error(tmp_path, edits):
    fn_tensor = ld(8, b"f") + ld(13, ld(1, b"offset") + ld(2, b"12"))
    data = bytearray(nested_graphs(3) + ld(25, ld(7, ld(5, ld(5, fn_tensor)))))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    try:
        external_references(write(tmp_path, bytes(data)))
    except OnnxRefsError:
        pass


# ---- (h): the runtime stays torch- and onnx-free ------------------------------------------------


def test_import_loads_neither_onnx_nor_torch(tmp_path):
    code = ("import sys, edgegen.runtimes.onnx_refs; "
            "print(sorted(m for m in ('onnx', 'torch') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"
