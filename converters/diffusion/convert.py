"""Converting diffusion models into ``diffusion`` artifacts.

Sources:

- a diffusers pipeline directory (``model_index.json``): ``DDPMPipeline`` / ``DDIMPipeline``
  (a ``UNet2DModel`` + scheduler, the google/ddpm-cifar10 layout) or ``StableDiffusionPipeline``
  / ``StableDiffusionImg2ImgPipeline`` (CLIP text encoder + tokenizer, ``UNet2DConditionModel``,
  ``AutoencoderKL``, scheduler) or ``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` (two
  CLIP text encoders and tokenizers, the UNet's ``text_time`` added conditioning: pooled text embeddings and
  ``add_time_ids`` for the artifact's image size; no refiner yet);
- a diffusers ``UNet2DModel`` directory (``config.json``) with ``scheduler_config.json`` beside it;
- a :class:`~edgegen.converters.diffusion.spec.DiffusionSpec` wrapping any denoiser.

Graphs (exported by :func:`edgegen.converters.export.graph.export_graph`: TorchScript exporter,
opset 17, dynamic batch, checked against PyTorch at batch 1 and 3):
``denoiser`` (sample, timestep[, encoder_hidden_states | class_labels] -> out_sample), and for
Stable Diffusion ``text_encoder`` (input_ids -> last_hidden_state; SDXL: input_ids, input_ids_2 ->
prompt_embeds, pooled_prompt_embeds, and the denoiser takes text_embeds and time_ids too), ``vae_decoder``
(latent_sample -> sample) and ``vae_encoder`` (sample -> latent_parameters: mean and logvar,
for img2img).  The scheduler config travels in the manifest with diffusers' key names.

The scheduler: the artifact runs the source's own (the class its ``scheduler_config.json`` names), recorded
as ``sampler.scheduler`` with ``chosen_by: "pipeline"``; a class edgegen does not implement fails the
conversion with one line naming the closest one it has, unless the user chooses one (``scheduler=``, or a
spec's ``defaults["scheduler"]``: ``chosen_by: "user"``).  Nothing is substituted silently.

Validation: every graph against PyTorch at batch 1 and 3 (max abs error relative to the
output's scale; the exporter's dynamic axes are not trusted), then a whole sample: the
runtime's loop with the artifact's default scheduler against PyTorch with the same diffusers
scheduler class, from the same initial noise and, for the stochastic schedulers, the same
per-step noise (PSNR of the images).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.diffusion.spec import DiffusionSpec
from edgegen.converters.export.graph import OPSET, GraphExport, export_graph
from edgegen.converters.writer import ArtifactWriter
from edgegen.converters.weights import safetensors_only
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError
from edgegen.manifest import Source

FAMILY = "diffusion"
#: A whole sample must match PyTorch at least this well (PSNR, dB, images in [0, 1]).
MIN_PSNR = 40.0
VALIDATION_STEPS = 8
VALIDATION_PROMPT = "a red cat"
#: the seed of the validation sample's per-step noise (the stochastic schedulers)
VALIDATION_SEED = 0

PIPELINES = {"DDPMPipeline": "unet", "DDIMPipeline": "unet", "PNDMPipeline": "unet", "StableDiffusionPipeline": "sd",
             "StableDiffusionImg2ImgPipeline": "sd", "StableDiffusionInpaintPipeline": "sd",
             "StableDiffusionXLPipeline": "sdxl",
             "StableDiffusionXLImg2ImgPipeline": "sdxl", "LatentConsistencyModelPipeline": "sd",
             "LatentConsistencyModelImg2ImgPipeline": "sd"}
#: a pipeline's own call defaults where they are not StableDiffusionPipeline's (50 steps, guidance 7.5)
PIPELINE_DEFAULTS = {"LatentConsistencyModelPipeline": {"steps": 4, "guidance": 8.5},
                     "StableDiffusionInpaintPipeline": {"steps": 50, "guidance": 7.5},
                     "LatentConsistencyModelImg2ImgPipeline": {"steps": 4, "guidance": 8.5}}
#: the scheduler of a source whose config names no class (a spec's bare noise schedule)
DEFAULT_SCHEDULER = "ddim"


@dataclass
class DiffusionModel:
    """The PyTorch side of a diffusion model, whatever its source."""

    denoiser: torch.nn.Module                 # (sample, timestep[, cond]) -> out, wrapped to plain tensors
    sample_shape: tuple[int, ...]             # [C, h, w] of what the denoiser denoises
    scheduler_config: dict[str, Any]
    model_class: str
    conditioning: str = "none"                # none | text | class
    num_classes: int | None = None
    null_label: int | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer_json: str | None = None
    max_length: int | None = None
    pad_token_id: int | None = None
    hidden_size: int | None = None
    vae_decoder: torch.nn.Module | None = None
    vae_encoder: torch.nn.Module | None = None
    vae_scaling_factor: float = 1.0
    vae_shift_factor: float = 0.0
    image_shape: tuple[int, ...] = ()
    value_range: tuple[float, float] = (-1.0, 1.0)
    defaults: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str | None = None
    xl: XLText | None = None                  # SDXL: the second tokenizer and the micro-conditioning
    guidance_embedding: int | None = None     # an LCM UNet's time_cond_proj_dim: guidance as its input
    inpainting: bool = False                  # a 9-channel UNet: latents + mask + masked-image latents
    lora: list[dict[str, Any]] = field(default_factory=list)   # LoRAs fused into the weights (validation.lora)


@dataclass
class XLText:
    """What SDXL adds to a text-to-image model (``sampler.xl`` in the manifest)."""

    tokenizer_json: str                       # the second tokenizer (tokenizer_2)
    max_length: int
    pad_token_id: int
    pooled_size: int                          # text_encoder_2's projection: the UNet's text_embeds
    time_ids: tuple[float, ...]               # add_time_ids: original (H, W), crop (0, 0), target (H, W)
    zero_negative: bool                       # force_zeros_for_empty_prompt


class _UNet(torch.nn.Module):
    """A diffusers UNet as a plain-tensor function (``return_dict=False``)."""

    def __init__(self, unet: torch.nn.Module, conditional: bool) -> None:
        super().__init__()
        self.unet, self.conditional = unet, conditional

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """``cond``: encoder_hidden_states when conditional, then timestep_cond for an LCM UNet."""
        lcm = getattr(self.unet.config, "time_cond_proj_dim", None) is not None
        extra = {"timestep_cond": cond[-1]} if lcm else {}
        if self.conditional:
            return self.unet(sample, timestep, encoder_hidden_states=cond[0], return_dict=False, **extra)[0]
        return self.unet(sample, timestep, return_dict=False, **extra)[0]


class _XLUNet(torch.nn.Module):
    """SDXL's UNet: the text conditioning plus ``added_cond_kwargs`` (pooled text embeddings, time ids)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor, time_ids: torch.Tensor, *lcm: torch.Tensor) -> torch.Tensor:
        """``lcm``: timestep_cond, for an LCM-distilled UNet."""
        extra = {"timestep_cond": lcm[0]} if lcm else {}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, **extra)[0]


