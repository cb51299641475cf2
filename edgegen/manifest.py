"""``edgegen.json``: the one definition of the artifact contract (standard library only).

A converter writes an artifact directory with :func:`write_manifest`; a runtime reads it
with :func:`read_manifest`.  Both sides use these dataclasses, so the writer and the
reader cannot drift apart.  Parsing is strict: unknown keys, missing keys and values of
the wrong type are errors that name the key path; a format version outside
``MIN_FORMAT..MAX_FORMAT`` is an error that says which edgegen to install.

Layout (``format`` ``edgegen/1``)::

    {
      "format": "edgegen/1",
      "family": "causal-lm",
      "graphs": {"decoder": {"file": "decoder.onnx", "sha256": "...", "precision": "fp32",
                             "inputs": [{"name": "input_ids", "dtype": "int64",
                                         "shape": ["batch", "sequence"]}, ...],
                             "outputs": [...], "external_data": []}},
      "assets": {"tokenizer": {"file": "tokenizer.json", "sha256": "..."}},
      "sampler": {...family constants...},
      "defaults": {...generation settings...},
      "source": {"model_class": "...", "checkpoint_sha256": null, "libraries": {...},
                 "opset": 17, "converter": "edgegen 0.1.0"},
      "validation": {...figures measured by the converter...}
    }

Family-specific sections (``sampler``, ``defaults``) are free JSON objects here; each
family parses them strictly into its own frozen dataclass with :func:`edgegen.strict.from_json`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgegen.errors import ArtifactError, ManifestError, UnsupportedFormatError
from edgegen.strict import JSONValueError, from_json, parse_json, short, to_json

MANIFEST_NAME = "edgegen.json"
FORMAT_PREFIX = "edgegen/"
#: The range of format versions this edgegen reads, and the one it writes.
MIN_FORMAT = 1
MAX_FORMAT = 1
CURRENT_FORMAT = f"{FORMAT_PREFIX}{MAX_FORMAT}"

FAMILIES = ("causal-lm", "rnn-lm", "diffusion", "gan", "vae", "vq-vae", "flow", "seq2seq", "tabular", "tts", "music")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-qdq", "int8-weight", "int4-weight")
#: Element types, named as numpy names them.
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
          "uint8", "bool")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: An edgegen.json larger than this is refused unread (real ones are a few KiB; a StyleGAN's w_avg adds ~10).
MAX_MANIFEST_BYTES = 16 << 20
#: The longest file name (one path component, in UTF-8 bytes: Linux's and macOS's NAME_MAX) and the longest
#: relative path a manifest may name; longer ones fail in the operating system with errors about other things.
MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# -- bounds of the family sections -----------------------------------------------------------------------
#: What a family's ``sampler`` section may declare: far above any real model, low enough that a hostile
#: manifest cannot make a runtime allocate terabytes or loop for days before a graph ever runs.
MAX_DIMENSION = 1 << 16       # one axis of a latent, image, sample or state shape
MAX_VALUES = 1 << 28          # the values of one sample or state without the batch axis (1 GiB of float32)
MAX_COUNT = 1 << 24           # a vocabulary, context length, number of classes, codes or train timesteps


def shape_problem(shape: Sequence[Any], rank: int | None = None) -> str | None:
    """What is wrong with a declared shape without its batch axis (None: nothing): positive, bounded axes."""
    dims = list(shape)
    if rank is not None and len(dims) != rank:
        return f"must have {rank} axes, got {short(dims)}"
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        return f"must be a non-empty list of positive integers, got {short(dims)}"
    if max(dims) > MAX_DIMENSION:
        return f"{short(dims)} has an axis over {MAX_DIMENSION:,}"
    if math.prod(dims) > MAX_VALUES:
        return f"{short(dims)} holds {math.prod(dims):,} values per sample, more than {MAX_VALUES:,}"
    return None


def count_problem(value: Any, low: int = 1, high: int = MAX_COUNT) -> str | None:
    """What is wrong with a declared integer that must lie in ``low..high`` (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"must be an integer from {low:,} to {high:,}, got {short(value)}"
    return None


def _check_relative_path(path: str) -> None:
    """A file named by a manifest must stay inside the artifact directory, and be a name the OS can open."""
    if _CONTROL.search(path):
        raise ValueError(f"file {short(path)} holds a control character (NUL, newline...); file names are plain text")
    try:
        parts = [len(part.encode("utf-8")) for part in path.split("/")]
    except UnicodeEncodeError:   # a lone surrogate ("\ud800"): no file system can name it
        raise ValueError(f"file {short(path)} is not valid Unicode") from None
    if len(path) > MAX_PATH_CHARS or max(parts) > MAX_NAME_BYTES:
        raise ValueError(f"file {short(path)} is too long ({len(path):,} characters): at most {MAX_NAME_BYTES} "
                         f"bytes per name and {MAX_PATH_CHARS:,} characters in all")
    pure = Path(path)
    if not path or pure.is_absolute() or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"file {short(path)} must be a path relative to the artifact directory")
    if ".." in pure.parts or "\\" in path:
        raise ValueError(f"file {short(path)} must not contain '..' or backslashes")


