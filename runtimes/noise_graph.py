"""A graph whose random draws were lifted into inputs, and the runtime that fills them (the gan, vae
and vq-vae runtimes run their graphs through it).  No torch here.

A module that draws random numbers inside its forward (``torch.randn_like`` noise
injection, a decoder sampling its output) was exported with those draws lifted out into
graph inputs ``noise.0``, ``noise.1``, ... (see :mod:`edgegen.converters.export.graph`).
The manifest lists them per graph (:class:`NoiseInput`); :class:`NoiseGraph` fills them
from the caller's seeded ``np.random.Generator``, or takes them explicitly, so feeding
PyTorch the same noise gives the same image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from edgegen.errors import GraphMismatchError, InvalidArgumentError

__all__ = ["BATCH", "NoiseGraph", "NoiseInput"]

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


class NoiseGraph:
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
