"""edgegen's bundled class-conditional DCGAN on scikit-learn's 8x8 digits: ``load()``, ``spec()``.

The generator (the only part shipped): z [B, latent] and the digit's embedding, concatenated,
go through a 4x4 transposed convolution (1x1 -> 4x4), a stride-2 transposed convolution
(-> 8x8), each with BatchNorm and ReLU, and a 3x3 convolution with tanh: images in [-1, 1]
(the digits' 0..16 scaled).  Its discriminator lives in models/train_digits_gan.py, which
trains it; checkpoint in models/digits_gan/.  Loadable by path: models/ is not a package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIR = Path(__file__).resolve().parent / "digits_gan"


@dataclass(frozen=True)
class GeneratorConfig:
    latent: int = 32
    classes: int = 10
    embed: int = 16
    channels: int = 32


class DigitsGenerator(nn.Module):
    """image [B, 1, 8, 8] in [-1, 1] = G(z [B, latent], labels [B] in 0..classes-1)."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.label = nn.Embedding(config.classes, config.embed)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(config.latent + config.embed, 2 * c, 4, 1, 0, bias=False), nn.BatchNorm2d(2 * c),
            nn.ReLU(),                                                                      # [B, 2C, 4, 4]
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),  # [B, C, 8, 8]
            nn.Conv2d(c, 1, 3, padding=1), nn.Tanh())                                       # [B, 1, 8, 8]

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label(labels)], dim=1)                                       # [B, latent + embed]
        return self.net(h[:, :, None, None])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"config": json.dumps(asdict(self.config), sort_keys=True)})

    @classmethod
    def from_checkpoint(cls, path: Path) -> DigitsGenerator:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = GeneratorConfig(**json.loads(f.metadata()["config"]))
        model = cls(config)
        model.load_state_dict(load_file(path))
        return model.eval()


def load(checkpoint_dir: str | Path | None = None) -> DigitsGenerator:
    path = Path(checkpoint_dir or DEFAULT_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_digits_gan.py")
    return DigitsGenerator.from_checkpoint(path)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen GANSpec: ``edgegen convert models/digits_gan.py:spec -o digits-gan``."""
    import hashlib

    from edgegen import GANSpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    model = load(folder)
    return GANSpec(generator=model, latent_dim=model.config.latent, num_classes=model.config.classes,
                   value_range=(-1.0, 1.0),
                   name="models/digits_gan.py (class-conditional DCGAN on scikit-learn's 8x8 digits)",
                   checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
