"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"), as diffusers'
``DEISMultistepScheduler``: the exponential integrator in noise-prediction with the noise estimates'
polynomial extrapolation integrated in closed form in log(rho) (rho = sigma / alpha, the VE sigma; the
``logrho`` solver), orders 1-3.  The run ends at the schedule's smallest sigma (diffusers has no other).
Samples stay at the variance-preserving scale.  Orders 1 and 2 are affine; order 3 keeps the numpy loop.

With rho the VE sigmas of the next step and the previous ones, x_next = alpha_next (x / alpha_now + sum_j c_j eps_j),
c_j the integral over [rho_now, rho_next] of eps_j's Lagrange basis polynomial in log(rho).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Spacing, x0_eps_coefficients
from edgegen.runtimes.diffusion.schedulers.multistep import MultistepScheduler
from edgegen.runtimes.diffusion.schedulers.sigmas import multistep_schedule

__all__ = ["DEISConfig", "DEISScheduler"]


@dataclass(frozen=True)
class DEISConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    solver_order: Literal[1, 2, 3] = 2
    algorithm_type: Literal["deis"] = "deis"
    solver_type: Literal["logrho"] = "logrho"
    #: lower orders for the last steps when there are fewer than 15
    lower_order_final: bool = True
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None


# The antiderivatives are evaluated in float32, as diffusers evaluates them (on its float32 sigmas): their
# terms cancel, so float32 rounding moves the third-order coefficients by up to ~1e-5 relative (measured on
# Stable Diffusion's schedule at 20 steps); float64 here put a step 1.2e-5 from diffusers' from that alone.
_F = np.float32


def _second(t: float, b: float, c: float) -> float:
    """The antiderivative in rho of the linear Lagrange basis in log(rho) through (b, c) (diffusers' ``ind_fn``)."""
    lt, lb, lc = np.log(_F(t)), np.log(_F(b)), np.log(_F(c))
    return float(_F(t) * (-lc + lt - 1) / (lb - lc))


def _third(t: float, b: float, c: float, d: float) -> float:
    """The same for the quadratic basis through (b, c, d)."""
    lt, lb, lc, ld = np.log(_F(t)), np.log(_F(b)), np.log(_F(c)), np.log(_F(d))
    numerator = _F(t) * (lc * (ld - lt + 1) - ld * lt + ld + lt ** 2 - 2 * lt + 2)
    return float(numerator / ((lb - lc) * (lb - ld)))


class DEISScheduler(MultistepScheduler):
    name = "deis"
    config_type = DEISConfig
    unread = frozenset({"rescale_betas_zero_snr"})
    fixed = {"thresholding": (False,), "use_flow_sigmas": (False, None), "use_dynamic_shifting": (False, None)}
    #: diffusers reads a DPM-Solver or UniPC config's algorithm and solver types so when it is switched to DEIS
    aliases = {"algorithm_type": {"dpmsolver": "deis", "dpmsolver++": "deis"},
               "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"}}
    config: DEISConfig

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return multistep_schedule(self.config, self.alphas_cumprod, n, round_on_cosine=True, final_from_ramp=True,
                                  final_type="sigma_min")

    def _order(self, i: int) -> int:
        c, n = self.config, len(self.timesteps)
        final = i == n - 1 and c.lower_order_final and n < 15
        second = i == n - 2 and c.lower_order_final and n < 15
        if c.solver_order == 1 or self._lower_order_nums < 1 or final:
            return 1
        if c.solver_order == 2 or self._lower_order_nums < 2 or second:
            return 2
        return 3

    def _combination(self, i: int) -> tuple[tuple[float, float], float, list[float], float | None]:
        order = self._order(i)
        rho = [float(self.sigmas[i + 1])] + [float(self.sigmas[i - j]) for j in range(order)]   # next, now, ...
        alpha = [1 / (r ** 2 + 1) ** 0.5 for r in rho]
        _, (e_x, e_out) = x0_eps_coefficients(self.config.prediction_type, alpha[1], rho[1] * alpha[1])
        a = alpha[0] / alpha[1]
        if order == 1:                                  # = DDIM: x_next = a x - sigma_next (e^h - 1) eps
            return (e_x, e_out), a, [-rho[0] * alpha[0] * (rho[1] / rho[0] - 1)], None
        t, s0, s1 = rho[0], rho[1], rho[2]
        if order == 2:
            cs = [_second(t, s0, s1) - _second(s0, s0, s1), _second(t, s1, s0) - _second(s0, s1, s0)]
        else:
            s2 = rho[3]
            cs = [_third(t, s0, s1, s2) - _third(s0, s0, s1, s2), _third(t, s1, s2, s0) - _third(s0, s1, s2, s0),
                  _third(t, s2, s0, s1) - _third(s0, s2, s0, s1)]
        return (e_x, e_out), a, [alpha[0] * c for c in cs], None
