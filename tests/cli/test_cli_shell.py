"""The CLI shell: version, providers, info, and one-line errors without tracebacks."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgegen import __version__
from edgegen.cli import cli
from edgegen.runtimes.registry import RUNTIMES


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help():
    assert run("--version").output.strip() == f"edgegen, version {__version__}"
    result = run("--help")
    assert result.exit_code == 0 and "providers" in result.output and "info" in result.output


def test_providers():
    result = run("providers")
    assert result.exit_code == 0
    assert "auto -> " in result.output and "CPUExecutionProvider" in result.output
    data = json.loads(run("providers", "--json").output)
    assert data["auto"] in {"cpu", "cuda", "dml"}
    assert {p["name"] for p in data["providers"]} == {"cpu", "cuda", "dml"}
    assert any(p["name"] == "cpu" and p["available"] for p in data["providers"])


def test_info(tiny_artifact, monkeypatch):
    # tiny_artifact is a family="gan" artifact around a non-GAN graph: verify it as a family without a runtime
    monkeypatch.delitem(RUNTIMES, "gan")
    result = run("info", str(tiny_artifact), "--verify")
    assert result.exit_code == 0, result.output
    assert "family     gan" in result.output and "generator" in result.output
    assert "validation max_abs_error: 0" in result.output and "verified   checksums" in result.output
    data = json.loads(run("info", str(tiny_artifact), "--json").output)
    assert data["family"] == "gan" and data["sizes"]["notes.txt"] == 6


def assert_one_line_error(result, *parts):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0]


def test_info_on_corrupt_artifact(tiny_artifact):
    (tiny_artifact / "generator.onnx").write_bytes(b"garbage")
    assert_one_line_error(run("info", str(tiny_artifact), "--verify"), "generator.onnx does not match the sha256")


def test_info_on_non_artifact(tmp_path):
    assert_one_line_error(run("info", str(tmp_path)), "has no edgegen.json")


def test_info_on_newer_format(tiny_artifact):
    path = tiny_artifact / "edgegen.json"
    data = json.loads(path.read_text())
    data["format"] = "edgegen/9"
    path.write_text(json.dumps(data))
    assert_one_line_error(run("info", str(tiny_artifact)), "newer than this edgegen reads", "pip install -U edgegen")


def test_usage_errors_exit_2(tmp_path):
    result = run("info", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert run("nonsense").exit_code == 2
