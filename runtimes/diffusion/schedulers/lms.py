"""LMS (k-diffusion's ``sample_lms``; Karras et al. 2022's ODE in sigma solved by a linear multistep method), as
diffusers' ``LMSDiscreteScheduler``: the next sample is the current one plus the integral over
[sigma_now, sigma_next] of the Lagrange polynomial through the last four derivatives d = (x - x0) / sigma.
Samples live at the variance-exploding scale, as in :mod:`edgegen.runtimes.diffusion.schedulers.euler`.

Not affine in the device loop's sense (it combines up to four derivatives): it keeps the numpy loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import NumpyStepScheduler, ScheduleConfig, Spacing, as_float
from edgegen.runtimes.diffusion.schedulers.sigmas import VESigmaScheduler, discrete_schedule

__all__ = ["LMSConfig", "LMSScheduler"]

#: the multistep order diffusers' pipelines use (``step(order=4)``, its default)
ORDER = 4
#: Gauss-Legendre nodes: exact for the polynomials of degree <= 3 integrated here
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(ORDER)


@dataclass(frozen=True)
class LMSConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    #: read by the exponential and beta ramps only (LMS's Karras ramp spans the schedule's own ends), as diffusers
    sigma_min: float | None = None
    sigma_max: float | None = None


class LMSScheduler(NumpyStepScheduler, VESigmaScheduler):
    name = "lms"
    config_type = LMSConfig
    unread = frozenset({"rescale_betas_zero_snr"})
    not_affine_because = "combines up to four earlier derivatives"
    config: LMSConfig

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._derivatives: list[np.ndarray] = []      # the last ORDER derivatives, newest last [B, C, H, W]

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        timesteps, sigmas = discrete_schedule(self.config, self.alphas_cumprod, n, karras_limits=False)
        return timesteps, np.append(sigmas, 0.0).astype(np.float32)                 # [n], [n + 1]

    def _coefficient(self, order: int, i: int, k: int) -> float:
        """The integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of the k-th newest derivative
        among the last ``order`` (its nodes sigma_i, sigma_{i-1}, ...), exactly, by Gauss-Legendre."""
        s = self.sigmas.astype(np.float64)
        a, b = s[i], s[i + 1]
        tau = 0.5 * (b - a) * _NODES + 0.5 * (a + b)                                 # [ORDER]
        basis = np.ones_like(tau)
        for j in range(order):
            if j != k:
                basis *= (tau - s[i - j]) / (s[i - k] - s[i - j])
        return float(0.5 * (b - a) * np.dot(_WEIGHTS, basis))

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        i = self._current(t)
        x = as_float("sample", sample)                                              # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        sigma = float(self.sigmas[i])
        p_x, p_out = self._x0(sigma)
        self._derivatives = [*self._derivatives[-(ORDER - 1):], (x - (p_x * x + p_out * out)) / sigma]
        # the order counts steps from the schedule's start, as diffusers does (an img2img run starting later
        # has fewer derivatives than its order: zip pairs the newest ones with the first coefficients)
        order = min(i + 1, ORDER)
        prev = x.copy()
        for k, derivative in zip(range(order), reversed(self._derivatives)):
            prev += self._coefficient(order, i, k) * derivative
        self.advance()
        return prev.astype(np.float32)
