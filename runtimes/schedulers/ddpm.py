"""DDPM (Ho et al. 2020): ancestral sampling of the posterior q(x_{t-1} | x_t, x0), as diffusers' ``DDPMScheduler``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.schedulers.base import ScheduleConfig, VPScheduler, as_float, predicted_x0_eps, take_noise

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

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        c = self.config
        t = self._check_t(t)
        prev_t = self._previous(t)
        x = as_float("sample", sample)                                          # [B, C, H, W]
        out = np.asarray(model_output, dtype=np.float64)
        predicted_variance = None
        if c.variance_type in ("learned", "learned_range"):                    # out [B, 2C, H, W]
            if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
                raise InvalidArgumentError(f"variance_type {c.variance_type!r} needs a model output with twice the "
                                           f"sample's {x.shape[1]} channels, got shape {list(out.shape)}")
            out, predicted_variance = np.split(out, 2, axis=1)                 # each [B, C, H, W]
        out = as_float("model_output", out, x.shape)

        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        alpha_t = abar_t / abar_prev                                            # this step's 1 - beta
        beta_t = 1 - alpha_t

        # 1. predicted x0 (eq. 15 of Ho et al. 2020), clipped
        x0, _ = predicted_x0_eps(c.prediction_type, out, x, abar_t ** 0.5, (1 - abar_t) ** 0.5)
        if c.clip_sample:
            x0 = np.clip(x0, -c.clip_sample_range, c.clip_sample_range)

        # 2. the posterior mean mu~_t(x_t, x0) (eq. 7)
        prev = (abar_prev ** 0.5 * beta_t / (1 - abar_t)) * x0 + (alpha_t ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x

        # 3. plus the posterior's noise (none at t = 0)
        if t > 0:
            z = take_noise(x.shape, noise, rng, self.name, t)
            prev = prev + self._noise_scale(beta_t, abar_t, abar_prev, predicted_variance) * z
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