@dataclass(frozen=True)
class FileRef:
    """A file of the artifact and its checksum."""

    file: str
    sha256: str

    def __post_init__(self) -> None:
        _check_relative_path(self.file)
        if not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 of {self.file!r} must be 64 lowercase hex digits")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, shape (ints fixed, strings symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} of {self.name!r} is not one of {', '.join(DTYPES)}")
        for dim in self.shape:
            if isinstance(dim, int) and dim < 0:
                raise ValueError(f"shape of {short(self.name)} has a negative dimension {dim}")

    def fits(self, tail: Sequence[int]) -> bool:
        """Whether the axes after the batch axis can be ``tail`` (a symbolic axis fits any size)."""
        return len(self.shape) == len(tail) + 1 and all(
            not isinstance(d, int) or d == t for d, t in zip(self.shape[1:], tail))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the artifact, its role given by its key in ``Manifest.graphs``."""

    file: str
    sha256: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: Weight files next to a graph over 2 GB (ONNX external data), each checksummed.
    external_data: tuple[FileRef, ...] = ()

    def __post_init__(self) -> None:
        FileRef(self.file, self.sha256)  # same path and checksum rules
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names repeat: {', '.join(dupes)}")

    def files(self) -> tuple[FileRef, ...]:
        return (FileRef(self.file, self.sha256), *self.external_data)

    def tensor(self, name: str) -> TensorSpec | None:
        """The declared input or output ``name``, if the graph has one."""
        return next((t for t in (*self.inputs, *self.outputs) if t.name == name), None)


@dataclass(frozen=True)
class Source:
    """Where an artifact came from."""

    model_class: str
    converter: str
    opset: int | None = None
    checkpoint_sha256: str | None = None
    libraries: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``edgegen.json``."""

    family: str
    graphs: dict[str, GraphSpec]
    source: Source
    format: str = CURRENT_FORMAT
    sampler: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, FileRef] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if not self.graphs:
            raise ValueError("an artifact needs at least one graph")

    def files(self) -> tuple[FileRef, ...]:
        """Every file the artifact consists of (graphs, their weights, assets)."""
        refs: list[FileRef] = []
        for graph in self.graphs.values():
            refs.extend(graph.files())
        refs.extend(self.assets.values())
        return tuple(refs)

    def with_validation(self, figures: dict[str, Any]) -> Manifest:
        return replace(self, validation={**self.validation, **figures})


def format_version(fmt: Any) -> int:
    """The integer version of a ``format`` string, or a ManifestError."""
    if not isinstance(fmt, str) or not fmt.startswith(FORMAT_PREFIX) or not fmt[len(FORMAT_PREFIX):].isdigit():
        raise ManifestError(f"format: {fmt!r} is not an edgegen format (expected e.g. {CURRENT_FORMAT!r}); "
                            "is this directory an edgegen artifact?")
    return int(fmt[len(FORMAT_PREFIX):])


def parse_manifest(data: Any) -> Manifest:
    """Validate parsed JSON and build a :class:`Manifest`; every problem is reported at once."""
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST_NAME} must hold a JSON object, not {type(data).__name__}")
    if "format" not in data:
        raise ManifestError(f"{MANIFEST_NAME} has no 'format' key: is this an edgegen artifact?")
    version = format_version(data["format"])
    if version > MAX_FORMAT:
        raise UnsupportedFormatError(
            f"artifact format {data['format']!r} is newer than this edgegen reads "
            f"({FORMAT_PREFIX}{MIN_FORMAT}..{MAX_FORMAT}); upgrade with: pip install -U edgegen")
    if version < MIN_FORMAT:
        raise UnsupportedFormatError(
            f"artifact format {data['format']!r} is older than this edgegen reads "
            f"({FORMAT_PREFIX}{MIN_FORMAT}..{MAX_FORMAT}); re-convert the model with: edgegen convert")
    return from_json(Manifest, data, where="edgegen.json",
                     fix="the artifact is corrupt or was edited: re-convert it")


def manifest_to_json(manifest: Manifest) -> dict[str, Any]:
    return to_json(manifest)


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``<directory>/edgegen.json``."""
    root = Path(directory)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; pass the artifact directory written by 'edgegen convert'")
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}; pass a directory written by 'edgegen convert'")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is {size:,} bytes, more than any manifest ({MAX_MANIFEST_BYTES:,} at most); "
                            "the artifact is corrupt, re-convert it")
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_json(text)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text ({exc.reason}); the artifact is corrupt, re-convert it") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                            "the artifact is corrupt, re-convert it") from None
    except JSONValueError as exc:
        raise ManifestError(f"{path} is not an edgegen manifest: {exc}; the artifact is corrupt, "
                            "re-convert it") from None
    return parse_manifest(data)


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``<directory>/edgegen.json`` (the caller makes the directory appear atomically)."""
    parse_manifest(manifest_to_json(manifest))  # never write what we would refuse to read
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest_to_json(manifest), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
