"""edgegen's bundled RealNVP flow on scikit-learn's 8x8 digits: ``load()``, ``spec()``.

RealNVP (Dinh et al. 2017): affine couplings with checkerboard masks on 1x8x8, a squeeze to
4x4x4, couplings with channel masks, then checkerboard ones again, and a learned
per-value affine layer last (a diagonal Gaussian base folded in, so the prior is N(0, I)).
Each coupling's scale is ``scale * tanh(.)`` and its network's last convolution starts at
zero, so the untrained flow is the identity.

Pixels (the digits' 17 levels k = 0..16) enter as edgegen's FlowSpec convention says, with
num_bins = 17, data_range = (ALPHA, 1 - ALPHA) and logit::

    v = ALPHA + (1 - 2 ALPHA) (k + u) / 17,   x = logit(v)

u ~ U(0, 1) in training (uniform dequantization); u = 1/2 (the bin centre) for the held-out
bits/dim, as edgegen's runtime computes it (``edgegen score``).  A uint8 image shows level k
as round(255 k / 16) (to_uint8 of k / 16), which edgegen reads back as level k.
Trained by models/train_digits_flow.py; checkpoint in models/digits_flow/.  Loadable by path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIR = Path(__file__).resolve().parent / "digits_flow"
NUM_BINS = 17            # the digits' levels 0..16
ALPHA = 0.05             # RealNVP's logit margin


@dataclass(frozen=True)
class FlowConfig:
    hidden: int = 48
    checker: int = 3     # checkerboard couplings before the squeeze (and after the channel ones)
    channel: int = 3     # channel couplings at 4x4x4


def to_model_space(levels: torch.Tensor, u: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel levels [B, 1, 8, 8] (0..16) and offsets u in [0, 1) -> x [B, 1, 8, 8] and log|dx/dk| [B]."""
    v = ALPHA + (1 - 2 * ALPHA) * (levels + u) / NUM_BINS                                  # [B, 1, 8, 8]
    log_jac = math.log((1 - 2 * ALPHA) / NUM_BINS) * levels[0].numel() - (torch.log(v) + torch.log1p(-v)).sum((1, 2, 3))
    return torch.log(v) - torch.log1p(-v), log_jac


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (each 2x2 patch into channels)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)                   # [B, C, 2, 2, H/2, W/2]
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)                        # [B, C/4, H, 2, W, 2]
    return x.reshape(b, c // 4, h * 2, w * 2)


class Coupling(nn.Module):
    """y = x on the mask, x * exp(s) + t off it, (s, t) = net(x * mask); s = scale * tanh(.)."""

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        c = mask.shape[0]
        self.register_buffer("mask", mask[None].clone())                                         # [1, C, H, W]
        self.net = nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * c, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def _st(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(masked).chunk(2, dim=1)                                            # [B, C, H, W] each
        return self.scale * torch.tanh(s) * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(dim=(1, 2, 3))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y * self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * torch.exp(-s))


class DigitsFlow(nn.Module):
    """x [B, 1, 8, 8] (logit space) -> z [B, 4, 4, 4], log|det dz/dx| [B]; ``inverse`` goes back."""

    def __init__(self, config: FlowConfig = FlowConfig()) -> None:
        super().__init__()
        self.config = config
        board = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float()          # [8, 8]
        small = squeeze(board[None, None])[0]                                                # [4, 4, 4]
        channel = torch.tensor([1.0, 1.0, 0.0, 0.0])[:, None, None].expand(4, 4, 4)
        alternate = lambda mask, i: mask if i % 2 == 0 else 1 - mask                          # noqa: E731
        self.before = nn.ModuleList(Coupling(alternate(board, i)[None], config.hidden) for i in range(config.checker))
        self.middle = nn.ModuleList(Coupling(alternate(channel, i), config.hidden) for i in range(config.channel))
        self.after = nn.ModuleList(Coupling(alternate(small, i), config.hidden) for i in range(config.checker))
        self.loc = nn.Parameter(torch.zeros(1, 4, 4, 4))                                   # the folded-in base
        self.log_scale = nn.Parameter(torch.zeros(1, 4, 4, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])                                                  # [B]
        for layer in self.before:
            x, ld = layer(x)
            log_det = log_det + ld
        x = squeeze(x)                                                                     # [B, 4, 4, 4]
        for layer in [*self.middle, *self.after]:
            x, ld = layer(x)
            log_det = log_det + ld
        return (x - self.loc) * torch.exp(-self.log_scale), log_det - self.log_scale.sum()

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x = self.loc + torch.exp(self.log_scale) * z                                       # [B, 4, 4, 4]
        for layer in reversed([*self.middle, *self.after]):
            x = layer.inverse(x)
        x = unsqueeze(x)                                                                   # [B, 1, 8, 8]
        for layer in reversed(self.before):
            x = layer.inverse(x)
        return x

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"config": json.dumps(asdict(self.config), sort_keys=True)})

    @classmethod
    def from_checkpoint(cls, path: Path) -> DigitsFlow:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = FlowConfig(**json.loads(f.metadata()["config"]))
        model = cls(config)
        model.load_state_dict(load_file(path))
        return model.eval()


def load(checkpoint_dir: str | Path | None = None) -> DigitsFlow:
    path = Path(checkpoint_dir or DEFAULT_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_digits_flow.py")
    return DigitsFlow.from_checkpoint(path)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen FlowSpec: ``edgegen convert models/digits_flow.py:spec -o digits-flow``."""
    import hashlib

    from edgegen import FlowSpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    return FlowSpec(module=load(folder), data_shape=(1, 8, 8), num_bins=NUM_BINS, data_range=(ALPHA, 1 - ALPHA),
                    logit=True, dequantization_offset=0.5, defaults={"temperature": 0.8},
                    name="models/digits_flow.py (RealNVP on scikit-learn's 8x8 digits, 17 levels)",
                    checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
