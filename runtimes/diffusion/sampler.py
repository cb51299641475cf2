"""What a diffusion artifact declares about its sampling: its manifest's ``sampler`` and ``defaults`` sections,
parsed strictly and range-checked at load (before any session opens).  No torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from edgegen.errors import InvalidArgumentError, ManifestError

__all__ = ["DiffusionDefaults", "DiffusionSampler", "SchedulerRecord", "TextSettings", "VAESettings", "XLSettings"]


@dataclass(frozen=True)
class TextSettings:
    max_length: int
    pad_token_id: int


@dataclass(frozen=True)
class XLSettings:
    """SDXL's second text encoder and micro-conditioning (``StableDiffusionXLPipeline``).

    ``tokenizer_2`` pads to ``max_length`` with ``pad_token_id``; ``time_ids`` is the pipeline's ``add_time_ids``
    (original size, crop top-left, target size) for the artifact's image size; ``zero_negative`` is the
    pipeline's ``force_zeros_for_empty_prompt``: without a negative prompt the unconditional half is zeros."""

    max_length: int
    pad_token_id: int
    time_ids: tuple[float, ...]
    zero_negative: bool


@dataclass(frozen=True)
class VAESettings:
    scaling_factor: float
    shift_factor: float = 0.0


@dataclass(frozen=True)
class SchedulerRecord:
    """Which scheduler the artifact runs by default (``sampler.scheduler``; artifacts before it have none).

    ``chosen_by``: ``pipeline`` (the source's own scheduler, the one ``scheduler_config`` names), ``user`` (chosen
    at conversion instead of it; ``scheduler_config`` is still the source's), ``default`` (the source's config
    names no scheduler class: edgegen's default)."""

    name: str                                 # edgegen's name: "pndm"
    diffusers_class: str                      # the diffusers class it reproduces: "PNDMScheduler"
    chosen_by: Literal["pipeline", "user", "default"]

    def describe(self) -> str:
        """One phrase for people: ``pndm (diffusers PNDMScheduler, the pipeline's own)``."""
        why = {"pipeline": "the pipeline's own", "user": "chosen at conversion",
               "default": "edgegen's default: the source names none"}[self.chosen_by]
        return f"{self.name} (diffusers {self.diffusers_class}, {why})"


#: The most training timesteps a scheduler config may declare (1000 is usual): each scheduler builds tables
#: of that length when it is made.
MAX_TRAIN_TIMESTEPS = 1 << 20


