"""``edgegen sample`` / ``reconstruct`` / ``convert --check`` on gan, vae and vq-vae artifacts."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import image_support
from edgegen.cli import cli

# fixtures: the tiny models converted once for this module
dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
stylegan_artifact, vae_artifact = image_support.stylegan_artifact, image_support.vae_artifact
vqvae_artifact = image_support.vqvae_artifact


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *parts, code=1):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for part in parts:
        assert part in lines[-1], lines[-1]


def test_sample_writes_a_grid_of_the_right_size(dcgan_artifact, tmp_path):
    out = tmp_path / "grid.png"
    result = run("sample", dcgan_artifact, "-n", 4, "--seed", 0, "-o", out, "--upscale", 3)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    with Image.open(out) as img:       # 2x2 grid of 8x8 with 2px padding, tripled
        assert img.size == (3 * (2 * 8 + 3 * 2),) * 2 and img.mode == "RGB"
    import edgegen

    first = np.asarray(Image.open(out))[3 * 2:3 * 10, 3 * 2:3 * 10]            # the first tile, upscaled
    expected = edgegen.load(dcgan_artifact, provider="cpu").sample(4, seed=0)[0].repeat(3, 0).repeat(3, 1)
    assert np.array_equal(first, expected)


def test_labels_truncation_and_temperature_from_the_shell(conditional_artifact, stylegan_artifact, vae_artifact,
                                                          vqvae_artifact, tmp_path):
    result = run("sample", conditional_artifact, "-n", 2, "--label", 4, "--seed", 1, "-o", tmp_path / "c.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 2
    with Image.open(tmp_path / "c.png") as img:
        assert img.mode == "L"                                       # one channel
    assert run("sample", stylegan_artifact, "--truncation", 0.5, "-o", tmp_path / "s.png").exit_code == 0
    assert run("sample", vae_artifact, "-n", 3, "--temperature", 0.5, "-o", tmp_path / "v.png").exit_code == 0
    assert run("sample", vqvae_artifact, "-n", 2, "--separate", "-o", tmp_path / "q.png").exit_code == 0
    assert (tmp_path / "q-0.png").is_file() and (tmp_path / "q-1.png").is_file()


@pytest.mark.parametrize("artifact, args, message", [
    ("dcgan", ["--label", "2"], "this GAN is unconditional (it takes no class label); drop --label 2"),
    ("conditional", ["--label", "9"], "label must be a class index in 0..4, got 9"),
    ("dcgan", ["--truncation", "0.7"], "truncation needs a mapping network"),
    ("stylegan", ["--truncation", "1.5"], "truncation must be a number in [0, 1]"),
    ("dcgan", ["--temperature", "0.5"], "--temperature does not apply to this gan artifact (its options: "
                                        "--truncation, --label)"),
    ("vae", ["--temperature", "-1"], "temperature must be a finite number >= 0"),
    ("vae", ["--label", "1"], "--label does not apply to this vae artifact (its options: --temperature)"),
])
def test_bad_options_are_one_line_errors(request, tmp_path, artifact, args, message):
    path = request.getfixturevalue(f"{artifact}_artifact")
    assert_one_line_error(run("sample", path, "-o", tmp_path / "x.png", *args), message)
    assert not (tmp_path / "x.png").exists()


def test_interpolate_writes_a_strip(stylegan_artifact, vae_artifact, tmp_path):
    result = run("sample", stylegan_artifact, "--interpolate", 1, 2, "--frames", 5, "-o", tmp_path / "strip.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "strip.png") as img:                 # one row of 5 frames
        assert img.size == (5 * 8 + 6 * 2, 8 + 2 * 2)
    assert run("sample", vae_artifact, "--interpolate", 1, 2, "-o", tmp_path / "v.png").exit_code == 0
    with Image.open(tmp_path / "v.png") as img:
        assert img.size == (8 * 8 + 9 * 2, 12)                      # the default 8 frames


def test_reconstruct(vae_artifact, vqvae_artifact, dcgan_artifact, tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "in.png")
    result = run("reconstruct", vae_artifact, tmp_path / "in.png", "-o", tmp_path / "out.png", "--seed", 3)
    assert result.exit_code == 0, result.output
    import edgegen

    expected = edgegen.load(vae_artifact, provider="cpu").reconstruct(gray[None, :, :, None], seed=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected[0, :, :, 0])
    result = run("reconstruct", vae_artifact, tmp_path / "in.png", "-o", tmp_path / "both.png", "--compare")
    with Image.open(tmp_path / "both.png") as img:                   # input | reconstruction
        assert img.size == (2 * 8 + 3 * 2, 12)
    # a colour model converts the grey input to RGB; the wrong size is load_image's error
    assert run("reconstruct", vqvae_artifact, tmp_path / "in.png", "-o", tmp_path / "rgb.png").exit_code == 0
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "big.png")
    assert_one_line_error(run("reconstruct", vae_artifact, tmp_path / "big.png", "-o", tmp_path / "x.png"),
                          "big.png is 12x10 pixels but the model takes 8x8; resize it first")
    assert_one_line_error(run("reconstruct", dcgan_artifact, tmp_path / "in.png", "-o", tmp_path / "x.png"),
                          "is a 'gan' artifact; reconstruct runs vae and vq-vae artifacts")
    assert_one_line_error(run("reconstruct", vae_artifact, tmp_path / "none.png", "-o", tmp_path / "x.png"),
                          "none.png does not exist")
    assert_one_line_error(run("reconstruct", vae_artifact, tmp_path / "in.png", "-o", tmp_path / "x.jpg"),
                          "x.jpg: images are written as PNG")


SPEC_FILE = '''
import torch
from edgegen import GANSpec


class Gen(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc, self.op = torch.nn.Linear(4, 48), op

    def forward(self, z):
        h = torch.tanh(self.fc(z)).view(-1, 3, 4, 4)
        if self.op == "inverse":
            h = h + torch.linalg.inv(torch.eye(4) + 0.1 * h)
        return h + 0.1 * torch.randn_like(h)


def good():
    return GANSpec(generator=Gen("none"), latent_dim=4)


def bad():
    return GANSpec(generator=Gen("inverse"), latent_dim=4)
'''


def test_convert_check_and_convert_a_spec_file(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "gen.py").write_text(textwrap.dedent(SPEC_FILE))
    result = run("convert", f"{tmp_path / 'gen.py'}:good", "--check")
    assert result.exit_code == 0 and "ok: nothing found that blocks converting" in result.output, result.output
    result = run("convert", f"{tmp_path / 'gen.py'}:bad", "--check")
    assert "blocks conversion: graph 'generator': aten::linalg_inv in Gen has no ONNX export" in result.output
    assert_one_line_error(result, "1 problem would block converting")
    assert not list(tmp_path.glob("*/edgegen.json"))                 # a dry run writes nothing
    result = run("convert", f"{tmp_path / 'gen.py'}:good", "-o", tmp_path / "art")
    assert result.exit_code == 0, result.output
    assert "export: graph generator (z -> image, 1 noise input lifted)" in result.output
    assert "wrote" in result.output and "(gan, fp32)" in result.output
    assert run("sample", tmp_path / "art", "-o", tmp_path / "x.png").exit_code == 0
    result = CliRunner().invoke(cli, ["convert", f"{tmp_path / 'gen.py'}:good"])
    assert result.exit_code == 2 and "Missing option '-o' / '--output'" in result.output
