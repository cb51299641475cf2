"""Latent consistency (LCM-distilled) pipelines: the UNet takes guidance as an input (``timestep_cond``, the
pipelines' ``get_guidance_scale_embedding(guidance - 1)``), one batch half, LCMScheduler, 4 steps at guidance 8.5
by default; checked against diffusers' ``LatentConsistencyModelPipeline`` from the same latents and per-step noise
(PSNR >= 40 dB)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, psnr, step_noise_from  # noqa: E402
from edgegen.errors import InvalidArgumentError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402
from edgegen.runtimes.diffusion.diffusion import guidance_embedding  # noqa: E402

from diffusion_support import write_tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def lcm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcm")
    source = write_tiny_sd_pipeline(root / "pipe", lcm=True)
    artifact = edgegen.convert(source, root / "artifact", optimize=False, report=lambda _line: None)
    pipe = diffusers.LatentConsistencyModelPipeline.from_pretrained(source, safety_checker=None,
                                                                     requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return artifact, pipe


@pytest.mark.parametrize("dim", [32, 256, 7])
def test_guidance_embedding_is_diffusers_own(dim):
    w = torch.tensor(8.5 - 1).repeat(3)
    expected = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    # the sines' arguments reach 1000 (guidance - 1) = 7500 rad, where one float32 step is 5e-4: numpy's and torch's
    # float32 exp may differ by a step there
    np.testing.assert_allclose(guidance_embedding(8.5, dim, 3), expected.numpy(), atol=1e-3)
    assert guidance_embedding(8.5, dim, 3).shape == (3, dim)


def test_lcm_pipeline_records_its_defaults_and_scheduler(lcm):
    m = open_artifact(lcm[0]).manifest
    assert m.sampler["guidance_embedding"] == 32
    assert m.sampler["scheduler"]["diffusers_class"] == "LCMScheduler"
    assert (m.defaults["steps"], m.defaults["guidance"]) == (4, 8.5)
    assert "timestep_cond" in [t.name for t in m.graphs["denoiser"].inputs]
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR


@pytest.mark.parametrize("steps, guidance", [(4, 8.5), (2, 3.0), (1, 1.0)])
def test_matches_diffusers_lcm_pipeline(lcm, steps, guidance):
    artifact, pipe = lcm
    noise = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad(), step_noise_from(pipe.scheduler, np.random.default_rng(7)):
        expected = pipe(prompt=["the red cat"] * 2, latents=torch.from_numpy(noise), num_inference_steps=steps,
                        guidance_scale=guidance, output_type="np").images.transpose(0, 3, 1, 2) * 2 - 1
    model = edgegen.load(artifact, provider="cpu")
    got = model.generate(2, noise=noise, seed=7, prompt="the red cat", steps=steps, guidance=guidance)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR
    if guidance != 1.0:   # the embedding matters: another guidance gives another image
        other = model.generate(2, noise=noise, seed=7, prompt="the red cat", steps=steps, guidance=guidance + 4)
        assert psnr(other, expected, (-1, 1)) < MIN_PSNR


def test_a_negative_prompt_is_refused_in_one_line(lcm):
    model = edgegen.load(lcm[0], provider="cpu")
    with pytest.raises(InvalidArgumentError, match="latent consistency.*drop --negative-prompt"):
        model.generate(1, prompt="a cat", negative_prompt="dog", steps=2)
    assert "guidance" in model.sample_options() and "negative_prompt" in model.sample_options()
