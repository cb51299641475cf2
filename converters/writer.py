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

``overwrite`` replaces only an edgegen artifact (its manifest reads back) holding nothing but the
files its manifest lists: a folder with anything else in it is refused, naming those files, since
replacing it would delete them.  Committed files get the user's umask like any other file (tools
such as onnx's external-data writer create theirs 0600).  A disk that fails (full, read-only, no
permission), in whatever step of the conversion, is reported as such, not as the model's failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import onnx

from edgegen.errors import ArtifactError, ConversionError, EdgegenError, find_os_error, write_error_line
from edgegen.manifest import (MANIFEST_NAME, FileRef, GraphSpec, Manifest, Source, TensorSpec, read_manifest,
                              write_manifest)
from edgegen.runtimes.artifact import check_external_data_references, open_artifact, sha256_file

#: ONNX graphs over this size keep their weights in a separate file (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30
#: Graphs whose tensors hold more bytes than this keep them in one ``<graph>.data`` file, which ONNX Runtime
#: memory-maps (the causal-LM path; read at call time, so a test can lower it and take the large-model path).
EXTERNAL_WEIGHTS_BYTES = 16 << 20
#: Tensors under this many bytes stay inside the graph when the rest go to external data.
INLINE_TENSOR_BYTES = 1024
#: Protobuf cannot size or serialize a message past 2 GB: :func:`save_external` refuses to serialize one
#: over this (a test lowers it, with ModelProto.ByteSize/SerializeToString made to fail past it).
PROTOBUF_LIMIT_BYTES = (1 << 31) - 1
#: External tensors of 1 MB and more start at multiples of 64 KB (as onnx aligns them: mappable pages).
_ALIGN, _ALIGN_FROM = 1 << 16, 1 << 20


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


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, wherever they are (its external data's length, or inside the proto), without
    loading or sizing anything larger than the tensor's own fields."""
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(tensor):
        entries = {e.key: e.value for e in tensor.external_data}
        if "length" in entries:
            return int(entries["length"])
        count = 1
        for d in tensor.dims:
            count *= d
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return tensor.ByteSize()   # typed fields: one tensor, under protobuf's limit


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held inside the proto (what serializing it would carry), never calling the model's
    ByteSize (which fails past 2 GB)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return sum(tensor_nbytes(t) for t in _get_all_tensors(model) if not uses_external_data(t))


def tensor_bytes_total(model: onnx.ModelProto) -> int:
    """Bytes of all the model's tensor data, inside the proto or external."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(tensor_nbytes(t) for t in _get_all_tensors(model))


def _external_source(tensor: onnx.TensorProto, base_dir: Path | None) -> tuple[Path, int, int]:
    entries = {e.key: e.value for e in tensor.external_data}
    location = Path(entries["location"])
    path = location if location.is_absolute() or base_dir is None else Path(base_dir) / location
    offset = int(entries.get("offset", 0))
    length = int(entries["length"]) if "length" in entries else path.stat().st_size - offset
    return path, offset, length


def read_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """A tensor's values as a numpy array, its external data read from the file (relative to ``base_dir``, or an
    absolute location as :func:`absolute_locations` leaves it) without storing them in the proto."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    path, offset, length = _external_source(tensor, None if base_dir is None else Path(base_dir))
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    with path.open("rb") as f:
        f.seek(offset)
        values = np.frombuffer(f.read(length), dtype=dtype)
    return values.reshape(tuple(tensor.dims))


