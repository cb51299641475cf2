"""The scheduler a pipeline ships is the one its artifact runs: recorded, validated against the same diffusers
class, and never replaced silently; a class edgegen lacks fails the conversion unless the user chooses one.

Whole pipelines from the same initial latents against diffusers' own (PSNR >= 40 dB, the converter's own
gate): a tiny Stable Diffusion pipeline saved with PNDM (what SD 1.x directories ship; before this, its
artifact ran DDIM with DDIM's clip_sample default: ~15 dB against diffusers), the same artifact sampled with
the other new schedulers (the runtime picks the scheduler at sample time, on the pipeline's config as
diffusers' ``from_config`` reads it), and tiny UNet pipelines saved with each new scheduler's own options,
converted with no flags.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import (MIN_PSNR, convert_diffusion, from_directory, psnr,  # noqa: E402
                                                  step_noise_from, torch_sample)
from edgegen.converters.diffusion.spec import DiffusionSpec  # noqa: E402
from edgegen.errors import ManifestError, UnsupportedModelError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

from diffusion_support import write_tiny_ddpm_pipeline, write_tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

#: Stable Diffusion 1.x's scheduler_config.json as diffusers 0.39 writes it (no clip_sample key)
SD15_PNDM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                 steps_offset=1, set_alpha_to_one=False)
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def with_scheduler(source: Path, dest: Path, scheduler) -> Path:
    """A copy of the pipeline directory ``source`` that ships ``scheduler`` (its config and model_index entry)."""
    shutil.copytree(source, dest)
    shutil.rmtree(dest / "scheduler")
    scheduler.save_pretrained(dest / "scheduler")
    if (dest / "model_index.json").is_file():
        index = json.loads((dest / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", type(scheduler).__name__]
        (dest / "model_index.json").write_text(json.dumps(index))
    return dest


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def pndm_sd(tmp_path_factory):
    """(SD pipeline directory shipping PNDM, its artifact converted with no flags, diffusers' pipeline)."""
    root = tmp_path_factory.mktemp("pndm-sd")
    source = with_scheduler(write_tiny_sd_pipeline(root / "ddim"), root / "pipe", diffusers.PNDMScheduler(**SD15_PNDM))
    lines: list[str] = []
    artifact = edgegen.convert(source, root / "artifact", optimize=False, report=lines.append)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return source, artifact, pipe, lines


def pipeline_images(pipe, noise, scheduler=None, seed=0) -> np.ndarray:
    """diffusers' StableDiffusionPipeline from the latents ``noise`` (its per-step noise from ``seed``, as the
    runtime draws it): [N, C, H, W] in [-1, 1]."""
    kwargs = dict(prompt=["the red cat"] * len(noise), negative_prompt=["dog"] * len(noise), output_type="np",
                  latents=torch.from_numpy(noise), num_inference_steps=6, guidance_scale=5.0)
    with torch.no_grad(), step_noise_from(pipe.scheduler, np.random.default_rng(seed)):
        images = pipe(**kwargs).images                                         # [N, H, W, C] in [0, 1]
    return images.transpose(0, 3, 1, 2) * 2 - 1


def artifact_images(model, noise, scheduler=None, seed=0) -> np.ndarray:
    return model.generate(len(noise), noise=noise, seed=seed, prompt="the red cat", negative_prompt="dog", steps=6,
                          guidance=5.0, scheduler=scheduler)


def test_sd15_pndm_pipeline_runs_pndm_and_matches_diffusers_pipeline(pndm_sd):
    source, artifact, pipe, lines = pndm_sd
    m = open_artifact(artifact).manifest
    assert "clip_sample" not in m.sampler["scheduler_config"]                 # the pipeline's config, as saved
    assert m.sampler["scheduler"] == {"name": "pndm", "diffusers_class": "PNDMScheduler", "chosen_by": "pipeline"}
    assert m.defaults["scheduler"] == "pndm"
    assert m.validation["sample"]["scheduler"] == "pndm" and m.validation["sample"]["psnr_db"] >= MIN_PSNR
    assert "scheduler: pndm (diffusers PNDMScheduler, the pipeline's own)" in lines
    model = edgegen.load(artifact, provider="cpu")
    assert model.describe_scheduler() == "pndm (diffusers PNDMScheduler, the pipeline's own)"
    assert model.describe_scheduler("ddim") == "ddim (diffusers DDIMScheduler, instead of the artifact's pndm)"
    noise = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    expected = pipeline_images(pipe, noise)
    assert psnr(artifact_images(model, noise), expected, (-1, 1)) >= MIN_PSNR
    assert psnr(artifact_images(model, noise, scheduler="PNDMScheduler"), expected, (-1, 1)) >= MIN_PSNR
    # what the silent substitution ran (DDIM reads no clip_sample in PNDM's config: DDIM's default clips)
    assert psnr(artifact_images(model, noise, scheduler="ddim"), expected, (-1, 1)) < 25


@pytest.mark.parametrize("name, cls", [("lms", "LMSDiscreteScheduler"), ("heun", "HeunDiscreteScheduler"),
                                       ("unipc", "UniPCMultistepScheduler"), ("dpm++", "DPMSolverMultistepScheduler"),
                                       ("kdpm2", "KDPM2DiscreteScheduler"), ("deis", "DEISMultistepScheduler"),
                                       ("dpm-single", "DPMSolverSinglestepScheduler"), ("lcm", "LCMScheduler")])
def test_other_schedulers_at_sample_time_match_diffusers_pipeline(pndm_sd, name, cls):
    """One converted artifact, each scheduler picked at sample time = diffusers' X.from_config(pipeline config)."""
    _, artifact, pipe, _ = pndm_sd
    model = edgegen.load(artifact, provider="cpu")
    own = pipe.scheduler
    pipe.scheduler = getattr(diffusers, cls).from_config(own.config)
    try:
        noise = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
        assert psnr(artifact_images(model, noise, scheduler=name), pipeline_images(pipe, noise), (-1, 1)) >= MIN_PSNR
    finally:
        pipe.scheduler = own


# -- UNet pipelines saved with each new scheduler's own options, converted with no flags ------------------

UNET_SCHEDULERS = [
    ("pndm", diffusers.PNDMScheduler(**SD_BETAS)),                                       # Runge-Kutta start
    ("lms", diffusers.LMSDiscreteScheduler(**SD_BETAS, use_karras_sigmas=True)),
    ("heun", diffusers.HeunDiscreteScheduler(prediction_type="v_prediction")),
    ("unipc", diffusers.UniPCMultistepScheduler(**SD_BETAS, solver_order=3, solver_type="bh1",
                                                final_sigmas_type="sigma_min")),
    ("dpm++", diffusers.DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="sde-dpmsolver++")),
    ("dpm++", diffusers.DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver", solver_order=3,
                                                    final_sigmas_type="sigma_min")),
    ("euler", diffusers.EulerDiscreteScheduler(**SD_BETAS, use_beta_sigmas=True, timestep_spacing="trailing")),
    ("kdpm2-a", diffusers.KDPM2AncestralDiscreteScheduler(use_karras_sigmas=True)),
    ("lcm", diffusers.LCMScheduler()),
    ("tcd", diffusers.TCDScheduler()),
    ("deis", diffusers.DEISMultistepScheduler(**SD_BETAS, solver_order=3)),
    ("dpm-single", diffusers.DPMSolverSinglestepScheduler(**SD_BETAS, algorithm_type="sde-dpmsolver++",
                                                          solver_order=3)),
]


