"""Quantized image artifacts (fp16, int8 dynamic, int8 static QDQ) for every image family: they
load and sample, their PSNR against fp32 is recorded and meets the gate, calibration comes
from the runtime's own sampling loop, the gate keeps sensitive nodes in float, and the
combinations that cannot work are clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.converters.quantization import psnr_gate as image_quantize
from edgegen.converters.quantization.psnr_gate import CALIBRATION_SEEDS, MIN_PSNR, PRECISION, STEPS, quantize_artifact
from edgegen.errors import ConversionError, InvalidArgumentError
import image_support
from image_support import dcgan_spec

pytest.importorskip("torch")
pytest.importorskip("diffusers")

dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
vae_artifact, vqvae_artifact = image_support.vae_artifact, image_support.vqvae_artifact

SCHEMES = ("fp16", "int8", "int8-static")
#: family fixture -> the graphs quantized (the others must stay fp32)
QUANTIZED = {"tiny_ddpm_artifact": ("denoiser",), "conditional_artifact": ("generator",),
            "vae_artifact": ("decoder",), "vqvae_artifact": ("decode_codes",)}
#: Ops whose presence shows a scheme really converted the graph.
MARKS = {"fp16": "Cast", "int8": "DynamicQuantizeLinear", "int8-static": "QuantizeLinear"}


@pytest.fixture(scope="module")
def tiny_ddpm_artifact(tiny_ddpm) -> Path:
    return tiny_ddpm[1]


@pytest.fixture(scope="module")
def quantized(request, tmp_path_factory):
    """(family fixture, scheme) -> quantized artifact path, made once per module."""
    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, scheme: str) -> Path:
        if (family, scheme) not in cache:
            out = tmp_path_factory.mktemp(f"{family}-{scheme}") / "artifact"
            cache[family, scheme] = quantize_artifact(request.getfixturevalue(family), out, scheme, report=print)
        return cache[family, scheme]

    return get


def manifest(path: Path) -> dict:
    return json.loads((path / "edgegen.json").read_text())


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", QUANTIZED)
def test_each_scheme_loads_samples_and_records_its_cost(request, quantized, family: str, scheme: str) -> None:
    import onnx

    fp32_path, path = request.getfixturevalue(family), quantized(family, scheme)
    m, q = manifest(path), manifest(path)["validation"]["quantization"]
    roles = QUANTIZED[family]
    assert {r: g["precision"] for r, g in m["graphs"].items()} == \
        {r: PRECISION[scheme] if r in roles else "fp32" for r in m["graphs"]}
    for role in roles:                                   # the file really holds the scheme's ops
        ops = {n.op_type for n in onnx.load(str(path / m["graphs"][role]["file"])).graph.node}
        assert MARKS[scheme] in ops, (role, sorted(ops))
    assert not list(path.glob("*.onnx.data")) and len(list(path.glob("*.onnx"))) == len(m["graphs"])
    # recorded: the gate met, size and speed against fp32, what stayed float
    assert q["used"] and q["scheme"] == scheme and q["min_psnr_db"] == MIN_PSNR
    assert MIN_PSNR <= q["psnr_db"] <= 200 and q["attempts"][-1]["psnr_db"] == q["psnr_db"]
    assert q["size_ratio"] > 0 and q["speedup"] > 0 and q["ms"] > 0 and q["speed_unit"]
    if family == "tiny_ddpm_artifact":   # weights dominate the UNet's file: measured 0.59 fp16, 0.49 int8, 0.57 static
        assert q["size_ratio"] < 0.7     # (the other tiny graphs hold a few hundred weights: Q/DQ can outweigh them)
    assert sum(q["quantized_nodes"][roles[0]].values()) > 0 and roles[0] in q["float_nodes"]
    assert scheme != "int8" or "int8 (dynamic) quantizes every Conv's input on every call" in q["warning"]
    assert ("warning" in q) == (scheme == "int8" or q["speedup"] < 1)
    assert m["validation"]["samples_psnr_db" if family != "tiny_ddpm_artifact" else "sample"]   # fp32 figures kept
    # independently: the runtime's uint8 samples from the same seed stay close to fp32's
    fp32, model = edgegen.load(fp32_path, provider="cpu"), edgegen.load(path, provider="cpu")
    extra = {"steps": 4} if family == "tiny_ddpm_artifact" else {}
    a, b = fp32.sample(4, seed=7, **extra), model.sample(4, seed=7, **extra)
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert psnr_uint8(a, b) >= MIN_PSNR - 3, psnr_uint8(a, b)   # uint8 rounding and other seeds: a little slack


def test_diffusion_calibration_is_the_loop_s_own_inputs(tiny_ddpm) -> None:
    """The recorder sees exactly what the sampling loop feeds the denoiser: every timestep of the
    default scheduler, the latents it scaled, batch 2."""
    from edgegen.runtimes.diffusion.schedulers import make_scheduler

    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    family = image_quantize.FAMILIES["diffusion"]
    with image_quantize._recording(model, family, ["denoiser"]) as feeds:
        family.images(model, 0)
    sched = make_scheduler(model.defaults.scheduler, model.sampler.scheduler_config)
    sched.set_timesteps(STEPS)
    assert [float(f["timestep"][0]) for f in feeds["denoiser"]] == [float(t) for t in sched.timesteps]
    assert all(f["sample"].shape == (2, *model.sampler.sample_shape) for f in feeds["denoiser"])
    assert type(model.sessions["denoiser"]).__name__ == "GuardedSession"        # put back


def test_text_to_image_quantizes_denoiser_and_vae_decoder(tiny_sd, tmp_path) -> None:
    """Stable Diffusion: the per-step denoiser and the VAE decoder are quantized, each calibrated on
    what the loop fed it; the text encoder and VAE encoder stay fp32, with the reason recorded."""
    path = quantize_artifact(tiny_sd[1], tmp_path / "sd", "fp16")
    m = manifest(path)
    q = m["validation"]["quantization"]
    assert {r: g["precision"] for r, g in m["graphs"].items()} == \
        {"denoiser": "fp16", "vae_decoder": "fp16", "text_encoder": "fp32", "vae_encoder": "fp32"}
    assert set(q["float_graphs"]) == {"text_encoder", "vae_encoder"} and q["psnr_db"] >= MIN_PSNR
    seeds = len(CALIBRATION_SEEDS)
    assert q["calibration_inputs"] == {"denoiser": seeds * STEPS, "vae_decoder": seeds}      # a decode per sample
    image = edgegen.load(path, provider="cpu").sample(1, seed=0, prompt="a red cat", steps=2)
    assert image.dtype == np.uint8 and image.shape[0] == 1


def test_calibration_counts_are_recorded(quantized) -> None:
    q = manifest(quantized("tiny_ddpm_artifact", "int8-static"))["validation"]["quantization"]
    assert q["calibration_inputs"] == {"denoiser": len(CALIBRATION_SEEDS) * STEPS}
    assert q["fidelity"]["steps"] == STEPS and q["fidelity"]["images"] == 4


# -- the quality gate ------------------------------------------------------------------------------------
def outlier_spec():
    """A generator whose middle conv b reads an activation with one channel 10^4 times the others (and
    weighs it 10^-4): int8 with one range per tensor rounds the small channels away unless b stays float."""
    import torch
    from torch import nn

    from edgegen import GANSpec

    class Outlier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8 * 4 * 4)
            self.a, self.b, self.c = (nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.Conv2d(8, 3, 3, padding=1))
            gain = torch.ones(1, 8, 1, 1)
            gain[0, 0] = 1e4
            self.register_buffer("gain", gain)
            with torch.no_grad():
                self.b.weight[:, 0] /= 1e4

        def forward(self, z):                                               # z [B, 8]
            h = torch.relu(self.a(self.fc(z).view(-1, 8, 4, 4)))            # [B, 8, 4, 4]
            h = torch.relu(self.b(h * self.gain))
            return torch.tanh(3 * self.c(h))                                # [B, 3, 4, 4]

    torch.manual_seed(0)
    return GANSpec(generator=Outlier().eval(), latent_dim=8)


def test_gate_keeps_the_sensitive_node_in_float(tmp_path) -> None:
    """Through edgegen.convert: attempt 1 misses the gate, attempt 2 keeps the first and last compute
    node in float (not enough), attempt 3 adds the node measured most sensitive: conv b."""
    path = edgegen.convert(outlier_spec(), tmp_path / "gan", quantize="int8-static")
    q = manifest(path)["validation"]["quantization"]
    assert [a["float_nodes"] for a in q["attempts"]] == [0, 2, 3]
    assert all(a["psnr_db"] < MIN_PSNR for a in q["attempts"][:2]) and q["psnr_db"] >= MIN_PSNR
    assert q["excluded_nodes"] == {"generator": sorted(["/module/fc/Gemm", "/module/b/Conv", "/module/c/Conv"])}
    assert sorted(q["float_nodes"]["generator"]) == q["excluded_nodes"]["generator"]
    assert q["quantized_nodes"] == {"generator": {"Conv": 1}}                # conv a
    assert edgegen.load(path, provider="cpu").sample(2, seed=0).shape == (2, 4, 4, 3)


@pytest.fixture(scope="module")
def outlier_artifact(tmp_path_factory) -> Path:
    return edgegen.convert(outlier_spec(), tmp_path_factory.mktemp("outlier") / "fp32")


def test_a_gate_that_cannot_be_met_raises_or_falls_back_to_fp32(outlier_artifact, tmp_path) -> None:
    with pytest.raises(ConversionError, match=r"int8-static missed the quality gate: best samples .* dB < 150 dB "
                                              r"vs fp32 after 3 attempts.*lower the gate \(min_psnr\)"):
        quantize_artifact(outlier_artifact, tmp_path / "raised", "int8-static", min_psnr=150)
    assert not (tmp_path / "raised").exists() and not list(tmp_path.iterdir())        # nothing half-written

    path = quantize_artifact(outlier_artifact, tmp_path / "kept", "int8-static", min_psnr=150, required=False)
    m = manifest(path)
    q = m["validation"]["quantization"]
    assert not q["used"] and q["reason"].startswith("int8-static missed the quality gate")
    assert m["graphs"]["generator"]["precision"] == "fp32"
    assert sorted(p.name for p in path.iterdir()) == ["edgegen.json", "generator.onnx"]
    # the ladder: nothing, then first and last, then + the most sensitive (the fourth step adds none: skipped)
    assert [a["float_nodes"] for a in q["attempts"]] == [0, 2, 3]
    assert q["excluded_nodes"] == {"generator": sorted(["/module/fc/Gemm", "/module/b/Conv", "/module/c/Conv"])}
    assert "quantized_nodes" not in q                                                   # nothing was kept


# -- what cannot work ------------------------------------------------------------------------------------
def test_bad_combinations_are_clear_errors(tmp_path, dcgan_artifact) -> None:
    from flow_models import make_realnvp, realnvp_spec

    with pytest.raises(InvalidArgumentError, match="int4 .* is for LMs: a gan model is convolutions"):
        edgegen.convert(dcgan_spec(), tmp_path / "a", quantize="int4")
    with pytest.raises(InvalidArgumentError, match="quantize must be one of .*int8-static, got 'int3'"):
        edgegen.convert(dcgan_spec(), tmp_path / "b", quantize="int3")
    with pytest.raises(InvalidArgumentError, match="unknown quantization scheme 'int3' for a gan model"):
        quantize_artifact(dcgan_artifact, tmp_path / "c", "int3")
    with pytest.raises(InvalidArgumentError, match="flow artifacts are fp32 for now \\(exact likelihoods"):
        edgegen.convert(realnvp_spec(make_realnvp()), tmp_path / "d", quantize="int8-static")
    with pytest.raises(InvalidArgumentError, match="min_psnr .* does not apply to flow models"):
        edgegen.convert(realnvp_spec(make_realnvp()), tmp_path / "e", min_psnr=30)
    with pytest.raises(InvalidArgumentError, match="min_psnr must be a positive number of dB"):
        quantize_artifact(dcgan_artifact, tmp_path / "f", "fp16", min_psnr=-1)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')   # no weights: refused before they are read
    with pytest.raises(InvalidArgumentError, match="int8-static .* is for conv nets.*causal-lm artifacts take"):
        edgegen.convert(hf, tmp_path / "g", quantize="int8-static")
    # dynamic int8 has no ConvTranspose: a DCGAN generator has nothing for it
    with pytest.raises(ConversionError, match="int8 found nothing to quantize in the generator graph"):
        quantize_artifact(dcgan_artifact, tmp_path / "h", "int8")
    assert not any(p.name.startswith(".h") or p.name == "h" for p in tmp_path.iterdir())


def test_a_quantized_artifact_is_not_quantized_again(quantized, tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="is already quantized; quantize its fp32 artifact"):
        quantize_artifact(quantized("vae_artifact", "fp16"), tmp_path / "again", "int8-static")


# -- conversion and the CLI ------------------------------------------------------------------------------
def test_convert_quantizes_a_diffusion_pipeline_and_info_shows_it(tiny_ddpm, tmp_path) -> None:
    from edgegen.cli import cli

    lines: list[str] = []
    path = edgegen.convert(tiny_ddpm[0], tmp_path / "q", quantize="int8-static", min_psnr=25, report=lines.append)
    m = manifest(path)
    assert m["graphs"]["denoiser"]["precision"] == "int8-qdq" and m["validation"]["sample"]["psnr_db"] >= 40
    assert m["validation"]["quantization"]["min_psnr_db"] == 25
    assert any(line.startswith("quantize int8-static: samples") for line in lines)
    out = CliRunner().invoke(cli, ["info", str(path)])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if "validation quantization" in x)
    for key in ("scheme=int8-static", "psnr_db=", "min_psnr_db=25", "size_ratio=", "speedup=", "quantized_nodes=",
                "float_nodes="):
        assert key in line, line
