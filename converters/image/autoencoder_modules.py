"""diffusers' ``AutoencoderKL`` and ``VQModel`` as the plain-tensor encoder and decoder modules the vae and vq-vae
specs take (:mod:`edgegen.converters.image.diffusers_autoencoder` builds the specs)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["KLDecoder", "KLEncoder", "VQDecoder", "VQEncoder"]


class KLEncoder(torch.nn.Module):
    """x [B, C, H, W] -> the posterior's mean and log-variance [B, latent_channels, h, w] (clamped as diffusers')."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean, posterior.logvar


class KLDecoder(torch.nn.Module):
    """z [B, latent_channels, h, w] (unscaled) -> image [B, C, H, W]."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class VQEncoder(torch.nn.Module):
    """x [B, C, H, W] -> z_e [B, vq_embed_dim, h, w], before quantizing (``VQModel.encode``)."""

    def __init__(self, vq: Any) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(x).latents


class VQDecoder(torch.nn.Module):
    """z_q [B, vq_embed_dim, h, w] -> image: ``VQModel.decode`` after its quantizer (spatial norm included)."""

    def __init__(self, vq: Any) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        spatial = z_q if self.vq.config.norm_type == "spatial" else None
        return self.vq.decoder(self.vq.post_quant_conv(z_q), spatial)
