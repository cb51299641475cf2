"""What every sampling family (diffusion, gan, vae, vq-vae, flow) checks and draws the same way: the
number of samples, the seeded generator, and interpolation between two latents.  No torch here."""

from __future__ import annotations

import math

import numpy as np

from edgegen.errors import InvalidArgumentError


def check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgumentError(f"the number of images must be a positive integer, got {n!r}")
    return int(n)


def check_frames(frames: int) -> int:
    """The number of frames of an interpolation: an integer >= 2 (checked before anything is drawn)."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise InvalidArgumentError(f"frames must be an integer >= 2, got {frames!r}")
    return int(frames)


def rng_for(seed: int | None) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InvalidArgumentError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)


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