@dataclass(frozen=True)
class DiffusionSampler:
    """The ``sampler`` section of a diffusion manifest."""

    scheduler_config: dict[str, Any]          # diffusers scheduler_config.json keys
    sample_shape: tuple[int, ...]             # what the denoiser denoises, without the batch axis
    image_shape: tuple[int, ...]              # the final image [C, H, W]
    value_range: tuple[float, float]
    conditioning: Literal["none", "text", "class"] = "none"
    num_classes: int | None = None
    null_label: int | None = None
    text: TextSettings | None = None
    vae: VAESettings | None = None
    scheduler: SchedulerRecord | None = None
    xl: XLSettings | None = None
    #: an LCM-distilled UNet's ``time_cond_proj_dim``: guidance is an input (``timestep_cond``, the pipelines'
    #: ``get_guidance_scale_embedding(guidance - 1)``), not a second batch half
    guidance_embedding: int | None = None
    #: an inpainting UNet (StableDiffusionInpaintPipeline): its sample input is the latents, the mask at latent
    #: size and the masked image's latents, concatenated on channels (2 C + 1)
    inpainting: bool = False

    @classmethod
    def from_manifest(cls, section: object) -> DiffusionSampler:
        from edgegen.manifest import MAX_COUNT, MAX_DIMENSION, count_problem, shape_problem
        from edgegen.strict import from_json, short

        where = "edgegen.json.sampler"
        s = from_json(cls, section, where=where, error=ManifestError, fix="re-convert the model")
        problems = [f"{key}: [C, H, W] {p}" for key, shape in (("sample_shape", s.sample_shape),
                                                               ("image_shape", s.image_shape))
                    if (p := shape_problem(shape, rank=3))]
        lo, hi = s.value_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            problems.append(f"value_range: must be [low, high] with low < high, got {short(list(s.value_range))}")
        if s.conditioning == "text" and s.text is None:
            problems.append("text: a text-conditioned model needs a 'text' section")
        if s.conditioning == "class" and s.num_classes is None:
            problems.append("num_classes: a class-conditioned model needs num_classes")
        if s.num_classes is not None and (p := count_problem(s.num_classes)):
            problems.append(f"num_classes: {p}")
        elif s.null_label is not None and (p := count_problem(s.null_label, 0, s.num_classes or 0)):
            problems.append(f"null_label: {p} (a class, or num_classes for the unconditional embedding)")
        if s.text is not None:
            problems += [f"text.{key}: {p}" for key, p in (
                ("max_length", count_problem(s.text.max_length, 1, MAX_DIMENSION)),
                ("pad_token_id", count_problem(s.text.pad_token_id, 0, MAX_COUNT - 1))) if p]
        if s.inpainting and s.vae is None:
            problems.append("inpainting: an inpainting model needs its 'vae' section (it encodes the masked image)")
        if s.guidance_embedding is not None and (p := count_problem(s.guidance_embedding, 1, MAX_DIMENSION)):
            problems.append(f"guidance_embedding: {p}")
        if s.xl is not None:
            if s.conditioning != "text":
                problems.append("xl: SDXL's second text encoder needs conditioning 'text'")
            problems += [f"xl.{key}: {p}" for key, p in (
                ("max_length", count_problem(s.xl.max_length, 1, MAX_DIMENSION)),
                ("pad_token_id", count_problem(s.xl.pad_token_id, 0, MAX_COUNT - 1))) if p]
            if len(s.xl.time_ids) != 6 or not all(math.isfinite(v) for v in s.xl.time_ids):
                problems.append(f"xl.time_ids: must be 6 numbers (original size, crop top-left, target size), got "
                                f"{short(list(s.xl.time_ids))}")
        if s.vae is not None and not (math.isfinite(s.vae.scaling_factor) and s.vae.scaling_factor != 0
                                      and math.isfinite(s.vae.shift_factor)):
            problems.append(f"vae: scaling_factor must be a non-zero number and shift_factor a number, got "
                            f"{s.vae.scaling_factor} and {s.vae.shift_factor}")
        # before any scheduler builds its tables of num_train_timesteps values
        steps = s.scheduler_config.get("num_train_timesteps", 1000)
        if p := count_problem(steps, 1, MAX_TRAIN_TIMESTEPS):
            problems.append(f"scheduler_config.num_train_timesteps: {p}")
        if s.scheduler is not None:
            from edgegen.runtimes.diffusion.scheduler_names import DIFFUSERS_CLASSES

            record = s.scheduler
            if DIFFUSERS_CLASSES.get(record.name) != record.diffusers_class:
                problems.append(f"scheduler: {short(record.name)} / {short(record.diffusers_class)} is not one of "
                                f"edgegen's schedulers ({', '.join(DIFFUSERS_CLASSES)}) with its diffusers class")
            elif record.chosen_by == "pipeline" and s.scheduler_config.get("_class_name") != record.diffusers_class:
                problems.append(f"scheduler: chosen_by 'pipeline' names {record.diffusers_class}, but scheduler_config "
                                f"is a {short(s.scheduler_config.get('_class_name'))}")
        if problems:
            raise ManifestError("; ".join(f"{where}.{p}" for p in problems) + "; re-convert the model")
        return s


@dataclass(frozen=True)
class DiffusionDefaults:
    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 1.0

    @classmethod
    def from_manifest(cls, section: object, sampler: DiffusionSampler) -> DiffusionDefaults:
        """The ``defaults`` section, checked as a run with these defaults would check them (the scheduler is
        made and its steps set, so a bad scheduler_config fails here too)."""
        from edgegen.manifest import count_problem
        from edgegen.runtimes.diffusion.schedulers import SCHEDULERS, make_scheduler
        from edgegen.strict import from_json, short

        where = "edgegen.json.defaults"
        d = from_json(cls, section, where=where, error=ManifestError, fix="re-convert the model")
        problems = []
        if d.scheduler not in SCHEDULERS:
            problems.append(f"scheduler: {short(d.scheduler)} is not one of {', '.join(SCHEDULERS)}")
        elif sampler.scheduler is not None and sampler.scheduler.name != d.scheduler:
            problems.append(f"scheduler: {short(d.scheduler)}, but sampler.scheduler records "
                            f"{short(sampler.scheduler.name)} as the default")
        if p := count_problem(d.steps, 1, sampler.scheduler_config.get("num_train_timesteps", 1000)):
            problems.append(f"steps: {p} (the model's num_train_timesteps)")
        if not math.isfinite(d.guidance) or d.guidance < 0:
            problems.append(f"guidance: must be a number >= 0, got {d.guidance}")
        if problems:
            raise ManifestError("; ".join(f"{where}.{p}" for p in problems) + "; re-convert the model")
        try:
            make_scheduler(d.scheduler, sampler.scheduler_config).set_timesteps(d.steps)
        except InvalidArgumentError as exc:   # what the scheduler's own parsing refuses in scheduler_config
            raise ManifestError(f"edgegen.json.sampler.{exc}; re-convert the model") from None
        return d
