"""Standalone diffusers autoencoders as image-family artifacts: an ``AutoencoderKL`` directory (Stable Diffusion's
VAE saved on its own) becomes a ``vae`` artifact, a ``VQModel`` directory (latent diffusion's VQ-GAN) a ``vq-vae``
artifact, each through the family's own spec, exporter and validation (:mod:`edgegen.converters.image.convert`).

What the graphs compute, in diffusers' terms (images in -1..1, ``image_shape`` from the config's
``sample_size``; both autoencoders are convolutional, so that size is the one the artifact takes)::

    AutoencoderKL   encoder: vae.encode(x).latent_dist -> mean, logvar   [B, latent_channels, H/f, W/f]
                    decoder: vae.decode(z).sample                       (z unscaled: not times scaling_factor)
    VQModel         encoder: vq.encode(x).latents (before quantizing)    [B, vq_embed_dim, H/f, W/f]
                    codebook: vq.quantize.embedding.weight               [num_vq_embeddings, vq_embed_dim]
                    decoder: post_quant_conv + decoder of z_q            (vq.decode's, spatial norm included)

with ``f = 2 ** (len(block_out_channels) - 1)``.  So ``reconstruct`` is ``vae.decode(mean)`` and ``vq(x)``.
Refusals (a missing or pickled weight file, a config edgegen cannot size) come before torch loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.converters.weights import safetensors_only
from edgegen.errors import UnsupportedModelError

__all__ = ["AUTOENCODERS", "spec_from_directory"]

#: diffusers ``_class_name`` -> the artifact family it converts to
AUTOENCODERS = {"AutoencoderKL": "vae", "VQModel": "vq-vae"}


def _image_shape(path: Path, config: dict[str, Any]) -> tuple[int, int, int]:
    size, channels, blocks = config.get("sample_size", 32), config.get("in_channels", 3), config.get(
        "block_out_channels", (64,))
    h, w = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, list) and len(size) == 2 \
        else (None, None)
    if not all(isinstance(v, int) and v >= 1 for v in (h, w)) or channels not in (1, 3) or not blocks:
        raise UnsupportedModelError(f"{path}: config.json has sample_size {size!r} and in_channels {channels!r}; "
                                    "edgegen converts autoencoders of grey or RGB images (in_channels 1 or 3) of one "
                                    "size (sample_size: an integer or [height, width])")
    factor = 2 ** (len(blocks) - 1)
    if h % factor or w % factor:
        raise UnsupportedModelError(f"{path}: sample_size {size!r} is not a multiple of the downsampling factor "
                                    f"{factor}; set sample_size in config.json to the image size to convert for")
    return channels, h, w


def spec_from_directory(path: Path, config: dict[str, Any]) -> Any:
    """The ``VAESpec`` (AutoencoderKL) or ``VQVAESpec`` (VQModel) of the diffusers directory ``path``, whose
    config.json is ``config``."""
    name = config.get("_class_name")
    if name not in AUTOENCODERS:
        raise UnsupportedModelError(f"{path} holds a diffusers {name}; edgegen converts standalone "
                                    f"{' and '.join(AUTOENCODERS)} directories")
    image_shape = _image_shape(path, config)
    safetensors_only(path, "autoencoder")   # before torch loads anything
    import diffusers

    from edgegen.converters.image.autoencoder_modules import KLDecoder, KLEncoder, VQDecoder, VQEncoder
    from edgegen.converters.image.spec import VAESpec, VQVAESpec

    diffusers.utils.logging.set_verbosity_error()
    model = getattr(diffusers, name).from_pretrained(path, use_safetensors=True).eval()
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    c, h, w = image_shape
    common = {"image_shape": image_shape, "value_range": (-1.0, 1.0), "name": f"diffusers.{name}"}
    if name == "AutoencoderKL":
        latent = (int(model.config.latent_channels), h // factor, w // factor)
        return VAESpec(encoder=KLEncoder(model), decoder=KLDecoder(model), latent_shape=latent, **common)
    return VQVAESpec(encoder=VQEncoder(model), decoder=VQDecoder(model), codebook=model.quantize.embedding,
                     **common)
