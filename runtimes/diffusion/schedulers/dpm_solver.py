"""DPM-Solver (Lu et al. 2022, "DPM-Solver" and "DPM-Solver++"): multistep solvers of the diffusion ODE (and
SDE) in log-SNR time, as diffusers' ``DPMSolverMultistepScheduler``, every ``algorithm_type`` (``dpmsolver++``
in x0-prediction, its default; ``sde-dpmsolver++``; ``dpmsolver`` and ``sde-dpmsolver`` in noise-prediction),
``solver_type`` (``midpoint``, ``heun``) and ``solver_order`` 1-3.  Samples stay at the variance-preserving scale.

With lambda = log(alpha / sigma), h = lambda_next - lambda_now and the converted model outputs m (x0 for the
++ variants, eps for the others) of this step and the ones before, the step is
    x_next = a * x + c0 * m0 + c1 * m1 + c2 * m2 [+ n * z]
first order = DDIM (eq. 5 of DPM-Solver++), second order from the divided difference (m0 - m1) / r,
third from two of them (algorithm 2 of DPM-Solver++, eq. 3.x of DPM-Solver); the SDE variants add fresh noise z
from the run's generator every step.  Orders 1 and 2 are the device loop's affine map (m1 is the previous
step's x0 slot); order 3 reaches back two outputs and keeps the numpy loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, x0_eps_coefficients
from edgegen.runtimes.diffusion.schedulers.multistep import MultistepScheduler
from edgegen.runtimes.diffusion.schedulers.sigmas import multistep_schedule

__all__ = ["DPMSolverConfig", "DPMSolverScheduler"]

Algorithm = Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


@dataclass(frozen=True)
class DPMSolverConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    solver_order: Literal[1, 2, 3] = 2
    algorithm_type: Algorithm = "dpmsolver++"
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    #: first order for the last step (second for the one before) when there are fewer than 15 steps
    lower_order_final: bool = True
    #: first order for the last step whatever the step count
    euler_at_final: bool = False
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    #: Lu et al. 2022's timesteps uniform in log-SNR
    use_lu_lambdas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"
    #: timesteps whose lambda is below this are not visited (diffusers: for cosine schedules)
    lambda_min_clipped: float = -math.inf
    #: "learned"/"learned_range": the model also predicts its variance (2C output channels) and only the
    #: first C are used; any other value (a DDPM config's "fixed_small") is ignored, as diffusers does
    variance_type: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algorithm_type in ("dpmsolver", "sde-dpmsolver") and self.final_sigmas_type == "zero":
            raise ValueError(f"algorithm_type {self.algorithm_type!r} cannot step to sigma 0 (diffusers refuses it "
                             "too); set final_sigmas_type to 'sigma_min' or use dpmsolver++")
        if self.algorithm_type == "sde-dpmsolver" and self.solver_order == 3:
            raise ValueError("sde-dpmsolver has no third-order step (diffusers neither); set solver_order to 1 or 2")


class DPMSolverScheduler(MultistepScheduler):
    name = "dpm++"
    config_type = DPMSolverConfig
    fixed = {key: (False, None) for key in ("thresholding", "use_flow_sigmas", "use_dynamic_shifting")}
    #: diffusers reads a UniPC or DEIS config's solver_type so when it is switched to DPM-Solver
    aliases = {"solver_type": {"bh1": "midpoint", "bh2": "midpoint", "logrho": "midpoint"}}
    config: DPMSolverConfig

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return multistep_schedule(self.config, self.alphas_cumprod, n,
                                  lambda_min_clipped=self.config.lambda_min_clipped,
                                  round_on_cosine=False, final_from_ramp=False)

    @property
    def variance_channels(self) -> bool:                                          # type: ignore[override]
        return self.config.variance_type in ("learned", "learned_range")

    def _order(self, i: int) -> int:
        """This step's order, as diffusers decides it: lower at the start (warm-up) and at the end."""
        c, n = self.config, len(self.timesteps)
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        second = i == n - 2 and c.lower_order_final and n < 15
        if c.solver_order == 1 or self._lower_order_nums < 1 or final:
            return 1
        if c.solver_order == 2 or self._lower_order_nums < 2 or second:
            return 2
        return 3

    def _combination(self, i: int) -> tuple[tuple[float, float], float, list[float], float | None]:
        """((p_x, p_out), a, [c0, c1, c2][:order], noise): m0 = p_x x + p_out out, and
        x_next = a x + sum_j c_j m_j + noise z."""
        c = self.config
        order = self._order(i)
        s = [float(self.sigmas[i + 1])] + [float(self.sigmas[i - j]) for j in range(order)]   # VE: next, now, ...
        alpha = [1 / (v ** 2 + 1) ** 0.5 for v in s]
        sig = [v * a for v, a in zip(s, alpha)]                          # VP sigma
        (p_x, p_out), (e_x, e_out) = x0_eps_coefficients(c.prediction_type, alpha[1], sig[1])
        converted = (p_x, p_out) if c.algorithm_type.endswith("++") else (e_x, e_out)
        # e^-h = s_next / s_now (lambda = -log s); h itself only for the higher orders (s_next > 0 there)
        em = s[0] / s[1]
        h = math.log(s[1] / s[0]) if order > 1 else math.nan
        alg, heun = c.algorithm_type, c.solver_type == "heun"
        noise = None
        if alg == "dpmsolver++":
            a, c0 = sig[0] / sig[1], -alpha[0] * (em - 1)
            c1 = alpha[0] * ((em - 1) / h + 1) if heun or order == 3 else -0.5 * alpha[0] * (em - 1)
            c2 = -alpha[0] * ((em - 1 + h) / h ** 2 - 0.5)
        elif alg == "sde-dpmsolver++":
            a, c0 = sig[0] / sig[1] * em, alpha[0] * (1 - em ** 2)
            c1 = alpha[0] * ((1 - em ** 2) / (-2 * h) + 1) if heun or order == 3 else 0.5 * alpha[0] * (1 - em ** 2)
            c2 = alpha[0] * ((1 - em ** 2 - 2 * h) / (2 * h) ** 2 - 0.5)
            noise = sig[0] * (1 - em ** 2) ** 0.5
        elif alg == "dpmsolver":
            ep = s[1] / s[0]                                             # e^h (s_next > 0: final sigma_min)
            a, c0 = alpha[0] / alpha[1], -sig[0] * (ep - 1)
            c1 = -sig[0] * ((ep - 1) / h - 1) if heun or order == 3 else -0.5 * sig[0] * (ep - 1)
            c2 = -sig[0] * ((ep - 1 - h) / h ** 2 - 0.5)
        else:                                                            # sde-dpmsolver
            ep = s[1] / s[0]
            a, c0 = alpha[0] / alpha[1], -2 * sig[0] * (ep - 1)
            c1 = -2 * sig[0] * ((ep - 1) / h - 1) if heun else -sig[0] * (ep - 1)
            c2 = math.nan
            noise = sig[0] * (ep ** 2 - 1) ** 0.5
        if order == 1:
            return converted, a, [c0], noise
        lam = [-math.log(v) for v in s[1:]]                              # lambda_now, lambda_prev, ...
        r0 = (lam[0] - lam[1]) / h
        if order == 2:                                                   # D1 = (m0 - m1) / r0
            return converted, a, [c0 + c1 / r0, -c1 / r0], noise
        r1 = (lam[1] - lam[2]) / h                                       # D1 = D1_0 + q (D1_0 - D1_1), D2 = ...
        q, w = r0 / (r0 + r1), 1 / (r0 + r1)
        # the weights of D1_0 = (m0 - m1) / r0 and D1_1 = (m1 - m2) / r1
        big_a, big_b = c1 * (1 + q) + c2 * w, c1 * q + c2 * w
        return converted, a, [c0 + big_a / r0, -big_a / r0 - big_b / r1, big_b / r1], noise