@pytest.fixture(scope="module")
def unet_source(tmp_path_factory):
    return write_tiny_ddpm_pipeline(tmp_path_factory.mktemp("unet") / "pipe")


@pytest.mark.parametrize("name, scheduler", UNET_SCHEDULERS,
                         ids=[f"{type(s).__name__}-{i}" for i, (_, s) in enumerate(UNET_SCHEDULERS)])
def test_unet_pipeline_with_each_scheduler_converts_records_and_matches_diffusers(unet_source, tmp_path, name,
                                                                                 scheduler):
    source = with_scheduler(unet_source, tmp_path / "pipe", scheduler)
    artifact = edgegen.convert(source, tmp_path / "artifact", optimize=False)
    m = open_artifact(artifact).manifest
    cls = type(scheduler).__name__
    assert m.sampler["scheduler"] == {"name": name, "diffusers_class": cls, "chosen_by": "pipeline"}
    assert m.validation["sample"]["diffusers_class"] == cls and m.validation["sample"]["psnr_db"] >= MIN_PSNR
    # a run the converter did not validate (other noise, seed and step count) against diffusers' same class
    model = edgegen.load(artifact, provider="cpu")
    noise = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = model.generate(1, noise=noise, seed=5, steps=5)
    expected = torch_sample(from_directory(source), noise, steps=5, guidance=1.0, prompt="", scheduler_class=cls,
                            seed=5)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR


