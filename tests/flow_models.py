"""Tiny normalizing flows written for the flow tests, with their own PyTorch bits/dim.

- :class:`RealNVP` on 1x8x8 data: affine couplings with checkerboard masks, a squeeze, affine
  couplings with channel masks; pixels enter through RealNVP's logit ``logit(a + (1 - a) x)``.
- :class:`Glow` on 3x8x8 data: squeeze, then steps of ActNorm (data-dependent init behind a
  Python ``if`` on a buffer), invertible 1x1 convolution (``torch.slogdet`` forward,
  ``torch.linalg.inv`` inverse) and sigmoid-scaled affine coupling; 5-bit data in
  [-0.5, 0.5] as in Glow's CelebA-HQ setup.

Each ``*_bits_per_dim`` is the reference: written the way the papers' code computes it, not
with edgegen's formula.  Importable as ``flow_models`` (tests/ is on sys.path).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgegen import FlowSpec

torch.set_num_threads(1)

ALPHA = 0.05        # RealNVP's logit margin
GLOW_BITS = 5       # Glow: 5-bit pixels


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (each 2x2 patch into channels)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)   # [B, C, 2, 2, H/2, W/2]
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)        # [B, C/4, H, 2, W, 2]
    return x.reshape(b, c // 4, h * 2, w * 2)


class Coupling(nn.Module):
    """RealNVP affine coupling: y = x on the mask, x * exp(s) + t off it, (s, t) = net(x * mask)."""

    def __init__(self, mask: torch.Tensor, hidden: int = 16) -> None:
        super().__init__()
        c = mask.shape[0]
        self.register_buffer("mask", mask[None])                                # [1, C, H, W]
        self.net = nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 2 * c, 3, padding=1))

    def _st(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(masked).chunk(2, dim=1)                                 # [B, C, H, W] each
        return torch.tanh(s) * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(dim=(1, 2, 3))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y * self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * torch.exp(-s))


class RealNVP(nn.Module):
    """1x8x8 -> z [4, 4, 4]: 3 checkerboard couplings, squeeze, 3 channel couplings."""

    def __init__(self) -> None:
        super().__init__()
        board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2       # [8, 8]
        channel = torch.tensor([1.0, 1.0, 0.0, 0.0])[:, None, None].expand(4, 4, 4)
        self.before = nn.ModuleList(Coupling((board if i % 2 == 0 else 1 - board)[None].float()) for i in range(3))
        self.after = nn.ModuleList(Coupling(channel if i % 2 == 0 else 1 - channel) for i in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])                                       # [B]
        for layer in self.before:
            x, ld = layer(x)
            log_det = log_det + ld
        x = squeeze(x)                                                          # [B, 4, 4, 4]
        for layer in self.after:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.after):
            z = layer.inverse(z)
        z = unsqueeze(z)                                                        # [B, 1, 8, 8]
        for layer in reversed(self.before):
            z = layer.inverse(z)
        return z


def realnvp_inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 8, 8, 1] -> model input: logit(a + (1 - a) (k + 1/2) / 256) (RealNVP, sec. 4.1)."""
    x = (torch.from_numpy(images).double().permute(0, 3, 1, 2) + 0.5) / 256
    return torch.logit(ALPHA + (1 - ALPHA) * x)


@torch.no_grad()
def realnvp_bits_per_dim(model: RealNVP, images: np.ndarray) -> np.ndarray:
    """RealNVP's bits/dim: -log p(y) minus the logit's and the 1/256 scaling's log-Jacobians, over D ln 2."""
    y = realnvp_inputs(images)
    z, log_det = model(y.float())
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z.double()).sum(dim=(1, 2, 3))
    s = torch.sigmoid(y)
    d = y[0].numel()
    # y = logit(a + (1-a) x), x = (k + 1/2)/256: dy/dk = (1-a) / (256 s (1 - s))
    log_jac = (math.log(1 - ALPHA) - math.log(256) - torch.log(s) - torch.log1p(-s)).sum(dim=(1, 2, 3))
    return (-(log_pz + log_det.double() + log_jac) / (d * math.log(2))).numpy()


