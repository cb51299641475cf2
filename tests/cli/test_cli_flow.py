"""`edgegen score` and `edgegen sample` on a tiny converted Glow (tests/flow_models.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgegen.runtimes.artifact import open_artifact
from edgegen.runtimes.flow.flow import Flow
from edgegen.runtimes.images import save_png
from edgegen.runtimes.session import SessionConfig

torch = pytest.importorskip("torch")

import flow_models as fm  # noqa: E402
from edgegen.converters.flow.convert import convert_flow  # noqa: E402
from tests_support import assert_one_line_error, run_cli as run  # noqa: E402





@pytest.fixture(scope="module")
def glow(tmp_path_factory):
    path = convert_flow(fm.glow_spec(fm.make_glow()), tmp_path_factory.mktemp("flow") / "glow", report=lambda _l: None)
    return path, Flow.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))


def test_score_prints_the_runtimes_bits_per_dim(glow, tmp_path) -> None:
    path, flow = glow
    images = fm.fixed_images(2, 3, seed=21)
    files = [save_png(img, tmp_path / f"in{i}.png") for i, img in enumerate(images)]
    want = flow.bits_per_dim(images)
    result = run("score", path, *files, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{b:.4f}  {f}" for b, f in zip(want, files)]
    data = json.loads(run("score", path, *files, "--json").output)
    assert [r["file"] for r in data["images"]] == [str(f) for f in files]
    assert np.allclose([r["bits_per_dim"] for r in data["images"]], want, rtol=1e-12)


def test_score_errors_are_one_line(glow, tiny_artifact, tmp_path) -> None:
    path, _flow = glow
    big = save_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "big.png")
    assert_one_line_error(run("score", path, big), "big.png is 16x16 pixels but the model takes 8x8; resize it first")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert_one_line_error(run("score", path, text), "notes.png is not an image Pillow can read")
    ok = save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "ok.png")
    assert_one_line_error(run("score", tiny_artifact, ok), "is a 'gan' artifact; score needs exact likelihoods",
                          "flow artifacts give")
    assert run("score", path).exit_code == 2   # no image: click's usage error


def test_sample_draws_the_runtimes_images_with_temperature(glow, tmp_path) -> None:
    from PIL import Image

    path, flow = glow
    out = tmp_path / "grid.png"
    result = run("sample", path, "-n", 4, "--seed", 3, "--temperature", 0.5, "-o", out, "--separate")
    assert result.exit_code == 0, result.output
    want = flow.sample(4, seed=3, temperature=0.5)
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"grid-{i}.png")), want[i])
    strip = tmp_path / "strip.png"
    assert run("sample", path, "--interpolate", 1, 2, "--frames", 4, "-o", strip).exit_code == 0
    assert Image.open(strip).size == (4 * 8 + 5 * 2, 8 + 2 * 2)    # one row of 4 frames, 2-pixel padding


def test_sample_refuses_bad_or_foreign_options(glow, tmp_path) -> None:
    path, _flow = glow
    assert_one_line_error(run("sample", path, "--temperature", 0, "-o", tmp_path / "a.png"),
                          "temperature must be a number > 0")
    assert_one_line_error(run("sample", path, "--truncation", 0.7, "-o", tmp_path / "b.png"),
                          "--truncation does not apply to this flow artifact (its options: --temperature)")
    assert not list(tmp_path.glob("*.png"))


def test_convert_takes_a_file_returning_a_flow_spec(tmp_path) -> None:
    source = tmp_path / "spec.py"
    source.write_text("import flow_models as fm\n\n\ndef build():\n    return fm.realnvp_spec(fm.make_realnvp())\n")
    result = run("convert", f"{source}:build", "-o", tmp_path / "art")
    assert result.exit_code == 0, result.output
    assert "validate: max |x error|" in result.output and "(flow, fp32, fp32)" in result.output
    info = run("info", tmp_path / "art", "--verify")
    assert info.exit_code == 0 and "flow_inverse" in info.output and "validation passed: True" in info.output
