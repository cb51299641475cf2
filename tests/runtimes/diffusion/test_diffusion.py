"""The diffusion runtime against diffusers' own pipelines, from the same noise.

The runtime never imports torch; these tests do (diffusers is the reference).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import psnr  # noqa: E402
from edgegen.errors import CancelledError, InvalidArgumentError  # noqa: E402

#: ours -> diffusers, for the deterministic schedulers a pipeline can be compared with directly
DETERMINISTIC = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler"}
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def sd(tiny_sd):
    source, artifact = tiny_sd
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(source, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, edgegen.load(artifact, provider="cpu")


def diffusers_images(pipe, **kwargs) -> np.ndarray:
    """A diffusers pipeline's images as [N, C, H, W] in [-1, 1]."""
    with torch.no_grad():
        out = pipe(output_type="np", **kwargs).images                     # [N, H, W, C] in [0, 1]
    return out.transpose(0, 3, 1, 2) * 2 - 1


@pytest.mark.parametrize("scheduler", sorted(DETERMINISTIC))
def test_text_to_image_matches_diffusers_pipeline(sd, scheduler):
    pipe, model = sd
    pipe.scheduler = getattr(diffusers, DETERMINISTIC[scheduler]).from_config(pipe.scheduler.config)
    noise = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    expected = diffusers_images(pipe, prompt=["the red cat"] * 2, negative_prompt=["dog"] * 2,
                                latents=torch.from_numpy(noise),   # the pipeline scales by init_noise_sigma
                                num_inference_steps=6, guidance_scale=5.0)
    got = model.generate(2, noise=noise, prompt="the red cat", negative_prompt="dog", steps=6, guidance=5.0,
                         scheduler=scheduler)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_img2img_matches_diffusers_pipeline(sd, monkeypatch):
    pipe, model = sd
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    # diffusers draws the VAE posterior sample, then the noise to add: feed it ours, in our order
    rng = np.random.default_rng(11)
    draws = [rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2)]
    queue = list(draws)

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(queue.pop(0)).reshape(shape).to(dtype or torch.float32)

    monkeypatch.setattr("diffusers.models.autoencoders.vae.randn_tensor", fake_randn)
    monkeypatch.setattr("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.randn_tensor",
                        fake_randn)
    from PIL import Image

    expected = diffusers_images(img2img, prompt="a dog", image=Image.fromarray(image), strength=0.6,
                                num_inference_steps=10, guidance_scale=3.0)
    assert not queue                                  # diffusers drew exactly twice
    got = model.generate(1, seed=11, prompt="a dog", image=image, strength=0.6, steps=10, guidance=3.0,
                         scheduler="ddim")
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_unconditional_ddpm_matches_diffusers_pipeline(tiny_ddpm, monkeypatch):
    source, artifact = tiny_ddpm
    pipe = diffusers.DDPMPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    noise = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    monkeypatch.setattr("diffusers.pipelines.ddpm.pipeline_ddpm.randn_tensor",
                        lambda shape, **_: torch.from_numpy(noise))
    with torch.no_grad():
        expected = pipe(batch_size=3, num_inference_steps=7, output_type="np").images.transpose(0, 3, 1, 2) * 2 - 1
    got = edgegen.load(artifact, provider="cpu").generate(3, noise=noise, steps=7, scheduler="ddim")
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_guidance_one_equals_no_guidance(sd):
    _, model = sd
    noise = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    plain = model.generate(1, noise=noise, prompt="a cat", guidance=1.0, steps=4)
    batched = model.generate(1, noise=noise, prompt="a cat", guidance=1.0, steps=4, force_guidance_batch=True)
    np.testing.assert_allclose(batched, plain, atol=1e-5)
    guided = model.generate(1, noise=noise, prompt="a cat", guidance=7.5, steps=4)
    assert np.abs(guided - plain).max() > 1e-3       # and guidance does something


def test_seeds_are_reproducible_and_batch_rows_differ(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    a = model.sample(2, seed=4, steps=3, scheduler="ddpm")
    b = model.sample(2, seed=4, steps=3, scheduler="ddpm")
    c = model.sample(2, seed=5, steps=3, scheduler="ddpm")
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "euler", "euler-a", "dpm++"])
def test_every_scheduler_samples_finite_images(tiny_ddpm, scheduler):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    out = model.generate(1, seed=0, steps=4, scheduler=scheduler)
    assert out.shape == (1, 3, 16, 16) and np.isfinite(out).all()


def test_progress_callback_counts_steps_and_cancels(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    seen = []
    model.sample(1, seed=0, steps=5, scheduler="ddim", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)]
    with pytest.raises(CancelledError, match="cancelled by the progress callback after 2 of 5 steps"):
        model.sample(1, seed=0, steps=5, scheduler="ddim", progress=lambda done, total: done < 2)