class _XLTextEncoder(torch.nn.Module):
    """SDXL's ``encode_prompt`` for one prompt: both encoders' penultimate hidden states, concatenated, and the
    second encoder's pooled projection (``clip_skip`` unset, as the pipeline's default)."""

    def __init__(self, encoder: torch.nn.Module, encoder_2: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.encoder_2 = encoder, encoder_2

    def forward(self, input_ids: torch.Tensor, input_ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.encoder(input_ids, output_hidden_states=True)
        second = self.encoder_2(input_ids_2, output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)   # [B, T, D1 + D2]
        return hidden, second.text_embeds                                                  # [B, P]


class _TextEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, return_dict=False)[0]                     # [B, T, D] last_hidden_state


class _VAEDecoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]              # [B, 3, H, W] in [-1, 1]


class _VAEEncoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample, return_dict=False)[0].parameters          # [B, 2*C, h, w] mean, logvar


# --- sources -------------------------------------------------------------------------------


def from_spec(spec: DiffusionSpec) -> DiffusionModel:
    spec.denoiser.eval()
    model = DiffusionModel(
        denoiser=spec.denoiser, sample_shape=tuple(spec.sample_shape), scheduler_config=dict(spec.scheduler_config),
        model_class=spec.name or f"{type(spec.denoiser).__module__}.{type(spec.denoiser).__qualname__}",
        conditioning="class" if spec.num_classes else "none", num_classes=spec.num_classes,
        null_label=spec.null_label, image_shape=tuple(spec.sample_shape), value_range=tuple(spec.value_range),
        defaults=dict(spec.defaults), checkpoint_sha256=spec.checkpoint_sha256)
    if spec.vae is not None:   # a latent-space denoiser: the images are what its VAE decodes
        vae = spec.vae.eval()
        c, h, w = spec.sample_shape
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        shift = getattr(vae.config, "shift_factor", None)
        model.vae_decoder, model.vae_encoder = _VAEDecoder(vae), _VAEEncoder(vae)
        model.vae_scaling_factor = float(vae.config.scaling_factor)
        model.vae_shift_factor = float(shift) if shift is not None else 0.0
        model.image_shape, model.value_range = (int(vae.config.out_channels), h * scale, w * scale), (-1.0, 1.0)
    return model


