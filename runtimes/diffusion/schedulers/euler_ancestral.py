"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``): an Euler step down to sigma_down, then fresh
noise up to the next sigma, as diffusers' ``EulerAncestralDiscreteScheduler``.  Samples live at the
variance-exploding scale, as in :mod:`edgegen.runtimes.diffusion.schedulers.euler`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, StepCoefficients, spaced_timesteps
from edgegen.runtimes.diffusion.schedulers.sigmas import train_sigmas
from edgegen.runtimes.diffusion.schedulers.euler import EulerScheduler

__all__ = ["EulerAncestralConfig", "EulerAncestralScheduler"]


@dataclass(frozen=True)
class EulerAncestralConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prediction_type == "sample":
            raise ValueError("the euler-a scheduler does not implement prediction_type 'sample' (diffusers neither); "
                             "choose ddpm, ddim, euler or dpm++ for this model")


class EulerAncestralScheduler(EulerScheduler):
    """Euler's sigmas (without Karras' or a final sigma_min), input scaling and add_noise; its own step."""

    name = "euler-a"
    config_type = EulerAncestralConfig
    fixed = {}
    config: EulerAncestralConfig  # type: ignore[assignment]

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset,
                                     round_linspace=False).astype(np.float32)      # [n]
        table = train_sigmas(self.alphas_cumprod)                                   # float32 [T]
        sigmas = np.interp(timesteps, np.arange(len(table)), table)                 # [n]
        return timesteps, np.append(sigmas, 0.0).astype(np.float32)                 # [n], [n + 1]

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        # split the next sigma into a deterministic part (down) and fresh noise (up): down^2 + up^2 = next^2
        sigma_up = (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5
        sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
        # an Euler step to sigma_down, then noise up to sigma_next (none after the last step)
        d = (sigma_down - sigma) / sigma
        return StepCoefficients(*self._x0(sigma), x=1 + d, x0=-d, noise=sigma_up if sigma_up > 0 else None)
