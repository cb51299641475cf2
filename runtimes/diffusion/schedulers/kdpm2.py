"""KDPM2 (k-diffusion's ``sample_dpm_2``, Karras et al. 2022's DPM-Solver-2 variant), as diffusers'
``KDPM2DiscreteScheduler``: from sigma_k an Euler half-step to the geometric midpoint
i = sqrt(sigma_k * sigma_{k+1}), a second model evaluation there, and the whole step to sigma_{k+1} redone
with the midpoint's slope.  Two evaluations per step (``order = 2``): ``timesteps`` interleaves the
midpoints' (fractional) timesteps, ``[t0, t(i1), t1, t(i2), t2, ...]``.  The last step, to sigma 0, is
Euler's alone.  Samples live at the variance-exploding scale.

Affine for the device loop: with the midpoint sample x_mid = s0 + (i - s)/s (s0 - D1), the corrected step
s0 + (n - s)/i (x_mid - D2) is (n/i) x_mid + ((i - s)/i) D1 - ((n - s)/i) D2 (D1: the previous step's x0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, StepCoefficients
from edgegen.runtimes.diffusion.schedulers.sigmas import VESigmaScheduler, discrete_schedule, sigma_to_t, train_sigmas

__all__ = ["KDPM2Config", "KDPM2Scheduler", "interleave"]


@dataclass(frozen=True)
class KDPM2Config(ScheduleConfig):
    beta_start: float = 0.00085                 # diffusers' KDPM2 defaults (Stable Diffusion's range)
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"   # type: ignore[assignment]  (diffusers neither)
    timestep_spacing: Spacing = "linspace"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None


def interleave(values: np.ndarray) -> np.ndarray:
    """[a0, a1, a1, a2, a2, ..., an, an, an]: a per-step table [n + 1] indexed by evaluation, as diffusers
    lays out the two-evaluation schedulers' tables [2n + 2]."""
    return np.concatenate([values[:1], np.repeat(values[1:], 2), values[-1:]])


class KDPM2Scheduler(VESigmaScheduler):
    name = "kdpm2"
    config_type = KDPM2Config
    unread = frozenset({"rescale_betas_zero_snr"})
    order = 2
    multistep = True                      # the corrected step reads the half-step's x0
    config: KDPM2Config

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._first_order = True          # the next evaluation starts a step (else it is at the midpoint)
        self._x0_previous: np.ndarray | None = None

    def _base_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps [n], sigmas float32 [n + 1] ending at 0) before interleaving."""
        timesteps, sigmas = discrete_schedule(self.config, self.alphas_cumprod, n, ramp_float32=False,
                                              round_karras=True)
        return timesteps, np.append(sigmas, 0.0).astype(np.float32)

    def _midpoints(self, sigmas: np.ndarray) -> np.ndarray:
        """float64 [n + 1]: i_k = sqrt(sigma_k sigma_{k-1}) (i_0 unused, i_n = 0)."""
        s = sigmas.astype(np.float64)
        out = np.zeros_like(s)
        out[1:] = np.sqrt(s[1:] * s[:-1])
        return out

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        timesteps, sigmas = self._base_schedule(n)                                  # [n], [n + 1]
        mid = self._midpoints(sigmas).astype(np.float32)                            # [n + 1]
        self._mid = interleave(mid)                                                 # [2n + 2]
        t_mid = sigma_to_t(mid[self._mid_slice(n)], np.log(train_sigmas(self.alphas_cumprod))).astype(timesteps.dtype)
        pairs = np.stack([t_mid, timesteps[1:]], axis=-1).reshape(-1)              # [2n - 2]
        return np.concatenate([timesteps[:1], pairs]), interleave(sigmas)           # [2n - 1], [2n + 2]

    def _mid_slice(self, n: int) -> slice:
        """Which midpoints the evaluations visit: i_1 .. i_{n-1}."""
        return slice(1, n)

    def model_input_scale(self, t: Any) -> float:
        i = self._current(t)
        sigma = float(self.sigmas[i] if self._first_order else self._midpoint_of(i))
        return 1 / (sigma ** 2 + 1) ** 0.5

    def _midpoint_of(self, i: int) -> float:
        """The midpoint sigma at which evaluation ``i`` (a second one) runs."""
        return float(self._mid[i])

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        if self._first_order:             # an Euler step from sigma_k to the midpoint
            s, mid = float(self.sigmas[i]), float(self._mid[i + 1])
            d = (mid - s) / s
            return StepCoefficients(*self._x0(s), x=1 + d, x0=-d)
        s, mid, nxt = float(self.sigmas[i - 1]), float(self._mid[i]), float(self.sigmas[i])
        return StepCoefficients(*self._x0(mid), x=nxt / mid, x0=-(nxt - s) / mid, history=(mid - s) / mid)

    def advance(self) -> None:
        super().advance()
        self._first_order = not self._first_order
