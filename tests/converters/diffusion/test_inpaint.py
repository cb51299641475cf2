"""Inpainting pipelines (``StableDiffusionInpaintPipeline``: a 9-channel UNet over the latents, the mask at latent
size and the masked image's latents): converted with no flags and checked against diffusers' own pipeline from the
same latents and the same VAE posterior draws, at strength 1 (its default) and below; the mask and image as files
through ``edgegen sample --image --mask``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, psnr  # noqa: E402
from edgegen.errors import InvalidArgumentError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

from diffusion_support import write_tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

IMAGE = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
MASK = np.zeros((16, 16), np.uint8)
MASK[4:13, 2:9] = 255                                    # a box to repaint, not on the latent grid's edges


@pytest.fixture(scope="module")
def inpaint(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    source = write_tiny_sd_pipeline(root / "pipe", inpaint=True)
    artifact = edgegen.convert(source, root / "artifact", optimize=False, report=lambda _line: None)
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(source, safety_checker=None,
                                                                     requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return artifact, pipe


def diffusers_inpaint(pipe, monkeypatch, draws, **kwargs) -> np.ndarray:
    """diffusers' inpainting from our draws, in its order (it draws with randn_tensor in the VAE and itself)."""
    from PIL import Image

    queue = list(draws)

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(queue.pop(0)).reshape(shape).to(dtype or torch.float32)

    monkeypatch.setattr("diffusers.models.autoencoders.vae.randn_tensor", fake_randn)
    monkeypatch.setattr("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint.randn_tensor",
                        fake_randn)
    with torch.no_grad():
        out = pipe(prompt="a dog", image=Image.fromarray(IMAGE), mask_image=Image.fromarray(MASK), height=16,
                   width=16, num_inference_steps=6, guidance_scale=4.0, output_type="np", **kwargs).images
    assert not queue                                      # diffusers drew exactly what we fed it
    return out.transpose(0, 3, 1, 2) * 2 - 1


def test_inpainting_pipeline_records_itself(inpaint):
    m = open_artifact(inpaint[0]).manifest
    assert m.sampler["inpainting"] is True and m.sampler["sample_shape"] == [4, 8, 8]
    assert m.graphs["denoiser"].tensor("sample").shape[1] == 9
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR


def test_strength_one_matches_diffusers_inpainting(inpaint, monkeypatch):
    artifact, pipe = inpaint
    noise = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    rng = np.random.default_rng(11)                      # the runtime's draws after the (given) noise
    masked = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    expected = diffusers_inpaint(pipe, monkeypatch, [masked], latents=torch.from_numpy(noise))
    model = edgegen.load(artifact, provider="cpu")
    got = model.generate(1, noise=noise, seed=11, prompt="a dog", image=IMAGE, mask=MASK, steps=6, guidance=4.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR
    # the mask matters: another mask gives another image
    other = model.generate(1, noise=noise, seed=11, prompt="a dog", image=IMAGE, mask=255 - MASK, steps=6,
                           guidance=4.0)
    assert psnr(other, expected, (-1, 1)) < MIN_PSNR


def test_lower_strength_matches_diffusers_inpainting(inpaint, monkeypatch):
    artifact, pipe = inpaint
    rng = np.random.default_rng(11)                      # image posterior, start noise, masked image posterior
    draws = [rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(3)]
    expected = diffusers_inpaint(pipe, monkeypatch, draws, strength=0.6)
    got = edgegen.load(artifact, provider="cpu").generate(1, seed=11, prompt="a dog", image=IMAGE, mask=MASK,
                                                          strength=0.6, steps=6, guidance=4.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_missing_and_misplaced_masks_are_refused(inpaint):
    model = edgegen.load(inpaint[0], provider="cpu")
    with pytest.raises(InvalidArgumentError, match="inpainting model: give the image .* and a mask"):
        model.generate(1, prompt="a dog", image=IMAGE, steps=2)
    with pytest.raises(InvalidArgumentError, match=r"mask must be uint8 \[H, W\] = \[16, 16\]"):
        model.generate(1, prompt="a dog", image=IMAGE, mask=np.zeros((8, 8), np.uint8), steps=2)
    assert "mask" in model.sample_options()


def test_cli_inpaints_from_files(inpaint, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgegen.cli import cli

    Image.fromarray(IMAGE).save(tmp_path / "in.png")
    Image.fromarray(MASK).save(tmp_path / "mask.png")
    args = ["sample", str(inpaint[0]), "--prompt", "a dog", "--image", str(tmp_path / "in.png"), "--steps", "2",
            "-o", str(tmp_path / "out.png"), "--seed", "0"]
    done = CliRunner().invoke(cli, [*args, "--mask", str(tmp_path / "mask.png")])
    assert done.exit_code == 0, done.output
    got = np.asarray(Image.open(tmp_path / "out.png"))
    ref = edgegen.load(inpaint[0], provider="cpu").sample(1, seed=0, prompt="a dog", image=IMAGE, mask=MASK, steps=2)
    np.testing.assert_array_equal(got, ref[0])
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "give the image (--image) and a mask" in refused.output
