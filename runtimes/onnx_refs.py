"""Listing and vetting the external-data references of an ONNX graph, without ``onnx``.

A tensor may keep its bytes in another file (``data_location = EXTERNAL`` and ``external_data``
entries ``location``/``offset``/``length``/``checksum``) that ONNX Runtime opens itself, and
onnxruntime 1.18-1.23 follow ``../../etc/passwd``, absolute paths and symlinks.  So edgegen, not
ONNX Runtime, decides what a graph may read: before any session exists, :func:`check_external_data`
refuses every reference but a regular, manifest-listed file inside the artifact.

The runtime imports only the standard library, numpy and onnxruntime, so the protobuf wire format
is read here (field numbers from onnx 1.23's ``onnx/onnx.proto``): the file is mmap'd and walked
with memoryview slices, and fields not needed (the ``raw_data`` of big weights) are skipped by
length, never copied.  Tensors are collected from graph initializers and sparse initializers, node
attributes (``t``, ``tensors``, ``sparse_tensor(s)``), subgraphs (``g``, ``graphs``) at any depth,
model functions (nodes, attribute defaults) and training-info graphs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgegen.errors import EdgegenError

MAX_GRAPH_DEPTH = 64
_MAX_TEXT = 4096
_MAX_INT = 2**63 - 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_EXTERNAL = 1
_KNOWN_KEYS = ("location", "offset", "length", "checksum")
_FORBIDDEN = (("\0", "NUL"), ("\\", "a backslash"), (":", "':' (drive or NTFS stream)"),
              ("*", "'*' (ORT's */_ORT_MEM_ADDR_/* memory tag)"))

# message -> {field number: message type of that field}; every field here is length-delimited.
_SCHEMA: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto",
                       22: "SparseTensorProto", 23: "SparseTensorProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
}
# Non-repeated message fields: protobuf would merge repeats, which no serializer writes; refuse them.
_SINGULAR = {("ModelProto", 7), ("TrainingInfoProto", 1), ("TrainingInfoProto", 2), ("AttributeProto", 5),
             ("AttributeProto", 6), ("AttributeProto", 22), ("SparseTensorProto", 1), ("SparseTensorProto", 2)}


class OnnxRefsError(EdgegenError, ValueError):
    """A graph file is not well-formed protobuf, or one of its external_data entries is invalid."""


@dataclass(frozen=True)
class ExternalRef:
    """One tensor stored outside the graph file.  ``location`` is ``""`` when the entry is missing."""

    tensor: str
    location: str
    offset: int | None
    length: int | None
    unknown_keys: tuple[str, ...] = ()


def external_references(path: Path) -> list[ExternalRef]:
    """Every tensor of ``path`` with ``data_location`` EXTERNAL *or* any ``external_data`` entry, in file order.

    (ONNX Runtime ignores the entries of a DEFAULT tensor; listing them too is the safe side.)
    Raises :class:`OnnxRefsError` for malformed input, ``OSError`` if the file cannot be read.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open()
        raise OnnxRefsError(f"{Path(path).name}: not a regular file")
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return []  # an empty message; mmap refuses empty files
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        problem = ""
        try:
            out: list[ExternalRef] = []
            with memoryview(mapped) as view:
                _walk(view, "ModelProto", 0, out)
            return out
        except OnnxRefsError as exc:
            problem = str(exc)  # re-raised below, once the traceback holding memoryviews is gone
        raise OnnxRefsError(f"{Path(path).name}: {problem}")
    finally:
        with contextlib.suppress(BufferError):  # a view still referenced somewhere: closed when collected
            mapped.close()


def check_external_data(graph_path: Path, artifact_root: Path, listed: Collection[str]) -> list[str]:
    """Problems with the external data of ``graph_path``, one line each; ``[]`` means safe.  Does not raise.

    ``listed``: the manifest's files for this graph, POSIX paths relative to ``artifact_root`` (a set, or a
    mapping such as name -> sha256).  Locations resolve against the graph's directory, as in ONNX Runtime.
    Refused: empty, absolute (POSIX or Windows), NUL, ``\\``, ``:``, ``*`` or ``..`` in a location; a symlink or
    reparse point at any component; anything but a listed regular file; bytes past its end; unknown keys.
    """
    graph_path = Path(graph_path)
    try:
        refs = external_references(graph_path)
    except (OnnxRefsError, OSError) as exc:
        return [f"cannot list external data: {exc}"]
    return vet_references(refs, graph_path, artifact_root, listed)


def vet_references(refs: list[ExternalRef], graph_path: Path, artifact_root: Path,
                   listed: Collection[str]) -> list[str]:
    """:func:`check_external_data` for references already listed by :func:`external_references`."""
    if not refs:
        return []
    root = Path(artifact_root).resolve()
    try:
        base = graph_path.parent.resolve().relative_to(root).parts
    except (ValueError, OSError, RuntimeError):  # outside the root, or a symlink loop (3.11 raises RuntimeError)
        return [f"{graph_path.name}: graph lies outside the artifact root {root}"]
    problems = (_check_ref(ref, root, base, listed) for ref in refs)
    return [f"{graph_path.name}: tensor {ref.tensor!r} (location {ref.location!r}): {p}"
            for ref, p in zip(refs, problems) if p]


def _check_ref(ref: ExternalRef, root: Path, base: tuple[str, ...], listed: Collection[str]) -> str:
    if ref.unknown_keys:
        return f"unknown external_data keys {list(ref.unknown_keys)}"
    parts, problem = _location_parts(ref.location)
    if problem:
        return problem
    rel = (*base, *parts)
    st, problem = _walk_components(root, rel)
    if st is None:
        return problem
    name = "/".join(rel)
    if name not in listed:
        return f"{name} is not listed in the manifest for this graph"
    start = ref.offset or 0
    if start + (ref.length or 0) > st.st_size:
        return f"bytes {start}..{start + (ref.length or 0)} are beyond the end of {name} ({st.st_size} bytes)"
    return ""


