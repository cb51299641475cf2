"""``edgegen sample`` on diffusion artifacts: PNGs out, clear one-line errors for bad options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgegen.cli import cli

pytest.importorskip("diffusers")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sample_writes_a_grid_and_reports_timings(tiny_ddpm, tmp_path):
    out = tmp_path / "grid.png"
    result = run("sample", tiny_ddpm[1], "-o", out, "-n", 4, "--steps", 3, "--seed", 0, "--scheduler", "dpm++",
                 "--upscale", 2)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    with Image.open(out) as img:       # 2x2 grid of 16x16 with 2px padding, doubled
        assert img.size == (2 * (2 * 16 + 3 * 2),) * 2 and img.mode == "RGB"
    again = tmp_path / "again.png"
    run("sample", tiny_ddpm[1], "-o", again, "-n", 4, "--steps", 3, "--seed", 0, "--scheduler", "dpm++",
        "--upscale", 2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))   # same seed, same PNG


def test_text_to_image_and_img2img_from_the_shell(tiny_sd, tmp_path):
    first = tmp_path / "cat.png"
    result = run("sample", tiny_sd[1], "-o", first, "--prompt", "a red cat", "--negative-prompt", "dog",
                 "--guidance", 5, "--steps", 3, "--seed", 1, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["files"] == [str(first)] and data["images"] == 1 and data["sample_s"] > 0
    result = run("sample", tiny_sd[1], "-o", tmp_path / "edit.png", "--prompt", "a dog", "--image", first,
                 "--strength", 0.5, "--steps", 4, "-n", 2, "--separate")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "edit-0.png").is_file() and (tmp_path / "edit-1.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a cat"], "not text-conditioned: it takes no prompt"),
    (["--truncation", "0.7"], "--truncation does not apply to this diffusion artifact (its options: --steps, "
                              "--scheduler, --image, --strength)"),   # an unconditional DDPM: no prompt, no label
    (["--steps", "0"], "steps must be an integer of at least 1"),
    (["--scheduler", "plms"], "unknown scheduler 'plms'; choose one of ddpm, ddim, pndm"),
    (["--free-dim", "batch"], "'batch' is not NAME=SIZE (like batch=1 or denoiser.batch=2)"),
    (["--free-dim", "batch=2", "-n", "3"], "opened with free_dimensions {'batch': 2}, and input "),
    (["--free-dim", "batch=2", "-n", "3"], "breaks them (index: 0 Got: 3 Expected: 2); call it with those sizes"),
    (["--free-dim", "batch=\u00b2"], "is not NAME=SIZE"),
    (["--free-dim", "denoiser.height=2"], "graph 'denoiser' has no input dimension 'height' (known: batch;"),
    (["--device-id", "-1"], "-1 is not in the range 0<=x<=32767"),
])
def test_bad_sample_options_are_one_line_errors(tiny_ddpm, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["sample", str(tiny_ddpm[1]), "-o", str(tmp_path / "x.png"), *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output
    assert not (tmp_path / "x.png").exists()


def test_runtime_options_reach_the_sessions(tiny_ddpm, tmp_path, monkeypatch):
    import edgegen

    seen = []
    real_load = edgegen.load
    monkeypatch.setattr(edgegen, "load", lambda path, **kw: seen.append(kw) or real_load(path, **kw))
    result = run("sample", tiny_ddpm[1], "-o", tmp_path / "x.png", "-n", 2, "--steps", 2, "--free-dim", "batch=2",
                 "--free-dim", "denoiser.batch=2", "--device-id", 0, "--provider", "cpu", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert seen == [{"provider": "cpu", "threads": 1, "device_id": 0,
                     "free_dimensions": {"batch": 2, "denoiser.batch": 2}, "timeout": None}]


def test_sample_refuses_language_models_and_non_png_paths(tiny_lm_artifact, tiny_ddpm, tmp_path):
    result = CliRunner().invoke(cli, ["sample", str(tiny_lm_artifact), "-o", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "use 'edgegen generate' for text" in result.output
    result = CliRunner().invoke(cli, ["sample", str(tiny_ddpm[1]), "-o", str(tmp_path / "x.jpg"), "--steps", "2"])
    assert result.exit_code != 0 and "give a path ending in .png" in result.output
