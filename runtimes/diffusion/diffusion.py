"""The diffusion runtime: DDPM-style and Stable-Diffusion-style sampling loops in numpy.

Graphs (written by :mod:`edgegen.converters.diffusion.convert`)::

    denoiser      sample [B, C, h, w], timestep float32 [B]
                  [, encoder_hidden_states [B, T, D] | class_labels int64 [B]]
                  [, text_embeds [B, P], time_ids [B, 6]]                         (SDXL)
                  [, timestep_cond [B, E]]                 (LCM: the guidance embedding) -> out_sample [B, C, h, w]
    text_encoder  input_ids int64 [B, T] -> last_hidden_state [B, T, D]          (text-to-image)
                  SDXL: input_ids, input_ids_2 [B, T] -> prompt_embeds [B, T, D1 + D2] (both encoders'
                  penultimate hidden states), pooled_prompt_embeds [B, P] (the second's projection)
    vae_decoder   latent_sample [B, C, h, w] -> sample [B, 3, H, W] in [-1, 1]    (latent models)
    vae_encoder   sample [B, 3, H, W] -> latent_parameters [B, 2C, h, w]          (img2img: mean, logvar)

An inpainting denoiser's sample is [B, 2C + 1, h, w]: the scaled latents, the mask (1 = repaint) at latent size,
the masked image's latents (the image with the repainted part set to 0, through the VAE encoder), as
``StableDiffusionInpaintPipeline`` concatenates them.

The loop is diffusers' pipelines, step for step: initial noise scaled by the scheduler's
``init_noise_sigma``; per timestep ``scale_model_input``, one denoiser call (the
unconditional and conditional halves batched together under classifier-free guidance:
``uncond + g * (cond - uncond)``, skipped when g <= 1 as diffusers does), ``step``; then
the VAE decoder on ``latents / scaling_factor + shift_factor``.  img2img encodes the image
(a draw from the VAE's posterior), noises it to the timestep that ``strength`` selects, and
runs the remaining steps.  Every random draw comes from one ``numpy.random.Generator``
seeded by ``seed``, in a fixed order, so a seed always gives the same images.

The schedulers are :mod:`edgegen.runtimes.diffusion.schedulers` (numpy; tested against diffusers).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort

from edgegen.errors import CancelledError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.diffusion.sampler import DiffusionDefaults, DiffusionSampler
from edgegen.runtimes.images import from_uint8, load_image, to_uint8
from edgegen.runtimes.latents import check_count, check_frames, rng_for, slerp
from edgegen.runtimes.memory import GRAPH_WORKING_VALUES, check_count_fits
from edgegen.runtimes.text.sampling import shown
from edgegen.runtimes.text.settings import check_text
from edgegen.runtimes.session import SessionConfig

__all__ = ["Diffusion", "DiffusionSampler"]

Progress = Callable[[int, int], Any]


#: graphs run one after another, activations large next to weights (see session_options)
LEAN = {"memory_pattern": False, "shared_cpu_arena": True}


def guidance_embedding(guidance: float, dim: int, n: int) -> np.ndarray:
    """diffusers' ``get_guidance_scale_embedding(w = guidance - 1)`` for ``n`` rows: [n, dim] float32 (sines,
    then cosines, of 1000 w at geometric frequencies; a zero column padded when dim is odd)."""
    w = np.float32(guidance - 1.0) * np.float32(1000.0)
    half = dim // 2
    step = np.float32(np.log(np.float32(10000.0))) / np.float32(max(half - 1, 1))
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)                          # [half]
    emb = np.concatenate([np.sin(w * freqs), np.cos(w * freqs)]).astype(np.float32)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros(1, np.float32)])
    return np.ascontiguousarray(np.broadcast_to(emb, (n, dim)))


class Diffusion:
    """A loaded diffusion artifact (unconditional, class-conditional or text-to-image)."""

    family = "diffusion"

    def __init__(self, artifact: Artifact, sessions: dict[str, ort.InferenceSession], provider: str,
                 config: SessionConfig | None = None) -> None:
        self.artifact, self.sessions, self.provider = artifact, sessions, provider
        self._config = replace(config or SessionConfig(), provider=provider)
        self._open_lock = threading.Lock()
        self.sampler = DiffusionSampler.from_manifest(artifact.manifest.sampler)
        self.defaults = DiffusionDefaults.from_manifest(artifact.manifest.defaults, self.sampler)
        self.tokenizer = None
        if self.sampler.conditioning == "text":
            from edgegen.runtimes.text.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(artifact)   # a ManifestError naming the file if it is broken
            t = self.sampler.text
            self.tokenizer.enable_truncation(t.max_length)
            self.tokenizer.enable_padding(length=t.max_length, pad_id=t.pad_token_id)
        self.tokenizer_2 = None
        if self.sampler.xl is not None:   # SDXL's second tokenizer (the same prompt, its own padding)
            from edgegen.runtimes.text.tokenizer import load_tokenizer

            self.tokenizer_2 = load_tokenizer(artifact, "tokenizer_2")
            self.tokenizer_2.enable_truncation(self.sampler.xl.max_length)
            self.tokenizer_2.enable_padding(length=self.sampler.xl.max_length, pad_id=self.sampler.xl.pad_token_id)
        #: the denoiser's conditioning inputs, the same every step
        self._cond_inputs: tuple[str, ...] = {"text": ("encoder_hidden_states",), "class": ("class_labels",)}.get(
            self.sampler.conditioning, ()) + (("text_embeds", "time_ids") if self.sampler.xl is not None else ())
        if self.sampler.guidance_embedding is not None:
            self._cond_inputs += ("timestep_cond",)
        #: run the loop with the latents in device memory (:mod:`edgegen.runtimes.diffusion.device_loop`); on by
        #: default where a step's host round trip costs (CUDA, DirectML), off on the CPU (no copy to save)
        self.latents_on_device = provider in ("cuda", "dml")
        self._latent_loop = None

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Diffusion:
        m = artifact.manifest
        sampler = DiffusionSampler.from_manifest(m.sampler)   # bad sections fail before any session opens
        DiffusionDefaults.from_manifest(m.defaults, sampler)
        denoiser = m.graphs["denoiser"].tensor("sample") if "denoiser" in m.graphs else None
        c, h, w = sampler.sample_shape
        expected = (2 * c + 1, h, w) if sampler.inpainting else sampler.sample_shape   # + mask, masked latents
        if denoiser is not None and not denoiser.fits(expected):
            raise ManifestError(f"{artifact.root}: edgegen.json.sampler.sample_shape is {list(sampler.sample_shape)}"
                                f"{' (inpainting)' * sampler.inpainting}, but the denoiser declares its input sample "
                                f"as {list(denoiser.shape)}; re-convert the model")
        need = ["denoiser"] + (["text_encoder"] if sampler.conditioning == "text" else []) + \
               (["vae_decoder"] if sampler.vae is not None else [])
        missing = [g for g in need if g not in m.graphs]
        if sampler.conditioning == "text" and "tokenizer" not in m.assets:
            missing.append("the 'tokenizer' asset")
        if sampler.xl is not None and "tokenizer_2" not in m.assets:
            missing.append("the 'tokenizer_2' asset (SDXL's second tokenizer)")
        if missing:
            raise ManifestError(f"{artifact.root}: this diffusion artifact lacks {', '.join(missing)} (it has graphs "
                                f"{sorted(m.graphs)}); re-convert the model")
        # the vae_encoder (img2img only) opens on first use; memory settings: see session_options
        provider, sessions = open_sessions(artifact, config, tuple(r for r in m.graphs if r != "vae_encoder"),
                                           **LEAN)
        return cls(artifact, sessions, provider, config)

    def _session(self, role: str) -> ort.InferenceSession:
        """The session of ``role``, opened now if it was left for later (the vae_encoder)."""
        with self._open_lock:
            if role not in self.sessions:
                _, opened = open_sessions(self.artifact, self._config, (role,), **LEAN)
                self.sessions.update(opened)
            return self.sessions[role]

    # -- the public API ----------------------------------------------------------------------
    def sample(self, n: int = 1, *, seed: int | None = None, steps: int | None = None, scheduler: str | None = None,
               prompt: str | None = None, negative_prompt: str | None = None, guidance: float | None = None,
               label: int | Sequence[int] | None = None, image: Any = None, strength: float | None = None,
               progress: Progress | None = None, mask: Any = None) -> np.ndarray:
        """Draw ``n`` images; uint8 ``[n, H, W, C]``.

        ``label`` (class-conditional models): one class for all, one per image, or None for
        random classes.
        ``scheduler``: edgegen's name or the diffusers class name (``"pndm"``, ``"PNDMScheduler"``); None runs the
        artifact's own (:meth:`describe_scheduler` says which).  ``progress`` counts model evaluations (two per
        step for Heun).
        ``image`` (a path, or uint8 ``[H, W, C]`` / ``[n, H, W, C]``) with ``strength`` in [0, 1]
        runs img2img; an inpainting model takes ``mask`` too (a path or uint8 [H, W]: white = repaint; strength
        1 by default, as diffusers' inpainting pipeline).  ``progress(done, total)`` is called after every step; returning
        ``False`` from it cancels (:class:`~edgegen.errors.CancelledError`).  To cancel from another
        thread, also in the middle of a graph run: ``with edgegen.cancel_on(event): ...``, then ``event.set()``.
        """
        images = self.generate(n, seed=seed, steps=steps, scheduler=scheduler, prompt=prompt,
                               negative_prompt=negative_prompt, guidance=guidance, label=label, image=image,
                               strength=strength, progress=progress, mask=mask)
        return to_uint8(images, self.sampler.value_range)

    def describe_scheduler(self, scheduler: str | None = None) -> str:
        """Which scheduler ``sample(scheduler=scheduler)`` runs, for people: ``pndm (diffusers PNDMScheduler, the
        pipeline's own)``; None: the artifact's default (``edgegen info`` shows it too)."""
        from edgegen.runtimes.diffusion.scheduler_names import DIFFUSERS_CLASSES, resolve_name

        record, default = self.sampler.scheduler, self.defaults.scheduler
        name = default if scheduler is None else resolve_name(scheduler)
        if name == default:
            return record.describe() if record is not None else \
                f"{name} (diffusers {DIFFUSERS_CLASSES[name]}, the artifact's default)"
        return f"{name} (diffusers {DIFFUSERS_CLASSES[name]}, instead of the artifact's {default})"

    def sample_options(self) -> tuple[str, ...]:
        """The keywords of :meth:`sample` that apply to this artifact (the others are refused when given):
        ``steps`` and ``scheduler`` always, the prompts for text-to-image, ``guidance`` where there is an
        unconditional embedding, ``image`` / ``strength`` where img2img can encode a start image, ``label`` for
        class-conditional models."""
        s = self.sampler
        img2img = s.vae is None or "vae_encoder" in self.artifact.manifest.graphs
        return ("steps", "scheduler", *(("prompt", "negative_prompt") if s.conditioning == "text" else ()),
                *(("guidance",) if self._can_guide() or s.guidance_embedding is not None else ()),
                *(("image", "strength") if img2img else ()),
                *(("label",) if s.conditioning == "class" else ()), *(("mask",) if s.inpainting else ()))

    def interpolate(self, seed_a: int, seed_b: int, *, frames: int = 8, **options: Any) -> np.ndarray:
        """Images along the spherical path between two seeds' initial noise; uint8 ``[frames, H, W, C]``."""
        frames = check_frames(frames)
        self._check_memory(frames, "interpolating", "frames", guided=self._can_guide(), img2img="image" in options)
        a, b = (rng_for(s).standard_normal(self.sampler.sample_shape, dtype=np.float32) for s in (seed_a, seed_b))
        noise = slerp(a, b, frames)                                                    # [frames, *sample_shape]
        return to_uint8(self.generate(frames, seed=seed_a, noise=noise, **options), self.sampler.value_range)

    def generate(self, n: int = 1, *, seed: int | None = None, steps: int | None = None,
                 scheduler: str | None = None, prompt: str | None = None, negative_prompt: str | None = None,
                 guidance: float | None = None, label: int | Sequence[int] | None = None, image: Any = None,
                 strength: float | None = None, noise: np.ndarray | None = None, progress: Progress | None = None,
                 force_guidance_batch: bool = False, mask: Any = None) -> np.ndarray:
        """Like :meth:`sample`, as floats ``[n, C, H, W]`` in the model's value range.

        ``noise`` replaces the initial noise draw (``[n, *sample_shape]``, before scaling by
        ``init_noise_sigma``): the same noise gives diffusers' pipeline result.
        """
        from edgegen.runtimes.diffusion.schedulers import make_scheduler

        s = self.sampler
        n = check_count(n)
        steps = self.defaults.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidArgumentError(f"steps must be an integer of at least 1, got {shown(steps)}")
        guidance = self._guidance(guidance, prompt, negative_prompt)
        if strength is not None and image is None:
            raise InvalidArgumentError("strength applies to img2img; give an image (--image) too")
        if s.inpainting and (image is None or mask is None):
            raise InvalidArgumentError("this is an inpainting model: give the image (--image) and a mask (--mask: "
                                       "white where to repaint, black where to keep)")
        if mask is not None and not s.inpainting:
            raise InvalidArgumentError("a mask applies to inpainting models (StableDiffusionInpaintPipeline); this "
                                       "one is not: drop --mask")
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise InvalidArgumentError(f"strength must be between 0 and 1 (0 keeps the image, 1 ignores it), got "
                                       f"{strength}")
        self._check_label(label, n)
        rng = rng_for(seed)
        sched = make_scheduler(scheduler or self.defaults.scheduler, s.scheduler_config)
        sched.set_timesteps(steps)
        timesteps = np.asarray(sched.timesteps)
        cfg = self._can_guide() and (guidance > 1.0 or force_guidance_batch)
        self._check_memory(n, "sampling", guided=cfg, img2img=image is not None)
        cond, uncond = self._conditioning(n, prompt, negative_prompt, label, cfg, rng)

        extra = None                                       # inpainting: mask and masked-image latents, per row
        if s.inpainting:
            latents, timesteps, extra = self._inpaint_start(image, mask, n, rng, sched, noise, strength)
        elif image is not None:
            init = self._encode_image(image, n, rng)                                      # [n, C, h, w]
            strength = 0.8 if strength is None else strength
            timesteps = sched.timesteps_for_strength(strength)
            start_noise = self._noise(noise, n, rng)
            latents = sched.add_noise(init, start_noise, timesteps[:1]) if len(timesteps) else init
        else:
            latents = self._noise(noise, n, rng) * np.float32(sched.init_noise_sigma)   # [n, C, h, w]

        total = len(timesteps)
        if s.guidance_embedding is not None:   # LCM: guidance goes in as an embedding, one batch half
            cond["timestep_cond"] = guidance_embedding(guidance, s.guidance_embedding, n)
        fixed = {name: np.concatenate([uncond[name], cond[name]]) if cfg else cond[name]   # the same every step
                 for name in self._cond_inputs}
        if total and not s.inpainting and self._on_device(sched) and (loop := self._device_loop()) is not None:
            latents = loop.run(sched, timesteps, latents, guided=cfg, guidance=guidance, cond=fixed, rng=rng,
                               progress=progress)
            return self.decode(latents)
        denoiser = self.sessions["denoiser"]
        for i, t in enumerate(timesteps):
            model_in = np.concatenate([latents, latents]) if cfg else latents           # [(2)n, C, h, w]
            model_in = sched.scale_model_input(model_in, t)
            if extra is not None:                                                        # [(2)n, 2C + 1, h, w]
                model_in = np.concatenate([model_in, np.concatenate([extra, extra]) if cfg else extra], axis=1)
            feed = {"sample": np.ascontiguousarray(model_in, dtype=np.float32),
                    "timestep": np.full((model_in.shape[0],), t, dtype=np.float32), **fixed}
            out = denoiser.run(None, feed)[0]
            if cfg:
                out_u, out_c = out[:n], out[n:]
                out = out_u + np.float32(guidance) * (out_c - out_u)
            latents = sched.step(out, t, latents, rng=rng)
            if progress is not None and progress(i + 1, total) is False:
                raise CancelledError(f"sampling cancelled by the progress callback after {i + 1} of {total} steps")
        return self.decode(latents)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Denoised samples -> images ``[n, C, H, W]`` (the VAE decoder for latent models)."""
        vae = self.sampler.vae
        if vae is None:
            return latents.astype(np.float32, copy=False)
        z = latents / np.float32(vae.scaling_factor) + np.float32(vae.shift_factor)
        return self.sessions["vae_decoder"].run(None, {"latent_sample": z.astype(np.float32)})[0]

    # -- pieces --------------------------------------------------------------------------------
    def _on_device(self, scheduler: Any) -> bool:
        """Whether this run takes the device loop: asked for, an affine scheduler, a denoiser output it can read."""
        if not self.latents_on_device or not scheduler.affine:
            return False
        graph = self.artifact.manifest.graphs["denoiser"]
        sample = next(t for t in graph.inputs if t.name == "sample")
        if sample.dtype != "float32" or graph.outputs[0].dtype != "float32":   # the step graphs are float32
            return False
        channels, out = self.sampler.sample_shape[0], graph.outputs[0].shape[1]
        return out == channels or (out == 2 * channels and scheduler.variance_channels)

    def _device_loop(self) -> Any:
        """The device loop, made on first use; None (with a warning, and the numpy loop from then on) where
        this onnxruntime build cannot run it on the provider."""
        from edgegen.errors import ProviderError
        from edgegen.runtimes.diffusion.device_loop import LatentLoop

        with self._open_lock:
            if self._latent_loop is None:
                try:
                    self._latent_loop = LatentLoop(self.sessions["denoiser"], self.provider, self._config)
                except ProviderError as exc:
                    warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
                    self.latents_on_device = False
            return self._latent_loop

    def _guidance(self, guidance: float | None, prompt: str | None, negative_prompt: str | None) -> float:
        s = self.sampler
        for what, text in (("the prompt", prompt), ("the negative prompt", negative_prompt)):
            if text is not None:   # a lone surrogate (bytes that are not UTF-8) is a TypeError in tokenizers
                check_text(text, what)
        if s.conditioning != "text" and (prompt is not None or negative_prompt is not None):
            raise InvalidArgumentError("this diffusion model is not text-conditioned: it takes no prompt "
                                       "(drop --prompt/--negative-prompt)")
        if s.guidance_embedding is not None and negative_prompt is not None:
            raise InvalidArgumentError("this is a latent consistency (LCM) model: guidance is an input of its UNet, "
                                       "distilled with the empty prompt as the unconditional one, so it takes no "
                                       "negative prompt (diffusers' LCM pipeline has none); drop --negative-prompt")
        if guidance is not None and guidance != 1.0 and not self._can_guide() and s.guidance_embedding is None:
            raise InvalidArgumentError("classifier-free guidance needs a text- or class-conditioned model with an "
                                       "unconditional embedding; this one has none (drop --guidance)")
        if guidance is not None and (not np.isfinite(guidance) or guidance < 0):
            raise InvalidArgumentError(f"guidance must be a finite number >= 0, got {guidance}")
        g = self.defaults.guidance if guidance is None else float(guidance)
        if negative_prompt is not None and g <= 1.0:   # diffusers ignores it there; edgegen says so
            raise InvalidArgumentError(f"the negative prompt is the unconditional half of classifier-free guidance, "
                                       f"which is off at guidance {g:g} (<= 1); give --guidance above 1 or drop "
                                       "--negative-prompt")
        return g

    def _check_label(self, label: Any, n: int) -> None:
        """Refuse, before anything runs, a label this model does not take or does not have (_conditioning uses it)."""
        s = self.sampler
        if label is None:
            return
        if s.conditioning != "class":
            takes = "a text prompt (--prompt)" if s.conditioning == "text" else "nothing (it is unconditional)"
            raise InvalidArgumentError(f"this diffusion model is not class-conditional: it takes {takes}, not a "
                                       f"label; drop --label")
        many = isinstance(label, (list, tuple, np.ndarray))
        given = list(np.asarray(label).reshape(-1)) if many else [label]
        if many and (np.ndim(label) != 1 or len(given) != n):
            raise InvalidArgumentError(f"{len(given)} labels for {n} images; give one label or {n}")
        for x in given:
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or not 0 <= x < s.num_classes:
                raise InvalidArgumentError(f"label {shown(x)} is out of range: this model has classes 0.."
                                           f"{s.num_classes - 1}")

    def _check_memory(self, count: int, action: str, noun: str = "images", *, guided: bool, img2img: bool) -> None:
        """Refuse, before anything is drawn, ``count`` images that cannot fit in memory: per image about a dozen
        float32 copies of its latents (the loop's latents, noise, scaled input, denoiser output, the scheduler's
        history), twice the denoiser batch under guidance, the denoiser's working memory, the text
        conditioning repeated per image, the decoded image with to_uint8's copy, and the start image of img2img
        (the loop runs on all images at once)."""
        s, graphs = self.sampler, self.artifact.manifest.graphs
        latent, pixels, rows = math.prod(s.sample_shape), math.prod(s.image_shape), 1 + guided
        hidden = graphs["denoiser"].tensor("encoder_hidden_states")
        text = math.prod(d for d in hidden.shape[1:] if isinstance(d, int)) if hidden is not None else 0
        values = latent * (12 + 6 * guided + GRAPH_WORKING_VALUES * rows) + text * rows + pixels * (3 + 3 * img2img)
        if s.vae is not None:
            values += GRAPH_WORKING_VALUES * pixels
        check_count_fits(count, 4 * values + pixels, action, noun)

    def _can_guide(self) -> bool:
        """Whether guidance runs as classifier-free guidance (an unconditional batch half)."""
        s = self.sampler
        if s.guidance_embedding is not None:
            return False
        return s.conditioning == "text" or (s.conditioning == "class" and s.null_label is not None)

    def _conditioning(self, n: int, prompt: str | None, negative_prompt: str | None, label: Any, cfg: bool,
                      rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """(cond, uncond) inputs of the denoiser for ``n`` images, by input name; uncond only under guidance."""
        s = self.sampler
        if s.conditioning == "text" and s.xl is not None:
            return self._xl_conditioning(n, prompt, negative_prompt, cfg)
        if s.conditioning == "text":
            texts = [prompt or ""] + ([negative_prompt or ""] if cfg else [])       # each encoded once
            ids = np.asarray([e.ids for e in self.tokenizer.encode_batch(texts)], dtype=np.int64)   # [1|2, T]
            hidden = self.sessions["text_encoder"].run(None, {"input_ids": ids})[0]                 # [1|2, T, D]
            rows = np.repeat(hidden, n, axis=0)                                                      # [(2)n, T, D]
            return {"encoder_hidden_states": rows[:n]}, ({"encoder_hidden_states": rows[n:]} if cfg else None)
        if s.conditioning == "class":
            assert s.num_classes is not None
            if label is None:
                labels = rng.integers(0, s.num_classes, n)
            else:
                given = np.asarray(label, dtype=np.int64)
                if given.ndim > 1 or (given.ndim == 1 and len(given) != n):
                    raise InvalidArgumentError(f"{given.size} labels for {n} images; give one label or {n}")
                labels = np.broadcast_to(given, (n,))
            bad = sorted({int(x) for x in labels if not 0 <= x < s.num_classes})
            if bad:
                raise InvalidArgumentError(f"label {bad[0]} is out of range: this model has classes 0.."
                                           f"{s.num_classes - 1}")
            uncond = np.full((n,), s.null_label, dtype=np.int64) if cfg else None
            return {"class_labels": labels.astype(np.int64)}, (None if uncond is None else {"class_labels": uncond})
        return {}, ({} if cfg else None)

    def _xl_conditioning(self, n: int, prompt: str | None, negative_prompt: str | None,
                         cfg: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """SDXL's ``encode_prompt``: the prompt through both tokenizers and encoders (penultimate hidden states,
        concatenated; the second's pooled projection), the negative prompt likewise, or zeros where the
        pipeline forces them for an absent negative prompt; ``add_time_ids`` for every row."""
        xl = self.sampler.xl
        assert xl is not None and self.tokenizer is not None and self.tokenizer_2 is not None
        zeros = cfg and negative_prompt is None and xl.zero_negative
        texts = [prompt or ""] + ([negative_prompt or ""] if cfg and not zeros else [])
        feed = {name: np.asarray([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)       # [1|2, T]
                for name, tok in (("input_ids", self.tokenizer), ("input_ids_2", self.tokenizer_2))}
        hidden, pooled = self.sessions["text_encoder"].run(None, feed)[:2]         # [1|2, T, D1+D2], [1|2, P]
        time_ids = np.broadcast_to(np.asarray(xl.time_ids, dtype=np.float32), (n, 6))

        def rows(i: int) -> dict[str, np.ndarray]:
            return {"encoder_hidden_states": np.repeat(hidden[i:i + 1], n, axis=0),
                    "text_embeds": np.repeat(pooled[i:i + 1], n, axis=0), "time_ids": time_ids}

        if not cfg:
            return rows(0), None
        if zeros:
            cond = rows(0)
            return cond, {"encoder_hidden_states": np.zeros_like(cond["encoder_hidden_states"]),
                          "text_embeds": np.zeros_like(cond["text_embeds"]), "time_ids": time_ids}
        return rows(0), rows(1)

    def _noise(self, noise: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = (n, *self.sampler.sample_shape)
        if noise is None:
            return rng.standard_normal(shape, dtype=np.float32)
        if noise.shape != shape:
            raise InvalidArgumentError(f"noise has shape {noise.shape}; this model needs {shape}")
        return noise.astype(np.float32, copy=False)

    def _inpaint_start(self, image: Any, mask: Any, n: int, rng: np.random.Generator, sched: Any,
                       noise: np.ndarray | None, strength: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """StableDiffusionInpaintPipeline's start: (latents, timesteps, [mask, masked-image latents] [n, 1 + C, h, w]).

        Its draws, in its order: at strength 1 (its default) the noise, then the masked image's posterior sample;
        below 1 the image's posterior sample, the noise (added to the image's latents at the first timestep), then
        the masked image's."""
        strength = 1.0 if strength is None else strength
        x = self._pixels(image, n)                                                       # [n, C, H, W]
        keep = self._mask(mask, n)                                                       # [n, 1, H, W] 1 = repaint
        timesteps = sched.timesteps_for_strength(strength)
        if strength == 1.0:
            latents = self._noise(noise, n, rng) * np.float32(sched.init_noise_sigma)
        else:
            init = self._latents_of(x, rng)
            start_noise = self._noise(noise, n, rng)
            latents = sched.add_noise(init, start_noise, timesteps[:1]) if len(timesteps) else init
        lo = self.sampler.value_range[0]
        masked = self._latents_of(np.where(keep < 0.5, x, np.float32(lo + (self.sampler.value_range[1] - lo) / 2)),
                                  rng)                                                  # the repainted part: 0 in [-1, 1]
        _, h, w = self.sampler.sample_shape
        H, W = keep.shape[2:]
        rows, cols = (np.arange(h) * H) // h, (np.arange(w) * W) // w                   # torch's nearest interpolate
        small = keep[:, :, rows][:, :, :, cols]                                          # [n, 1, h, w]
        return latents, timesteps, np.concatenate([small, masked], axis=1).astype(np.float32)

    def _mask(self, mask: Any, n: int) -> np.ndarray:
        """The inpainting mask as diffusers' mask processor makes it: grey, in [0, 1], binarized at 0.5
        (1 = repaint): [n, 1, H, W]."""
        _, h, w = self.sampler.image_shape
        if isinstance(mask, (str, os.PathLike)):
            grey = load_image(mask, (h, w), 1)                                        # [1, H, W, 1] uint8
        else:
            grey = np.asarray(mask)
            grey = grey[..., None] if grey.ndim == 2 or (grey.ndim == 3 and grey.shape[-1] != 1) else grey
            grey = grey[None] if grey.ndim == 3 else grey
            if grey.dtype != np.uint8 or grey.ndim != 4 or grey.shape[1:] != (h, w, 1):
                raise InvalidArgumentError(f"mask must be uint8 [H, W] = [{h}, {w}] (white = repaint), got "
                                           f"{grey.dtype} {list(np.asarray(mask).shape)}")
        if len(grey) not in (1, n):
            raise InvalidArgumentError(f"{len(grey)} masks for {n} samples; give one mask or {n}")
        value = grey.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        return np.broadcast_to((value >= 0.5).astype(np.float32), (n, 1, h, w))

    def _pixels(self, image: Any, n: int) -> np.ndarray:
        """A start image (a path, or uint8 [H, W, C] / [k, H, W, C]) as floats [n, C, H, W] in the value range."""
        s = self.sampler
        c, h, w = s.image_shape
        if isinstance(image, (str, os.PathLike)):
            pixels = load_image(image, (h, w), c)                                     # [1, H, W, C] uint8
        else:
            pixels = np.asarray(image)
            pixels = pixels[None] if pixels.ndim == 3 else pixels
            if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (h, w, c):
                raise InvalidArgumentError(f"image must be uint8 [H, W, C] = [{h}, {w}, {c}] (or a batch of them), "
                                           f"got {pixels.dtype} {list(pixels.shape)}")
        if len(pixels) not in (1, n):
            raise InvalidArgumentError(f"{len(pixels)} start images for {n} samples; give one image or {n}")
        return np.broadcast_to(from_uint8(pixels, s.value_range), (n, c, h, w))         # [n, C, H, W]

    def _encode_image(self, image: Any, n: int, rng: np.random.Generator) -> np.ndarray:
        """The start image as clean latents ``[n, C, h, w]``."""
        return self._latents_of(self._pixels(image, n), rng)

    def _latents_of(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Images [n, C, H, W] in the value range -> latents [n, C, h, w] (a draw from the VAE's posterior)."""
        s = self.sampler
        if s.vae is None:
            return np.ascontiguousarray(x)
        if "vae_encoder" not in self.artifact.manifest.graphs:
            raise InvalidArgumentError("this artifact has no vae_encoder graph, so it cannot do img2img; re-convert "
                                       "it from a pipeline directory that has a VAE encoder")
        lo, hi = s.value_range
        moments = self._session("vae_encoder").run(None, {"sample": np.ascontiguousarray(
            (x - lo) / (hi - lo) * 2 - 1, dtype=np.float32)})[0]                        # [n, 2C, h, w]
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        latent = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        return ((latent - np.float32(s.vae.shift_factor)) * np.float32(s.vae.scaling_factor)).astype(np.float32)