def _location_parts(location: str) -> tuple[tuple[str, ...], str]:
    """Split a location into path components, or say why it is refused outright."""
    if not location:
        return (), "no location"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive or PureWindowsPath(location).root:
        return (), "absolute location"
    for char, what in _FORBIDDEN:
        if char in location:
            return (), f"location contains {what}"
    parts = tuple(p for p in location.split("/") if p != ".")
    if "" in parts or ".." in parts:
        return (), "location has an empty or '..' path component"
    return parts, ""


def _walk_components(root: Path, rel: tuple[str, ...]) -> tuple[os.stat_result | None, str]:
    """lstat each component below ``root``: no links, no reparse points, a regular file at the end."""
    current = root
    st = None
    for index, part in enumerate(rel):
        current = current / part
        shown = "/".join(rel[: index + 1])
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None, f"{shown} does not exist"
        except OSError as exc:
            return None, f"cannot stat {shown}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & stat.FILE_ATTRIBUTE_REPARSE_POINT:
            return None, f"goes through the symlink {shown}"
    if st is None or not stat.S_ISREG(st.st_mode):
        return None, f"{'/'.join(rel)} is not a regular file"
    if not current.resolve().is_relative_to(root):
        return None, "resolves outside the artifact root"
    return st, ""


def _varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise OnnxRefsError(f"truncated varint in {where}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise OnnxRefsError(f"varint overflows 64 bits in {where}")
            return result, pos
    raise OnnxRefsError(f"varint longer than 10 bytes in {where}")


def _fields(buf: memoryview, where: str) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field; fixed-width values come back as 0, unread."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise OnnxRefsError(f"field number 0 in {where}")
        value: int | memoryview = 0
        if wire == _VARINT:
            value, pos = _varint(buf, pos, where)
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise OnnxRefsError(f"truncated fixed-width field {field} in {where}")
        elif wire == _LEN:
            size, pos = _varint(buf, pos, where)
            if size > end - pos:
                raise OnnxRefsError(f"field {field} of {where} runs past the end ({size} bytes, {end - pos} left)")
            value = buf[pos:pos + size]  # a view: nothing is copied
            pos += size
        else:
            raise OnnxRefsError(f"unsupported wire type {wire} (field {field}) in {where}")
        yield field, wire, value


def _expect(wanted: int, field: int, wire: int, value: int | memoryview, where: str) -> Any:
    if wire != wanted:
        raise OnnxRefsError(f"field {field} of {where} has wire type {wire}, expected {wanted}")
    return value


def _walk(buf: memoryview, kind: str, depth: int, out: list[ExternalRef]) -> None:
    if kind == "GraphProto":
        depth += 1
        if depth > MAX_GRAPH_DEPTH:
            raise OnnxRefsError(f"subgraphs nested deeper than {MAX_GRAPH_DEPTH} levels")
    children = _SCHEMA[kind]
    seen: set[int] = set()
    for field, wire, value in _fields(buf, kind):
        child = children.get(field)
        if child is None:
            continue
        if (kind, field) in _SINGULAR and field in seen:
            raise OnnxRefsError(f"non-repeated field {field} of {kind} appears twice")
        seen.add(field)
        message = _expect(_LEN, field, wire, value, kind)
        if child == "TensorProto":
            _tensor(message, out)
        else:
            _walk(message, child, depth, out)


def _tensor(buf: memoryview, out: list[ExternalRef]) -> None:
    name: memoryview = buf[:0]
    data_location = 0
    entries: list[tuple[str, str]] = []
    for field, wire, value in _fields(buf, "TensorProto"):
        if field == 8:
            name = _expect(_LEN, field, wire, value, "TensorProto")
        elif field == 13:
            entries.append(_entry(_expect(_LEN, field, wire, value, "TensorProto")))
        elif field == 14:
            data_location = _expect(_VARINT, field, wire, value, "TensorProto")
    if data_location == _EXTERNAL or entries:
        text = bytes(name[:_MAX_TEXT]).decode("utf-8", errors="replace")
        out.append(_make_ref(text + "..." if len(name) > _MAX_TEXT else text, entries))


def _entry(buf: memoryview) -> tuple[str, str]:
    texts = {1: "", 2: ""}
    for field, wire, value in _fields(buf, "StringStringEntryProto"):
        if field in texts:
            raw = _expect(_LEN, field, wire, value, "StringStringEntryProto")
            if len(raw) > _MAX_TEXT:
                raise OnnxRefsError(f"external_data entry longer than {_MAX_TEXT} bytes")
            try:
                texts[field] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise OnnxRefsError("external_data entry is not UTF-8") from None
    return texts[1], texts[2]


def _make_ref(tensor: str, entries: list[tuple[str, str]]) -> ExternalRef:
    values: dict[str, str] = {}
    for key, value in entries:
        if key in values:
            raise OnnxRefsError(f"tensor {tensor!r}: external_data key {key!r} appears twice")
        values[key] = value
    location = values.get("location", "")
    numbers: list[int | None] = []
    for key in ("offset", "length"):
        text = values.get(key)
        if text is not None and not (text.isascii() and text.isdigit() and int(text) <= _MAX_INT):
            raise OnnxRefsError(f"tensor {tensor!r} (location {location!r}): {key} {text!r} "
                                "is not a non-negative integer")
        numbers.append(None if text is None else int(text))
    unknown = tuple(sorted(key for key in values if key not in _KNOWN_KEYS))
    return ExternalRef(tensor, location, numbers[0], numbers[1], unknown)
