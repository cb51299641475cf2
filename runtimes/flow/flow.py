"""The flow runtime: normalizing flows (RealNVP, Glow) with a standard-normal prior.

Two graphs (written by :mod:`edgegen.converters.flow.convert`)::

    flow_inverse   z [B, *latent_shape] float32  ->  x [B, *data_shape]                   (sampling)
    flow_forward   x [B, *data_shape]   float32  ->  z [B, *latent_shape], log_det [B]    (likelihood)

``x`` lives in the model's input space; pixels map to it and back in numpy with the
constants of the ``sampler`` section (``num_bins``, ``data_range``, ``logit``,
``dequantization_offset``), exactly as the model's training code did:

    k  = pixel level in [0, num_bins)          (uint8 p: k = floor(p * num_bins / 256))
    s  = lo + (hi - lo) * (k + offset) / num_bins
    x  = logit(s) if logit else s

Sampling draws ``z ~ N(0, T^2 I)`` (``T`` the temperature) from ``np.random.default_rng(seed)``
and shows each value of ``x`` as the pixel level whose bin contains it.  Exact
log-likelihoods and bits/dim come from the forward graph (see :meth:`Flow.bits_per_dim`).
No torch here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from edgegen.errors import GraphMismatchError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.images import check_images
from edgegen.runtimes.latents import check_count, check_frames, rng_for, slerp
from edgegen.runtimes.memory import GRAPH_WORKING_VALUES, check_count_fits
from edgegen.runtimes.session import SessionConfig

__all__ = ["Flow", "FlowDefaults", "FlowSampler", "data_to_pixels", "pixels_to_data"]

FORWARD, INVERSE = "flow_forward", "flow_inverse"
#: graph role -> (input names, output names)
GRAPH_IO = {FORWARD: (("x",), ("z", "log_det")), INVERSE: (("z",), ("x",))}
LOG_2PI = math.log(2.0 * math.pi)
#: Latents per flow_inverse call when sampling (bounds the activations' memory).
SAMPLE_BATCH = 64


@dataclass(frozen=True)
class FlowSampler:
    """The ``sampler`` section of a flow manifest."""

    data_shape: tuple[int, ...]                 # the model's input without the batch: [C, H, W] or [D]
    latent_shape: tuple[int, ...]               # z without the batch (same number of values as data_shape)
    image_shape: tuple[int, ...]                # [C, H, W] of the images (C = 1 or 3); x is their values in C, H, W order
    num_bins: int = 256                         # pixel levels of the data the model was trained on (2 ** bits)
    data_range: tuple[float, ...] = (0.0, 1.0)  # (lo, hi) of the affine map above
    logit: bool = False                         # RealNVP-style logit after the affine map
    dequantization_offset: float = 0.5          # where in its bin a pixel is evaluated (0.5 = centre)
    prior: Literal["standard-normal"] = "standard-normal"

    @classmethod
    def from_manifest(cls, section: object) -> FlowSampler:
        from edgegen.manifest import shape_problem
        from edgegen.strict import from_json

        s = from_json(cls, section, where="edgegen.json.sampler", error=ManifestError, fix="re-convert the model")
        shapes = (("data_shape", s.data_shape), ("latent_shape", s.latent_shape), ("image_shape", s.image_shape))
        # bounded: a hostile manifest must not ask for 40 GB per image
        bad = [f"edgegen.json.sampler.{name}: {problem}" for name, shape in shapes
               if (problem := shape_problem(shape))]
        if bad:
            raise ManifestError("; ".join(bad) + "; re-convert the model")
        problems = []
        sizes = {math.prod(s.data_shape), math.prod(s.latent_shape), math.prod(s.image_shape)}
        if len(sizes) != 1 or len(s.image_shape) != 3 or s.image_shape[0] not in (1, 3):
            problems.append(f"data_shape {list(s.data_shape)}, latent_shape {list(s.latent_shape)} and "
                            f"image_shape {list(s.image_shape)} ([C, H, W], C = 1 or 3) must hold as many values")
        problems += pixel_map_problems(s.num_bins, s.data_range, s.logit, s.dequantization_offset)
        if problems:
            raise ManifestError("edgegen.json.sampler: " + "; ".join(problems) + "; re-convert the model")
        return s


def pixel_map_problems(num_bins: int, data_range: tuple[float, ...], logit: bool, offset: float) -> list[str]:
    """What is wrong with a pixel <-> model-space map (shared by the spec and the manifest checks)."""
    problems = []
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or not 2 <= num_bins <= 256:
        problems.append(f"num_bins must be an integer in 2..256 (256 for 8-bit data), got {num_bins!r}")
    if len(data_range) != 2 or not all(map(_finite, data_range)) or not data_range[0] < data_range[1]:
        problems.append(f"data_range must be (lo, hi) with lo < hi, got {tuple(data_range)!r}")
    if not _finite(offset) or not 0.0 <= offset < 1.0:
        problems.append(f"dequantization_offset must be in [0, 1) (0.5 = bin centre), got {offset!r}")
    if logit and not problems:
        lo, hi = data_range
        first, last = lo + (hi - lo) * offset / num_bins, lo + (hi - lo) * (num_bins - 1 + offset) / num_bins
        if not 0.0 < first <= last < 1.0:
            problems.append(f"with logit, data_range {tuple(data_range)!r} must map every pixel level inside (0, 1) "
                            "(RealNVP: (alpha, 1) or (alpha, 1 - alpha))")
    return problems


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FlowDefaults:
    """The ``defaults`` section of a flow manifest."""

    temperature: float = 1.0

    @classmethod
    def from_manifest(cls, section: object) -> FlowDefaults:
        from edgegen.strict import from_json

        defaults = from_json(cls, section, where="edgegen.json.defaults", error=ManifestError,
                             fix="re-convert the model")
        try:
            check_temperature(defaults.temperature)
        except InvalidArgumentError as exc:
            raise ManifestError(f"edgegen.json.defaults: {exc}; re-convert the model") from None
        return defaults


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise InvalidArgumentError(f"temperature must be a number > 0 (1 = the prior itself, Glow samples look best "
                                   f"near 0.7), got {temperature!r}")
    return float(temperature)


def pixels_to_data(s: FlowSampler, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, C] -> x [N, *data_shape] float32 and log|dx/dk| [N] float64 (the map above)."""
    images = check_images(images, s.image_shape)
    lo, hi = s.data_range
    x_of, jac_of = _pixel_tables(s.num_bins, lo, hi, s.dequantization_offset, s.logit)     # [256] each
    log_jac = np.full(len(images), images[0].size * math.log((hi - lo) / s.num_bins))          # [N]
    if s.logit:
        log_jac -= np.sum(jac_of[images].transpose(0, 3, 1, 2), axis=(1, 2, 3))
    return x_of[images].transpose(0, 3, 1, 2).reshape(len(images), *s.data_shape), log_jac


