"""DPM-Solver singlestep (Lu et al. 2022, algorithms 1 and 2 of "DPM-Solver"; "DPM-Solver++" for the x0 form),
as diffusers' ``DPMSolverSinglestepScheduler``: the steps come in groups of ``solver_order``; each group
starts from its first sample and every step of it recomputes the group's update from that sample with
the outputs gathered so far (orders [1, 2, 3, 1, 2, 3, ...], lower at the end).  ``algorithm_type``
``dpmsolver++`` (x0), ``sde-dpmsolver++`` (fresh noise from the run's generator every step) or
``dpmsolver`` (eps); ``solver_type`` midpoint or heun.  Timesteps linspace (diffusers has no other).

Not affine in the device loop's sense (a step restarts from the group's first sample, and the SDE's noise
drawn there cannot be undone): it keeps the numpy loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import (NumpyStepScheduler, ScheduleConfig, as_float, take_noise,
                                                        x0_eps_coefficients)
from edgegen.runtimes.diffusion.schedulers.sigmas import VPSigmaScheduler, multistep_schedule

__all__ = ["DPMSinglestepConfig", "DPMSinglestepScheduler", "order_list"]


@dataclass(frozen=True)
class DPMSinglestepConfig(ScheduleConfig):
    solver_order: Literal[1, 2, 3] = 2
    algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver"] = "dpmsolver++"
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    #: lower orders for the last group (forced on, as diffusers does, when the steps do not fill whole groups or
    #: the run ends at sigma 0)
    lower_order_final: bool = False
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algorithm_type == "dpmsolver" and self.final_sigmas_type == "zero":
            raise ValueError("algorithm_type 'dpmsolver' cannot step to sigma 0 (diffusers refuses it too); set "
                             "final_sigmas_type to 'sigma_min' or use dpmsolver++")


def order_list(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """Each step's order (diffusers' ``get_order_list``)."""
    if lower_order_final:
        if order == 3:
            orders = [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1] if steps % 3 == 0 else \
                [1, 2, 3] * (steps // 3) + ([1] if steps % 3 == 1 else [1, 2])
        elif order == 2:
            orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
        else:
            orders = [1] * steps
    else:
        orders = [*range(1, order + 1)] * (steps // order)
    if final_zero:
        orders[-1] = 1
    return orders


class DPMSinglestepScheduler(NumpyStepScheduler, VPSigmaScheduler):
    name = "dpm-single"
    config_type = DPMSinglestepConfig
    unread = frozenset({"rescale_betas_zero_snr", "timestep_spacing", "steps_offset"})
    fixed = {"thresholding": (False,), "use_flow_sigmas": (False, None), "use_dynamic_shifting": (False, None)}
    aliases = {"solver_type": {"bh1": "midpoint", "bh2": "midpoint", "logrho": "midpoint"}}
    not_affine_because = "restarts from its group's first sample"
    config: DPMSinglestepConfig

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        c = self.config
        lower = c.lower_order_final or n % c.solver_order != 0 or c.final_sigmas_type == "zero"
        self._orders = order_list(n, c.solver_order, lower, c.final_sigmas_type == "zero")
        self._outputs: list[np.ndarray] = []      # the converted outputs of the last steps, newest last
        self._start: np.ndarray | None = None     # the group's first sample

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return multistep_schedule(self.config, self.alphas_cumprod, n,
                                  lambda_min_clipped=self.config.lambda_min_clipped,
                                  round_on_cosine=True, final_from_ramp=False, spacing="linspace")

    @property
    def variance_channels(self) -> bool:                                          # type: ignore[override]
        return self.config.variance_type in ("learned", "learned_range")

    def _vp(self, i: int) -> tuple[float, float, float]:
        """(alpha, sigma, lambda) at sigma index ``i`` (VP; lambda = -log of the VE sigma)."""
        s = float(self.sigmas[i])
        alpha = 1 / (s ** 2 + 1) ** 0.5
        return alpha, s * alpha, math.inf if s == 0 else -math.log(s)

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        c = self.config
        i = self._current(t)
        x = as_float("sample", sample)                                              # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        alpha, sigma, _ = self._vp(i)
        (p_x, p_out), (e_x, e_out) = x0_eps_coefficients(c.prediction_type, alpha, sigma)
        x0_form = c.algorithm_type.endswith("++")
        self._outputs = [*self._outputs[-2:], (p_x * x + p_out * out) if x0_form else (e_x * x + e_out * out)]
        z = take_noise(x.shape, noise, rng, self.name, t) if c.algorithm_type == "sde-dpmsolver++" else None
        order = min(self._orders[i], len(self._outputs))
        if order == 1:
            self._start = x
        prev = self._update(i, order, self._start, z)
        self.advance()
        return prev.astype(np.float32)

    def _update(self, i: int, order: int, start: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        """The group's update from its first sample ``start`` (at sigma index i - order + 1) to index i + 1."""
        c = self.config
        alpha_t, sigma_t, lam_t = self._vp(i + 1)
        alpha_s, sigma_s, lam_s = self._vp(i - order + 1)               # the group's start
        m = self._outputs[::-1]                                         # m0 (newest), m1, m2
        heun, alg = c.solver_type == "heun", c.algorithm_type
        h = lam_t - lam_s
        if alg == "dpmsolver":
            base = alpha_t / alpha_s * start
            phi1 = sigma_t * math.expm1(h)                              # sigma_t (e^h - 1)
        else:
            em = math.exp(-h)
            base = sigma_t / sigma_s * (em if alg == "sde-dpmsolver++" else 1.0) * start
        if order == 1:
            d0, d = m[0], []
        elif order == 2:
            r0 = (self._vp(i)[2] - lam_s) / h
            d0, d = m[1], [(m[0] - m[1]) / r0]                          # D0, D1
        else:
            r0, r1 = (self._vp(i)[2] - lam_s) / h, (self._vp(i - 1)[2] - lam_s) / h
            d1_0, d1_1 = (m[1] - m[2]) / r1, (m[0] - m[2]) / r0
            if heun:
                d0, d = m[2], [(r0 * d1_0 - r1 * d1_1) / (r0 - r1), 2.0 * (d1_1 - d1_0) / (r0 - r1)]   # D1, D2
            else:
                d0, d = m[2], [d1_1]
        if alg == "dpmsolver++":
            cs = [-alpha_t * (em - 1),
                  alpha_t * ((em - 1) / h + 1) if heun or order == 3 else -0.5 * alpha_t * (em - 1),
                  -alpha_t * ((em - 1 + h) / h ** 2 - 0.5)]
        elif alg == "dpmsolver":
            cs = [-phi1, -sigma_t * (math.expm1(h) / h - 1) if heun or order == 3 else -0.5 * phi1,
                  -sigma_t * ((math.expm1(h) - h) / h ** 2 - 0.5)]
        else:
            e2 = 1 - em ** 2
            cs = [alpha_t * e2, alpha_t * (e2 / (-2 * h) + 1) if heun or order == 3 else 0.5 * alpha_t * e2,
                  alpha_t * ((e2 - 2 * h) / (2 * h) ** 2 - 0.5)]
        prev = base + cs[0] * d0
        for coefficient, term in zip(cs[1:], d):
            prev = prev + coefficient * term
        if z is not None:
            prev = prev + sigma_t * (1 - em ** 2) ** 0.5 * z
        return prev
