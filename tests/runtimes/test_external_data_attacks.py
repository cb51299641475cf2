"""A hostile artifact cannot make ONNX Runtime read a file outside itself, or one its manifest does not hash.

Each case takes a real causal-LM artifact (the session's tiny GPT-2), moves the token embedding of its decoder
into an external-data file, points the reference somewhere hostile and rewrites edgegen.json so that every
checksum matches (what an attacker who edits the manifest can always do).  ``edgegen.load``, ``info --verify``
and ``generate`` must refuse with one line before any session reads the file; the same external data, inside
and listed, loads and generates exactly what the original does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli
from edgegen.errors import IntegrityError

onnx = pytest.importorskip("onnx")
from onnx import external_data_helper  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _externalize(art: Path, location: str, data_file: Path, *, listed: str | None) -> str:
    """Move the largest initializer's bytes to ``data_file`` and reference it as ``location``; fix the
    manifest's checksums (and list ``listed`` as the decoder's external data).  Returns the tensor's name."""
    graph = art / "decoder.onnx"
    model = onnx.load_model(str(graph))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = tensor.raw_data
    data_file.write_bytes(raw)
    external_data_helper.set_external_data(tensor, location=location, offset=0, length=len(raw))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(graph))
    manifest = json.loads((art / "edgegen.json").read_text())
    decoder = manifest["graphs"]["decoder"]
    decoder["sha256"] = _sha(graph)
    decoder["external_data"] = [] if listed is None else [{"file": listed, "sha256": _sha(art / listed)}]
    (art / "edgegen.json").write_text(json.dumps(manifest, indent=2))
    return tensor.name


@pytest.fixture
def art(tiny_lm_artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_lm_artifact, copy)
    return copy


def _refused_everywhere(art: Path, *words: str) -> None:
    with pytest.raises(IntegrityError) as info:
        edgegen.load(art, provider="cpu")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    for args in (["info", str(art), "--verify"], ["generate", str(art), "-p", "hi", "-n", "2"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output and all(w in lines[0] for w in words), lines


def test_legitimate_external_data_loads_and_generates_the_same(art: Path, tiny_lm_artifact: Path) -> None:
    want = edgegen.load(tiny_lm_artifact, provider="cpu").generate("def f(", max_new_tokens=8, temperature=0)
    _externalize(art, "decoder.onnx.data", art / "decoder.onnx.data", listed="decoder.onnx.data")
    assert edgegen.load(art, provider="cpu").generate("def f(", max_new_tokens=8, temperature=0) == want


def test_dotdot_location_outside_the_artifact_is_refused(art: Path) -> None:
    name = _externalize(art, "../secret.bin", art.parent / "secret.bin", listed=None)
    _refused_everywhere(art, name, "'../secret.bin'")


def test_absolute_location_is_refused(art: Path) -> None:
    secret = art.parent / "secret.bin"
    _externalize(art, str(secret), secret, listed=None)
    _refused_everywhere(art, str(secret), "absolute")


def test_listed_file_that_is_a_symlink_out_is_refused(art: Path) -> None:
    """The manifest lists the file and its sha256 matches, but it is a link to a file outside the artifact."""
    secret = art.parent / "secret.bin"
    _externalize(art, "weights.bin", secret, listed=None)
    os.symlink(secret, art / "weights.bin")
    manifest = json.loads((art / "edgegen.json").read_text())
    manifest["graphs"]["decoder"]["external_data"] = [{"file": "weights.bin", "sha256": _sha(secret)}]
    (art / "edgegen.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception) as info:    # open_artifact already refuses a listed file resolving outside
        edgegen.load(art, provider="cpu")
    assert "outside the artifact" in str(info.value) and "\n" not in str(info.value)


def test_symlink_inside_the_artifact_is_refused(art: Path) -> None:
    """A link that stays inside is still a link: what it points to can change after the checksums are read."""
    name = _externalize(art, "alias.bin", art / "weights.bin", listed="weights.bin")
    os.symlink("weights.bin", art / "alias.bin")
    _refused_everywhere(art, name, "'alias.bin'", "symlink")


def test_unlisted_file_inside_the_artifact_is_refused(art: Path) -> None:
    """Inside the directory but not in the manifest: its bytes would never be hashed, so they could be swapped."""
    name = _externalize(art, "extra.bin", art / "extra.bin", listed=None)
    _refused_everywhere(art, name, "'extra.bin'", "not listed")


def test_range_past_the_end_of_the_file_is_refused(art: Path) -> None:
    name = _externalize(art, "decoder.onnx.data", art / "decoder.onnx.data", listed="decoder.onnx.data")
    data = art / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[:16])
    manifest = json.loads((art / "edgegen.json").read_text())
    manifest["graphs"]["decoder"]["external_data"][0]["sha256"] = _sha(data)
    (art / "edgegen.json").write_text(json.dumps(manifest))
    _refused_everywhere(art, name, "decoder.onnx.data")