@functools.lru_cache(maxsize=16)
def _pixel_tables(num_bins: int, lo: float, hi: float, offset: float, logit: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel value 0..255: x float32 and, with logit, log v + log(1 - v) float64 (log|dx/dk| = the
    affine map's log-scale minus it), so a batch is two table lookups."""
    levels = np.floor(np.arange(256, dtype=np.float64) * num_bins / 256.0)                       # [256]
    v = lo + (hi - lo) * (levels + offset) / num_bins
    if logit:
        log_v, log_1mv = np.log(v), np.log1p(-v)   # x = log v - log(1 - v);  dx/dv = 1 / (v (1 - v))
        x, jac = (log_v - log_1mv).astype(np.float32), log_v + log_1mv
    else:
        x, jac = v.astype(np.float32), np.zeros(256)
    x.flags.writeable = jac.flags.writeable = False                     # shared by every call (cached)
    return x, jac


def data_to_pixels(s: FlowSampler, x: np.ndarray) -> np.ndarray:
    """x [N, *data_shape] -> uint8 [N, H, W, C]: each value becomes the pixel level whose bin holds it."""
    lo, hi = s.data_range
    v = x.astype(np.float64).reshape(len(x), *s.image_shape)                   # [N, C, H, W], a new buffer
    if s.logit:   # sigmoid without overflow, 0.5 (1 + tanh(v / 2)), in place
        v *= 0.5
        np.tanh(v, out=v)
        v += 1.0
        v *= 0.5
    v -= lo
    v /= hi - lo
    v *= s.num_bins
    levels = np.clip(np.nan_to_num(np.floor(v, out=v), copy=False), 0, s.num_bins - 1, out=v).astype(np.intp)
    return _level_pixels(s.num_bins)[levels].transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=16)
def _level_pixels(num_bins: int) -> np.ndarray:
    """uint8 [num_bins]: level k's lowest pixel, ceil(k * 256 / num_bins), which reads back as level k even
    when num_bins does not divide 256."""
    table = (-(-np.arange(num_bins, dtype=np.float64) * 256 // num_bins)).astype(np.uint8)
    table.flags.writeable = False                                       # shared by every call (cached)
    return table


class Flow:
    """A loaded flow artifact: sample images, score them (exact log-likelihood, bits/dim)."""

    family = "flow"

    def __init__(self, artifact: Artifact, sessions: dict[str, ort.InferenceSession], provider: str) -> None:
        self.artifact, self.sessions, self.provider = artifact, sessions, provider
        self.sampler = FlowSampler.from_manifest(artifact.manifest.sampler)
        self.defaults = FlowDefaults.from_manifest(artifact.manifest.defaults)
        #: [C, H, W] of the images this model draws and scores.
        self.image_shape: tuple[int, int, int] = tuple(self.sampler.image_shape)   # type: ignore[assignment]

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Flow:
        m = artifact.manifest
        if INVERSE not in m.graphs:
            raise ManifestError(f"{artifact.root}: this flow artifact lacks a {INVERSE!r} graph (it has "
                                f"{sorted(m.graphs)}); re-convert the model")
        sampler = FlowSampler.from_manifest(m.sampler)   # bad sections fail before any session opens
        FlowDefaults.from_manifest(m.defaults)
        roles = tuple(r for r in (INVERSE, FORWARD) if r in m.graphs)
        provider, sessions = open_sessions(artifact, config, roles=roles)
        problems = []
        for role, session in sessions.items():
            inputs, outputs = GRAPH_IO[role]
            got_in, got_out = [a.name for a in session.get_inputs()], [a.name for a in session.get_outputs()]
            if got_in != list(inputs) or got_out != list(outputs):
                problems.append(f"{role} has inputs {got_in} and outputs {got_out}, expected {list(inputs)} -> "
                                f"{list(outputs)}")
        shapes = {(INVERSE, "z"): sampler.latent_shape, (FORWARD, "x"): sampler.data_shape}
        for (role, name), want in shapes.items():
            spec = next((t for t in m.graphs[role].inputs if t.name == name), None) if role in m.graphs else None
            if spec is not None and tuple(spec.shape[1:]) != tuple(want):
                problems.append(f"{role} input {name} has shape {list(spec.shape)}, but the sampler says "
                                f"[batch, {', '.join(map(str, want))}]")
        if problems:
            raise GraphMismatchError(f"{artifact.root}: " + "; ".join(problems) + "; re-convert the model")
        return cls(artifact, sessions, provider)

    # -- graphs -----------------------------------------------------------------------------------
    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents z [N, *latent_shape] -> model-space data x [N, *data_shape] float32 (flow_inverse)."""
        z = self._check(z, self.sampler.latent_shape, "z")
        return self.sessions[INVERSE].run(["x"], {"z": z})[0]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-space data x [N, *data_shape] -> z [N, *latent_shape], log|det dz/dx| [N] (flow_forward)."""
        if FORWARD not in self.sessions:
            raise InvalidArgumentError(f"{self.artifact.root} has no {FORWARD!r} graph, so it cannot score "
                                       "data; re-convert the model with edgegen to get one")
        x = self._check(x, self.sampler.data_shape, "x")
        z, log_det = self.sessions[FORWARD].run(["z", "log_det"], {"x": x})
        return z, log_det

    # -- pixels <-> model space -------------------------------------------------------------------
    def pixels_to_data(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, H, W, C] -> x [N, *data_shape] float32 and log|dx/dk| [N] float64, k the pixel levels."""
        return pixels_to_data(self.sampler, images)

    def data_to_pixels(self, x: np.ndarray) -> np.ndarray:
        """x [N, *data_shape] -> uint8 images [N, H, W, C]: each value becomes the pixel level whose bin holds it."""
        return data_to_pixels(self.sampler, x)

    # -- likelihood -------------------------------------------------------------------------------
    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """log p(x) [N] in nats of model-space data x [N, *data_shape]:
        ``log N(z; 0, I) + log|det dz/dx|`` with ``z, log_det = flow_forward(x)``."""
        z, log_det = self.encode(x)
        z64 = z.astype(np.float64).reshape(len(z), -1)                                           # [N, D]
        return -0.5 * np.sum(z64 * z64, axis=1) - 0.5 * z64.shape[1] * LOG_2PI + log_det.astype(np.float64)

    def bits_per_dim(self, images: np.ndarray) -> np.ndarray:
        """Bits per dimension [N] of uint8 images [N, H, W, C] (lower = more likely)::

            x, log_jac = pixels_to_data(images)     # log_jac = sum log|dx/dk| over the D values
            bits/dim   = -(log p(x) + log_jac) / (D ln 2)

        i.e. minus the log2-probability of the pixel levels' bins (the density of x times each
        bin's volume, one level wide) per value.  Without logit, ``log_jac = D log((hi - lo) /
        num_bins)``: for data in [0, 1] this is the usual ``-log p(x) / (D ln 2) + log2(num_bins)``;
        with logit it adds ``-sum(log v + log(1 - v))``, as RealNVP's (and normflows') bits/dim do.
        """
        x, log_jac = self.pixels_to_data(images)
        return -(self.log_likelihood(x) + log_jac) / (x[0].size * math.log(2.0))

    # -- sampling ---------------------------------------------------------------------------------
    def sample_latents(self, n: int, *, seed: int | None = None, temperature: float | None = None) -> np.ndarray:
        """z [n, *latent_shape] ~ N(0, T^2 I) from ``np.random.default_rng(seed)``."""
        n = check_count(n)
        t = check_temperature(self.defaults.temperature if temperature is None else temperature)
        eps = rng_for(seed).standard_normal((n, *self.sampler.latent_shape))
        return (t * eps).astype(np.float32)

    def sample(self, n: int, *, seed: int | None = None, temperature: float | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """n images uint8 [n, H, W, C]; ``temperature`` (default: the artifact's, else 1) scales z.
        The inverse graph runs on ``SAMPLE_BATCH`` latents at a time; ``progress(done, n)`` after each."""
        check_temperature(self.defaults.temperature if temperature is None else temperature)
        self._check_memory(check_count(n), "sampling", batched=True)
        z = self.sample_latents(n, seed=seed, temperature=temperature)                           # [n, *latent]
        images = []
        for start in range(0, len(z), SAMPLE_BATCH):
            images.append(self.data_to_pixels(self.decode(z[start:start + SAMPLE_BATCH])))
            if progress is not None:
                progress(min(start + SAMPLE_BATCH, len(z)), len(z))
        return np.concatenate(images)

    def interpolate(self, seed_a: int, seed_b: int, *, frames: int = 8,
                    temperature: float | None = None) -> np.ndarray:
        """uint8 [frames, H, W, C] along the great circle between the two seeds' latents
        (the first frame is ``sample(1, seed=seed_a)``, the last ``sample(1, seed=seed_b)``)."""
        za = self.sample_latents(1, seed=seed_a, temperature=temperature)[0]
        self._check_memory(check_frames(frames), "interpolating", noun="frames", batched=False)
        zb = self.sample_latents(1, seed=seed_b, temperature=temperature)[0]
        return self.data_to_pixels(self.decode(slerp(za, zb, frames)))

    def _check_memory(self, count: int, action: str, noun: str = "images", *, batched: bool) -> None:
        """Refuse, before drawing anything, ``count`` images that cannot fit in memory.  Per value: the latents
        (float64 draw and product, float32 copy) and the uint8 pixels twice (per batch, then concatenated);
        unbatched (an interpolation), slerp's float64 path and the whole graph run: its output, working
        memory, and data_to_pixels' float64 copy."""
        values = math.prod(self.sampler.latent_shape)
        per_value = 20 + 2 if batched else 7 * 8 + 4 + 4 * (1 + GRAPH_WORKING_VALUES) + 8 + 2
        check_count_fits(count, per_value * values, action, noun)

    @staticmethod
    def _check(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != len(shape) + 1 or array.shape[1:] != tuple(shape) or len(array) < 1:
            raise InvalidArgumentError(f"{name} must be [N, {', '.join(map(str, shape))}] for this model, "
                                       f"got shape {list(array.shape)}")
        return np.ascontiguousarray(array, dtype=np.float32)
