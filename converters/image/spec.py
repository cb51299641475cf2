"""The specs that let custom ``torch.nn.Module`` image models become gan, vae and vq-vae artifacts.

GAN (:class:`GANSpec`)::

    image = generator(z[, labels])        z float32 [B, latent_dim], labels int64 [B] -> [B, C, H, W]
    StyleGAN-style, with a mapping network:
    w = mapping(z[, labels])              -> [B, w_dim] or [B, num_ws, w_dim]
    image = generator(w)                  (the synthesis network)

VAE (:class:`VAESpec`)::

    mean, logvar = encoder(x)             x [B, C, H, W] in value_range -> [B, *latent_shape] each
    out = decoder(z)                      z [B, *latent_shape] -> [B, C, H, W]: images in value_range
                                          (decoder_output="values") or Bernoulli logits ("logits")

VQ-VAE (:class:`VQVAESpec`)::

    z_e = encoder(x)                      x [B, C, H, W] -> [B, D, h, w]
    codebook                              [K, D]: z_q[b, :, i, j] = codebook[indices[b, i, j]]
    image = decoder(z_q)                  [B, D, h, w] -> [B, C, H, W]

Every forward must work for any batch size B (no batch baked into a reshape), take and
return float32, and be traceable by ``torch.onnx.export`` (no Python branches on tensor
values).  Random draws inside a forward (``torch.randn_like``, ``randn``, ``rand``,
``rand_like``, ``bernoulli``) are fine: the converter lifts them into graph inputs that
the runtime fills from its seeded generator.

Custom fused ops (a ``torch.autograd.Function`` calling a compiled extension, a custom op under
``torch.ops.<namespace>``) do not export: ``fallbacks`` maps each to a plain-PyTorch function
called with the same arguments (``{FusedLeakyReLUFunction: fused_leaky_relu_native}``; a
Function is called as ``.apply`` is), used while the converter runs the module and exports it.
rosinality's stylegan2-pytorch ``FusedLeakyReLUFunction`` and ``UpFirDn2d`` need none (built in,
:data:`edgegen.converters.export.rewrites.KNOWN`).  Convolutions whose ``groups`` follow the batch
(StyleGAN2's modulated conv) are rewritten by the converter; nothing to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from edgegen.errors import InvalidArgumentError


@dataclass(frozen=True)
class GANSpec:
    """A GAN generator, optionally with a StyleGAN-style mapping network."""

    generator: Any                                  # torch.nn.Module: G(z[, labels]), or G(w) with a mapping
    latent_dim: int
    num_classes: int | None = None                  # None: unconditional; else labels in 0..num_classes-1
    #: StyleGAN-style mapping network w = mapping(z[, labels]); its ``w_avg`` attribute (a
    #: [w_dim] tensor) is the truncation centre, else the converter averages w over 10,000 z.
    mapping: Any = None
    value_range: tuple[float, float] = (-1.0, 1.0)  # the generator's output range
    defaults: dict[str, Any] = field(default_factory=dict)   # GANDefaults fields, e.g. {"truncation": 0.7}
    name: str | None = None
    checkpoint_sha256: str | None = None
    fallbacks: dict[Any, Any] = field(default_factory=dict)  # custom Function class / torch.ops op -> plain PyTorch

    def __post_init__(self) -> None:
        from edgegen.runtimes.image.gan import GANDefaults

        problems = _modules(generator=self.generator) + _modules(mapping=self.mapping, optional=True)
        if not _positive_int(self.latent_dim):
            problems.append(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if self.num_classes is not None and not _positive_int(self.num_classes):
            problems.append(f"num_classes must be a positive integer or None, got {self.num_classes!r}")
        problems += _value_range(self) + _defaults(self.defaults, GANDefaults) + _fallbacks(self.fallbacks)
        psi = self.defaults.get("truncation") if isinstance(self.defaults, dict) else None
        if isinstance(psi, (int, float)) and not 0 <= psi <= 1:
            problems.append(f"defaults truncation must be in [0, 1] (1 = none), got {psi!r}")
        elif self.mapping is None and psi not in (None, 1, 1.0):
            problems.append("defaults truncation needs a mapping network (StyleGAN-style); give mapping= or drop it")
        _raise("GANSpec", problems)


@dataclass(frozen=True)
class VAESpec:
    """A VAE: encoder to (mean, logvar), decoder from latents."""

    encoder: Any                                    # torch.nn.Module: mean, logvar = encoder(x)
    decoder: Any                                    # torch.nn.Module: decoder(z)
    latent_shape: tuple[int, ...]                   # without the batch axis
    image_shape: tuple[int, int, int]               # [C, H, W], C = 1 or 3
    value_range: tuple[float, float] = (-1.0, 1.0)
    #: "values": the decoder returns images; "logits": Bernoulli logits (the runtime applies a
    #: sigmoid; value_range must then be (0, 1)).
    decoder_output: Literal["values", "logits"] = "values"
    defaults: dict[str, Any] = field(default_factory=dict)   # VAEDefaults fields, e.g. {"temperature": 0.8}
    name: str | None = None
    checkpoint_sha256: str | None = None
    fallbacks: dict[Any, Any] = field(default_factory=dict)  # as GANSpec.fallbacks

    def __post_init__(self) -> None:
        from edgegen.runtimes.image.vae import VAEDefaults

        problems = _modules(encoder=self.encoder, decoder=self.decoder)
        problems += _shape(self, "latent_shape") + _image_shape(self) + _value_range(self)
        if self.decoder_output not in ("values", "logits"):
            problems.append(f"decoder_output must be 'values' or 'logits', got {self.decoder_output!r}")
        elif self.decoder_output == "logits" and tuple(self.value_range) != (0, 1):
            problems.append(f"decoder_output='logits' decodes to sigmoid(logits) in [0, 1]: value_range must be "
                            f"(0, 1), got {self.value_range!r}")
        _raise("VAESpec", problems + _defaults(self.defaults, VAEDefaults) + _fallbacks(self.fallbacks))


@dataclass(frozen=True)
class VQVAESpec:
    """A VQ-VAE: encoder, codebook, decoder."""

    encoder: Any                                    # torch.nn.Module: z_e = encoder(x), [B, D, h, w]
    decoder: Any                                    # torch.nn.Module: decoder(z_q)
    #: The codebook [K, D]: a tensor, an nn.Embedding, or an attribute path starting at the
    #: encoder or decoder, e.g. "decoder.quantizer.embedding.weight".
    codebook: Any
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float] = (-1.0, 1.0)
    defaults: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    checkpoint_sha256: str | None = None
    fallbacks: dict[Any, Any] = field(default_factory=dict)  # as GANSpec.fallbacks

    def __post_init__(self) -> None:
        from edgegen.runtimes.image.vae import VQVAEDefaults

        problems = _modules(encoder=self.encoder, decoder=self.decoder) + _image_shape(self) + _value_range(self)
        if not problems:
            try:
                self.codebook_tensor()
            except InvalidArgumentError as exc:
                problems.append(str(exc))
        _raise("VQVAESpec", problems + _defaults(self.defaults, VQVAEDefaults) + _fallbacks(self.fallbacks))

    def codebook_tensor(self) -> Any:
        """The codebook as a float32 tensor [K, D] (a copy, detached)."""
        import torch

        value = self.codebook
        if isinstance(value, str):
            root, _, path = value.partition(".")
            if root not in ("encoder", "decoder") or not path:
                raise InvalidArgumentError(f"codebook path {value!r} must start with 'encoder.' or 'decoder.', "
                                           "e.g. 'decoder.quantizer.embedding.weight'")
            value = getattr(self, root)
            for part in path.split("."):
                if not hasattr(value, part):
                    raise InvalidArgumentError(f"codebook path {self.codebook!r}: {type(value).__name__} has no "
                                               f"attribute {part!r}")
                value = getattr(value, part)
        if isinstance(value, torch.nn.Embedding):
            value = value.weight
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point() or 0 in value.shape:
            got = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidArgumentError(f"codebook must be a float tensor [K, D] (or an nn.Embedding), got {got}")
        return value.detach().float().clone()


def _raise(spec: str, problems: list[str]) -> None:
    if problems:
        raise InvalidArgumentError(f"{spec}: " + "; ".join(problems))


def _modules(optional: bool = False, **modules: Any) -> list[str]:
    import torch

    return [f"{name} must be a torch.nn.Module, got {type(m).__name__}" for name, m in modules.items()
            if not isinstance(m, torch.nn.Module) and not (optional and m is None)]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _shape(spec: Any, name: str) -> list[str]:
    shape = getattr(spec, name)
    if not isinstance(shape, (tuple, list)) or not shape or not all(_positive_int(d) for d in shape):
        return [f"{name} must be a non-empty tuple of positive integers (without the batch axis), got {shape!r}"]
    object.__setattr__(spec, name, tuple(shape))
    return []


def _image_shape(spec: Any) -> list[str]:
    problems = _shape(spec, "image_shape")
    if not problems and (len(spec.image_shape) != 3 or spec.image_shape[0] not in (1, 3)):
        problems.append(f"image_shape must be (channels, height, width) with 1 or 3 channels, got {spec.image_shape!r}")
    return problems


def _value_range(spec: Any) -> list[str]:
    vr = spec.value_range
    if not isinstance(vr, (tuple, list)) or len(vr) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vr) or vr[0] >= vr[1]:
        return [f"value_range must be (low, high) with low < high, e.g. (-1, 1) or (0, 1); got {vr!r}"]
    object.__setattr__(spec, "value_range", (float(vr[0]), float(vr[1])))
    return []


def _defaults(defaults: Any, defaults_type: type) -> list[str]:
    from edgegen.strict import from_json

    try:
        from_json(defaults_type, defaults, where="defaults", error=InvalidArgumentError)
    except InvalidArgumentError as exc:
        return [str(exc)]
    return []


def _fallbacks(fallbacks: Any) -> list[str]:
    from torch.autograd import Function

    from edgegen.converters.export.rewrites import is_op

    if not isinstance(fallbacks, dict):
        return [f"fallbacks must be a dict {{custom Function class or torch.ops op: function}}, got "
                f"{type(fallbacks).__name__}"]
    return [f"fallbacks key {key!r} must be a torch.autograd.Function subclass or a torch.ops op, and its value "
            f"a plain-PyTorch function (got {type(fn).__name__})" for key, fn in fallbacks.items()
            if not ((isinstance(key, type) and issubclass(key, Function) or is_op(key)) and callable(fn))]
