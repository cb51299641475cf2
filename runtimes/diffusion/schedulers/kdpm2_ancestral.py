"""KDPM2 ancestral (k-diffusion's ``sample_dpm_2_ancestral``), as diffusers' ``KDPM2AncestralDiscreteScheduler``:
KDPM2's midpoint step aimed at sigma_down, then fresh noise up to the next sigma (sigma_down^2 + sigma_up^2 =
sigma_next^2, as Euler ancestral splits it).  The midpoint is sqrt(sigma_k * sigma_down_k); the noise comes
at each step's second evaluation, from the run's generator.  Affine (with noise) like KDPM2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import StepCoefficients
from edgegen.runtimes.diffusion.schedulers.kdpm2 import KDPM2Config, KDPM2Scheduler, interleave

__all__ = ["KDPM2AncestralConfig", "KDPM2AncestralScheduler"]


@dataclass(frozen=True)
class KDPM2AncestralConfig(KDPM2Config):
    pass


class KDPM2AncestralScheduler(KDPM2Scheduler):
    name = "kdpm2-a"
    config_type = KDPM2AncestralConfig
    config: KDPM2AncestralConfig

    def _midpoints(self, sigmas: np.ndarray) -> np.ndarray:
        s = sigmas.astype(np.float64)                                                # [n + 1], ends at 0
        nxt = np.append(s[1:], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.sqrt(nxt ** 2 * (s ** 2 - nxt ** 2) / s ** 2)
            down = np.sqrt(np.maximum(nxt ** 2 - up ** 2, 0.0))
        down[-1] = 0.0
        self._up, self._down = interleave(up.astype(np.float32)), interleave(down.astype(np.float32))
        mid = np.sqrt(s * down)
        mid[-2:] = 0.0
        return mid

    def _mid_slice(self, n: int) -> slice:
        return slice(0, n - 1)                # i_0 .. i_{n-2}: step k's midpoint is its own (sigma_k, down_k)

    def _midpoint_of(self, i: int) -> float:
        return float(self._mid[i - 1])

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        if self._first_order:             # an Euler step from sigma_k to its midpoint
            s, mid = float(self.sigmas[i]), float(self._mid[i])
            d = (mid - s) / s
            return StepCoefficients(*self._x0(s), x=1 + d, x0=-d)
        s, mid = float(self.sigmas[i - 1]), float(self._mid[i - 1])
        down, up = float(self._down[i - 1]), float(self._up[i - 1])
        return StepCoefficients(*self._x0(mid), x=down / mid, x0=-(down - s) / mid, history=(mid - s) / mid,
                                noise=up)
