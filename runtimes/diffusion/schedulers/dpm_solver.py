"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2): a multistep second-order solver of the
diffusion ODE in x0-prediction, as diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type
"dpmsolver++"``, ``solver_type "midpoint"`` (its defaults).  Samples stay at the variance-preserving scale.

Per step with lambda = log(alpha / sigma) and h = lambda_next - lambda_now, given x0 predictions D:
first order  x_next = (sigma_next / sigma_now) x - alpha_next (e^-h - 1) D0            (eq. 5, = DDIM)
second order x_next = ... - 0.5 alpha_next (e^-h - 1) (D0 - D1) / r,  r = h_prev / h  (algorithm 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, StepCoefficients, as_float, x0_eps_coefficients
from edgegen.runtimes.diffusion.schedulers.sigmas import SigmaScheduler, karras_sigmas, sigma_to_t, train_sigmas

__all__ = ["DPMSolverConfig", "DPMSolverScheduler"]


@dataclass(frozen=True)
class DPMSolverConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    solver_order: Literal[1, 2] = 2
    algorithm_type: Literal["dpmsolver++"] = "dpmsolver++"
    solver_type: Literal["midpoint"] = "midpoint"
    #: first order for the last step (and the one before) when there are fewer than 15 steps
    lower_order_final: bool = True
    #: first order for the last step whatever the step count
    euler_at_final: bool = False
    use_karras_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"
    #: timesteps whose lambda is below this are not visited (diffusers: for cosine schedules)
    lambda_min_clipped: float = -math.inf
    #: "learned"/"learned_range": the model also predicts its variance (2C output channels) and only the
    #: first C are used; any other value (a DDPM config's "fixed_small") is ignored, as diffusers does
    variance_type: str | None = None


class DPMSolverScheduler(SigmaScheduler):
    name = "dpm++"
    config_type = DPMSolverConfig
    fixed = {key: (False, None) for key in ("thresholding", "use_lu_lambdas", "use_exponential_sigmas",
                                            "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting")}
    #: diffusers reads a UniPC config's solver_type so when it is switched to DPM-Solver
    aliases = {"solver_type": {"bh1": "midpoint", "bh2": "midpoint"}}
    config: DPMSolverConfig
    multistep = True

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._x0_previous: np.ndarray | None = None      # D1: the previous step's x0 prediction [B, C, H, W]
        self._lower_order_nums = 0

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c, T = self.config, self.config.num_train_timesteps
        table = train_sigmas(self.alphas_cumprod)                                   # float32 [T]
        lambdas = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(1 - self.alphas_cumprod))   # float32 [T]
        clipped = int(np.searchsorted(lambdas[::-1], c.lambda_min_clipped))
        last = T - clipped                                  # the timesteps run below this
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
        elif c.timestep_spacing == "leading":
            timesteps = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + c.steps_offset
        else:
            timesteps = np.arange(last, 0, -T / n).round() - 1
        if c.use_karras_sigmas:
            low = c.sigma_min if c.sigma_min is not None else table[0].item()
            high = c.sigma_max if c.sigma_max is not None else table[-1].item()
            sigmas = karras_sigmas(low, high, n)                                    # [n]
            timesteps = sigma_to_t(sigmas, np.log(table))
            if c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(len(table)), table)            # [n]
        final = table[0] if c.final_sigmas_type == "sigma_min" else 0.0
        return timesteps.astype(np.int64), np.append(sigmas, final).astype(np.float32)   # [n], [n + 1]

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        x0 = as_float("original", original)                                         # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        s = self.sigmas[self._sigma_indices(t, x0.shape[0])].astype(np.float64).reshape(-1, *[1] * (x0.ndim - 1))
        alpha = 1 / np.sqrt(s ** 2 + 1)
        return (alpha * x0 + alpha * s * eps).astype(np.float32)

    @property
    def variance_channels(self) -> bool:                                          # type: ignore[override]
        return self.config.variance_type in ("learned", "learned_range")

    def plan(self, t: Any) -> StepCoefficients:
        c = self.config
        i = self._current(t)
        n = len(self.timesteps)

        # 1. this step's order: first on the first step and at the end (as diffusers decides it)
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        first_order = c.solver_order == 1 or self._lower_order_nums < 1 or final

        # 2. x0 prediction D0 at this sigma (VP: alpha = 1 / sqrt(s^2 + 1), sigma = s * alpha)
        s_now, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        alpha_now = 1 / (s_now ** 2 + 1) ** 0.5
        (p_x, p_out), _ = x0_eps_coefficients(c.prediction_type, alpha_now, s_now * alpha_now)

        # 3. the update; e^-h = s_next / s_now since lambda = -log(s)
        alpha_next = 1 / (s_next ** 2 + 1) ** 0.5
        phi = alpha_next * (s_next / s_now - 1.0)                                   # alpha_next (e^-h - 1)
        ratio = (s_next * alpha_next) / (s_now * alpha_now)
        if first_order:                                                             # eq. 5
            return StepCoefficients(x0_x=p_x, x0_out=p_out, x=ratio, x0=-phi)
        s_prev = float(self.sigmas[i - 1])                                          # midpoint second order:
        r = math.log(s_prev / s_now) / math.log(s_now / s_next)                    # - 0.5 phi (D0 - D1) / r
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x=ratio, x0=-phi - 0.5 * phi / r, history=0.5 * phi / r)

    def advance(self) -> None:
        super().advance()
        self._lower_order_nums = min(self._lower_order_nums + 1, self.config.solver_order)
