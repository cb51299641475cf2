"""What the linear multistep solvers share (DPM-Solver, DEIS): each step is

    x_next = a * x + c0 * m0 + c1 * m1 + c2 * m2 [+ noise * z]

a linear combination of the sample and the converted model outputs m of this step and the ones before
(x0 or eps, as the solver works), with coefficients from the sigma schedule alone.  Orders 1 and 2 are the
device loop's affine map (m1 is the previous step's x0 slot, ``StepCoefficients.history``); the third order
reaches back two outputs and keeps the numpy loop.  A subclass gives ``_combination``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import StepCoefficients, as_float, take_noise
from edgegen.runtimes.diffusion.schedulers.sigmas import VPSigmaScheduler

__all__ = ["MultistepScheduler"]


class MultistepScheduler(VPSigmaScheduler):
    multistep = True

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._outputs: list[np.ndarray] = []     # the converted outputs m of the last steps, newest last [B, C, H, W]
        self._lower_order_nums = 0

    @property
    def affine(self) -> bool:
        return self.config.solver_order < 3

    def _combination(self, i: int) -> tuple[tuple[float, float], float, list[float], float | None]:
        """((p_x, p_out), a, [c0, c1, c2][:order], noise) of step ``i``: m0 = p_x x + p_out out, and
        x_next = a x + sum_j c_j m_j + noise z."""
        raise NotImplementedError

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        (p_x, p_out), a, cs, noise = self._combination(i)
        if len(cs) > 2:
            raise InvalidArgumentError(f"a third-order {self.name} step combines the two previous model outputs, which "
                                       "the device loop's affine map cannot hold: it has no StepCoefficients; call "
                                       "step()")
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x=a, x0=cs[0], history=cs[1] if len(cs) > 1 else 0.0,
                                noise=noise)

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        i = self._current(t)
        x = as_float("sample", sample)                                              # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        (p_x, p_out), a, cs, noise_scale = self._combination(i)
        self._outputs = [*self._outputs[-2:], p_x * x + p_out * out]
        prev = a * x
        for c_j, m_j in zip(cs, reversed(self._outputs)):
            prev += c_j * m_j
        if noise_scale is not None:
            prev += noise_scale * take_noise(x.shape, noise, rng, self.name, t)
        self.advance()
        return prev.astype(np.float32)

    def advance(self) -> None:
        super().advance()
        self._lower_order_nums = min(self._lower_order_nums + 1, self.config.solver_order)