def absolute_locations(model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> onnx.ModelProto:
    """Point every external tensor of ``model`` (loaded with ``load_external_data=False``) at its file by absolute
    path, so tools that read tensors one at a time (ONNX Runtime's MatMulNBits quantizer, through onnx_ir) find
    them from wherever they run; :func:`save_external` writes them back relative.  Returns ``model``."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = Path(base_dir).absolute()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location" and not Path(entry.value).is_absolute():
                    entry.value = str(base / entry.value)
    return model


def load_lazily(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph at ``path`` with its weights left in their files (absolute locations: :func:`absolute_locations`)."""
    return absolute_locations(onnx.load_model(str(path), load_external_data=False), Path(path).parent)


class ExternalData:
    """One external data file written tensor by tensor: each tensor's bytes go to the file as it is added and the
    tensor becomes a reference to them, so a graph is never held with all its weights inside."""

    def __init__(self, path: Path) -> None:
        self.path, self.location = Path(path), Path(path).name
        self._partial = self.path.with_name(f"{self.path.name}.partial")
        self._file = self._partial.open("wb")
        self.bytes = 0

    def _start(self, tensor: onnx.TensorProto, length: int) -> int:
        offset = self._file.tell()
        if length >= _ALIGN_FROM and offset % _ALIGN:
            offset += _ALIGN - offset % _ALIGN
            self._file.seek(offset)
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.bytes += length
        return offset

    def add(self, tensor: onnx.TensorProto, data: Any) -> onnx.TensorProto:
        """Write ``data`` (bytes, or a C-contiguous little-endian array) as ``tensor``'s values."""
        view = memoryview(data).cast("B")
        self._start(tensor, view.nbytes)
        self._file.write(view)
        return tensor

    def add_array(self, name: str, array: Any) -> onnx.TensorProto:
        """A new external tensor ``name`` holding ``array``."""
        import numpy as np

        array = np.ascontiguousarray(array)
        tensor = onnx.TensorProto(name=name, dims=list(array.shape),
                                  data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        return self.add(tensor, array.reshape(-1).view(np.uint8))

    def copy(self, tensor: onnx.TensorProto, source: Path, offset: int, length: int) -> None:
        """Copy ``length`` bytes at ``offset`` of ``source`` as ``tensor``'s values (1 MB at a time)."""
        self._start(tensor, length)
        with source.open("rb") as f:
            f.seek(offset)
            left = length
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ConversionError(f"{source} ends before tensor {tensor.name!r}'s data")
                self._file.write(chunk)
                left -= len(chunk)

    def close(self) -> None:
        """Finish the file (it appears under its name only now)."""
        if not self._file.closed:
            self._file.close()
            os.replace(self._partial, self.path)

    def discard(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


def serialize(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a graph whose weights are external (the proto is small); refuses one past protobuf's limit with a
    ConversionError naming it, before protobuf's own EncodeError."""
    held = inline_bytes(model)
    if held > PROTOBUF_LIMIT_BYTES:
        raise ConversionError(f"{Path(path).name} would hold {held / 1e9:.2f} GB of tensors inside its protobuf, "
                              f"over protobuf's {PROTOBUF_LIMIT_BYTES / 1e9:.2f} GB limit; this is a bug in edgegen "
                              "(its weights should have gone to external data)")
    Path(path).write_bytes(model.SerializeToString())


def save_external(model: onnx.ModelProto, path: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None
                  = None, threshold: int | None = None) -> list[str]:
    """Save ``model`` at ``path``; when its tensors hold over ``threshold`` bytes (EXTERNAL_WEIGHTS_BYTES), every
    tensor of INLINE_TENSOR_BYTES or more goes to one ``<name>.data`` next to it, tensor by tensor: those
    inside the proto are written out and dropped from it, external ones (relative to ``base_dir``, or absolute)
    copied from their files.  The model is left referring to the new file.  Never sizes or serializes the model
    with its weights inside.  Returns the files written (names relative to ``path``'s folder)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    threshold = EXTERNAL_WEIGHTS_BYTES if threshold is None else threshold
    tensors = list(_get_all_tensors(model))
    external = any(uses_external_data(t) for t in tensors) or sum(map(tensor_nbytes, tensors)) > threshold
    if not external:
        serialize(model, path)
        return [path.name]
    base = Path(base_dir) if base_dir is not None else path.parent
    sink = ExternalData(path.with_name(f"{path.name}.data"))
    try:
        for tensor in tensors:
            if uses_external_data(tensor):
                source, offset, length = _external_source(tensor, base)
                sink.copy(tensor, source, offset, length)
            elif tensor_nbytes(tensor) >= INLINE_TENSOR_BYTES:
                if not tensor.HasField("raw_data"):   # typed fields (float_data, ...): as raw bytes first
                    from onnx import numpy_helper

                    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
                data = tensor.raw_data
                sink.add(tensor, data)
                del data
    except BaseException:
        sink.discard()
        raise
    sink.close()
    serialize(model, path)
    return [path.name, sink.location]


def move_graph(src: Path, dst: Path) -> list[str]:
    """Move the graph at ``src`` (and its external data) to ``dst`` with its weights in one ``<dst>.data``
    (:func:`save_external`'s rule); a graph whose weights already sit in one file is renamed, not copied.
    Returns the files at ``dst``'s folder."""
    model = onnx.load_model(str(src), load_external_data=False)
    files = external_data_files(model)
    data = dst.with_name(f"{dst.name}.data")
    if len(files) == 1 and not Path(files[0]).is_absolute() and inline_bytes(model) <= EXTERNAL_WEIGHTS_BYTES:
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        (src.parent / files[0]).rename(data)
        for tensor in _get_all_tensors(model):
            if uses_external_data(tensor):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data.name
        serialize(model, dst)
        if src != dst:
            src.unlink()
        return [dst.name, data.name]
    written = save_external(model, dst, base_dir=src.parent)
    for name in files:
        if (src.parent / name) != data:
            (src.parent / name).unlink(missing_ok=True)
    if src != dst:
        src.unlink(missing_ok=True)
    return written


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _unlisted(dest: Path, manifest: Manifest) -> list[str]:
    """Paths under ``dest`` (relative, sorted) that are not the manifest or a file it lists: what replacing
    ``dest`` would delete besides the artifact.  Folders holding listed files are the artifact's; symlinks
    are not followed."""
    listed = {MANIFEST_NAME, *(PurePosixPath(ref.file).as_posix() for ref in manifest.files())}
    folders = {parent.as_posix() for name in listed for parent in PurePosixPath(name).parents}
    found = []
    for root, dirs, files in os.walk(dest):
        rel = PurePosixPath(Path(root).relative_to(dest).as_posix())
        names = [*files, *(d for d in dirs if (Path(root) / d).is_symlink())]
        if not names and not dirs and rel.as_posix() not in folders:
            found.append(f"{rel.as_posix()}/")                       # an empty folder of the user's
        found += [(rel / name).as_posix() for name in names if (rel / name).as_posix() not in listed]
    return sorted(found)


def check_destination(dest: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse, before any work, an output path the artifact could not replace; returns it absolute.

    ``dest`` must be absent, or (with ``overwrite``) an edgegen artifact whose folder holds only the files its
    manifest lists; the nearest existing folder above it must be a folder.
    """
    dest = Path(dest).absolute()
    above = next((p for p in dest.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ArtifactError(f"cannot write {dest}: {above} is a file, not a folder; choose another output path")
    if above is not None and not os.access(above, os.W_OK):   # the stage goes next to dest: its folder must take it
        readonly = hasattr(os, "statvfs") and bool(os.statvfs(above).f_flag & os.ST_RDONLY)
        number = errno.EROFS if readonly else errno.EACCES
        raise ArtifactError(write_error_line(OSError(number, os.strerror(number)), dest))
    if not (dest.exists() or dest.is_symlink()):
        return dest
    if not dest.is_dir():
        raise ArtifactError(f"{dest} is a file, not an artifact folder; refusing to replace it: "
                            "choose another output path")
    if not overwrite:
        raise ArtifactError(f"{dest} already exists; pass --overwrite (overwrite=True) to replace it")
    refused = f"{dest} exists and is not an edgegen artifact; refusing to replace it: choose another output path"
    if not (dest / MANIFEST_NAME).is_file():
        raise ArtifactError(refused)
    try:
        manifest = read_manifest(dest)
    except (EdgegenError, OSError):
        raise ArtifactError(f"{refused} (its {MANIFEST_NAME} is not a manifest this edgegen reads)") from None
    unlisted = _unlisted(dest, manifest)
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        raise ArtifactError(f"{dest} holds files its {MANIFEST_NAME} does not list ({shown}); --overwrite would "
                            "delete them: move them out or choose another output path")
    return dest


def _umask() -> int:
    """The process's umask, read from /proc where it can be (``os.umask`` can only set it: set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Files 0o666 and folders 0o777 less the umask, as if the user had written them (symlinks untouched)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            if not (Path(folder) / name).is_symlink():
                os.chmod(Path(folder) / name, 0o777 & ~mask)
        for name in files:
            if not (Path(folder) / name).is_symlink():
                os.chmod(Path(folder) / name, 0o666 & ~mask)


class ArtifactWriter:
    """Stage an artifact next to ``dest`` and publish it atomically on :meth:`commit`."""

    def __init__(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.dest = check_destination(dest, overwrite=overwrite)
        self.overwrite = overwrite
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale_stages()
            self.stage = self.dest.parent / f".{self.dest.name}.edgegen-tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self.stage.mkdir()
        except OSError as exc:
            raise ArtifactError(write_error_line(exc, self.dest)) from None
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
        if self._committed:
            return
        shutil.rmtree(self.stage, ignore_errors=True)
        line = self._disk_failure(exc) if exc is not None and not isinstance(exc, ArtifactError) else None
        if line is not None:   # whatever step failed and however it wrapped it: the disk's reason, not the model's
            raise ArtifactError(line) from exc

    def _disk_failure(self, exc: BaseException) -> str | None:
        """One line when ``exc`` came from a disk refusing a write (in the stage, or a temporary folder)."""
        found = find_os_error(exc)
        if found is None:
            return None
        name = os.fsdecode(found.filename) if found.filename else None
        inside = name is not None and Path(name).absolute().is_relative_to(self.stage)
        if found.errno in (errno.EACCES, errno.EPERM) and not inside:
            return None   # maybe a file the conversion read: the error's own message says which
        if name is None or inside:
            return write_error_line(found, self.dest)
        if Path(name).absolute().is_relative_to(Path(tempfile.gettempdir())):
            return write_error_line(found, name, option="TMPDIR")   # the quantizers' scratch files
        return write_error_line(found, name)

    def path(self, file: str) -> Path:
        """Where a file of the artifact is staged (for tools that write files themselves)."""
        return self.stage / file

    def add_graph(self, role: str, model: onnx.ModelProto, *, precision: str, file: str | None = None) -> GraphSpec:
        """Save ``model`` as ``<role>.onnx`` (weights external when large) and record its spec."""
        file = file or f"{role}.onnx"
        large = tensor_bytes_total(model) > EXTERNAL_DATA_THRESHOLD   # never model.ByteSize(): fails past 2 GB
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
            artifact = open_artifact(self.stage)
            check_external_data_references(artifact)   # the graphs read only files the manifest lists (and hashes)
            unlisted = _unlisted(self.stage, artifact.manifest)
            if unlisted:
                raise ConversionError(f"the stage holds files the manifest does not list: {', '.join(unlisted[:5])}")
        except Exception as exc:
            raise ConversionError(f"the converted artifact failed its own checks ({exc}); this is a bug in edgegen") from exc
        check_destination(self.dest, overwrite=self.overwrite)   # again: files may have appeared since __init__
        old = None
        try:
            _apply_umask(self.stage)
            if self.dest.exists():
                old = self.dest.parent / f".{self.dest.name}.edgegen-tmp-{os.getpid()}-old{uuid.uuid4().hex[:9]}"
                os.replace(self.dest, old)
            os.replace(self.stage, self.dest)
        except OSError as exc:
            if old is not None and not self.dest.exists():
                os.replace(old, self.dest)   # the previous artifact stays where it was
            raise ArtifactError(write_error_line(exc, self.dest)) from None
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest
