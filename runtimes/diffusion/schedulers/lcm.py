"""LCM (Luo et al. 2023, "Latent Consistency Models"), as diffusers' ``LCMScheduler``: each step maps the sample
to the consistency function's estimate of the clean sample (eq. 9's boundary-condition scalings c_skip,
c_out of the x0 prediction and the sample), then noises it afresh to the next timestep (none after the
last).  The timesteps are a skipping subset of the distillation schedule (``original_inference_steps``).
Samples stay at the variance-preserving scale.  Affine, with fresh noise from the run's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import (CountedScheduler, ScheduleConfig, StepCoefficients,
                                                        VPScheduler, x0_eps_coefficients)

__all__ = ["LCMConfig", "LCMScheduler", "distillation_timesteps"]

#: the data's standard deviation in the boundary condition (diffusers' ``sigma_data``)
SIGMA_DATA = 0.5


@dataclass(frozen=True)
class LCMConfig(ScheduleConfig):
    beta_start: float = 0.00085                     # diffusers' LCM defaults: Stable Diffusion's schedule
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    #: the step count of the schedule the model was distilled on; a run visits a subset of its timesteps
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    #: the timestep's scale in the boundary condition's c_skip and c_out
    timestep_scaling: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"original_inference_steps must be from 1 to num_train_timesteps "
                             f"({self.num_train_timesteps}), got {self.original_inference_steps}")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")


def distillation_timesteps(config: LCMConfig, n: int, scheduler: str) -> np.ndarray:
    """int64 [n] descending: ``n`` evenly skipping timesteps of the distillation schedule (LCM and TCD)."""
    original = config.original_inference_steps
    if n > original:
        raise InvalidArgumentError(f"the {scheduler} scheduler runs at most original_inference_steps = {original} "
                                   f"steps (the schedule its model was distilled on), got {n}; ask for fewer steps")
    k = config.num_train_timesteps // original
    origin = (np.arange(1, original + 1) * k - 1)[::-1]                         # [original]
    return origin[np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)].astype(np.int64)


class LCMScheduler(CountedScheduler, VPScheduler):
    name = "lcm"
    config_type = LCMConfig
    fixed = {"thresholding": (False,)}
    config: LCMConfig

    def __init__(self, config: LCMConfig) -> None:
        super().__init__(config)
        self.final_alpha_cumprod = 1.0 if config.set_alpha_to_one else float(self.alphas_cumprod[0])

    def _set_schedule(self, n: int) -> None:
        self.timesteps = distillation_timesteps(self.config, n, self.name)
        self._index = self._begin = None

    def _alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def plan(self, t: Any) -> StepCoefficients:
        c = self.config
        i = self._current(t)
        t = int(t)
        last = i == self.num_inference_steps - 1
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        abar_t, abar_prev = self._alpha_bar(t), self._alpha_bar(prev_t)
        # 1. the boundary condition's scalings (eq. 9): c_skip(t) x + c_out(t) x0
        scaled = t * c.timestep_scaling
        c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
        c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
        # 2. the x0 prediction (clipped), 3. the denoised sample noised afresh to the next timestep
        (p_x, p_out), _ = x0_eps_coefficients(c.prediction_type, abar_t ** 0.5, (1 - abar_t) ** 0.5)
        a = 1.0 if last else abar_prev ** 0.5
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x=a * c_skip, x0=a * c_out,
                                noise=None if last else (1 - abar_prev) ** 0.5,
                                clip=c.clip_sample_range if c.clip_sample else None)
