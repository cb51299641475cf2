"""What the gan, vae and vq-vae runtimes share: one graph with lifted noise inputs, image
constants checked the same way, and spherical interpolation.  No torch here.

A module that draws random numbers inside its forward (``torch.randn_like`` noise
injection, a decoder sampling its output) was exported with those draws lifted out into
graph inputs ``noise.0``, ``noise.1``, ... (see :mod:`edgegen.converters.image_export`).
The manifest lists them per graph (:class:`NoiseInput`); :class:`ImageGraph` fills them
from the caller's seeded ``np.random.Generator``, or takes them explicitly, so feeding
PyTorch the same noise gives the same image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from edgegen.errors import GraphMismatchError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact

__all__ = ["ImageGraph", "NoiseInput", "check_count", "check_image_constants", "check_images", "lerp", "require_graphs",
           "rng_for", "slerp"]

#: The name a noise shape gives the batch axis.
BATCH = "batch"


@dataclass(frozen=True)
class NoiseInput:
    """One lifted random draw: a graph input the runtime fills."""

    name: str                                   # noise.{i}
    shape: tuple[int | str, ...]                # "batch" marks the batch axis, e.g. ["batch", 1, 8, 8]
    distribution: Literal["normal", "uniform"]  # N(0, 1) (randn) or U[0, 1) (rand, bernoulli)

    def __post_init__(self) -> None:
        if any(d != BATCH and (not isinstance(d, int) or d < 1) for d in self.shape):
            raise ValueError(f"noise {self.name!r}: shape {list(self.shape)} must hold positive integers "
                             f"and {BATCH!r}")


def check_image_constants(image_shape: tuple[int, ...], value_range: tuple[float, ...]) -> None:
    """The checks every image sampler section makes (ValueError: strict.from_json names the key)."""
    if len(image_shape) != 3 or image_shape[0] not in (1, 3) or min(image_shape) < 1:
        raise ValueError(f"image_shape must be [channels (1 or 3), height, width], got {list(image_shape)}")
    if len(value_range) != 2 or not all(math.isfinite(v) for v in value_range) or value_range[0] >= value_range[1]:
        raise ValueError(f"value_range must be [low, high] with low < high, got {list(value_range)}")


def require_graphs(artifact: Artifact, family: str, roles: tuple[str, ...]) -> None:
    m = artifact.manifest
    missing = [r for r in roles if r not in m.graphs]
    if missing:
        raise ManifestError(f"{artifact.root}: this {family} artifact lacks the graph(s) {missing} "
                            f"(it has {sorted(m.graphs)}); re-convert the model")


def check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgumentError(f"the number of images must be a positive integer, got {n!r}")
    return int(n)


def check_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """User images as ``uint8 [N, H, W, C]`` matching the model's ``[C, H, W]``, or a clear error."""
    c, h, w = image_shape
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, c) or len(images) == 0:
        raise InvalidArgumentError(f"images must be uint8 [N, {h}, {w}, {c}] (runtimes.images.load_image reads "
                                   f"one), got {images.dtype} {list(images.shape)}")
    return images


def rng_for(seed: int | None) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InvalidArgumentError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)


class ImageGraph:
    """One graph: named inputs plus lifted noise inputs -> named outputs."""

    def __init__(self, session: ort.InferenceSession, role: str, inputs: tuple[str, ...],
                 outputs: tuple[str, ...], noise: tuple[NoiseInput, ...] = ()) -> None:
        self.session, self.role, self.inputs, self.outputs, self.noise = session, role, inputs, outputs, noise
        have_in = sorted(a.name for a in session.get_inputs())
        have_out = {a.name for a in session.get_outputs()}
        want_in = sorted([*inputs, *(n.name for n in noise)])
        if have_in != want_in or not set(outputs) <= have_out:
            raise GraphMismatchError(
                f"the {role!r} graph has inputs {have_in} and outputs {sorted(have_out)}, but the manifest's "
                f"sampler section needs inputs {want_in} and outputs {list(outputs)}; re-convert the model")

    def draw_noise(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh noise for ``batch`` rows, in the manifest's order (so a seed fixes it)."""
        out = {}
        for n in self.noise:
            shape = tuple(batch if d == BATCH else d for d in n.shape)
            out[n.name] = (rng.standard_normal(shape, dtype=np.float32) if n.distribution == "normal"
                           else rng.random(shape, dtype=np.float32))
        return out

    def run(self, feed: Mapping[str, np.ndarray], *, noise: Mapping[str, np.ndarray] | None = None,
            rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Run on ``feed`` (first axis = batch); noise is given, or drawn from ``rng``."""
        batch = len(next(iter(feed.values())))
        if self.noise and noise is None:
            if rng is None:
                raise InvalidArgumentError(f"the {self.role!r} graph draws random noise "
                                           f"({len(self.noise)} lifted inputs): pass noise= or rng=")
            noise = self.draw_noise(batch, rng)
        full = dict(feed)
        for n in self.noise:
            if noise is None or n.name not in noise:
                raise InvalidArgumentError(f"noise for the {self.role!r} graph lacks {n.name!r} "
                                           f"(it takes {[x.name for x in self.noise]})")
            full[n.name] = np.ascontiguousarray(noise[n.name], dtype=np.float32)
        return self.session.run(list(self.outputs), full)


def slerp(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """``frames`` points from ``a`` to ``b`` ([*shape] each) on the great circle through them
    (Shoemake 1985), returned as ``[frames, *shape]``; nearly parallel ends fall back to a line."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise InvalidArgumentError(f"frames must be an integer >= 2, got {frames!r}")
    t = np.linspace(0.0, 1.0, frames)[:, None]                                  # [F, 1]
    fa, fb = a.reshape(1, -1).astype(np.float64), b.reshape(1, -1).astype(np.float64)   # [1, D]
    cos = float(np.sum(fa * fb) / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-12))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    if omega < 1e-4:
        out = (1 - t) * fa + t * fb
    else:
        out = (np.sin((1 - t) * omega) * fa + np.sin(t * omega) * fb) / math.sin(omega)
    return out.reshape(frames, *a.shape).astype(np.float32)


def lerp(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """``frames`` evenly spaced points on the segment from ``a`` to ``b``: ``[frames, *shape]``."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise InvalidArgumentError(f"frames must be an integer >= 2, got {frames!r}")
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32).reshape(-1, *([1] * a.ndim))   # [F, 1, ...]
    return ((1 - t) * a[None] + t * b[None]).astype(np.float32)
