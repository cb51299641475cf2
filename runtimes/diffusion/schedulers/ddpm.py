"""DDPM (Ho et al. 2020): ancestral sampling of the posterior q(x_{t-1} | x_t, x0), as diffusers' ``DDPMScheduler``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import (ScheduleConfig, StepCoefficients, VPScheduler, as_float,
                                              x0_eps_coefficients)

__all__ = ["DDPMConfig", "DDPMScheduler"]


@dataclass(frozen=True)
class DDPMConfig(ScheduleConfig):
    #: the posterior variance: beta~_t (fixed_small, its log form), beta_t (fixed_large), or predicted by the
    #: model in a second half of its output channels (learned: the variance; learned_range: Nichol &
    #: Dhariwal 2021 eq. 15).  null (a DPM-Solver config's) acts as fixed_small, as in diffusers; diffusers'
    #: fixed_large_log yields NaN there and is not offered.
    variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"] | None = \
        "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")


class DDPMScheduler(VPScheduler):
    name = "ddpm"
    config_type = DDPMConfig
    fixed = {"thresholding": (False,)}
    config: DDPMConfig

    def _previous(self, t: int) -> int:
        """The timestep after ``t`` in this run (-1 after the last)."""
        where = np.flatnonzero(self.timesteps == t)
        if len(where) == 0:
            raise InvalidArgumentError(f"t={t} is not one of the ddpm scheduler's timesteps; pass the values of "
                                       "scheduler.timesteps")
        i = int(where[0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    @property
    def affine(self) -> bool:
        return not self.variance_channels            # a learned variance scales the noise element by element

    @property
    def variance_channels(self) -> bool:                                        # type: ignore[override]
        return self.config.variance_type in ("learned", "learned_range")

    def plan(self, t: int) -> StepCoefficients:
        if not self.affine:
            raise InvalidArgumentError(f"a ddpm step with variance_type {self.config.variance_type!r} scales its noise "
                                       "by the model's predicted variance, element by element: it has no "
                                       "StepCoefficients; call step()")
        return self._coefficients(self._check_t(t))

    def _coefficients(self, t: int, predicted_variance: np.ndarray | None = None) -> StepCoefficients:
        """The step at ``t``; with a learned variance its noise scale is an array (so not a StepCoefficients' float)."""
        c = self.config
        prev_t = self._previous(t)
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        alpha_t = abar_t / abar_prev                                            # this step's 1 - beta
        beta_t = 1 - alpha_t

        # 1. predicted x0 (eq. 15 of Ho et al. 2020), clipped
        (p_x, p_out), _ = x0_eps_coefficients(c.prediction_type, abar_t ** 0.5, (1 - abar_t) ** 0.5)
        # 2. the posterior mean mu~_t(x_t, x0) (eq. 7), 3. plus the posterior's noise (none at t = 0)
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x0=abar_prev ** 0.5 * beta_t / (1 - abar_t),
                                x=alpha_t ** 0.5 * (1 - abar_prev) / (1 - abar_t),
                                noise=self._noise_scale(beta_t, abar_t, abar_prev, predicted_variance) if t > 0 else None,
                                clip=c.clip_sample_range if c.clip_sample else None)

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.affine:
            return super().step(model_output, t, sample, noise=noise, rng=rng)
        t = self._check_t(t)                                                    # a learned variance: out [B, 2C, H, W]
        x = as_float("sample", sample)                                          # [B, C, H, W]
        out, predicted_variance = self._split_output(model_output, x.shape)     # each [B, C, H, W]
        _, prev = self._apply(self._coefficients(t, predicted_variance), x, out, t, noise, rng)
        return prev.astype(np.float32)

    def _noise_scale(self, beta_t: float, abar_t: float, abar_prev: float,
                     predicted_variance: np.ndarray | None) -> np.ndarray | float:
        """The posterior's standard deviation (diffusers' ``_get_variance``, then its square root)."""
        variance = max((1 - abar_prev) / (1 - abar_t) * beta_t, 1e-20)       # beta~_t (eq. 7)
        kind = self.config.variance_type
        if kind == "fixed_large":
            return beta_t ** 0.5
        if kind == "learned":
            return predicted_variance ** 0.5
        if kind == "learned_range":                                             # interpolate log beta~ .. log beta
            frac = (predicted_variance + 1) / 2
            return np.exp(0.5 * (frac * np.log(beta_t) + (1 - frac) * np.log(variance)))
        return variance ** 0.5                                                  # fixed_small, fixed_small_log
