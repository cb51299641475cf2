"""edgegen's bundled VQ-VAE on scikit-learn's 8x8 digits: ``load()``, ``spec()``.

A conv encoder (8x8 -> a 4x4 grid of 16-dim vectors z_e), a codebook of 64 codes (each z_e
is replaced by its nearest code: z_q) and a conv decoder (z_q -> 8x8 pixels, about [0, 1]; the
runtime clips).  The codebook is learned by exponential moving averages (van den Oord et al.
2017, appendix A.1), so it is a buffer, not a parameter.  Trained by
models/train_digits_vqvae.py; checkpoint in models/digits_vqvae/.  Loadable by path.

Sampling codes uniformly (what a vq-vae artifact does without a prior) gives patchworks, not
digits: a VQ-VAE needs a learned prior over its code grids for that; this model is for
reconstruction and for edgegen's vq-vae family.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIR = Path(__file__).resolve().parent / "digits_vqvae"


@dataclass(frozen=True)
class VQVAEConfig:
    codes: int = 64            # K
    code_dim: int = 16         # D
    channels: int = 32


class DigitsVQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig = VQVAEConfig()) -> None:
        super().__init__()
        c, d = config.channels, config.code_dim
        self.config = config
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, 1, 1), nn.ReLU(),                                           # [B, C, 8, 8]
            nn.Conv2d(c, c, 4, 2, 1), nn.ReLU(),                                           # [B, C, 4, 4]
            nn.Conv2d(c, d, 1))                                                            # z_e [B, D, 4, 4]
        self.decoder = nn.Sequential(
            nn.Conv2d(d, c, 3, 1, 1), nn.ReLU(),                                           # [B, C, 4, 4]
            nn.ConvTranspose2d(c, c, 4, 2, 1), nn.ReLU(),                                  # [B, C, 8, 8]
            nn.Conv2d(c, 1, 3, 1, 1))                                                      # [B, 1, 8, 8]
        self.register_buffer("codebook", torch.randn(config.codes, d))                    # [K, D]

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_e [B, D, h, w] -> nearest codes' indices [B, h, w] and z_q [B, D, h, w]."""
        z = z_e.permute(0, 2, 3, 1)                                                        # [B, h, w, D]
        dist = (z * z).sum(-1, keepdim=True) - 2 * z @ self.codebook.t() + (self.codebook ** 2).sum(-1)  # [B, h, w, K]
        indices = dist.argmin(-1)
        return indices, self.codebook[indices].permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, 1, 8, 8] of images x [B, 1, 8, 8] in [0, 1] (encode, quantize, decode)."""
        return self.decoder(self.quantize(self.encoder(x))[1])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"config": json.dumps(asdict(self.config), sort_keys=True)})

    @classmethod
    def from_checkpoint(cls, path: Path) -> DigitsVQVAE:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = VQVAEConfig(**json.loads(f.metadata()["config"]))
        model = cls(config)
        model.load_state_dict(load_file(path))
        return model.eval()


def load(checkpoint_dir: str | Path | None = None) -> DigitsVQVAE:
    path = Path(checkpoint_dir or DEFAULT_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_digits_vqvae.py")
    return DigitsVQVAE.from_checkpoint(path)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen VQVAESpec: ``edgegen convert models/digits_vqvae.py:spec -o digits-vqvae``."""
    import hashlib

    from edgegen import VQVAESpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    model = load(folder)
    return VQVAESpec(encoder=model.encoder, decoder=model.decoder, codebook=model.codebook, image_shape=(1, 8, 8),
                     value_range=(0.0, 1.0),
                     name="models/digits_vqvae.py (VQ-VAE on scikit-learn's 8x8 digits, 64 codes on a 4x4 grid)",
                     checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
