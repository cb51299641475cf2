"""What the gan, vae and vq-vae runtimes check the same way: the image constants of their sampler
sections, and that an artifact holds the graphs the family needs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from edgegen.errors import ManifestError
from edgegen.manifest import MAX_DIMENSION, MAX_VALUES, shape_problem
from edgegen.runtimes.artifact import Artifact


def check_image_constants(image_shape: tuple[int, ...], value_range: tuple[float, ...]) -> None:
    """The checks every image sampler section makes (ValueError: strict.from_json names the key)."""
    if len(image_shape) != 3 or image_shape[0] not in (1, 3) or min(image_shape) < 1:
        raise ValueError(f"image_shape must be [channels (1 or 3), height, width], got {list(image_shape)}")
    if problem := shape_problem(image_shape, rank=3):   # bounded: a hostile manifest must not ask for 40 GB
        raise ValueError(f"image_shape {problem}")
    if len(value_range) != 2 or not all(math.isfinite(v) for v in value_range) or value_range[0] >= value_range[1]:
        raise ValueError(f"value_range must be [low, high] with low < high, got {list(value_range)}")


def check_noise_sizes(noise: Mapping[str, Sequence[Any]]) -> None:
    """Each lifted noise input's fixed axes are bounded like a sample's (they are drawn for every image)."""
    for role, inputs in noise.items():
        for n in inputs:
            fixed = [d for d in n.shape if isinstance(d, int)]
            if max(fixed, default=1) > MAX_DIMENSION or math.prod(fixed) > MAX_VALUES:
                raise ValueError(f"noise.{role} {n.name!r}: shape {list(n.shape)[:8]} is too large (at most "
                                 f"{MAX_DIMENSION:,} per axis and {MAX_VALUES:,} values per image)")


def require_graphs(artifact: Artifact, family: str, roles: tuple[str, ...]) -> None:
    m = artifact.manifest
    missing = [r for r in roles if r not in m.graphs]
    if missing:
        raise ManifestError(f"{artifact.root}: this {family} artifact lacks the graph(s) {missing} "
                            f"(it has {sorted(m.graphs)}); re-convert the model")
