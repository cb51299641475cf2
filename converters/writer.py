"""Writing an artifact directory atomically: the one place artifacts are written.

    with ArtifactWriter(dest, overwrite=False) as w:
        w.add_graph("decoder", model_proto, precision="fp32")     # or add_graph_file(...)
        w.add_asset("tokenizer", "tokenizer.json", text)
        w.write(w.manifest(family="causal-lm", source=..., sampler=..., defaults=...))
        ...validate by running the staged artifact (w.stage), w.write(... with validation)...
        w.commit()

Everything is written into a hidden staging directory next to ``dest``; ``commit`` writes
the manifest, reads the whole artifact back (so we never publish what we would refuse to
load) and renames the directory into place.  An exception, or a killed process, leaves
``dest`` untouched: absent, or the previous complete artifact.  Staging directories of
killed conversions are named ``.<dest>.edgegen-tmp-*`` and removed by the next
conversion to the same destination.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import onnx

from edgegen.errors import ArtifactError, ConversionError
from edgegen.manifest import (MANIFEST_NAME, FileRef, GraphSpec, Manifest, Source, TensorSpec,
                              write_manifest)
from edgegen.runtimes.artifact import open_artifact, sha256_file

#: ONNX graphs over this size keep their weights in a separate file (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def tensor_specs(values: Any, initializers: set[str]) -> tuple[TensorSpec, ...]:
    """Manifest specs of graph inputs/outputs (initializers listed as inputs are skipped)."""
    specs = []
    for value in values:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        shape: list[int | str] = []
        for i, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or f"{value.name}_dim{i}")
        specs.append(TensorSpec(name=value.name, dtype="bool" if dtype == "bool_" else dtype, shape=tuple(shape)))
    return tuple(specs)


def graph_io(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {init.name for init in model.graph.initializer}
    return tensor_specs(model.graph.input, initializers), tensor_specs(model.graph.output, set())


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The files (relative to the .onnx) holding a graph's external tensors, sorted."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ArtifactWriter:
    """Stage an artifact next to ``dest`` and publish it atomically on :meth:`commit`."""

    def __init__(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.dest = Path(dest).absolute()
        if self.dest.exists() and not overwrite:
            raise ArtifactError(f"{self.dest} already exists; pass --overwrite (overwrite=True) to replace it")
        if self.dest.exists() and not (self.dest / MANIFEST_NAME).is_file():
            raise ArtifactError(f"{self.dest} exists and is not an edgegen artifact; refusing to replace it: "
                                "choose another output path")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_stages()
        self.stage = self.dest.parent / f".{self.dest.name}.edgegen-tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.stage.mkdir()
        self._graphs: dict[str, GraphSpec] = {}
        self._assets: dict[str, FileRef] = {}
        self._committed = False

    def _remove_stale_stages(self) -> None:
        """Remove staging directories left by killed conversions (not those of live ones)."""
        for stale in sorted(self.dest.parent.glob(f".{self.dest.name}.edgegen-tmp-*")):
            pid = stale.name.rsplit("-", 2)[-2]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if stale.name.rsplit("-", 1)[-1].startswith("old") and not self.dest.exists():
                # killed between the two renames of commit(): the previous artifact comes back
                os.replace(stale, self.dest)
            else:
                shutil.rmtree(stale, ignore_errors=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed:
            shutil.rmtree(self.stage, ignore_errors=True)

    def path(self, file: str) -> Path:
        """Where a file of the artifact is staged (for tools that write files themselves)."""
        return self.stage / file

    def add_graph(self, role: str, model: onnx.ModelProto, *, precision: str, file: str | None = None) -> GraphSpec:
        """Save ``model`` as ``<role>.onnx`` (weights external when large) and record its spec."""
        file = file or f"{role}.onnx"
        large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if model.ByteSize() >= 0 else True
        onnx.save_model(model, str(self.path(file)), save_as_external_data=large,
                        all_tensors_to_one_file=True, location=f"{file}.data" if large else None)
        return self.add_graph_file(role, file, precision=precision)

    def add_graph_file(self, role: str, file: str, *, precision: str) -> GraphSpec:
        """Record a graph already written to ``path(file)`` (and its ``<file>.data``, if any)."""
        path = self.path(file)
        model = onnx.load_model(str(path), load_external_data=False)
        inputs, outputs = graph_io(model)
        external = tuple(FileRef(name, sha256_file(self.path(name))) for name in external_data_files(model))
        spec = GraphSpec(file=file, sha256=sha256_file(path), precision=precision,
                         inputs=inputs, outputs=outputs, external_data=external)
        self._graphs[role] = spec
        return spec

    def add_asset(self, name: str, file: str, content: str | bytes) -> FileRef:
        path = self.path(file)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        ref = FileRef(file=file, sha256=sha256_file(path))
        self._assets[name] = ref
        return ref

    def manifest(self, *, family: str, source: Source, sampler: dict[str, Any] | None = None,
                 defaults: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> Manifest:
        return Manifest(family=family, graphs=dict(self._graphs), source=source, sampler=sampler or {},
                        defaults=defaults or {}, assets=dict(self._assets), validation=validation or {})

    def write(self, manifest: Manifest) -> Path:
        """Write the manifest into the stage (it can be rewritten, e.g. after validation)."""
        write_manifest(self.stage, manifest)
        return self.stage

    def commit(self) -> Path:
        """Check the staged artifact opens, then move it into place; returns ``dest``."""
        try:
            open_artifact(self.stage)
        except Exception as exc:
            raise ConversionError(f"the converted artifact failed its own checks ({exc}); this is a bug in edgegen") from exc
        old = None
        if self.dest.exists():
            old = self.dest.parent / f".{self.dest.name}.edgegen-tmp-{os.getpid()}-old{uuid.uuid4().hex[:9]}"
            os.replace(self.dest, old)
        os.replace(self.stage, self.dest)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest
