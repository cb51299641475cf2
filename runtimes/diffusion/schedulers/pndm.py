"""PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"), as diffusers'
``PNDMScheduler``: the transfer of eq. 9 (a DDIM-like step from a combined noise estimate), driven by
pseudo Runge-Kutta (PRK: four evaluations per step for the first three steps) and then pseudo linear
multistep (PLMS: the Adams-Bashforth combination of the last four noise estimates, eq. 12).  Stable
Diffusion 1.x ships it with ``skip_prk_steps``: PLMS from the start, its first step done twice (a
pseudo improved-Euler step).

Not affine in the device loop's sense (the combination reaches back up to three model outputs, and the
repeated first step restarts from an earlier sample): it keeps the numpy loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import (NumpyStepScheduler, ScheduleConfig, VPScheduler, as_float,
                                                        spaced_timesteps)

__all__ = ["PNDMConfig", "PNDMScheduler"]

#: PRK's weights of its four evaluations (classical Runge-Kutta, eq. 13)
_PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


@dataclass(frozen=True)
class PNDMConfig(ScheduleConfig):
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"    # type: ignore[assignment]
    #: PLMS from the first step (Stable Diffusion's configs); otherwise three PRK steps first (12 evaluations)
    skip_prk_steps: bool = False
    #: the alpha-bar after the last step: 1, or alphas_cumprod[0] (PNDM's default)
    set_alpha_to_one: bool = False


class PNDMScheduler(NumpyStepScheduler, VPScheduler):
    name = "pndm"
    config_type = PNDMConfig
    unread = frozenset({"rescale_betas_zero_snr"})
    not_affine_because = "combines up to four model outputs (PLMS) and restarts from an earlier sample"
    config: PNDMConfig

    def __init__(self, config: PNDMConfig) -> None:
        super().__init__(config)
        self.final_alpha_cumprod = 1.0 if config.set_alpha_to_one else float(self.alphas_cumprod[0])

    def _set_schedule(self, n: int) -> None:
        c = self.config
        ascending = spaced_ascending(c, n)                                          # int64 [n]
        if c.skip_prk_steps:
            self._prk = np.zeros(0, np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]   # the first twice
        else:
            if n < 4:
                raise InvalidArgumentError(f"the pndm scheduler's Runge-Kutta start needs at least 4 steps, got {n}; "
                                           "ask for more steps (or set skip_prk_steps in scheduler_config.json)")
            half = c.num_train_timesteps // n // 2
            prk = np.repeat(ascending[-4:], 2) + np.tile(np.array([0, half]), 4)
            self._prk = np.repeat(prk[:-1], 2)[1:-1][::-1].astype(np.int64)
            plms = ascending[:-3][::-1]
        self.timesteps = np.concatenate([self._prk, plms]).astype(np.int64)
        self._counter = 0
        self._ets: list[np.ndarray] = []          # the noise estimates PLMS combines, newest last [B, C, H, W]
        self._cur_sample: np.ndarray | None = None
        self._cur_output: np.ndarray | float = 0.0

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        t = self._check_t(t)
        x = as_float("sample", sample)                                              # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        if self._counter < len(self._prk):
            prev = self._step_prk(out, t, x)
        else:
            prev = self._step_plms(out, t, x)
        self._counter += 1
        return prev.astype(np.float32)

    def _step_prk(self, out: np.ndarray, t: int, x: np.ndarray) -> np.ndarray:
        """Four evaluations per step: at t, twice at the midpoint, at the end; eq. 13 combines them."""
        k = self._counter % 4
        prev_t = t - (0 if self._counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2)
        start = int(self._prk[self._counter // 4 * 4])
        if k == 0:
            self._ets.append(out)
            self._cur_sample = x
        if k < 3:
            self._cur_output = self._cur_output + _PRK_WEIGHTS[k] * out
        else:
            out, self._cur_output = self._cur_output + _PRK_WEIGHTS[3] * out, 0.0
        return self._transfer(self._cur_sample, start, prev_t, out)

    def _step_plms(self, out: np.ndarray, t: int, x: np.ndarray) -> np.ndarray:
        """Eq. 12: the Adams-Bashforth combination of the last noise estimates (fewer at the start)."""
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_t = t - ratio
        if self._counter != 1:
            self._ets = [*self._ets[-3:], out]
        else:                                          # the first step again, from its start sample
            prev_t, t = t, t + ratio
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._cur_sample = x
        elif len(ets) == 1 and self._counter == 1:
            out = (out + ets[-1]) / 2
            x, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            out = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            out = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            out = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        return self._transfer(x, t, prev_t, out)

    def _transfer(self, x: np.ndarray, t: int, prev_t: int, out: np.ndarray) -> np.ndarray:
        """Eq. 9: x_t -> x_{t - delta} given the noise estimate (a v-prediction is turned into one first)."""
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":
            out = abar_t ** 0.5 * out + (1 - abar_t) ** 0.5 * x
        denominator = abar_t * (1 - abar_prev) ** 0.5 + (abar_t * (1 - abar_t) * abar_prev) ** 0.5
        return (abar_prev / abar_t) ** 0.5 * x - (abar_prev - abar_t) * out / denominator


def spaced_ascending(config: ScheduleConfig, n: int) -> np.ndarray:
    """int64 [n] ascending: the spaced timesteps of ``n`` steps, lowest first (as PNDM builds them)."""
    c = config
    return spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)[::-1].astype(np.int64)
