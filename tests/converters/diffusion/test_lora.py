"""LoRA fusing (``--lora FILE[:SCALE]``): a diffusers LoRA (UNet and text encoder layers, as diffusers' training
scripts save them) fused at conversion; the artifact's images against diffusers' own pipeline running the LoRA
unfused (PEFT layers at the adapter weight) from the same latents (PSNR >= 40 dB), for Stable Diffusion and SDXL;
what is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

import edgegen  # noqa: E402
from edgegen.converters.diffusion.convert import MIN_PSNR, psnr  # noqa: E402
from edgegen.converters.diffusion.lora import parse_loras  # noqa: E402
from edgegen.errors import EdgegenError, InvalidArgumentError, UnsupportedModelError  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402

from diffusion_support import write_tiny_sd_pipeline, write_tiny_sdxl_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
NOISE = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
PROMPT = "the red cat"


def write_lora(pipe, out, text_encoders=("text_encoder",), seed=1, gain=4.0):
    """A random LoRA (rank 4, alpha = rank) on the UNet's attention and the text encoders' q/v projections, saved
    by the pipeline class's save_lora_weights as diffusers' training scripts do; its up matrices scaled by ``gain``
    so that it visibly changes the tiny models' images."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    for name in text_encoders:
        encoder = getattr(pipe, name)
        encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"]))
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    type(pipe).save_lora_weights(out, safe_serialization=True, **layers)
    file = out / "pytorch_lora_weights.safetensors"
    weights = load_file(str(file))
    save_file({k: v * gain if ".up." in k or "lora_B" in k else v for k, v in weights.items()}, str(file))
    return file


def images(pipe, **kwargs):
    with torch.no_grad():
        out = pipe(prompt=[PROMPT] * len(NOISE), latents=torch.from_numpy(NOISE), num_inference_steps=6,
                   output_type="np", **kwargs).images                           # [N, H, W, C] in [0, 1]
    return out.transpose(0, 3, 1, 2) * 2 - 1


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipeline(request, tmp_path_factory):
    """(kind, pipeline directory, LoRA file, diffusers' pipeline class)."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    if request.param == "sd":
        source, cls, encoders = write_tiny_sd_pipeline(root / "pipe"), diffusers.StableDiffusionPipeline, \
            ("text_encoder",)
    else:
        source, cls, encoders = write_tiny_sdxl_pipeline(root / "pipe"), diffusers.StableDiffusionXLPipeline, \
            ("text_encoder", "text_encoder_2")
    donor = cls.from_pretrained(source)
    return request.param, source, write_lora(donor, root / "lora", encoders), cls


def load(cls, source):
    extra = {"safety_checker": None, "requires_safety_checker": False} if cls is diffusers.StableDiffusionPipeline \
        else {}
    pipe = cls.from_pretrained(source, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_fused_lora_matches_diffusers_running_it_unfused(pipeline, tmp_path):
    kind, source, lora, cls = pipeline
    lines: list[str] = []
    artifact = edgegen.convert(source, tmp_path / "art", lora=f"{lora}:0.7", optimize=False, report=lines.append)
    record = open_artifact(artifact).manifest.validation["lora"]
    encoders = {"sd": {"text_encoder"}, "sdxl": {"text_encoder", "text_encoder_2"}}[kind]
    assert [(r["file"], r["scale"]) for r in record] == [("pytorch_lora_weights.safetensors", 0.7)]
    assert set(record[0]["layers"]) == {"unet", *encoders} and len(record[0]["sha256"]) == 64
    assert any(line.startswith("lora: fused pytorch_lora_weights.safetensors at scale 0.7") for line in lines)
    pipe = load(cls, source)
    guidance = 5.0 if kind == "sdxl" else 7.5
    base = images(pipe, guidance_scale=guidance)
    pipe.load_lora_weights(str(lora), adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[0.7])             # PEFT's LoRA layers, not fused
    expected = images(pipe, guidance_scale=guidance)
    got = edgegen.load(artifact, provider="cpu").generate(2, noise=NOISE, prompt=PROMPT, steps=6, guidance=guidance)
    assert psnr(got, expected, (-1, 1)) >= MIN_PSNR
    assert psnr(got, base, (-1, 1)) < 35                         # the LoRA changes the image
    if kind == "sd":   # two fusings add up: 0.5 + 0.2 of the same file is 0.7 of it
        twice = edgegen.convert(source, tmp_path / "twice", lora=[(lora, 0.5), f"{lora}:0.2"], optimize=False,
                                report=lambda _line: None)
        again = edgegen.load(twice, provider="cpu").generate(2, noise=NOISE, prompt=PROMPT, steps=6,
                                                             guidance=guidance)
        assert psnr(again, got, (-1, 1)) >= 60


def test_parse_loras(tmp_path):
    file = tmp_path / "style.safetensors"
    file.write_bytes(b"")
    assert parse_loras(str(file)) == [(file, 1.0)]
    assert parse_loras([f"{file}:0.5", (file, -1)]) == [(file, 0.5), (file, -1.0)]
    assert parse_loras((str(file), 2)) == [(file, 2.0)]
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        parse_loras("nowhere.safetensors:0.5")
    with pytest.raises(InvalidArgumentError, match="not a .safetensors file"):
        parse_loras(f"{__file__}:0.5")
    with pytest.raises(InvalidArgumentError, match="must be a number from -100 to 100"):
        parse_loras((file, 1000))


def test_refusals_are_one_line(pipeline, tiny_ddpm, tmp_path):
    kind, source, lora, _ = pipeline
    if kind != "sd":
        pytest.skip("the refusals are the same for both pipelines")
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"                        # a LoRA for layers this pipeline lacks
    save_file({k.replace("unet.", "unet.extra_blocks.", 1): v for k, v in load_file(str(lora)).items()}, str(other))
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"not opened")
    empty = tmp_path / "empty.safetensors"
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(empty))
    cases = [(source, other, "targets modules this pipeline does not have; it was trained for another base model"), (source, pickled, "is a pickle"),
             (source, empty, "holds no LoRA layer"), (tiny_ddpm[0], lora, "--lora applies to Stable Diffusion")]
    for i, (src, file, match) in enumerate(cases):
        with pytest.raises(EdgegenError, match=match) as info:
            edgegen.convert(src, tmp_path / f"a{i}", lora=str(file), report=lambda _line: None)
        assert "\n" not in str(info.value) and not (tmp_path / f"a{i}").exists()
    with pytest.raises(UnsupportedModelError):
        parse_loras(str(pickled))
    from edgegen.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(tmp_path / "c"), "--lora", str(other)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    voice = tmp_path / "voice"
    voice.mkdir()
    (voice / "config.json").write_text(json.dumps({"model_type": "vits"}))
    with pytest.raises(InvalidArgumentError, match="--lora applies to Stable Diffusion and SDXL pipeline"):
        edgegen.convert(str(voice), tmp_path / "v", lora=str(lora))
