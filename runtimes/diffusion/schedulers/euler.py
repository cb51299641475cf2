"""Euler (Karras et al. 2022, algorithm 2 without churn): a first-order ODE step in sigma, as diffusers'
``EulerDiscreteScheduler``.  Its samples live at the variance-exploding scale (x_t / alpha_t), so the
first is noise * ``init_noise_sigma`` and the denoiser sees ``scale_model_input(x, t)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, StepCoefficients
from edgegen.runtimes.diffusion.schedulers.sigmas import VESigmaScheduler, discrete_schedule, train_sigmas

__all__ = ["EulerConfig", "EulerScheduler"]


@dataclass(frozen=True)
class EulerConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    interpolation_type: Literal["linear"] = "linear"
    #: a ramp between sigma_max and sigma_min instead of the interpolated schedule (at most one): Karras et al.
    #: 2022 eq. 5, evenly spaced in log sigma, or Beta(0.6, 0.6) quantiles (default ends: the schedule's own)
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    #: the sigma after the last step: 0, or the training schedule's smallest
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"


class EulerScheduler(VESigmaScheduler):
    name = "euler"
    config_type = EulerConfig
    fixed = {"timestep_type": ("discrete",)}
    config: EulerConfig

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        timesteps, sigmas = discrete_schedule(self.config, self.alphas_cumprod, n)        # [n], [n]
        last = train_sigmas(self.alphas_cumprod)[0] if self.config.final_sigmas_type == "sigma_min" else 0.0
        return timesteps, np.append(sigmas, last).astype(np.float32)                # [n], [n + 1]

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        # one Euler step of dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 4 and algorithm 2)
        d = (sigma_next - sigma) / sigma
        return StepCoefficients(*self._x0(sigma), x=1 + d, x0=-d)
