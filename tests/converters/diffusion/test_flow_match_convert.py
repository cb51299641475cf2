"""Flow-matching models: a pipeline directory whose scheduler is ``FlowMatchEulerDiscreteScheduler`` converts,
records it as the pipeline's own and samples with it (against PyTorch + diffusers' same class from the same
noise, the converter's own 40 dB gate); what edgegen cannot convert (a dynamic shift, a transformer denoiser,
a noise-schedule scheduler on a flow model) is refused in one line naming what is missing.

The tiny UNet2DModel is random, so "velocity" is only what it outputs: the maths under test is the
scheduler's loop, which is the same for any denoiser.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, from_directory, psnr, torch_sample  # noqa: E402
from edgegen.converters.diffusion.spec import DiffusionSpec  # noqa: E402
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

from diffusion_support import write_tiny_ddpm_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def with_scheduler(source, dest, scheduler):
    """A copy of the pipeline directory ``source`` that ships ``scheduler`` (as test_scheduler_choice.py's)."""
    shutil.copytree(source, dest)
    shutil.rmtree(dest / "scheduler")
    scheduler.save_pretrained(dest / "scheduler")
    index = json.loads((dest / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (dest / "model_index.json").write_text(json.dumps(index))
    return dest


@pytest.fixture(scope="module")
def unet_source(tmp_path_factory):
    return write_tiny_ddpm_pipeline(tmp_path_factory.mktemp("flow-unet") / "pipe")


@pytest.mark.parametrize("options", [{"shift": 3.0}, {"shift": 3.0, "stochastic_sampling": True}],
                         ids=["sd3-shift", "stochastic"])   # the other options: tests/runtimes/.../test_flow_match.py
def test_a_flow_matching_pipeline_converts_records_its_scheduler_and_matches_diffusers(unet_source, tmp_path,
                                                                                     options):
    source = with_scheduler(unet_source, tmp_path / "pipe", diffusers.FlowMatchEulerDiscreteScheduler(**options))
    lines: list[str] = []
    artifact = edgegen.convert(source, tmp_path / "artifact", optimize=False, report=lines.append)
    m = open_artifact(artifact).manifest
    assert m.sampler["scheduler"] == {"name": "flow-euler", "diffusers_class": "FlowMatchEulerDiscreteScheduler",
                                      "chosen_by": "pipeline"}
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR
    assert "scheduler: flow-euler (diffusers FlowMatchEulerDiscreteScheduler, the pipeline's own)" in lines
    model = edgegen.load(artifact, provider="cpu")
    noise = np.random.default_rng(9).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = model.generate(2, noise=noise, seed=5, steps=5)
    expected = torch_sample(from_directory(source), noise, steps=5, guidance=1.0, prompt="",
                            scheduler_class="FlowMatchEulerDiscreteScheduler", seed=5)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR
    with pytest.raises(InvalidArgumentError, match="a flow-matching model, which the euler scheduler cannot sample"):
        model.sample(1, seed=0, steps=3, scheduler="euler")


def test_what_edgegen_cannot_convert_is_refused_in_one_line(unet_source, tmp_path):
    dynamic = with_scheduler(unet_source, tmp_path / "dynamic",
                             diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ConversionError) as info:
        edgegen.convert(dynamic, tmp_path / "refused", optimize=False)
    assert "use_dynamic_shifting, whose shift mu depends on the image's token count" in str(info.value)
    flow = with_scheduler(unet_source, tmp_path / "flow", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    with pytest.raises(ConversionError, match="a flow-matching model, which the dpm\\+\\+ scheduler cannot sample"):
        edgegen.convert(flow, tmp_path / "refused", optimize=False, scheduler="dpm++")
    with pytest.raises(ConversionError, match="flow-euler samples flow-matching models, but the scheduler config is "
                                              "DDPMScheduler"):
        edgegen.convert(unet_source, tmp_path / "refused", optimize=False, scheduler="FlowMatchEulerDiscreteScheduler")
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder_3": ["transformers", "T5EncoderModel"]}))
    with pytest.raises(UnsupportedModelError) as info:
        edgegen.convert(sd3, tmp_path / "refused")
    message = str(info.value)
    assert "\n" not in message and ("is a StableDiffusion3Pipeline: edgegen has its FlowMatchEulerDiscreteScheduler "
                                    "(flow-euler) but not its denoiser, a SD3Transformer2DModel") in message
    assert not (tmp_path / "refused").exists()


class TinyVelocity(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) + torch.sin(t / 300.0)[:, None, None, None]


@pytest.mark.parametrize("config, record", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, "pipeline"),
    ({"shift": 2.0}, "default"),                          # no class: its keys say flow matching
])
def test_a_spec_over_a_flow_matching_denoiser_converts(tmp_path, config, record):
    torch.manual_seed(0)
    spec = DiffusionSpec(denoiser=TinyVelocity(), sample_shape=(1, 4, 4), defaults={"steps": 6},
                         scheduler_config={"num_train_timesteps": 1000, **config})
    m = open_artifact(edgegen.convert(spec, tmp_path / "art")).manifest
    assert (m.sampler["scheduler"]["name"], m.sampler["scheduler"]["chosen_by"]) == ("flow-euler", record)
    assert m.validation["sample"]["psnr_db"] >= MIN_PSNR
