"""Artifacts appear atomically: all or nothing, and never over an existing one by accident."""

from __future__ import annotations

import pytest

from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ArtifactError, ConversionError
from edgegen.manifest import Source, read_manifest
from tests_support import tiny_graph, write_tiny_artifact

SOURCE = Source(model_class="tests.Tiny", converter="tests")


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".edgegen-tmp-" in p.name)


def test_written_artifact_describes_its_graph(tmp_path):
    dest = write_tiny_artifact(tmp_path / "a")
    m = read_manifest(dest)
    spec = m.graphs["generator"]
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [("x", "float32", ("batch", 4))]
    assert [t.name for t in spec.outputs] == ["y", "z"]
    assert set(m.assets) == {"notes"} and leftovers(tmp_path) == []


def test_failure_inside_leaves_nothing(tmp_path):
    dest = tmp_path / "a"
    with pytest.raises(RuntimeError, match="boom"):
        with ArtifactWriter(dest) as writer:
            writer.add_graph("generator", tiny_graph(), precision="fp32")
            raise RuntimeError("boom")
    assert not dest.exists() and leftovers(tmp_path) == []


def test_exists_needs_overwrite_and_failed_overwrite_keeps_old(tmp_path):
    dest = write_tiny_artifact(tmp_path / "a")
    before = (dest / "edgegen.json").read_text()
    with pytest.raises(ArtifactError, match="already exists; pass --overwrite"):
        ArtifactWriter(dest)
    with pytest.raises(RuntimeError):
        with ArtifactWriter(dest, overwrite=True) as writer:
            writer.add_graph("generator", tiny_graph(), precision="fp16")
            raise RuntimeError("interrupted")
    assert (dest / "edgegen.json").read_text() == before and leftovers(tmp_path) == []


def test_overwrite_replaces(tmp_path):
    dest = write_tiny_artifact(tmp_path / "a")
    with ArtifactWriter(dest, overwrite=True) as writer:
        writer.add_graph("decoder", tiny_graph(), precision="fp16")
        writer.write(writer.manifest(family="vae", source=SOURCE))
        writer.commit()
    m = read_manifest(dest)
    assert m.family == "vae" and set(m.graphs) == {"decoder"}
    assert not (dest / "notes.txt").exists() and leftovers(tmp_path) == []


def test_refuses_to_replace_a_non_artifact(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ArtifactError, match="is not an edgegen artifact; refusing to replace it"):
        ArtifactWriter(tmp_path / "photos", overwrite=True)


def test_commit_checks_the_staged_artifact(tmp_path):
    dest = tmp_path / "a"
    with pytest.raises(ConversionError, match="failed its own checks"):
        with ArtifactWriter(dest) as writer:
            writer.add_graph("generator", tiny_graph(), precision="fp32")
            writer.write(writer.manifest(family="gan", source=SOURCE))
            writer.path("generator.onnx").unlink()
            writer.commit()
    assert not dest.exists() and leftovers(tmp_path) == []


def test_stale_stage_of_a_dead_process_is_cleaned(tmp_path):
    stale = tmp_path / ".a.edgegen-tmp-999999999-abcdef"
    stale.mkdir()
    write_tiny_artifact(tmp_path / "a")
    assert leftovers(tmp_path) == []
