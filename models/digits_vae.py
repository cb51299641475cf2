"""edgegen's bundled VAE on scikit-learn's 8x8 digits: ``load()``, ``spec()``.

An MLP encoder (64 pixels -> 256 -> 256 -> mean and log-variance of an 8-dim latent) and an
MLP decoder (latent -> 256 -> 256 -> 64 pixels), images in [0, 1] (the digits' 0..16 / 16).
The decoder is the mean of a Gaussian with a fixed standard deviation (``sigma``, a training
constant): it returns pixel values, and the runtime clips them into [0, 1].  (A Bernoulli
decoder gave blurrier reconstructions and no better samples on these grey-level digits.)
Trained by models/train_digits_vae.py; checkpoint in models/digits_vae/.  Loadable by path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIR = Path(__file__).resolve().parent / "digits_vae"


@dataclass(frozen=True)
class VAEConfig:
    latent: int = 8
    hidden: int = 256
    sigma: float = 0.3          # the decoder Gaussian's standard deviation (pixels in [0, 1]); training only


class Encoder(nn.Module):
    """x [B, 1, 8, 8] in [0, 1] -> mean, logvar [B, latent] each."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        h = config.hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                 nn.Linear(h, 2 * config.latent))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)                                   # [B, latent] each
        return mean, logvar


class Decoder(nn.Module):
    """z [B, latent] -> the Gaussian's mean [B, 1, 8, 8] (pixels, about [0, 1])."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        h = config.hidden
        self.net = nn.Sequential(nn.Linear(config.latent, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, 1, 8, 8)


class DigitsVAE(nn.Module):
    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction mean [B, 1, 8, 8], mean, logvar) with z = mean + exp(logvar / 2) * eps."""
        mean, logvar = self.encoder(x)
        return self.decoder(mean + torch.exp(0.5 * logvar) * eps), mean, logvar

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"config": json.dumps(asdict(self.config), sort_keys=True)})

    @classmethod
    def from_checkpoint(cls, path: Path) -> DigitsVAE:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = VAEConfig(**json.loads(f.metadata()["config"]))
        model = cls(config)
        model.load_state_dict(load_file(path))
        return model.eval()


def load(checkpoint_dir: str | Path | None = None) -> DigitsVAE:
    path = Path(checkpoint_dir or DEFAULT_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_digits_vae.py")
    return DigitsVAE.from_checkpoint(path)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen VAESpec: ``edgegen convert models/digits_vae.py:spec -o digits-vae``."""
    import hashlib

    from edgegen import VAESpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    model = load(folder)
    return VAESpec(encoder=model.encoder, decoder=model.decoder, latent_shape=(model.config.latent,),
                   image_shape=(1, 8, 8), value_range=(0.0, 1.0), decoder_output="values",
                   name="models/digits_vae.py (MLP VAE on scikit-learn's 8x8 digits)",
                   checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
