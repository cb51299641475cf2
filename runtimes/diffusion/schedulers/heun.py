"""Heun (Karras et al. 2022, algorithm 1 without churn): Euler's step to the next sigma, then a second model
evaluation there and the step redone with the mean of the two slopes, as diffusers' ``HeunDiscreteScheduler``.
Two model evaluations per step: ``timesteps`` holds each (the first once, every later one twice), and a loop
over them runs the model once per entry, as diffusers' pipelines do (``order = 2``).  The last step (to
sigma = 0) is Euler's alone.  Samples live at the variance-exploding scale.

With slopes d = (x - D) / sigma of the x0 predictions D, the correction from sigma_a (start sample s0,
prediction D1) to sigma_b (Euler's sample s1 = s0 + (b - a) d1, prediction D2) is
    x = s0 + (b - a) (d1 + d2) / 2 = s1 + (b - a) / (2 b) (D1 - D2)
since s1 = s0 + (b - a) d1 gives d1 = (s1 - D1) / b.  Both halves are affine in the sample, this step's x0
and the previous step's (StepCoefficients.history), so Heun runs in the device loop too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, StepCoefficients
from edgegen.runtimes.diffusion.schedulers.sigmas import VESigmaScheduler, discrete_schedule

__all__ = ["HeunConfig", "HeunScheduler"]


@dataclass(frozen=True)
class HeunConfig(ScheduleConfig):
    beta_start: float = 0.00085                 # diffusers' Heun defaults (Stable Diffusion's range)
    beta_end: float = 0.012
    timestep_spacing: Spacing = "linspace"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")


class HeunScheduler(VESigmaScheduler):
    name = "heun"
    config_type = HeunConfig
    unread = frozenset({"rescale_betas_zero_snr"})
    order = 2
    multistep = True                      # the correction reads the first evaluation's x0
    config: HeunConfig

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._first_order = True          # the next evaluation starts a step (else it corrects one)
        self._x0_previous: np.ndarray | None = None

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        timesteps, sigmas = discrete_schedule(self.config, self.alphas_cumprod, n)        # [n], [n]
        sigmas = np.append(sigmas, 0.0).astype(np.float32)                                  # [n + 1]
        # every sigma but the first and the last twice: [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]; timesteps alike
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])      # [2n]
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])            # [2n - 1]
        return timesteps, sigmas

    def plan(self, t: Any) -> StepCoefficients:
        c = self.config
        i = self._current(t)
        clip = c.clip_sample_range if c.clip_sample else None
        if self._first_order:             # Euler's step from sigma_a to sigma_b
            a, b = float(self.sigmas[i]), float(self.sigmas[i + 1])
            d = (b - a) / a
            return StepCoefficients(*self._x0(a), x=1 + d, x0=-d, clip=clip)
        a, b = float(self.sigmas[i - 1]), float(self.sigmas[i])    # the correction, evaluated at sigma_b
        w = (b - a) / (2 * b)
        return StepCoefficients(*self._x0(b), x=1.0, x0=-w, history=w, clip=clip)

    def advance(self) -> None:
        super().advance()
        # after an Euler step to sigma 0 (the last) there is nothing to correct
        self._first_order = not self._first_order
