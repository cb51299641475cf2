"""Opening artifacts: paths, checksums, I/O cross-check against real graphs, family registry."""

from __future__ import annotations

import json
import hashlib
import os
import textwrap

import numpy as np
import pytest

import edgegen
from edgegen.errors import ArtifactError, GraphMismatchError, IntegrityError, UnknownFamilyError
from edgegen.manifest import MANIFEST_NAME
from edgegen.runtimes import artifact as artifact_mod
from edgegen.runtimes.artifact import open_artifact, open_sessions, sha256_file, verify_checksums
from edgegen.runtimes.registry import RUNTIMES
from edgegen.runtimes.session import SessionConfig


def edit_manifest(root, edit):
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_open_and_run(tiny_artifact):
    art = open_artifact(tiny_artifact)
    provider, sessions = open_sessions(art, SessionConfig(provider="cpu"))
    assert provider == "cpu"
    x = np.ones((3, 4), np.float32)
    y, z = sessions["generator"].run(None, {"x": x})
    np.testing.assert_array_equal(y, x + np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(z, -x)


def test_missing_file_is_named(tiny_artifact):
    (tiny_artifact / "notes.txt").unlink()
    with pytest.raises(ArtifactError, match="missing notes.txt; the artifact is incomplete"):
        open_artifact(tiny_artifact)


@pytest.mark.parametrize("damage", ["truncate", "flip", "swap"])
def test_checksum_mismatch_names_the_file(tiny_artifact, damage):
    graph = tiny_artifact / "generator.onnx"
    data = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        graph.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        os.replace(tiny_artifact / "notes.txt", graph)
        (tiny_artifact / "notes.txt").write_bytes(data)
    art = open_artifact(tiny_artifact)
    expected = "generator.onnx, notes.txt do not" if damage == "swap" else "generator.onnx does not"
    with pytest.raises(IntegrityError, match=f"{expected} match the sha256 in edgegen.json"):
        verify_checksums(art)


def test_hash_cache_notices_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 10)
    first = sha256_file(path)
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(1, 1))  # a new mtime, as any rewrite gets
    assert sha256_file(path) != first
    assert len(artifact_mod._hash_cache) >= 2


def test_hash_cache_is_not_fooled_by_restoring_size_and_mtime(tmp_path):
    """Swap a file's bytes in place, then put its size and mtime back with os.utime: still hashed again
    (the ctime moved); and a file replaced by another with the same size and mtime (new inode) too."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 10)
    before = path.stat()
    first = sha256_file(path)
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    assert sha256_file(path) == hashlib.sha256(b"b" * 10).hexdigest() != first
    other = tmp_path / "g.bin"
    other.write_bytes(b"c" * 10)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    assert sha256_file(path) == hashlib.sha256(b"c" * 10).hexdigest()


def test_symlink_leading_outside_is_refused(tiny_artifact, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("hello\n")
    (tiny_artifact / "notes.txt").unlink()
    (tiny_artifact / "notes.txt").symlink_to(outside)
    with pytest.raises(ArtifactError, match="notes.txt leads outside the artifact directory"):
        open_artifact(tiny_artifact)


def test_io_mismatches_are_all_reported(tiny_artifact):
    def edit(data):
        graph = data["graphs"]["generator"]
        graph["inputs"][0]["dtype"] = "float16"                  # wrong dtype
        graph["outputs"][0]["shape"] = ["batch", 5]              # wrong fixed dim
        graph["outputs"][1]["name"] = "zz"                       # renamed output
        graph["outputs"].append({"name": "extra", "dtype": "float32", "shape": []})

    edit_manifest(tiny_artifact, edit)
    with pytest.raises(GraphMismatchError) as info:
        open_sessions(open_artifact(tiny_artifact), SessionConfig(provider="cpu"))
    message = str(info.value)
    assert "(5 problems)" in message
    for part in ["input 'x' is float32 in the graph, float16 in the manifest",
                 "output 'y' has shape ['batch', 4] in the graph, ['batch', 5] in the manifest",
                 "declared output 'zz' is not in the graph",
                 "declared output 'extra' is not in the graph",
                 "graph output 'z' is not declared in the manifest"]:
        assert part in message


def test_fixed_graph_dim_declared_symbolic_is_a_mismatch(tiny_artifact):
    edit_manifest(tiny_artifact, lambda d: d["graphs"]["generator"]["inputs"][0].update(shape=["batch", "n"]))
    with pytest.raises(GraphMismatchError, match="input 'x' has shape"):
        open_sessions(open_artifact(tiny_artifact), SessionConfig(provider="cpu"))


def test_unknown_family_is_clear(tiny_artifact, monkeypatch):
    monkeypatch.setattr("edgegen.runtimes.registry.RUNTIMES", {"causal-lm": "x:y"})
    with pytest.raises(UnknownFamilyError, match="no runtime for 'gan' artifacts yet .it runs: causal-lm."):
        edgegen.load(tiny_artifact)


def test_load_dispatches_by_family(tiny_artifact, tmp_path, monkeypatch):
    (tmp_path / "echo_family.py").write_text(textwrap.dedent('''
        from edgegen.runtimes.artifact import open_sessions

        class Echo:
            def __init__(self, artifact, provider, sessions):
                self.artifact, self.provider, self.sessions = artifact, provider, sessions

            @classmethod
            def from_artifact(cls, artifact, config):
                provider, sessions = open_sessions(artifact, config)
                return cls(artifact, provider, sessions)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(RUNTIMES, "gan", "echo_family:Echo")
    runtime = edgegen.load(tiny_artifact, provider="cpu", threads=1)
    assert type(runtime).__name__ == "Echo" and runtime.provider == "cpu"
    assert set(runtime.sessions) == {"generator"}
