"""edgegen's bundled class-conditional DDPM on scikit-learn's 8x8 digits: ``load()``, ``spec()``.

A small UNet (two resolutions, 8x8 and 4x4, residual blocks with GroupNorm/SiLU, a sinusoidal
time embedding and a label embedding added in every block) that predicts the noise (epsilon).
Label 10 is "no label": training drops the label 10% of the time, so classifier-free guidance
works at sampling time.  Trained by models/train_digits_ddpm.py; checkpoint in models/digits_ddpm/.
Samples are images in [-1, 1] (the digits' 0..16 scaled).  Loadable by path: models/ is not a package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIR = Path(__file__).resolve().parent / "digits_ddpm"
#: diffusers scheduler_config.json keys: the schedule the model is trained with (DDPM's linear betas)
SCHEDULER_CONFIG = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                    "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
                    "clip_sample_range": 1.0, "variance_type": "fixed_small", "timestep_spacing": "leading",
                    "steps_offset": 0}


@dataclass(frozen=True)
class DenoiserConfig:
    channels: int = 32
    embed: int = 128
    classes: int = 10
    groups: int = 8


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)   # [half]
    args = t.float()[:, None] * freqs[None]                                                   # [B, half]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, embed: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(embed, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class DigitsDenoiser(nn.Module):
    """eps = model(x [B, 1, 8, 8], t [B], labels [B] in 0..10)."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        c, e, g = config.channels, config.embed, config.groups
        self.config = config
        self.time = nn.Sequential(nn.Linear(c, e), nn.SiLU(), nn.Linear(e, e))
        self.label = nn.Embedding(config.classes + 1, e)
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.down1, self.down2 = ResBlock(c, c, e, g), ResBlock(c, c, e, g)
        self.downsample = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)                       # 8x8 -> 4x4
        self.mid1, self.mid2 = ResBlock(2 * c, 2 * c, e, g), ResBlock(2 * c, 2 * c, e, g)
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * c, c, 3, padding=1))
        self.up1, self.up2 = ResBlock(2 * c, c, e, g), ResBlock(c, c, e, g)
        self.out = nn.Sequential(nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    @property
    def null_label(self) -> int:
        return self.config.classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.config.channels)) + self.label(labels)  # [B, E]
        h = self.conv_in(x)                                                                 # [B, C, 8, 8]
        skip = self.down2(self.down1(h, emb), emb)
        h = self.mid2(self.mid1(self.downsample(skip), emb), emb)                           # [B, 2C, 4, 4]
        h = self.up2(self.up1(torch.cat([self.upsample(h), skip], dim=1), emb), emb)        # [B, C, 8, 8]
        return self.out(h)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"config": json.dumps(asdict(self.config), sort_keys=True)})

    @classmethod
    def from_checkpoint(cls, path: Path) -> DigitsDenoiser:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = DenoiserConfig(**json.loads(f.metadata()["config"]))
        model = cls(config)
        model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
        return model.eval()


def load(checkpoint_dir: str | Path | None = None) -> DigitsDenoiser:
    path = Path(checkpoint_dir or DEFAULT_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_digits_ddpm.py")
    return DigitsDenoiser.from_checkpoint(path)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen DiffusionSpec: ``edgegen convert models/digits_ddpm.py:spec -o digits-ddpm``."""
    import hashlib

    from edgegen import DiffusionSpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    model = load(folder)
    return DiffusionSpec(denoiser=model, sample_shape=(1, 8, 8), scheduler_config=dict(SCHEDULER_CONFIG),
                         num_classes=model.config.classes, null_label=model.null_label,
                         defaults={"scheduler": "dpm++", "steps": 20, "guidance": 2.0},
                         name="models/digits_ddpm.py (class-conditional DDPM on scikit-learn's 8x8 digits)",
                         checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