def test_a_stochastic_default_scheduler_follows_the_seed(unet_source, tmp_path):
    source = with_scheduler(unet_source, tmp_path / "pipe",
                            diffusers.DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="sde-dpmsolver++"))
    model = edgegen.load(edgegen.convert(source, tmp_path / "artifact", optimize=False), provider="cpu")
    a, b, c = (model.sample(1, seed=s, steps=6) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_scheduler_edgegen_lacks_fails_in_one_line_unless_the_user_chooses(unet_source, tmp_path):
    source = with_scheduler(unet_source, tmp_path / "pipe", diffusers.IPNDMScheduler())
    with pytest.raises(UnsupportedModelError) as info:
        edgegen.convert(source, tmp_path / "refused", optimize=False)
    message = str(info.value)
    assert "\n" not in message and "IPNDMScheduler, which edgegen does not implement" in message
    assert "the closest scheduler it has is pndm: convert with scheduler='pndm'" in message
    assert not (tmp_path / "refused").exists()
    lines: list[str] = []
    artifact = convert_diffusion(from_directory(source), tmp_path / "chosen", scheduler="pndm", optimize=False,
                                 report=lines.append)
    m = open_artifact(artifact).manifest
    assert m.sampler["scheduler"] == {"name": "pndm", "diffusers_class": "PNDMScheduler", "chosen_by": "user"}
    assert m.sampler["scheduler_config"]["_class_name"] == "IPNDMScheduler"            # the source's, kept
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR and m.validation["sample"]["chosen_by"] == "user"
    assert "scheduler: pndm (diffusers PNDMScheduler, chosen instead of the source's IPNDMScheduler)" in lines


class TinyDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) + torch.sin(t / 300.0)[:, None, None, None]


@pytest.mark.parametrize("config, defaults, record", [
    ({"_class_name": "UniPCMultistepScheduler"}, {}, ("unipc", "pipeline")),
    ({"_class_name": "PNDMScheduler"}, {"scheduler": "HeunDiscreteScheduler"}, ("heun", "user")),
    ({}, {"scheduler": "lms"}, ("lms", "user")),
    ({}, {}, ("ddim", "default")),
])
def test_a_spec_runs_its_configs_class_or_its_defaults_scheduler(tmp_path, config, defaults, record):
    torch.manual_seed(0)
    spec = DiffusionSpec(denoiser=TinyDenoiser(), sample_shape=(1, 4, 4), defaults={**defaults, "steps": 6},
                         scheduler_config={"num_train_timesteps": 1000, **SD_BETAS, **config})
    lines: list[str] = []
    m = open_artifact(edgegen.convert(spec, tmp_path / "art", report=lines.append)).manifest
    assert (m.sampler["scheduler"]["name"], m.sampler["scheduler"]["chosen_by"]) == record
    assert m.defaults["scheduler"] == record[0] and m.validation["sample"]["psnr_db"] >= MIN_PSNR
    if record[1] == "default":
        assert any("names no _class_name; choose one with scheduler=" in line for line in lines)