class ActNorm(nn.Module):
    """Glow's activation normalisation, initialised from the first batch it sees."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized:   # data-dependent init (Glow, sec. 3.1)
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True) + 1e-6))
                self.initialized.fill_(1)
        return (x + self.bias) * torch.exp(self.log_scale), x.shape[2] * x.shape[3] * self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution with a full weight matrix."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]
        self.weight = nn.Parameter(q + 0.3 * torch.randn(channels, channels))   # |det| != 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.weight.shape[0]
        log_det = x.shape[2] * x.shape[3] * torch.slogdet(self.weight)[1]
        return nn.functional.conv2d(x, self.weight.view(c, c, 1, 1)), log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        c = self.weight.shape[0]
        return nn.functional.conv2d(y, torch.linalg.inv(self.weight).view(c, c, 1, 1))


class GlowCoupling(nn.Module):
    """Glow's affine coupling: y_b = (x_b + shift) * sigmoid(s + 2), (shift, s) = net(x_a)."""

    def __init__(self, channels: int, hidden: int = 16) -> None:
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(nn.Conv2d(half, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * (channels - half), 3, padding=1))

    def _shift_scale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(xa)
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x.chunk(2, dim=1)
        shift, scale = self._shift_scale(xa)
        return torch.cat([xa, (xb + shift) * scale], dim=1), torch.log(scale).sum(dim=(1, 2, 3))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y.chunk(2, dim=1)
        shift, scale = self._shift_scale(ya)
        return torch.cat([ya, yb / scale - shift], dim=1)


class Glow(nn.Module):
    """3x8x8 -> z [12, 4, 4]: squeeze, then ``steps`` x (ActNorm, 1x1 conv, coupling)."""

    def __init__(self, steps: int = 2, channels: int = 12) -> None:
        super().__init__()
        self.steps = nn.ModuleList(nn.ModuleList([ActNorm(channels), InvConv1x1(channels), GlowCoupling(channels)])
                                   for _ in range(steps))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = squeeze(x)                                                          # [B, 12, 4, 4]
        log_det = x.new_zeros(x.shape[0])                                       # [B]
        for step in self.steps:
            for layer in step:
                x, ld = layer(x)
                log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            for layer in reversed(step):
                z = layer.inverse(z)
        return unsqueeze(z)                                                     # [B, 3, 8, 8]


def glow_inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 8, 8, 3] -> Glow's input: floor(p / 2^(8 - bits)) / 2^bits - 1/2, at the bin centre."""
    bins = 2 ** GLOW_BITS
    k = torch.floor(torch.from_numpy(images).double().permute(0, 3, 1, 2) / 2 ** (8 - GLOW_BITS))
    return (k + 0.5) / bins - 0.5


@torch.no_grad()
def glow_bits_per_dim(model: Glow, images: np.ndarray) -> np.ndarray:
    """Glow's bits/dim (openai/glow model.py): objective = log p(x) - D log(n_bins), over -D ln 2."""
    x = glow_inputs(images)
    z, log_det = model(x.float())
    d = x[0].numel()
    log_pz = (-0.5 * (math.log(2 * math.pi) + z.double() ** 2)).sum(dim=(1, 2, 3))
    objective = log_pz + log_det.double() - d * math.log(2 ** GLOW_BITS)
    return (-objective / (d * math.log(2))).numpy()


def fixed_images(n: int, channels: int, seed: int = 0) -> np.ndarray:
    """n uint8 [8, 8, channels] images: smooth gradients plus noise, and the extreme levels 0 and 255."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(8), np.arange(8)) * 255 / 14                 # [8, 8]
    images = np.clip(ramp[None, :, :, None] + rng.normal(0, 40, (n, 8, 8, channels)), 0, 255).astype(np.uint8)
    images[0, 0, 0], images[-1, -1, -1] = 0, 255
    return images


def make_realnvp(seed: int = 0) -> RealNVP:
    torch.manual_seed(seed)
    return RealNVP().eval()


def make_glow(seed: int = 0, *, initialise: bool = True) -> Glow:
    torch.manual_seed(seed)
    model = Glow()
    if initialise:   # ActNorm's data-dependent init on one batch, as Glow's training starts
        with torch.no_grad():
            model(glow_inputs(fixed_images(16, 3, seed=1)).float())
    return model.eval()


def realnvp_spec(model: nn.Module, **overrides) -> FlowSpec:
    return FlowSpec(**{"module": model, "data_shape": (1, 8, 8), "data_range": (ALPHA, 1.0), "logit": True,
                       "name": "tests.RealNVP", **overrides})


def glow_spec(model: nn.Module, **overrides) -> FlowSpec:
    return FlowSpec(**{"module": model, "data_shape": (3, 8, 8), "num_bins": 2 ** GLOW_BITS,
                       "data_range": (-0.5, 0.5), "defaults": {"temperature": 0.7}, "name": "tests.Glow", **overrides})
