"""Euler (Karras et al. 2022, algorithm 2 without churn): a first-order ODE step in sigma, as diffusers'
``EulerDiscreteScheduler``.  Its samples live at the variance-exploding scale (x_t / alpha_t), so the
first is noise * ``init_noise_sigma`` and the denoiser sees ``scale_model_input(x, t)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import (ScheduleConfig, Spacing, StepCoefficients, as_float, spaced_timesteps,
                                              x0_eps_coefficients)
from edgegen.runtimes.diffusion.schedulers.sigmas import SigmaScheduler, karras_sigmas, sigma_to_t, train_sigmas

__all__ = ["EulerConfig", "EulerScheduler"]


@dataclass(frozen=True)
class EulerConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    interpolation_type: Literal["linear"] = "linear"
    #: Karras et al. 2022 eq. 5 sigmas between sigma_min and sigma_max (default: the schedule's own ends)
    use_karras_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    #: the sigma after the last step: 0, or the training schedule's smallest
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"


class EulerScheduler(SigmaScheduler):
    name = "euler"
    config_type = EulerConfig
    fixed = {"use_exponential_sigmas": (False, None), "use_beta_sigmas": (False, None), "timestep_type": ("discrete",)}
    config: EulerConfig

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset,
                                     round_linspace=False).astype(np.float32)     # [n] fractional with linspace
        table = train_sigmas(self.alphas_cumprod)                                   # float32 [T]
        sigmas = np.interp(timesteps, np.arange(len(table)), table)                 # [n]
        if c.use_karras_sigmas:
            low = c.sigma_min if c.sigma_min is not None else sigmas[-1].item()
            high = c.sigma_max if c.sigma_max is not None else sigmas[0].item()
            sigmas = karras_sigmas(low, high, n)
            timesteps = sigma_to_t(sigmas, np.log(table)).astype(np.float32)
        last = table[0] if c.final_sigmas_type == "sigma_min" else 0.0
        return timesteps, np.append(sigmas, last).astype(np.float32)                # [n], [n + 1]

    @property
    def init_noise_sigma(self) -> float:                                           # type: ignore[override]
        top = self.sigmas.max()
        return float(top if self.config.timestep_spacing in ("linspace", "trailing") else np.sqrt(top ** 2 + 1))

    def model_input_scale(self, t: Any) -> float:
        """1 / sqrt(sigma^2 + 1): the denoiser's input at the variance-preserving scale."""
        sigma = float(self.sigmas[self._current(t)])
        return 1 / (sigma ** 2 + 1) ** 0.5

    def _x0(self, sigma: float) -> tuple[float, float]:
        """x0 from the model output at ``sigma`` (the VP sample is alpha * x with alpha = 1 / sqrt(sigma^2 + 1))."""
        alpha = 1 / (sigma ** 2 + 1) ** 0.5
        (p_x, p_out), _ = x0_eps_coefficients(self.config.prediction_type, alpha, sigma * alpha)
        return p_x * alpha, p_out

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        # one Euler step of dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 4 and algorithm 2)
        d = (sigma_next - sigma) / sigma
        return StepCoefficients(*self._x0(sigma), x=1 + d, x0=-d)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        x0 = as_float("original", original)                                         # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        sigma = self.sigmas[self._sigma_indices(t, x0.shape[0])].astype(np.float64)
        return (x0 + eps * sigma.reshape(-1, *[1] * (x0.ndim - 1))).astype(np.float32)
