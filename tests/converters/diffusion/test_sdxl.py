"""Stable Diffusion XL pipeline directories: two text encoders (penultimate hidden states concatenated, the second's
pooled projection), the UNet's ``text_time`` added conditioning (pooled embeddings, ``add_time_ids``), the zeroed
unconditional half of ``force_zeros_for_empty_prompt``; each checked against diffusers' own
``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` from the same latents (PSNR >= 40 dB, the
converter's gate), with its own scheduler (Euler, what SDXL ships)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, from_directory, psnr  # noqa: E402
from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

from diffusion_support import write_tiny_sdxl_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(pipeline directory, its artifact converted with no flags, diffusers' pipeline, conversion lines)."""
    root = tmp_path_factory.mktemp("sdxl")
    source = write_tiny_sdxl_pipeline(root / "pipe")
    lines: list[str] = []
    artifact = edgegen.convert(source, root / "artifact", optimize=False, report=lines.append)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    return source, artifact, pipe, lines


def pipeline_images(pipe, noise, **kwargs) -> np.ndarray:
    with torch.no_grad():
        images = pipe(prompt=["the red cat"] * len(noise), latents=torch.from_numpy(noise), num_inference_steps=6,
                      output_type="np", **kwargs).images                        # [N, H, W, C] in [0, 1]
    return images.transpose(0, 3, 1, 2) * 2 - 1


NOISE = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)


def test_sdxl_converts_with_its_own_scheduler_and_records_its_conditioning(sdxl):
    _, artifact, _, lines = sdxl
    m = open_artifact(artifact).manifest
    assert m.sampler["scheduler"] == {"name": "euler", "diffusers_class": "EulerDiscreteScheduler",
                                      "chosen_by": "pipeline"}
    assert m.sampler["xl"] == {"max_length": 16, "pad_token_id": m.sampler["xl"]["pad_token_id"],
                               "time_ids": [16.0, 16.0, 0.0, 0.0, 16.0, 16.0], "zero_negative": True}
    assert m.sampler["xl"]["pad_token_id"] != m.sampler["text"]["pad_token_id"]     # "!" vs <|endoftext|>
    assert {"tokenizer", "tokenizer_2"} <= set(m.assets)
    assert [t.name for t in m.graphs["denoiser"].inputs] == ["sample", "timestep", "encoder_hidden_states",
                                                              "text_embeds", "time_ids"]
    assert m.defaults["guidance"] == 5.0                  # StableDiffusionXLPipeline's default
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR
    assert any(line.startswith("validate:") for line in lines)


@pytest.mark.parametrize("negative", ["dog", None])
def test_text_to_image_matches_diffusers_sdxl_pipeline(sdxl, negative):
    """With a negative prompt, and without one (the pipeline's zeroed unconditional half)."""
    _, artifact, pipe, _ = sdxl
    model = edgegen.load(artifact, provider="cpu")
    extra = {} if negative is None else {"negative_prompt": [negative] * 2}
    expected = pipeline_images(pipe, NOISE, guidance_scale=5.0, **extra)
    got = model.generate(2, noise=NOISE, prompt="the red cat", negative_prompt=negative, steps=6, guidance=5.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR
    if negative is None:   # the zeros matter: an encoded empty negative prompt gives another image
        encoded = model.generate(2, noise=NOISE, prompt="the red cat", negative_prompt="", steps=6, guidance=5.0)
        assert psnr(encoded, expected, (-1, 1)) < MIN_PSNR        # measured ~30 dB: the gate tells them apart


def test_without_guidance_matches_diffusers(sdxl):
    _, artifact, pipe, _ = sdxl
    model = edgegen.load(artifact, provider="cpu")
    expected = pipeline_images(pipe, NOISE, guidance_scale=1.0)
    got = model.generate(2, noise=NOISE, prompt="the red cat", steps=6, guidance=1.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_a_pipeline_that_encodes_the_empty_negative_prompt(sdxl, tmp_path):
    """force_zeros_for_empty_prompt false (as some fine-tunes ship): read from model_index.json, and the runtime
    then encodes "" as diffusers does."""
    source, artifact, pipe, _ = sdxl
    copy = tmp_path / "pipe"
    shutil.copytree(source, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    assert from_directory(copy).xl.zero_negative is False
    model = edgegen.load(artifact, provider="cpu")
    model.sampler = dataclasses.replace(model.sampler, xl=dataclasses.replace(model.sampler.xl, zero_negative=False))
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        expected = pipeline_images(pipe, NOISE, guidance_scale=5.0)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
    got = model.generate(2, noise=NOISE, prompt="the red cat", steps=6, guidance=5.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_img2img_matches_diffusers_sdxl_img2img_pipeline(sdxl, monkeypatch):
    _, artifact, pipe, _ = sdxl
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rng = np.random.default_rng(11)      # diffusers draws the VAE posterior sample, then the noise: ours, in order
    queue = [rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2)]

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(queue.pop(0)).reshape(shape).to(dtype or torch.float32)

    monkeypatch.setattr("diffusers.models.autoencoders.vae.randn_tensor", fake_randn)
    monkeypatch.setattr("diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.randn_tensor",
                        fake_randn)
    from PIL import Image

    with torch.no_grad():
        expected = img2img(prompt="a dog", image=Image.fromarray(image), strength=0.6, num_inference_steps=10,
                           guidance_scale=3.0, output_type="np").images.transpose(0, 3, 1, 2) * 2 - 1
    assert not queue                                  # diffusers drew exactly twice
    got = edgegen.load(artifact, provider="cpu").generate(1, seed=11, prompt="a dog", image=image, strength=0.6,
                                                          steps=10, guidance=3.0)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_a_refiner_directory_is_refused_in_one_line(sdxl, tmp_path):
    source = sdxl[0]
    copy = tmp_path / "refiner"
    shutil.copytree(source, copy)
    shutil.rmtree(copy / "text_encoder")
    index = json.loads((copy / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None],
                 requires_aesthetics_score=True)
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(EdgegenError, match="SDXL refiner.*convert the SDXL base pipeline"):
        from_directory(copy)


def test_a_broken_xl_manifest_is_refused_at_load(sdxl, tmp_path):
    from edgegen.runtimes.diffusion.sampler import DiffusionSampler
    from edgegen.errors import ManifestError

    section = dict(open_artifact(sdxl[1]).manifest.sampler)
    with pytest.raises(ManifestError, match=r"xl\.time_ids: must be 6 numbers"):
        DiffusionSampler.from_manifest({**section, "xl": {**section["xl"], "time_ids": [1.0, 2.0]}})
    with pytest.raises(ManifestError, match="xl: SDXL's second text encoder needs conditioning 'text'"):
        DiffusionSampler.from_manifest({**section, "conditioning": "none"})