def is_diffusers_unet_dir(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def from_directory(path: Path, loras: Any = ()) -> DiffusionModel:
    """Load a diffusers pipeline (model_index.json) or UNet2DModel directory; ``loras`` [(file, scale)]: fused into
    a Stable Diffusion or SDXL pipeline's weights (:mod:`edgegen.converters.diffusion.lora`)."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()    # e.g. "install accelerate": not the user's concern here
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        name = index.get("_class_name")
        kind = PIPELINES.get(name)
        if kind is None:
            raise _unsupported_pipeline(path, index, name)
        if kind == "unet" and loras:
            raise InvalidArgumentError(f"--lora applies to Stable Diffusion and SDXL pipelines, not a {name}; drop it")
        if kind == "unet":
            return _unet_model(path / "unet", path / "scheduler" / "scheduler_config.json", name)
        if kind == "sdxl":
            return _sdxl_model(path, name, index, loras)
        return _sd_model(path, name, loras)
    if loras:
        raise InvalidArgumentError("--lora applies to Stable Diffusion and SDXL pipelines, not a UNet2DModel; drop it")
    return _unet_model(path, path / "scheduler_config.json", "UNet2DModel")


def _unsupported_pipeline(path: Path, index: dict[str, Any], name: Any) -> UnsupportedModelError:
    """One line for a pipeline directory edgegen does not convert: what it lacks for it (a transformer denoiser:
    SD3, Flux, DiT...; its scheduler when edgegen has that too), else the closest pipeline it converts."""
    from edgegen.runtimes.diffusion.scheduler_names import DIFFUSERS_CLASSES

    def component(key: str) -> str | None:
        entry = index.get(key)
        return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None

    transformer, scheduler = component("transformer"), component("scheduler")
    if transformer is None:
        closest = "StableDiffusionPipeline" if "text_encoder" in index or "tokenizer" in index else "DDPMPipeline"
        return UnsupportedModelError(f"{path} is a {name}; edgegen converts {', '.join(PIPELINES)} pipelines "
                                     f"(the closest: {closest})")
    ours = {cls: n for n, cls in DIFFUSERS_CLASSES.items()}.get(scheduler or "")
    has = f"edgegen has its {scheduler} ({ours}) but not" if ours else "edgegen cannot convert"
    return UnsupportedModelError(f"{path} is a {name}: {has} its denoiser, a {transformer} (transformer denoisers "
                                 "are not converted from pipeline directories yet); wrap the transformer in a "
                                 f"DiffusionSpec, or convert one of {', '.join(PIPELINES)}")


def _read_scheduler(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} is missing: a diffusion model needs its scheduler_config.json (the noise "
                              "schedule it was trained with)")
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    """A diffusers JSON file as a dict, or one line saying what is wrong with it."""
    fix = "restore it, e.g. by saving the model again with save_pretrained"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc.strerror or exc}; check that it is a readable file") from None
    except ValueError as exc:   # JSONDecodeError and UnicodeDecodeError
        raise ConversionError(f"{path} is not valid JSON ({str(exc).splitlines()[0][:120]}); {fix}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def _unet_model(unet_dir: Path, scheduler_path: Path, pipeline: str) -> DiffusionModel:
    from diffusers import UNet2DModel

    config = _read_scheduler(scheduler_path)
    safetensors_only(unet_dir)
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True).eval()
    if unet.config.num_class_embeds or unet.config.class_embed_type:
        raise UnsupportedModelError(f"{unet_dir}: class-conditional UNet2DModel (class_embed_type) is not supported "
                                    "from a directory yet; wrap it in a DiffusionSpec with num_classes")
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (unet.config.in_channels, h, w)
    steps = 1000 if config.get("_class_name") == "DDPMScheduler" else 50     # DDPMPipeline's default
    return DiffusionModel(denoiser=_UNet(unet, conditional=False), sample_shape=shape, scheduler_config=config,
                          model_class=f"diffusers.{pipeline}", image_shape=shape, defaults={"steps": steps})


def _sd_model(path: Path, pipeline: str, loras: Any = ()) -> DiffusionModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizerFast

    for part in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
        if not (path / part).is_dir():
            raise ConversionError(f"{path} has no {part}/ folder; a Stable Diffusion pipeline directory needs "
                                  "text_encoder, tokenizer, unet, vae and scheduler (save it with save_pretrained)")
    config = _read_scheduler(path / "scheduler" / "scheduler_config.json")
    for part in ("text_encoder", "unet", "vae"):
        safetensors_only(path / part)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(path / "tokenizer")
    unet = UNet2DConditionModel.from_pretrained(path / "unet").eval()
    vae = AutoencoderKL.from_pretrained(path / "vae").eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shift = vae.config.shift_factor if getattr(vae.config, "shift_factor", None) is not None else 0.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    latent = int(vae.config.latent_channels)
    inpainting = unet.config.in_channels == 2 * latent + 1
    if unet.config.in_channels not in (latent, 2 * latent + 1):
        raise UnsupportedModelError(f"{path}/unet takes {unet.config.in_channels} input channels; edgegen converts "
                                    f"UNets over the VAE's {latent} latent channels, or {2 * latent + 1} for "
                                    "inpainting (latents, mask, masked-image latents)")
    fused = _fuse(loras, "sd", vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)   # after the checks
    return DiffusionModel(
        denoiser=_UNet(unet, conditional=True), sample_shape=(latent, h, w), inpainting=inpainting,
        scheduler_config=config, model_class=f"diffusers.{pipeline}", conditioning="text",
        text_encoder=_TextEncoder(text_encoder), tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        max_length=int(tokenizer.model_max_length), pad_token_id=int(pad),
        hidden_size=int(text_encoder.config.hidden_size),
        vae_decoder=_VAEDecoder(vae), vae_encoder=_VAEEncoder(vae),
        vae_scaling_factor=float(vae.config.scaling_factor), vae_shift_factor=float(shift),
        image_shape=(vae.config.out_channels, h * scale, w * scale),
        guidance_embedding=unet.config.time_cond_proj_dim, lora=fused,
        defaults=PIPELINE_DEFAULTS.get(pipeline, {"steps": 50, "guidance": 7.5}))


def _fuse(loras: Any, pipeline: str, **components: Any) -> list[dict[str, Any]]:
    if not loras:
        return []
    from edgegen.converters.diffusion.lora import fuse_loras

    return fuse_loras(pipeline, components, list(loras))


def _sdxl_model(path: Path, pipeline: str, index: dict[str, Any], loras: Any = ()) -> DiffusionModel:
    """A ``StableDiffusionXLPipeline`` directory (the img2img one alike): two CLIP text encoders and tokenizers,
    the UNet with ``text_time`` added conditioning, the VAE.  The refiner (no first text encoder, aesthetic
    score in its time ids) is refused."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast

    if not (path / "text_encoder").is_dir() or index.get("requires_aesthetics_score"):
        raise UnsupportedModelError(f"{path} is an SDXL refiner (one text encoder, an aesthetic score in its time "
                                    "ids), which edgegen does not convert yet; convert the SDXL base pipeline")
    for part in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"):
        if not (path / part).is_dir():
            raise ConversionError(f"{path} has no {part}/ folder; a Stable Diffusion XL pipeline directory needs "
                                  "text_encoder(_2), tokenizer(_2), unet, vae and scheduler (save it with "
                                  "save_pretrained)")
    config = _read_scheduler(path / "scheduler" / "scheduler_config.json")
    for part in ("text_encoder", "text_encoder_2", "unet", "vae"):
        safetensors_only(path / part)
    encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    encoder_2 = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2").eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(path / "tokenizer")
    tokenizer_2 = CLIPTokenizerFast.from_pretrained(path / "tokenizer_2")
    unet = UNet2DConditionModel.from_pretrained(path / "unet").eval()
    vae = AutoencoderKL.from_pretrained(path / "vae").eval()
    if unet.config.addition_embed_type != "text_time":
        raise UnsupportedModelError(f"{path}/unet: an SDXL pipeline's UNet has addition_embed_type 'text_time', this "
                                    f"one {unet.config.addition_embed_type!r}; check the directory")
    if tokenizer.model_max_length != tokenizer_2.model_max_length:
        raise UnsupportedModelError(f"{path}: tokenizer and tokenizer_2 pad to different lengths "
                                    f"({tokenizer.model_max_length}, {tokenizer_2.model_max_length}); SDXL's "
                                    "pipeline concatenates their encoders' states token by token")
    fused = _fuse(loras, "sdxl", vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                  tokenizer_2=tokenizer_2, unet=unet)                             # after the checks
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    height, width = h * scale, w * scale
    shift = vae.config.shift_factor if getattr(vae.config, "shift_factor", None) is not None else 0.0

    def pad_id(tok: Any) -> int:
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    xl = XLText(tokenizer_json=tokenizer_2.backend_tokenizer.to_str(), max_length=int(tokenizer_2.model_max_length),
                pad_token_id=pad_id(tokenizer_2), pooled_size=int(encoder_2.config.projection_dim),
                time_ids=(float(height), float(width), 0.0, 0.0, float(height), float(width)),
                zero_negative=bool(index.get("force_zeros_for_empty_prompt", True)))
    return DiffusionModel(
        denoiser=_XLUNet(unet), sample_shape=(unet.config.in_channels, h, w),
        scheduler_config=config, model_class=f"diffusers.{pipeline}", conditioning="text",
        text_encoder=_XLTextEncoder(encoder, encoder_2), tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        max_length=int(tokenizer.model_max_length), pad_token_id=pad_id(tokenizer),
        hidden_size=int(encoder.config.hidden_size + encoder_2.config.hidden_size),
        vae_decoder=_VAEDecoder(vae), vae_encoder=_VAEEncoder(vae),
        vae_scaling_factor=float(vae.config.scaling_factor), vae_shift_factor=float(shift),
        image_shape=(vae.config.out_channels, height, width), xl=xl, guidance_embedding=unet.config.time_cond_proj_dim,
        lora=fused, defaults={"steps": 50, "guidance": 5.0})     # StableDiffusionXLPipeline's own defaults


# --- the graphs ---------------------------------------------------------------------------------


def _relative_error(_inputs: Any, ref: tuple[torch.Tensor, ...], outs: list[np.ndarray]) -> float:
    """Max abs error relative to the output's scale (CLIP hidden states reach tens)."""
    r = ref[0].numpy().astype(np.float64)
    return float(np.abs(r - outs[0]).max()) / max(1.0, float(np.abs(r).max()))


def _relative_error_all(_inputs: Any, ref: tuple[torch.Tensor, ...], outs: list[np.ndarray]) -> float:
    """:func:`_relative_error` of every output, the worst."""
    return max(_relative_error(None, (r,), [o]) for r, o in zip(ref, outs, strict=True))


def _graphs(model: DiffusionModel) -> list[GraphExport]:
    """What to export: the denoiser, and for latent text-to-image models the text encoder and VAE."""
    c, h, w = model.sample_shape

    def denoiser_inputs(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        inputs = conditioned_inputs(batch, gen)
        if model.guidance_embedding is None:
            return inputs
        return (*inputs, torch.randn((batch, model.guidance_embedding), generator=gen))          # [B, E]

    def conditioned_inputs(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        sample = torch.randn((batch, 2 * c + 1 if model.inpainting else c, h, w), generator=gen)  # [B, C(+C+1), h, w]
        timestep = torch.rand((batch,), generator=gen) * 999                                    # [B]
        if model.conditioning == "text":
            hidden = torch.randn((batch, model.max_length, model.hidden_size), generator=gen)      # [B, T, D]
            if model.xl is not None:
                size = torch.tensor(model.xl.time_ids)
                return (sample, timestep, hidden, torch.randn((batch, model.xl.pooled_size), generator=gen),
                        size * (0.5 + torch.rand((batch, 6), generator=gen)))                        # [B, P], [B, 6]
            return sample, timestep, hidden
        if model.conditioning == "class":
            return sample, timestep, torch.randint(0, model.num_classes, (batch,), generator=gen)  # [B]
        return sample, timestep

    cond = {"text": ("encoder_hidden_states",), "class": ("class_labels",)}.get(model.conditioning, ())
    cond += ("text_embeds", "time_ids") if model.xl is not None else ()
    cond += ("timestep_cond",) if model.guidance_embedding is not None else ()
    graphs = [GraphExport("denoiser", model.denoiser, ("sample", "timestep", *cond), ("out_sample",),
                          denoiser_inputs, _relative_error)]
    if model.text_encoder is not None and model.xl is not None:
        graphs.append(GraphExport(
            "text_encoder", model.text_encoder, ("input_ids", "input_ids_2"),
            ("prompt_embeds", "pooled_prompt_embeds"),
            lambda b, gen: tuple(torch.randint(0, 50, (b, model.max_length), generator=gen) for _ in range(2)),
            _relative_error_all))
    elif model.text_encoder is not None:
        graphs.append(GraphExport("text_encoder", model.text_encoder, ("input_ids",), ("last_hidden_state",),
                                  lambda b, gen: (torch.randint(0, 50, (b, model.max_length), generator=gen),),
                                  _relative_error))
    if model.vae_decoder is not None:
        graphs.append(GraphExport("vae_decoder", model.vae_decoder, ("latent_sample",), ("sample",),
                                  lambda b, gen: (torch.randn((b, c, h, w), generator=gen),), _relative_error))
    if model.vae_encoder is not None:
        graphs.append(GraphExport("vae_encoder", model.vae_encoder, ("sample",), ("latent_parameters",),
                                  lambda b, gen: (torch.rand((b, *model.image_shape), generator=gen) * 2 - 1,),
                                  _relative_error))
    return graphs


# --- the PyTorch reference sample ------------------------------------------------------------


def _tokenize(model: DiffusionModel, texts: list[str], second: bool = False) -> torch.Tensor:
    import tokenizers

    json_, length, pad = ((model.xl.tokenizer_json, model.xl.max_length, model.xl.pad_token_id) if second and model.xl
                          else (model.tokenizer_json, model.max_length, model.pad_token_id))
    tok = tokenizers.Tokenizer.from_str(json_)
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=pad)
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int64)     # [B, T]


def _xl_cond(model: DiffusionModel, prompt: str, batch: int, cfg: bool) -> tuple[torch.Tensor, ...]:
    """SDXL's encode_prompt + add_time_ids for ``batch`` rows ([uncond, cond] under guidance; the unconditional
    half zeros where the pipeline forces them for an absent negative prompt)."""
    assert model.xl is not None
    hidden, pooled = model.text_encoder(_tokenize(model, [prompt]), _tokenize(model, [prompt], second=True))
    hidden, pooled = hidden.repeat(batch, 1, 1), pooled.repeat(batch, 1)
    if cfg:
        if model.xl.zero_negative:
            u_hidden, u_pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
        else:
            u_hidden, u_pooled = model.text_encoder(_tokenize(model, [""]), _tokenize(model, [""], second=True))
            u_hidden, u_pooled = u_hidden.repeat(batch, 1, 1), u_pooled.repeat(batch, 1)
        hidden, pooled = torch.cat([u_hidden, hidden]), torch.cat([u_pooled, pooled])
    time_ids = torch.tensor([model.xl.time_ids] * hidden.shape[0], dtype=torch.float32)    # [(2)B, 6]
    return hidden, pooled, time_ids


@contextlib.contextmanager
def step_noise_from(scheduler: Any, rng: np.random.Generator) -> Iterator[None]:
    """Make a diffusers scheduler draw its per-step noise from ``rng`` (float32 standard normal, in order),
    as edgegen's schedulers draw theirs from the run's generator: the same seed, the same noise.  diffusers'
    schedulers draw it with ``randn_tensor`` of their own module; the original is restored on exit."""
    module = sys.modules[type(scheduler).__module__]
    original = getattr(module, "randn_tensor", None)

    def draw(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, layout: Any = None) -> Any:
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    if original is not None:
        module.randn_tensor = draw
    try:
        yield
    finally:
        if original is not None:
            module.randn_tensor = original


@torch.no_grad()
def torch_sample(model: DiffusionModel, noise: np.ndarray, *, steps: int, guidance: float, prompt: str,
                 labels: list[int] | None = None, scheduler_class: str = "DDIMScheduler",
                 seed: int = VALIDATION_SEED, inpaint: torch.Tensor | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """What the PyTorch model samples with diffusers' ``scheduler_class`` (from the model's scheduler config)
    from ``noise``, as diffusers' pipelines do it (guidance batches [uncond, cond]; one model call per entry of
    ``timesteps``), the per-step noise drawn from ``np.random.default_rng(seed)`` (or ``rng``, where earlier draws
    were taken from it) as the runtime draws it: images [B, C, H, W] in value_range.  ``inpaint``: the mask and
    masked-image latents [B, 1 + C, h, w] an inpainting UNet takes after the latents."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_class).from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    # the flow-matching schedulers have no init_noise_sigma nor scale_model_input (their pipelines scale nothing)
    latents = torch.from_numpy(noise) * getattr(scheduler, "init_noise_sigma", 1.0)       # [B, C, h, w]
    batch = latents.shape[0]
    cond: tuple[torch.Tensor, ...] = ()
    cfg = guidance > 1.0 and (model.conditioning == "text" or model.null_label is not None) and \
        model.guidance_embedding is None             # an LCM UNet takes guidance as an input (no CFG batch)
    if model.conditioning == "text" and model.xl is not None:
        cond = _xl_cond(model, prompt, batch, cfg)
    elif model.conditioning == "text":
        ids = _tokenize(model, ([""] * batch if cfg else []) + [prompt] * batch)
        cond = (model.text_encoder(ids),)                                                  # [(2)B, T, D]
    elif model.conditioning == "class":
        cond = (torch.tensor(([model.null_label] * batch if cfg else []) + list(labels), dtype=torch.int64),)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)                 # a run from the start, as the runtime's (and SDXL's pipelines)
    # diffusers' pipelines pass eta (default 0) to the schedulers that take it (DDIM; TCD's gamma), as the runtime
    extra = {"eta": 0.0} if "eta" in inspect.signature(scheduler.step).parameters else {}
    if model.guidance_embedding is not None:         # the pipelines' get_guidance_scale_embedding(guidance - 1)
        w = torch.tensor(guidance - 1.0).repeat(batch)
        cond = (*cond, diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, w, embedding_dim=model.guidance_embedding))
    with step_noise_from(scheduler, rng if rng is not None else np.random.default_rng(seed)):
        for t in scheduler.timesteps:
            inp = torch.cat([latents] * 2) if cfg else latents
            inp = scheduler.scale_model_input(inp, t) if hasattr(scheduler, "scale_model_input") else inp
            if inpaint is not None:
                inp = torch.cat([inp, torch.cat([inpaint] * 2) if cfg else inpaint], dim=1)
            out = model.denoiser(inp, torch.full((inp.shape[0],), float(t)), *cond)
            if cfg:
                uncond, text = out.chunk(2)
                out = uncond + guidance * (text - uncond)
            latents = scheduler.step(out, t, latents, **extra).prev_sample
    if model.vae_decoder is not None:
        latents = model.vae_decoder(latents / model.vae_scaling_factor + model.vae_shift_factor)
    return latents.float().numpy()


def psnr(a: np.ndarray, b: np.ndarray, value_range: tuple[float, float]) -> float:
    """PSNR (dB) of two image batches after mapping ``value_range`` to [0, 1] and clipping, as saved."""
    lo, hi = value_range
    x, y = (np.clip((v - lo) / (hi - lo), 0, 1) for v in (a, b))
    mse = float(np.mean((x.astype(np.float64) - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# --- the conversion --------------------------------------------------------------------------


def choose_scheduler(model: DiffusionModel, scheduler: str | None = None) -> dict[str, str]:
    """The ``sampler.scheduler`` record of the scheduler the artifact runs by default: ``scheduler`` (the user's
    choice at conversion) or the spec's ``defaults["scheduler"]`` (``chosen_by: "user"``), else the class the
    source's scheduler config names (``"pipeline"``; one line naming the closest one edgegen has when it lacks
    that class), else edgegen's default (``"default"``: the config names none).  The choice is made on the
    source's config now, so a config it cannot run fails before any export."""
    from edgegen.runtimes.diffusion.scheduler_names import (DIFFUSERS_CLASSES, FLOW_DEFAULT, closest_to,
                                                           config_is_flow, resolve_name)
    from edgegen.runtimes.diffusion.schedulers import DIFFUSERS_CLASS_NAMES, make_scheduler

    requested = scheduler if scheduler is not None else model.defaults.get("scheduler")
    class_name = model.scheduler_config.get("_class_name")
    if requested is not None:
        name = resolve_name(requested)
        chosen_by = "pipeline" if DIFFUSERS_CLASSES[name] == class_name else "user"
    elif not isinstance(class_name, str):   # a flow-matching schedule (by its keys) has its own default
        name = FLOW_DEFAULT if config_is_flow(model.scheduler_config) else DEFAULT_SCHEDULER
        chosen_by = "default"
    elif class_name in DIFFUSERS_CLASS_NAMES:
        name, chosen_by = DIFFUSERS_CLASS_NAMES[class_name], "pipeline"
    else:
        closest = closest_to(class_name)
        raise UnsupportedModelError(f"{model.model_class}'s scheduler is {class_name}, which edgegen does "
                                    f"not implement; the closest scheduler it has is {closest}: convert with "
                                    f"scheduler={closest!r} (edgegen convert --scheduler {closest}) to sample with it "
                                    "instead (the noise schedule is kept)")
    steps = model.defaults.get("steps", 50)
    try:
        make_scheduler(name, model.scheduler_config).set_timesteps(steps)
        make_scheduler(name, model.scheduler_config).set_timesteps(VALIDATION_STEPS)
    except InvalidArgumentError as exc:
        raise ConversionError(f"{model.model_class}: {exc}") from None
    return {"name": name, "diffusers_class": DIFFUSERS_CLASSES[name], "chosen_by": chosen_by}


def convert_diffusion(model: DiffusionModel, output: str | Path, *, overwrite: bool = False, report: Any = print,
                      quantize: str = "none", min_psnr: float | None = None, optimize: bool = True,
                      target: str = "cpu", scheduler: str | None = None, **_ignored: Any) -> Path:
    """Export, validate and write ``model`` as a diffusion artifact at ``output``; returns its path.
    ``scheduler`` (edgegen's name or the diffusers class name) replaces the source's own as the artifact's
    default (:func:`choose_scheduler`; recorded as chosen by the user).
    ``optimize``: ONNX Runtime's unet fusions on the denoiser, kept when exact and no slower
    (:mod:`edgegen.converters.diffusion.unet_optimize`).  ``quantize`` (not ``none``):
    :func:`edgegen.converters.quantization.psnr_gate.quantize_graphs` after validation; ``auto``: the
    family default for ``target`` (:mod:`edgegen.converters.quantization.defaults`), kept in fp32 when the
    quality gate is not met instead of failing."""
    from edgegen.converters.versions import library_versions, quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    record = choose_scheduler(model, scheduler)
    report(f"scheduler: {record['name']} (diffusers {record['diffusers_class']}, " + {
        "pipeline": "the pipeline's own", "user": f"chosen instead of the source's "
                    f"{model.scheduler_config.get('_class_name') or 'unnamed scheduler'}",
        "default": "edgegen's default: the scheduler config names no _class_name; choose one with scheduler="}[
        record["chosen_by"]] + ")")
    sampler = {**_sampler_section(model), "scheduler": record}
    defaults = {"scheduler": record["name"], "steps": 50,
                **{k: v for k, v in model.defaults.items() if k != "scheduler"}}
    if model.conditioning == "text":
        defaults.setdefault("guidance", 7.5)
    source = Source(model_class=model.model_class, converter=f"torch.onnx.export (torch {torch.__version__}, "
                    f"opset {OPSET})", opset=OPSET, checkpoint_sha256=model.checkpoint_sha256,
                    libraries={**library_versions(), **_diffusers_version()})
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        if model.tokenizer_json is not None:
            writer.add_asset("tokenizer", "tokenizer.json", model.tokenizer_json)
        if model.xl is not None:
            writer.add_asset("tokenizer_2", "tokenizer_2.json", model.xl.tokenizer_json)
        figures: dict[str, Any] = {"graphs": {}}
        if model.lora:
            figures["lora"] = model.lora
            for lora in model.lora:
                report(f"lora: fused {lora['file']} at scale {lora['scale']:g} into "
                       + ", ".join(f"{part} ({n} layers)" for part, n in lora["layers"].items()))
        for graph in _graphs(model):
            started = time.perf_counter()
            file = f"{graph.role}.onnx"
            exported = export_graph(graph, writer.path(file))
            if exported.noise:
                raise ConversionError(f"the {graph.role} draws random numbers inside its forward "
                                      f"({len(exported.noise)} draws); a diffusion denoiser must be deterministic: "
                                      "the sampling loop adds the noise")
            error = max(exported.errors.values())
            figures["graphs"][graph.role] = {"max_abs_error": error, "batches": sorted(exported.errors)}
            report(f"export: {graph.role} ({type(graph.module).__name__}) max |error| vs PyTorch {error:.1e} "
                   f"(relative) at batch 1 and 3 ({time.perf_counter() - started:.1f} s)")
            if graph.role == "denoiser" and optimize:
                figures["optimizer"] = _optimize(graph, writer.path(file), report)
            writer.add_graph_file(graph.role, file, precision="fp32")
        writer.write(writer.manifest(family=FAMILY, source=source, sampler=sampler, defaults=defaults))

        started = time.perf_counter()
        figures["sample"] = _compare_sample(model, writer.stage, record)
        s = figures["sample"]
        report(f"validate: {s['steps']}-step {s['scheduler']} sample from the same noise, PSNR {s['psnr_db']:.1f} dB "
               f"vs PyTorch + diffusers' {s['diffusers_class']} ({time.perf_counter() - started:.1f} s)")
        if not s["psnr_db"] >= MIN_PSNR:
            raise ConversionError(f"the artifact's sample differs from PyTorch's (PSNR {s['psnr_db']:.1f} dB < "
                                  f"{MIN_PSNR} dB); this is a bug in edgegen's scheduler or export")
        required = True
        if quantize == "auto":
            from edgegen.converters.quantization.defaults import graph_params, report_lines, resolve

            quantize, why = resolve(FAMILY, target, graph_params(writer.path("denoiser.onnx")))
            figures["quantization_default"] = {"target": target, "scheme": quantize, "reason": why}
            for line in report_lines(quantize, why):
                report(line)
            required = False
        if quantize != "none":   # replaces graph files in the stage; measured against the fp32 artifact
            from edgegen.converters.quantization.psnr_gate import quantize_graphs

            figures["quantization"] = quantize_graphs(writer, quantize, min_psnr=min_psnr, required=required,
                                                      report=report)
        writer.write(writer.manifest(family=FAMILY, source=source, sampler=sampler, defaults=defaults,
                                     validation=figures))
        return writer.commit()


def _optimize(graph: GraphExport, path: Path, report: Any) -> dict[str, Any]:
    """The unet fusions on the exported denoiser, timed at the sampling loop's batch (2: CFG)."""
    from edgegen.converters.diffusion.unet_optimize import optimize_denoiser

    started = time.perf_counter()
    example = graph.example(2, torch.Generator().manual_seed(2))
    result = optimize_denoiser(path, {name: t.numpy() for name, t in zip(graph.inputs, example)})
    if result["used"]:
        ms = result["ms_per_run"]
        report(f"optimize: denoiser fused {result['fusions']}, {ms['exported']:.1f} -> {ms['optimized']:.1f} "
               f"ms per run, max |error| {result['max_abs_error']:.1e} ({time.perf_counter() - started:.1f} s)")
    else:
        report(f"optimize: denoiser kept as exported ({result.get('reason') or 'fused graph not faster'})")
    return result


def _diffusers_version() -> dict[str, str]:
    import diffusers

    return {"diffusers": diffusers.__version__}


#: scheduler config keys whose non-finite value (which JSON cannot hold) is the schedulers' default: dropped
NON_FINITE_DEFAULTS = {"lambda_min_clipped": -math.inf}


def _manifest_config(config: dict[str, Any]) -> dict[str, Any]:
    """The scheduler config as the manifest holds it: diffusers' keys, without its bookkeeping (``_diffusers_version``)
    and without the non-finite defaults diffusers writes as ``-Infinity`` (DPM-Solver's ``lambda_min_clipped``):
    JSON has no such number, and a missing key reads as that default."""
    out = {}
    for key, value in config.items():
        if key.startswith("_") and key != "_class_name":
            continue
        if isinstance(value, float) and not math.isfinite(value):
            if NON_FINITE_DEFAULTS.get(key) == value:
                continue
            raise ConversionError(f"scheduler_config.json sets {key} to {value}, which an artifact's JSON manifest "
                                  "cannot hold; set a finite value")
        out[key] = value
    return out


def _sampler_section(model: DiffusionModel) -> dict[str, Any]:
    config = _manifest_config(model.scheduler_config)
    section: dict[str, Any] = {
        "scheduler_config": config, "sample_shape": list(model.sample_shape),
        "image_shape": list(model.image_shape), "value_range": list(model.value_range),
        "conditioning": model.conditioning}
    if model.conditioning == "class":
        section.update(num_classes=model.num_classes, null_label=model.null_label)
    if model.conditioning == "text":
        section["text"] = {"max_length": model.max_length, "pad_token_id": model.pad_token_id}
    if model.guidance_embedding is not None:
        section["guidance_embedding"] = model.guidance_embedding
    if model.inpainting:
        section["inpainting"] = True
    if model.xl is not None:
        section["xl"] = {"max_length": model.xl.max_length, "pad_token_id": model.xl.pad_token_id,
                         "time_ids": list(model.xl.time_ids), "zero_negative": model.xl.zero_negative}
    if model.vae_decoder is not None:
        section["vae"] = {"scaling_factor": model.vae_scaling_factor, "shift_factor": model.vae_shift_factor}
    return section


def validation_inpainting(model: DiffusionModel) -> tuple[np.ndarray, np.ndarray]:
    """A start image (uint8 [H, W, C], random) and a mask (uint8 [H, W]: the left half repainted)."""
    c, h, w = model.image_shape
    image = np.random.default_rng(1).integers(0, 256, (h, w, c), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255
    return image, mask


@torch.no_grad()
def torch_inpainting(model: DiffusionModel, image: np.ndarray, mask: np.ndarray, batch: int,
                     rng: np.random.Generator) -> torch.Tensor:
    """What StableDiffusionInpaintPipeline adds after the latents, at strength 1: the binarized mask at latent size
    (nearest) and the masked image's latents (a posterior draw from ``rng``), [batch, 1 + C, h, w]."""
    assert model.vae_encoder is not None
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1                # [1, C, H, W]
    m = (torch.from_numpy(mask)[None, None].float() / 255 >= 0.5).float()                  # [1, 1, H, W]
    masked = (x * (m < 0.5)).repeat(batch, 1, 1, 1)
    mean, logvar = model.vae_encoder(masked).chunk(2, dim=1)
    eps = torch.from_numpy(rng.standard_normal(tuple(mean.shape), dtype=np.float32))
    latents = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps - model.vae_shift_factor) * \
        model.vae_scaling_factor
    small = torch.nn.functional.interpolate(m, size=tuple(latents.shape[2:])).repeat(batch, 1, 1, 1)
    return torch.cat([small, latents], dim=1)


def _compare_sample(model: DiffusionModel, stage: Path, record: dict[str, str]) -> dict[str, Any]:
    """The runtime's whole loop with the artifact's default scheduler against PyTorch's with the same diffusers
    class, from the same noise (batch 2)."""
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.diffusion.diffusion import Diffusion
    from edgegen.runtimes.session import SessionConfig

    runtime = Diffusion.from_artifact(open_artifact(stage), SessionConfig(provider="cpu"))
    noise = np.random.default_rng(0).standard_normal((2, *model.sample_shape)).astype(np.float32)
    guidance = float(runtime.defaults.guidance)
    options: dict[str, Any] = {"guidance": guidance} if guidance != 1.0 else {}
    labels = None
    if model.conditioning == "text":
        options["prompt"] = VALIDATION_PROMPT
    elif model.conditioning == "class":
        labels = [i % model.num_classes for i in range(2)]
        options["label"] = labels
    inpaint, rng = None, None
    if model.inpainting:
        image, mask = validation_inpainting(model)
        options.update(image=image, mask=mask)
        rng = np.random.default_rng(VALIDATION_SEED)
        inpaint = torch_inpainting(model, image, mask, 2, rng)
    expected = torch_sample(model, noise, steps=VALIDATION_STEPS, guidance=guidance, prompt=VALIDATION_PROMPT,
                            labels=labels, scheduler_class=record["diffusers_class"], seed=VALIDATION_SEED,
                            inpaint=inpaint, rng=rng)
    got = runtime.generate(2, noise=noise, seed=VALIDATION_SEED, steps=VALIDATION_STEPS, **options)   # its default
    return {"steps": VALIDATION_STEPS, "scheduler": record["name"], "diffusers_class": record["diffusers_class"],
            "chosen_by": record["chosen_by"], "guidance": guidance,
            "psnr_db": min(psnr(got, expected, model.value_range), 999.0),
            "max_abs_error": float(np.abs(got - expected).max())}
