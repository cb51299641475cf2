"""Image families: edgegen's runtime against a bare ``session.run`` loop and PyTorch eager, in one run.

    python benchmarks/image_families.py                  # realistic sizes + the bundled digits models
    python benchmarks/image_families.py --quick          # small models, few rounds, to check the script
    python benchmarks/image_families.py --only stylegan,glow --batches 1,16 --rounds 7

Issue 8: the runtime's per-sample latency must stay within 1.05x the bare ``session.run`` time.
Every row runs four contenders on the same work, in one process, at batch 1 and 16:

- eager:     the PyTorch modules under ``torch.inference_mode`` on the same latents, plus the
             same float -> uint8 conversion written in torch;
- bare:      ``session.run`` on the artifact's own graphs (the runtime's sessions), numpy inputs
             drawn before the timed region: the minimal work (e.g. mapping then synthesis, fed noise);
- bare+post: the same plus the runtime's own float -> uint8 conversion (flow: its pixel map;
             flow score: its pixel -> model-space map and the bits/dim arithmetic);
- edgegen:   the public API, ``model.sample(n, seed=0)`` (flow score: ``model.bits_per_dim(images)``),
             which also draws its latents and noise from the seed, inside the timed region.

Rounds are interleaved (the contenders' order rotates each round, so load drift hits all
alike); each figure is the median over rounds of samples/s.  ``edgegen/bare`` is the latency
ratio (issue 8's target: <= 1.05) against each floor; ``x eager`` is edgegen's speed over
eager's.  ``check`` is the largest difference between edgegen's output and bare+post's (uint8
levels, or bits/dim for scores: 0 = the same work on the same inputs) and, after the slash,
eager's (``-`` where eager draws its own noise).  Threads: torch = ONNX Runtime intra-op =
physical cores; torch's OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set:
spinning, they made eager 100x slower now and then next to ONNX Runtime on a loaded machine).
Random weights, no downloads: compare ratios, not absolute figures across machines.

Models: DCGAN 64x64 (Radford et al. 2016: nz 100, ngf 64); the same conditioned on a class
(label embedding concatenated to z, 10 classes); a StyleGAN-style generator (8-layer 512-wide
mapping, synthesis from a learned 4x4 constant to 64x64 with per-layer style modulation and noise
injection); a conv VAE 64x64 (latent 128, sample = decode a prior draw); a VQ-VAE 64x64 (van den
Oord et al. 2017's decoder: 16x16 grid of 512 codes of 64 dims, two residual blocks, sample =
decode a uniformly drawn code grid); a normflows Glow on 3x32x32 (squeeze, 16 GlowBlocks of 256
hidden channels; sample = the inverse graph, score = the forward graph); and the bundled digits
models of models/ (8x8, small: per-call overheads show most there).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
MODELS = HERE.parents[1] / "models"
SEED = 0
CONTENDERS = ("eager", "bare", "bare+post", "edgegen")
#: (runtime, batch) -> {contender: closure returning its output (uint8 images or bits/dim)}
Make = Callable[[Any, int], dict[str, Callable[[], np.ndarray]]]


@dataclass
class Case:
    name: str
    spec: Any                       # what edgegen.convert takes
    rows: dict[str, Make]           # row label -> its contenders
    eager_same_noise: bool = True   # False: eager draws its own noise (no eager check)


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may use."""
    cpus = os.sched_getaffinity(0)
    try:
        topo = [Path(f"/sys/devices/system/cpu/cpu{c}/topology") for c in cpus]
        return len({((t / "physical_package_id").read_text(), (t / "core_id").read_text()) for t in topo})
    except OSError:
        return len(cpus)


def _torch_uint8(x, value_range: tuple[float, float]) -> np.ndarray:
    """eager's conversion: [N, C, H, W] floats -> uint8 [N, H, W, C] (what runtimes.images.to_uint8 does)."""
    import torch

    lo, hi = value_range
    return torch.clamp(torch.round((x - lo) / (hi - lo) * 255.0), 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# -- GANs -----------------------------------------------------------------------------------------------------

def gan_rows(generator, mapping=None, classes: int | None = None) -> dict[str, Make]:
    import torch

    from edgegen.runtimes.images import to_uint8

    def make(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        rng = np.random.default_rng(SEED)                      # the runtime's draws, in its order
        z = rng.standard_normal((b, model.sampler.latent_dim), dtype=np.float32)       # [b, nz]
        labels = rng.integers(0, classes, size=b, dtype=np.int64) if classes else None   # [b]
        noise = model.draw_noise(b, rng)                       # {role: {noise.i: [b, 1, h, w]}}
        feed = {"z": z, **({"labels": labels} if classes else {})}
        g = model.generator.session
        m = model.mapping.session if model.mapping is not None else None
        vr = model.sampler.value_range
        tz, tl = torch.from_numpy(z), (torch.from_numpy(labels) if classes else None)

        def bare() -> np.ndarray:
            if m is None:
                return g.run(["image"], feed)[0]
            w = m.run(["w"], {**feed, **noise.get("mapping", {})})[0]                # [b, w_dim]
            return g.run(["image"], {"w": w, **noise.get("generator", {})})[0]        # [b, C, H, W]

        def eager() -> np.ndarray:
            args = (tz, tl) if classes else (tz,)
            return _torch_uint8(generator(mapping(*args)) if mapping is not None else generator(*args), vr)

        return {"eager": eager, "bare": bare, "bare+post": lambda: to_uint8(bare(), vr),
                "edgegen": lambda: model.sample(b, seed=SEED)}
    return {"sample": make}


def dcgan(quick: bool, classes: int | None = None, passes: int = 4, batch: int = 32):
    """DCGAN generator 64x64 (nz 100, ngf 64; 16 when quick), optionally conditioned on a class
    (embedding [classes, nz] concatenated to z), DCGAN init, BatchNorm statistics from ``passes``
    training-mode passes of ``batch`` random z."""
    import torch
    from torch import nn

    nz, ngf = 100, (16 if quick else 64)

    def up(cin: int, cout: int, stride: int, pad: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(classes, nz) if classes else None
            self.net = nn.Sequential(*up(2 * nz if classes else nz, ngf * 8, 1, 0),          # [B, 8g, 4, 4]
                                     *up(ngf * 8, ngf * 4, 2, 1), *up(ngf * 4, ngf * 2, 2, 1),
                                     *up(ngf * 2, ngf, 2, 1),                                 # [B, g, 32, 32]
                                     nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())   # [B, 3, 64, 64]

        def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:   # z [B, nz]
            if self.embed is not None:
                z = torch.cat([z, self.embed(labels)], dim=1)                                 # [B, 2 nz]
            return self.net(z[:, :, None, None])

    torch.manual_seed(0)
    g = Generator()
    for mod in g.modules():
        if isinstance(mod, nn.ConvTranspose2d):
            nn.init.normal_(mod.weight, 0.0, 0.02)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.normal_(mod.weight, 1.0, 0.02)
            nn.init.zeros_(mod.bias)
            mod.momentum = None
    with torch.no_grad():
        for _ in range(passes):
            g(torch.randn(batch, nz), torch.randint(0, classes, (batch,)) if classes else None)
    return g.eval()


def dcgan_case(quick: bool) -> Case:
    from edgegen import GANSpec

    g = dcgan(quick)
    return Case("dcgan-64", GANSpec(generator=g, latent_dim=100, name="dcgan-64"), gan_rows(g))


def cond_dcgan_case(quick: bool) -> Case:
    from edgegen import GANSpec

    g = dcgan(quick, classes=10)
    return Case("cond-dcgan-64", GANSpec(generator=g, latent_dim=100, num_classes=10, name="cond-dcgan-64"),
                gan_rows(g, classes=10))


def stylegan_case(quick: bool) -> Case:
    """StyleGAN-style: mapping z [B, 512] -> pixel norm, 8 x (Linear + LeakyReLU) -> w [B, 512] (w_avg carried);
    synthesis: constant [1, 256, 4, 4], two style layers per resolution to 64x64 (one at 4x4), each
    conv(x * (1 + affine(w))) + strength * randn_like noise, LeakyReLU; nearest upsampling; 1x1 to RGB, tanh."""
    import torch
    from torch import nn

    from edgegen import GANSpec

    dim = 64 if quick else 512
    channels = {4: 32, 8: 32, 16: 32, 32: 32, 64: 16} if quick else {4: 256, 8: 256, 16: 256, 32: 128, 64: 64}

    class Mapping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(dim, dim), nn.LeakyReLU(0.2))])
            self.register_buffer("w_avg", torch.zeros(dim))

        def forward(self, z: torch.Tensor) -> torch.Tensor:                     # z [B, dim] -> w [B, dim]
            return self.net(z * torch.rsqrt((z * z).mean(1, keepdim=True) + 1e-8))

    class StyleLayer(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.affine, self.conv = nn.Linear(dim, cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.noise_strength = nn.Parameter(torch.full((1, cout, 1, 1), 0.1))

        def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            x = self.conv(x * (1 + self.affine(w))[:, :, None, None])           # [B, cout, h, w]
            return nn.functional.leaky_relu(x + self.noise_strength * torch.randn_like(x[:, :1]), 0.2)

    class Synthesis(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            res = sorted(channels)
            self.const = nn.Parameter(torch.randn(1, channels[4], 4, 4))
            self.layers = nn.ModuleList([StyleLayer(channels[4], channels[4])] + [
                StyleLayer(channels[r // 2] if i == 0 else channels[r], channels[r]) for r in res[1:] for i in (0, 1)])
            self.to_rgb = nn.Conv2d(channels[res[-1]], 3, 1)

        def forward(self, w: torch.Tensor) -> torch.Tensor:                     # w [B, dim] -> [B, 3, 64, 64]
            x = self.layers[0](self.const.expand(w.shape[0], -1, -1, -1), w)
            for i, layer in enumerate(self.layers[1:]):
                x = layer(nn.functional.interpolate(x, scale_factor=2.0) if i % 2 == 0 else x, w)
            return torch.tanh(self.to_rgb(x))

    torch.manual_seed(0)
    mapping, synthesis = Mapping().eval(), Synthesis().eval()
    with torch.no_grad():
        mapping.w_avg.copy_(mapping(torch.randn(1000, dim)).mean(0))
    spec = GANSpec(generator=synthesis, mapping=mapping, latent_dim=dim, name="stylegan-style-64")
    return Case("stylegan-64", spec, gan_rows(synthesis, mapping), eager_same_noise=False)


# -- VAE, VQ-VAE ----------------------------------------------------------------------------------------------

def vae_rows(decoder) -> dict[str, Make]:
    import torch

    from edgegen.runtimes.images import to_uint8

    def make(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        s = model.sampler
        t = np.float32(model.defaults.temperature)
        z = t * np.random.default_rng(SEED).standard_normal((b, *s.latent_shape), dtype=np.float32)
        d, out, tz = model.graphs["decoder"].session, model.graphs["decoder"].outputs[0], torch.from_numpy(z)

        def bare() -> np.ndarray:
            return d.run([out], {"latent": z})[0]

        return {"eager": lambda: _torch_uint8(decoder(tz), s.value_range), "bare": bare,
                "bare+post": lambda: to_uint8(bare(), s.value_range), "edgegen": lambda: model.sample(b, seed=SEED)}
    return {"sample": make}


def vae_case(quick: bool) -> Case:
    """Conv VAE 64x64: encoder 4 stride-2 convs -> (mean, logvar) [B, 128]; decoder Linear -> [B, 256, 4, 4]
    -> 4 x (ConvTranspose2d + BatchNorm + ReLU) -> tanh [B, 3, 64, 64]."""
    import torch
    from torch import nn

    from edgegen import VAESpec

    c, latent = (8, 32) if quick else (32, 128)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            chans = [3, c, 2 * c, 4 * c, 8 * c]
            self.net = nn.Sequential(*[m for i in range(4) for m in (nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1),
                                                                     nn.LeakyReLU(0.2))], nn.Flatten())
            self.head = nn.Linear(8 * c * 16, 2 * latent)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean, logvar = self.head(self.net(x)).chunk(2, dim=1)              # [B, latent] each
            return mean, logvar

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            chans = [8 * c, 4 * c, 2 * c, c]
            self.fc = nn.Linear(latent, 8 * c * 16)
            self.net = nn.Sequential(*[m for i in range(3) for m in (
                nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU())],
                nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Tanh())

        def forward(self, z: torch.Tensor) -> torch.Tensor:                     # z [B, latent] -> [B, 3, 64, 64]
            return self.net(self.fc(z).view(-1, 8 * c, 4, 4))

    torch.manual_seed(0)
    encoder, decoder = Encoder().eval(), Decoder().eval()
    spec = VAESpec(encoder=encoder, decoder=decoder, latent_shape=(latent,), image_shape=(3, 64, 64), name="vae-64")
    return Case("vae-64", spec, vae_rows(decoder))


def vqvae_rows(codebook, decoder) -> dict[str, Make]:
    import torch

    from edgegen.converters.image.convert import DecodeCodes
    from edgegen.runtimes.images import to_uint8

    decode = DecodeCodes(codebook, decoder).eval()          # the converter's own lookup + decoder

    def make(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        s = model.sampler
        codes = np.random.default_rng(SEED).integers(0, s.codebook_size, size=(b, *s.grid), dtype=np.int64)
        d, tc = model.graphs["decode_codes"].session, torch.from_numpy(codes)

        def bare() -> np.ndarray:
            return d.run(["image"], {"indices": codes})[0]

        return {"eager": lambda: _torch_uint8(decode(tc), s.value_range), "bare": bare,
                "bare+post": lambda: to_uint8(bare(), s.value_range), "edgegen": lambda: model.sample(b, seed=SEED)}
    return {"sample": make}


def vqvae_case(quick: bool) -> Case:
    """VQ-VAE 64x64 (van den Oord et al. 2017): encoder 2 stride-2 convs + 2 residual blocks -> z_e [B, 64, 16, 16];
    512 codes; decoder conv 3x3, 2 residual blocks, 2 ConvTranspose2d -> tanh [B, 3, 64, 64]."""
    import torch
    from torch import nn

    from edgegen import VQVAESpec

    h, d, k = (32, 16, 64) if quick else (128, 64, 512)

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(h, h // 4, 3, padding=1), nn.ReLU(), nn.Conv2d(h // 4, h, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.net(x)

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, h // 2, 4, 2, 1), nn.ReLU(), nn.Conv2d(h // 2, h, 4, 2, 1), nn.ReLU(),
                            nn.Conv2d(h, h, 3, padding=1), Residual(), Residual(), nn.ReLU(), nn.Conv2d(h, d, 1)).eval()
    decoder = nn.Sequential(nn.Conv2d(d, h, 3, padding=1), Residual(), Residual(), nn.ReLU(),
                            nn.ConvTranspose2d(h, h // 2, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(h // 2, 3, 4, 2, 1),
                            nn.Tanh()).eval()
    codebook = torch.randn(k, d)
    spec = VQVAESpec(encoder=encoder, decoder=decoder, codebook=codebook, image_shape=(3, 64, 64), name="vqvae-64")
    return Case("vqvae-64", spec, vqvae_rows(codebook, decoder))


# -- flows ----------------------------------------------------------------------------------------------------

def flow_rows(module) -> dict[str, Make]:
    """sample: flow_inverse + the pixel map; score: the pixel map + flow_forward + bits/dim."""
    import torch

    from edgegen.runtimes.flow.flow import LOG_2PI, data_to_pixels, pixels_to_data

    def torch_pixels(x: torch.Tensor, s) -> np.ndarray:            # runtimes.flow.data_to_pixels in torch
        lo, hi = s.data_range
        v = x.double().reshape(len(x), *s.image_shape)
        v = torch.sigmoid(v) if s.logit else v
        levels = torch.clamp(torch.nan_to_num(torch.floor((v - lo) / (hi - lo) * s.num_bins)), 0, s.num_bins - 1)
        return (-torch.div(-levels * 256, s.num_bins, rounding_mode="floor")).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def torch_bpd(images: torch.Tensor, s) -> np.ndarray:          # Flow.bits_per_dim in torch
        lo, hi = s.data_range
        levels = torch.floor(images.double() * s.num_bins / 256.0).permute(0, 3, 1, 2)
        v = lo + (hi - lo) * (levels + s.dequantization_offset) / s.num_bins               # [N, C, H, W]
        d = v[0].numel()
        log_jac = d * math.log((hi - lo) / s.num_bins) - ((torch.log(v) + torch.log1p(-v)).sum((1, 2, 3))
                                                           if s.logit else 0.0)
        x = torch.log(v) - torch.log1p(-v) if s.logit else v
        z, log_det = module(x.float().reshape(len(x), *s.data_shape))
        z = z.double().reshape(len(z), -1)
        log_p = -0.5 * (z * z).sum(1) - 0.5 * d * LOG_2PI + log_det.double()
        return (-(log_p + log_jac) / (d * math.log(2.0))).numpy()

    def sample(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        s, t = model.sampler, model.defaults.temperature
        z = (t * np.random.default_rng(SEED).standard_normal((b, *s.latent_shape))).astype(np.float32)
        inverse, tz = model.sessions["flow_inverse"], torch.from_numpy(z)

        def bare() -> np.ndarray:
            return inverse.run(["x"], {"z": z})[0]

        return {"eager": lambda: torch_pixels(module.inverse(tz), s), "bare": bare,
                "bare+post": lambda: data_to_pixels(s, bare()), "edgegen": lambda: model.sample(b, seed=SEED)}

    def score(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        s = model.sampler
        c, hh, ww = s.image_shape
        images = np.random.default_rng(SEED).integers(0, 256, size=(b, hh, ww, c), dtype=np.uint8)
        x, _ = pixels_to_data(s, images)
        forward, ti = model.sessions["flow_forward"], torch.from_numpy(images)

        def bare_post() -> np.ndarray:
            x, log_jac = pixels_to_data(s, images)
            z, log_det = forward.run(["z", "log_det"], {"x": x})
            z = z.astype(np.float64).reshape(b, -1)
            log_p = -0.5 * np.sum(z * z, axis=1) - 0.5 * z.shape[1] * LOG_2PI + log_det
            return -(log_p + log_jac) / (z.shape[1] * math.log(2.0))

        return {"eager": lambda: torch_bpd(ti, s), "bare": lambda: forward.run(["z", "log_det"], {"x": x})[1],
                "bare+post": bare_post, "edgegen": lambda: model.bits_per_dim(images)}
    return {"sample": sample, "score": score}


def glow_case(quick: bool) -> Case:
    """normflows Glow on 3x32x32, single scale: a squeeze and K GlowBlocks (ActNorm, LU 1x1 conv, affine
    coupling with a 3x3 / 1x1 / 3x3 net) on [12, 16, 16]; ActNorm initialised on a batch; RealNVP's logit map."""
    import normflows as nf
    import torch

    from edgegen.converters.flow.convert import normflows_spec

    steps, hidden = (2, 16) if quick else (16, 256)
    warnings.filterwarnings("ignore", message="torch.lu is deprecated")   # inside normflows' LU 1x1 conv
    torch.manual_seed(0)
    flows = [nf.flows.GlowBlock(12, hidden, split_mode="channel", init_zeros=False, use_lu=True)
             for _ in range(steps)] + [nf.flows.Squeeze()]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian((12, 16, 16), trainable=True), flows)
    images = np.random.default_rng(1).integers(0, 256, size=(16, 3, 32, 32))
    with torch.no_grad():       # ActNorm's data-dependent init: normflows runs it on the first log_prob
        model.log_prob(torch.logit(0.05 + 0.95 * (torch.from_numpy(images).float() + 0.5) / 256))
    spec = normflows_spec(model, data_shape=(3, 32, 32), data_range=(0.05, 1.0), logit=True, name="normflows-glow-32")
    return Case("glow-32", spec, flow_rows(spec.module.eval()))


# -- the bundled digits models --------------------------------------------------------------------------------

def _models_module(name: str):
    """models/<name>.py by path (models/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # before it runs: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def digits_gan_case(quick: bool) -> Case:
    spec = _models_module("digits_gan").spec()
    return Case("digits_gan", spec, gan_rows(spec.generator, classes=spec.num_classes))


def digits_vae_case(quick: bool) -> Case:
    spec = _models_module("digits_vae").spec()
    return Case("digits_vae", spec, vae_rows(spec.decoder))


def digits_vqvae_case(quick: bool) -> Case:
    spec = _models_module("digits_vqvae").spec()
    return Case("digits_vqvae", spec, vqvae_rows(spec.codebook_tensor(), spec.decoder))


def digits_flow_case(quick: bool) -> Case:
    spec = _models_module("digits_flow").spec()
    return Case("digits_flow", spec, flow_rows(spec.module.eval()))


def digits_ddpm_case(quick: bool) -> Case:
    """Class-conditional DDPM: DDIM (20 steps; 4 when quick), guidance 2 (the two halves batched), labels 0..9."""
    import torch

    from edgegen.runtimes.images import to_uint8
    from edgegen.runtimes.diffusion.schedulers import make_scheduler

    spec = _models_module("digits_ddpm").spec()
    net, steps, guidance = spec.denoiser, (4 if quick else 20), 2.0

    def make(model, b: int) -> dict[str, Callable[[], np.ndarray]]:
        sched = make_scheduler("ddim", model.sampler.scheduler_config)
        sched.set_timesteps(steps)
        ts = [int(t) for t in sched.timesteps]
        ratio = sched.config.num_train_timesteps // steps
        acp = [float(a) for a in sched.alphas_cumprod]
        prev = [acp[t - ratio] if t - ratio >= 0 else sched.final_alpha_cumprod for t in ts]
        labels = [i % 10 for i in range(b)]
        cond = np.array([spec.null_label] * b + labels, dtype=np.int64)                      # [2b]: uncond, cond
        noise = np.random.default_rng(SEED).standard_normal((b, *model.sampler.sample_shape), dtype=np.float32)
        times = [np.full(2 * b, t, dtype=np.float32) for t in ts]
        denoiser, g = model.sessions["denoiser"], np.float32(guidance)

        def bare() -> np.ndarray:                    # a minimal DDIM (eta 0, x0 clipped) with guidance
            x = noise
            for t, a, a_prev, tt in zip(ts, (acp[t] for t in ts), prev, times):
                eps = denoiser.run(None, {"sample": np.concatenate([x, x]), "timestep": tt, "class_labels": cond})[0]
                eps = eps[:b] + g * (eps[b:] - eps[:b])
                x0 = np.clip((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -1, 1)
                x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).astype(np.float32)
            return x

        tn, tc, ttimes = torch.from_numpy(noise), torch.from_numpy(cond), [torch.from_numpy(t) for t in times]

        def eager() -> np.ndarray:
            x = tn
            for t, a_prev, tt in zip(ts, prev, ttimes):
                a = acp[t]
                eps = net(torch.cat([x, x]), tt, tc)
                eps = eps[:b] + guidance * (eps[b:] - eps[:b])
                x0 = torch.clamp((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -1, 1)
                x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
            return _torch_uint8(x, model.sampler.value_range)

        return {"eager": eager, "bare": bare, "bare+post": lambda: to_uint8(bare(), model.sampler.value_range),
                "edgegen": lambda: model.sample(b, seed=SEED, steps=steps, scheduler="ddim", guidance=guidance,
                                                label=labels)}
    return Case("digits_ddpm", spec, {f"ddim{steps}": make})


CASES: dict[str, Callable[[bool], Case]] = {
    "dcgan": dcgan_case, "cond-dcgan": cond_dcgan_case, "stylegan": stylegan_case, "vae": vae_case,
    "vqvae": vqvae_case, "glow": glow_case, "digits_gan": digits_gan_case, "digits_vae": digits_vae_case,
    "digits_vqvae": digits_vqvae_case, "digits_flow": digits_flow_case, "digits_ddpm": digits_ddpm_case}


# -- timing -------------------------------------------------------------------------------------------------

def median_seconds(fns: dict[str, Callable[[], Any]], rounds: int, min_s: float) -> dict[str, float]:
    """Median seconds per call of each closure: rounds interleaved, the order rotating; each timing
    repeats its call enough times to last about ``min_s``."""
    repeat = {}
    for name, fn in fns.items():
        fn()                                                          # warm-up
        t0 = time.perf_counter()
        fn()
        repeat[name] = max(1, math.ceil(min_s / max(time.perf_counter() - t0, 1e-7)))
    names, times = list(fns), {name: [] for name in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[name], repeat[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
    return {name: statistics.median(t) for name, t in times.items()}


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != {list(b.shape)}"
    if a.dtype == np.uint8:
        return str(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    return f"{float(np.abs(a - b).max()):.0e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 rounds, short timings")
    parser.add_argument("--only", default=None, help=f"comma-separated rows, of: {', '.join(CASES)}")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="each timing repeats its call this long")
    parser.add_argument("--threads", type=int, default=None, help="default: the physical cores")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(CASES)}")
    batches = [int(b) for b in args.batches.split(",")]
    rounds, min_s = (3, 0.03) if args.quick else (args.rounds, args.min_seconds)
    # torch's OpenMP threads spin-wait by default; alternating with ONNX Runtime's pool in one process,
    # on a loaded machine, that made eager calls 100x slower now and then (a descheduled thread at every
    # barrier).  Waiting passively costs eager next to nothing here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import onnxruntime as ort
    import torch

    import edgegen

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} and onnxruntime {ort.__version__} on {threads} threads (physical cores); "
          f"median of {rounds} interleaved rounds; batches {batches}")
    header = (f"{'row':<22} {'batch':>5} {'eager/s':>9} {'bare/s':>9} {'+post/s':>9} {'edgegen/s':>9}  "
              f"{'edgegen/bare':>12} {'/bare+post':>10} {'x eager':>7}  check")
    lines, over = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.perf_counter()
            case = CASES[name](args.quick)
            artifact = edgegen.convert(case.spec, Path(tmp) / case.name, quantize="none")
            model = edgegen.load(artifact, provider="cpu", threads=threads)
            params = sum(p.numel() for m in _modules(case.spec) for p in m.parameters())
            print(f"{case.name}: {params / 1e6:.2f}M parameters, converted and loaded in "
                  f"{time.perf_counter() - started:.0f} s")
            for label, make in case.rows.items():
                for b in batches:
                    with torch.inference_mode():
                        fns = make(model, b)
                        outs = {k: fn() for k, fn in fns.items()}
                        sec = median_seconds(fns, rounds, min_s)
                    rate = {k: b / s for k, s in sec.items()}
                    ratio, ratio_post = sec["edgegen"] / sec["bare"], sec["edgegen"] / sec["bare+post"]
                    check = _difference(outs["edgegen"], outs["bare+post"]) + "/" + (
                        _difference(outs["eager"], outs["bare+post"]) if case.eager_same_noise else "-")
                    row = (f"{case.name + ' ' + label:<22} {b:>5} {rate['eager']:>9.1f} {rate['bare']:>9.1f} "
                           f"{rate['bare+post']:>9.1f} {rate['edgegen']:>9.1f}  {ratio:>12.3f} {ratio_post:>10.3f} "
                           f"{rate['edgegen'] / rate['eager']:>7.2f}  {check}")
                    print(row, flush=True)
                    lines.append(row)
                    if ratio > 1.05:
                        over.append(f"{case.name} {label} batch {b}: {ratio:.3f}x bare ({ratio_post:.3f}x bare+post)")
    print("\nsamples/s (flow score: images scored/s); edgegen/bare = latency ratio, issue 8's target <= 1.05")
    print(header)
    print("\n".join(lines))
    print("over 1.05x bare: " + ("; ".join(over) if over else "none"))


def _modules(spec: Any) -> list[Any]:
    import torch

    fields = ("generator", "mapping", "encoder", "decoder", "denoiser", "module")
    return [m for f in fields if isinstance(m := getattr(spec, f, None), torch.nn.Module)]


if __name__ == "__main__":
    main()