def test_artifacts_without_the_scheduler_record_still_load_and_a_broken_record_is_refused(pndm_sd, tmp_path):
    _, artifact, _, _ = pndm_sd
    old = shutil.copytree(artifact, tmp_path / "old")
    manifest = json.loads((old / "edgegen.json").read_text())
    del manifest["sampler"]["scheduler"]                      # as written before the record existed
    (old / "edgegen.json").write_text(json.dumps(manifest))
    model = edgegen.load(old, provider="cpu")
    assert model.describe_scheduler() == "pndm (diffusers PNDMScheduler, the artifact's default)"
    assert model.sample(1, seed=0, prompt="a cat", steps=3).shape == (1, 16, 16, 3)
    for record, message in [({"name": "ddim", "diffusers_class": "DDIMScheduler", "chosen_by": "user"},
                             "defaults.scheduler: 'pndm', but sampler.scheduler records 'ddim'"),
                            ({"name": "pndm", "diffusers_class": "DDIMScheduler", "chosen_by": "pipeline"},
                             "is not one of edgegen's schedulers"),
                            ({"name": "ddim", "diffusers_class": "DDIMScheduler", "chosen_by": "pipeline"},
                             "chosen_by 'pipeline' names DDIMScheduler, but scheduler_config is a 'PNDMScheduler'")]:
        broken = tmp_path / f"broken-{record['name']}-{record['diffusers_class']}-{record['chosen_by']}"
        shutil.copytree(artifact, broken)
        bad = json.loads((broken / "edgegen.json").read_text())
        bad["sampler"]["scheduler"] = record
        (broken / "edgegen.json").write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=message) as info:
            edgegen.load(broken, provider="cpu")
        assert "\n" not in str(info.value)


def test_the_command_line_chooses_the_default_scheduler_and_other_families_refuse_it(tiny_ddpm, tiny_lm_artifact,
                                                                                     tmp_path):
    from tests_support import assert_one_line_error, run_cli

    pipe, _ = tiny_ddpm
    result = run_cli("convert", pipe, "-o", tmp_path / "euler", "--scheduler", "EulerDiscreteScheduler", "-q", "none")
    assert result.exit_code == 0, result.output
    m = edgegen.load(tmp_path / "euler", provider="cpu").artifact.manifest
    assert m.sampler["scheduler"] == {"name": "euler", "diffusers_class": "EulerDiscreteScheduler", "chosen_by": "user"}
    hf = tiny_lm_artifact.parent / "hf"
    assert_one_line_error(run_cli("convert", hf, "-o", tmp_path / "lm", "--scheduler", "pndm"),
                          "scheduler applies to diffusion models")


def test_sample_and_info_say_which_scheduler_runs_and_whose_choice_it_was(pndm_sd, tmp_path):
    from tests_support import run_cli

    _, artifact, _, _ = pndm_sd
    own = run_cli("sample", artifact, "-o", tmp_path / "own.png", "--steps", "3", "--prompt", "a cat")
    assert own.exit_code == 0, own.output
    assert "scheduler pndm (diffusers PNDMScheduler, the pipeline's own), 3 steps" in own.stderr
    other = run_cli("sample", artifact, "-o", tmp_path / "other.png", "--steps", "2", "--prompt", "a cat",
                    "--scheduler", "EulerDiscreteScheduler")
    assert other.exit_code == 0, other.output
    assert "scheduler euler (diffusers EulerDiscreteScheduler, instead of the artifact's pndm), 2 steps" in other.stderr
    info = run_cli("info", artifact)
    assert info.exit_code == 0, info.output
    assert "scheduler  pndm (diffusers PNDMScheduler, the pipeline's own)" in info.output
