"""The spec that lets any denoising ``torch.nn.Module`` become a ``diffusion`` artifact.

The denoiser predicts, for a noisy sample at timestep ``t``, the noise (``epsilon``), the
velocity (``v_prediction``) or the clean sample (``sample``)::

    out = denoiser(sample, timestep)              # unconditional
    out = denoiser(sample, timestep, labels)      # class-conditional (num_classes set)

    sample    float32 [B, *sample_shape]   e.g. [B, 1, 16, 16]
    timestep  float32 [B]                  the scheduler's timestep (0 .. num_train_timesteps - 1;
                                           Euler-type schedulers give fractional ones; flow matching:
                                           sigma * num_train_timesteps, 1000 down to > 0)
    labels    int64   [B]                  0 .. num_classes - 1, or null_label (the "no class"
                                           embedding classifier-free guidance runs against)
    out       float32 [B, *sample_shape]

A flow-matching denoiser (SD3 / Flux style: it predicts the velocity ``noise - x0``) takes a
``FlowMatchEulerDiscreteScheduler`` config instead (``shift``...; no betas) and samples with ``flow-euler``
only; the noise-schedule schedulers refuse it, and it refuses their configs.

A latent-space denoiser (Stable Diffusion style) names its VAE, a diffusers ``AutoencoderKL`` (``vae=``):
``sample_shape`` is then its latents' ``[latent_channels, h, w]``, the images are what it decodes (RGB in
-1..1), and img2img encodes through it.  Without a VAE the samples are the images, so they have 1 (grey)
or 3 (RGB) channels; anything else is refused when the spec is made (it would be latents written as a PNG).

The noise schedule is a diffusers ``scheduler_config.json`` dict (``num_train_timesteps``,
``beta_schedule``, ``beta_start``, ``beta_end``, ``prediction_type``, ...): the runtime's
numpy schedulers read it with diffusers' key names, and any of them (DDPM, DDIM, PNDM, LMS, Heun,
Euler, Euler ancestral, DPM-Solver, UniPC) can sample the model.  The artifact's default is the class the
config's ``_class_name`` names (DDIM when it names none), or ``defaults["scheduler"]`` when given (recorded
as the user's choice).  ``models/digits_ddpm.py`` is an example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import InvalidArgumentError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DiffusionSpec:
    """A custom denoiser, its noise schedule and the shape of what it denoises."""

    denoiser: Any                           # torch.nn.Module following the contract above
    sample_shape: tuple[int, ...]           # without the batch axis, e.g. (1, 16, 16)
    scheduler_config: dict[str, Any]        # diffusers scheduler_config.json keys
    #: Class-conditional models: number of classes; ``null_label`` enables guidance.
    num_classes: int | None = None
    null_label: int | None = None
    #: Pixel values the samples live in (what -1..1 or 0..1 means for the PNG; with a vae: its -1..1).
    value_range: tuple[float, float] = (-1.0, 1.0)
    #: Sampling defaults stored in the artifact: scheduler (edgegen's name or the diffusers class name), steps,
    #: guidance.
    defaults: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    checkpoint_sha256: str | None = None
    #: Latent-space denoisers: the diffusers ``AutoencoderKL`` whose latents ``sample_shape`` describes (its
    #: ``config.scaling_factor`` / ``shift_factor`` scale them); the images are what it decodes.  Without one the
    #: samples are the images, grey (1 channel) or RGB (3).
    vae: Any = None

    def __post_init__(self) -> None:
        import torch

        problems = []
        if not isinstance(self.denoiser, torch.nn.Module):
            problems.append(f"denoiser must be a torch.nn.Module, got {type(self.denoiser).__name__}")
        shape = self.sample_shape
        if not isinstance(shape, (tuple, list)) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            problems.append(f"sample_shape must be positive integers without the batch axis, e.g. (1, 16, 16); "
                            f"got {shape!r}")
        else:
            object.__setattr__(self, "sample_shape", tuple(shape))
            problems += _vae_problems(self.vae, self.sample_shape)
        if not isinstance(self.scheduler_config, dict) or "num_train_timesteps" not in self.scheduler_config:
            problems.append("scheduler_config must be a diffusers scheduler config dict with at least "
                            "num_train_timesteps (and beta_schedule, beta_start, beta_end, prediction_type)")
        elif self.scheduler_config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
            problems.append(f"scheduler_config prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got "
                            f"{self.scheduler_config['prediction_type']!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            problems.append(f"num_classes must be a positive integer or None, got {self.num_classes!r}")
        if self.null_label is not None and self.num_classes is None:
            problems.append("null_label needs num_classes (it is the label of the unconditional embedding)")
        lo, hi = self.value_range
        if not lo < hi:
            problems.append(f"value_range must be (low, high) with low < high, got {self.value_range!r}")
        unknown = set(self.defaults) - {"scheduler", "steps", "guidance"}
        if unknown:
            problems.append(f"defaults may set scheduler, steps and guidance, not {', '.join(sorted(unknown))}")
        if problems:
            raise InvalidArgumentError("DiffusionSpec: " + "; ".join(problems))


#: what a spec without a VAE may denoise: images the PNG writer writes (grey or RGB)
PIXEL_CHANNELS = (1, 3)


def _vae_problems(vae: Any, shape: tuple[int, ...]) -> list[str]:
    """What is wrong with a spec's VAE for samples of ``shape`` (or with its lack of one)."""
    if vae is None:
        if len(shape) == 3 and shape[0] not in PIXEL_CHANNELS:
            return [f"sample_shape {list(shape)} has {shape[0]} channels and there is no vae: a latent-space "
                    "denoiser needs the AutoencoderKL that decodes its latents (vae=...), and a pixel-space one "
                    f"denoises images of {' or '.join(map(str, PIXEL_CHANNELS))} channels (grey or RGB)"]
        return []
    config = getattr(vae, "config", None)
    if not all(hasattr(vae, m) for m in ("encode", "decode")) or getattr(config, "scaling_factor", None) is None:
        return [f"vae must be a diffusers AutoencoderKL (encode, decode and config.scaling_factor), got "
                f"{type(vae).__name__}"]
    latent = getattr(config, "latent_channels", None)
    if len(shape) != 3 or latent != shape[0]:
        return [f"sample_shape {list(shape)} must be [latent_channels, h, w] of the vae's latents (its "
                f"latent_channels is {latent})"]
    return []
