"""Opening an artifact directory safely: paths, files, checksums, sessions.

Checksums: every file named by the manifest is hashed (sha256) before its graph is
opened.  A hash is remembered for the life of the process, so loading the same artifact twice
hashes once.  The cache trusts a file unchanged only while its path, device, inode, size,
modification time and status-change time (ctime, ns) are all unchanged: a user-level
``os.utime`` can restore the mtime after swapping bytes, but writing the file or calling
``utime`` moves its ctime, which only the system clock can set, and replacing the file changes
its inode.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from edgegen.errors import ArtifactError, GraphLoadError, IntegrityError
from edgegen.manifest import Manifest, read_manifest
from edgegen.runtimes.onnx_refs import ExternalRef, OnnxRefsError, external_references, vet_references
from edgegen.runtimes.session import (ProviderName, SessionConfig, check_free_dimensions, check_io, create_session,
                                      resolve_provider)

_CHUNK = 1 << 20
_hash_cache: dict[tuple[str, int, int, int, int, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered for this process while its (path, device, inode, size, mtime, ctime)
    stay the same (see the module docstring for why ctime)."""
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose manifest parsed and whose files are all present, inside it."""

    root: Path
    manifest: Manifest

    def path(self, file: str) -> Path:
        return self.root / file


def open_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Read the manifest and check that every file it names exists inside the directory."""
    root = Path(path).resolve()
    manifest = read_manifest(root)
    missing, outside = [], []
    for ref in manifest.files():
        target = root / ref.file
        # Resolve symlinks: a link leading out of the artifact is refused like '..'.
        if not target.resolve().is_relative_to(root):
            outside.append(ref.file)
        elif not target.is_file():
            missing.append(ref.file)
    if outside:
        raise ArtifactError(f"{root}: {', '.join(outside)} lead{'s' * (len(outside) == 1)} outside the artifact "
                            "directory (symlink?); an artifact must be self-contained: re-convert it")
    if missing:
        raise ArtifactError(f"{root}: missing {', '.join(missing)}; the artifact is incomplete: "
                            "copy the whole directory or re-convert it")
    return Artifact(root=root, manifest=manifest)


def verify_checksums(artifact: Artifact) -> None:
    """Compare every file with its recorded sha256, naming each file that differs; then check that every
    graph reads external data only from files the manifest lists (and so hashes) for that graph."""
    bad = [ref.file for ref in artifact.manifest.files() if sha256_file(artifact.path(ref.file)) != ref.sha256]
    if bad:
        raise IntegrityError(f"{artifact.root}: {', '.join(bad)} do{'es' * (len(bad) == 1)} not match the "
                             "sha256 in edgegen.json (truncated, corrupted or swapped); re-convert or re-copy the artifact")
    check_external_data_references(artifact)


_refs_cache: dict[str, list[ExternalRef]] = {}


def _references(graph: Path) -> list[ExternalRef]:
    """The graph's external-data references, parsed once per content (keyed by its sha256, itself remembered
    by :func:`sha256_file`): a load checks twice, before reading the tokenizer and before opening sessions."""
    digest = sha256_file(graph)
    with _hash_lock:
        cached = _refs_cache.get(digest)
    if cached is None:
        cached = external_references(graph)
        with _hash_lock:
            _refs_cache[digest] = cached
    return cached


def check_external_data_references(artifact: Artifact) -> None:
    """Refuse a graph whose tensors keep their bytes anywhere but in a regular file inside the artifact that the
    manifest lists for that graph (absolute or ``..`` locations, symlinks, unlisted files, ranges past the end).
    ONNX Runtime would open those files itself, and releases before 1.24 follow ``../`` and symlinks out of the
    directory: edgegen decides, before any session exists (:mod:`edgegen.runtimes.onnx_refs`)."""
    problems = []
    for role, spec in artifact.manifest.graphs.items():
        try:
            refs = _references(artifact.path(spec.file))
        except (OnnxRefsError, OSError) as exc:
            raise GraphLoadError(f"graph {role!r} ({spec.file}): cannot load it: {exc}; the file is corrupt or not "
                                 "ONNX: re-convert the model or re-copy the artifact") from None
        listed = {ref.file for ref in spec.external_data}
        problems += vet_references(refs, artifact.path(spec.file), artifact.root, listed)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise IntegrityError(f"{artifact.root}: {shown}; a graph may read only the files edgegen.json lists for it: "
                             "the artifact is corrupt or hostile, re-convert it from its source")


def open_sessions(artifact: Artifact, config: SessionConfig, roles: tuple[str, ...] | None = None, *,
                  memory_pattern: bool = True,
                  shared_cpu_arena: bool = False) -> tuple[ProviderName, dict[str, ort.InferenceSession]]:
    """Verify checksums, open the graphs (all, or ``roles``) and cross-check their I/O with the manifest."""
    provider = resolve_provider(config.provider)
    verify_checksums(artifact)
    graphs = artifact.manifest.graphs
    check_free_dimensions(config, graphs)
    wanted = tuple(graphs) if roles is None else roles
    sessions = {}
    for role in wanted:
        spec = graphs[role]
        sessions[role] = create_session(artifact.path(spec.file), config, provider,
                                        label=f"graph {role!r} ({spec.file})", opset=artifact.manifest.source.opset,
                                        memory_pattern=memory_pattern, shared_cpu_arena=shared_cpu_arena,
                                        role=role)
    check_io([(f"graph {role!r}", graphs[role], sessions[role]) for role in wanted])
    return provider, sessions
