"""A ``DiffusionSpec`` over a latent-space denoiser names its VAE, and the artifact samples images (decoded, RGB),
encodes img2img start images, and matches PyTorch + the VAE from the same noise; without a VAE a latent
sample shape (4 channels: what the PNG writer would have written as RGBA) is refused when the spec is made,
before any export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, from_spec, psnr, torch_sample  # noqa: E402
from edgegen.converters.diffusion.spec import DiffusionSpec  # noqa: E402
from edgegen.errors import InvalidArgumentError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "clip_sample": False, "_class_name": "DDIMScheduler"}


class LatentDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) + torch.sin(t / 300.0)[:, None, None, None]


def tiny_vae():
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                   norm_num_groups=4, layers_per_block=1, scaling_factor=0.18215,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2)


def test_a_latent_spec_without_a_vae_is_refused_before_any_export():
    with pytest.raises(InvalidArgumentError) as info:
        DiffusionSpec(denoiser=LatentDenoiser(), sample_shape=(4, 8, 8), scheduler_config=SD_BETAS)
    message = str(info.value)
    assert "\n" not in message and "sample_shape [4, 8, 8] has 4 channels and there is no vae" in message
    assert "a latent-space denoiser needs the AutoencoderKL that decodes its latents (vae=...)" in message
    with pytest.raises(InvalidArgumentError, match="must be \\[latent_channels, h, w\\] of the vae's latents "
                                                   "\\(its latent_channels is 4\\)"):
        DiffusionSpec(denoiser=LatentDenoiser(), sample_shape=(3, 8, 8), scheduler_config=SD_BETAS, vae=tiny_vae())
    with pytest.raises(InvalidArgumentError, match="vae must be a diffusers AutoencoderKL"):
        DiffusionSpec(denoiser=LatentDenoiser(), sample_shape=(4, 8, 8), scheduler_config=SD_BETAS,
                      vae=torch.nn.Conv2d(4, 3, 1))


def test_a_latent_spec_with_its_vae_samples_decoded_images_like_pytorch(tmp_path):
    torch.manual_seed(0)
    spec = DiffusionSpec(denoiser=LatentDenoiser(), sample_shape=(4, 8, 8), scheduler_config=SD_BETAS, vae=tiny_vae(),
                         defaults={"steps": 6})
    artifact = edgegen.convert(spec, tmp_path / "art")
    m = open_artifact(artifact).manifest
    assert {"denoiser", "vae_decoder", "vae_encoder"} <= set(m.graphs)
    assert m.sampler["image_shape"] == [3, 16, 16] and m.sampler["vae"]["scaling_factor"] == pytest.approx(0.18215)
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR
    model = edgegen.load(artifact, provider="cpu")
    noise = np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32)
    got = model.generate(2, noise=noise, steps=5)                                       # [2, 3, 16, 16]
    expected = torch_sample(from_spec(spec), noise, steps=5, guidance=1.0, prompt="", scheduler_class="DDIMScheduler")
    assert got.shape == expected.shape == (2, 3, 16, 16) and psnr(got, expected, (-1, 1)) >= MIN_PSNR
    images = model.sample(1, seed=0, steps=3)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8                  # RGB, not RGBA latents
    edited = model.sample(1, seed=0, steps=4, image=images[0], strength=0.5)            # img2img through its encoder
    assert edited.shape == (1, 16, 16, 3)