def test_interpolation_strip_ends_at_the_seeds_images(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    strip = model.interpolate(1, 2, frames=4, steps=3, scheduler="ddim")
    ends = [model.generate(1, noise=np.random.default_rng(s).standard_normal((1, 3, 16, 16), dtype=np.float32),
                           steps=3, scheduler="ddim") for s in (1, 2)]
    assert strip.shape == (4, 16, 16, 3)
    from edgegen.runtimes.images import to_uint8
    assert np.abs(strip[0].astype(int) - to_uint8(ends[0])[0]).max() <= 1
    assert np.abs(strip[-1].astype(int) - to_uint8(ends[1])[0]).max() <= 1


def test_bad_inputs_say_what_to_fix(tiny_ddpm, sd, tmp_path):
    ddpm = edgegen.load(tiny_ddpm[1], provider="cpu")
    _, text = sd
    cases = [
        (lambda: ddpm.sample(1, steps=0), "steps must be an integer of at least 1"),
        (lambda: ddpm.sample(1, prompt="a cat"), "not text-conditioned: it takes no prompt"),
        (lambda: ddpm.sample(1, label=1), "not class-conditional"),
        (lambda: ddpm.sample(1, guidance=3.0), "classifier-free guidance needs"),
        (lambda: ddpm.sample(1, scheduler="plms"), "unknown scheduler 'plms'; choose one of ddpm, ddim, pndm"),
        (lambda: ddpm.sample(1, scheduler="DPMSolverSDEScheduler"), "the closest scheduler it has is dpm\\+\\+"),
        (lambda: ddpm.sample(0), "must be a positive integer"),
        (lambda: text.sample(1, prompt="x", strength=0.5), "strength applies to img2img"),
        (lambda: text.sample(1, prompt="x", image=np.zeros((16, 16, 3), np.uint8), strength=1.5),
         "strength must be between 0 and 1"),
        (lambda: text.sample(1, prompt="x", image=np.zeros((8, 8, 3), np.uint8)), r"image must be uint8 \[H, W, C\]"),
        (lambda: ddpm.generate(1, noise=np.zeros((2, 3, 16, 16), np.float32)), "noise has shape"),
    ]
    from PIL import Image
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small)
    cases.append((lambda: text.sample(1, prompt="x", image=str(small)), "is 8x8 pixels but the model takes 16x16"))
    for call, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            call()


def test_strength_zero_keeps_the_image_and_one_ignores_it(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    kept = model.sample(1, seed=0, image=image, strength=0.0, steps=10, scheduler="ddim")
    assert np.abs(kept[0].astype(int) - image).max() <= 1
    ignored = model.sample(1, seed=0, image=image, strength=1.0, steps=10, scheduler="ddim")
    assert np.abs(ignored[0].astype(int) - image).mean() > 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_sampling_process_never_imports_torch(tiny_sd):
    """Peak RSS from VmHWM: ru_maxrss would include the forked pytest process (with torch) before exec."""
    code = f"""
import json, sys
import edgegen
m = edgegen.load({str(tiny_sd[1])!r}, provider="cpu")
m.sample(2, seed=0, prompt="a red cat", steps=3, image=None)
print(json.dumps({{"heavy": [x for x in ("torch", "diffusers", "transformers") if x in sys.modules],
                  "rss_mib": [int(l.split()[1]) / 1024 for l in open("/proc/self/status")
                              if l.startswith("VmHWM:")][0]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["rss_mib"] < 300


def test_cli_sample_takes_every_scheduler_by_our_name_or_diffusers_class_name(tiny_ddpm, tmp_path):
    from edgegen.runtimes.diffusion.schedulers import SCHEDULERS
    from tests_support import run_cli

    help_text = "".join(run_cli("sample", "--help").output.split())      # click wraps lines (also at hyphens)
    assert ",".join(SCHEDULERS) + ",orthediffusersclassname" in help_text, help_text
    images = {}
    for choice in ("heun", "PNDMScheduler", "unipcmultistepscheduler", "pndm"):
        result = run_cli("sample", tiny_ddpm[1], "-o", tmp_path / f"{choice}.png", "--steps", "4", "--seed", "1",
                         "--scheduler", choice, "--provider", "cpu")
        assert result.exit_code == 0, result.output
        images[choice] = (tmp_path / f"{choice}.png").read_bytes()
    assert images["PNDMScheduler"] == images["pndm"] and images["heun"] != images["pndm"]
    result = run_cli("sample", tiny_ddpm[1], "-o", tmp_path / "x.png", "--scheduler", "plms")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "Error: unknown scheduler 'plms'; choose one of ddpm, ddim, pndm, lms" in result.output
