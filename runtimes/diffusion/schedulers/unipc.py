"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), as diffusers'
``UniPCMultistepScheduler``: each step first corrects the sample it was given with the new model output
(UniC, algorithm 2), then predicts the next sample (UniP, algorithm 1), both from the last ``solver_order``
converted outputs (x0 with ``predict_x0``, its default; else eps), with B(h) = h (``bh1``) or e^h - 1
(``bh2``).  Samples stay at the variance-preserving scale.

Not affine in the device loop's sense (the corrector restarts from the previous step's sample and the
orders reach back several outputs): it keeps the numpy loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.runtimes.diffusion.schedulers.base import (NumpyStepScheduler, ScheduleConfig, Spacing, as_float,
                                                        x0_eps_coefficients)
from edgegen.runtimes.diffusion.schedulers.sigmas import VPSigmaScheduler, multistep_schedule

__all__ = ["UniPCConfig", "UniPCScheduler"]


@dataclass(frozen=True)
class UniPCConfig(ScheduleConfig):
    timestep_spacing: Spacing = "linspace"
    solver_order: Literal[1, 2, 3] = 2
    #: the outputs combined: x0 predictions (True, UniPC's data prediction) or noise predictions
    predict_x0: bool = True
    solver_type: Literal["bh1", "bh2"] = "bh2"
    #: first order for the last step (lower orders towards the end), whatever the step count
    lower_order_final: bool = True
    #: the steps (indices) whose output is not used to correct the sample the step was given
    disable_corrector: tuple[int, ...] = ()
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.final_sigmas_type == "zero" and (self.solver_type == "bh1" or not self.predict_x0):
            what = "solver_type 'bh1'" if self.solver_type == "bh1" else "predict_x0 false"
            raise ValueError(f"UniPC with {what} cannot step to sigma 0 (its last step is infinite times zero: "
                             "diffusers returns NaN images); set final_sigmas_type to 'sigma_min'")
        if self.final_sigmas_type == "zero" and not self.lower_order_final and self.solver_order > 1:
            raise ValueError("UniPC of order > 1 without lower_order_final cannot step to sigma 0 (its last step "
                             "divides by an infinite log-SNR step: diffusers returns infinite images or fails); set "
                             "lower_order_final to true or final_sigmas_type to 'sigma_min'")


def _lambda(s: float) -> float:
    """log-SNR lambda = log(alpha / sigma) = -log(s) of the VE sigma ``s`` (infinite at s = 0)."""
    return math.inf if s == 0 else -math.log(s)


class UniPCScheduler(NumpyStepScheduler, VPSigmaScheduler):
    name = "unipc"
    config_type = UniPCConfig
    fixed = {"thresholding": (False,), "use_flow_sigmas": (False, None), "use_dynamic_shifting": (False, None),
             "solver_p": (None,)}
    #: diffusers reads a DPM-Solver or DEIS config's solver_type as bh2 when it is switched to UniPC
    aliases = {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}
    not_affine_because = "corrects the sample it is given from the previous step's, with several earlier outputs"
    config: UniPCConfig

    def _set_schedule(self, n: int) -> None:
        super()._set_schedule(n)
        self._outputs: list[np.ndarray] = []      # converted outputs of the last steps, newest last [B, C, H, W]
        self._lower_order_nums = 0
        self._last_sample: np.ndarray | None = None
        self._this_order = 1

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return multistep_schedule(self.config, self.alphas_cumprod, n, round_on_cosine=True, final_from_ramp=True)

    def _alpha_sigma(self, i: int) -> tuple[float, float]:
        s = float(self.sigmas[i])
        alpha = 1 / (s ** 2 + 1) ** 0.5
        return alpha, s * alpha

    def _rhos(self, order: int, rks: list[float], hh: float, b_h: float, *, corrector: bool) -> np.ndarray:
        """The coefficients of the divided differences: R rho = b (eq. 8 of the paper; diffusers' R and b)."""
        h_phi_k, factorial, rows, b = math.expm1(hh) / hh - 1, 1, [], []
        ks = np.array([*rks, 1.0])
        for k in range(1, order + 1):
            rows.append(ks ** (k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r, b = np.array(rows), np.array(b)
        if corrector:
            return np.array([0.5]) if order == 1 else np.linalg.solve(r, b)
        return np.array([0.5]) if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])

    def _update(self, x: np.ndarray, to: int, start: int, m0: np.ndarray, earlier: list[tuple[int, np.ndarray]],
                order: int, m_t: np.ndarray | None) -> np.ndarray:
        """UniP (``m_t`` None) or UniC from sigma index ``start`` to ``to``: x is the sample at ``start``, m0 the
        output there, ``earlier`` the (index, output) pairs before it, newest first."""
        c = self.config
        alpha_t, sigma_t = self._alpha_sigma(to)
        alpha_s, sigma_s = self._alpha_sigma(start)
        lam_s = _lambda(float(self.sigmas[start]))
        h = _lambda(float(self.sigmas[to])) - lam_s
        rks, d1s = [], []
        for index, m_i in earlier[:order - 1]:
            rk = (_lambda(float(self.sigmas[index])) - lam_s) / h
            rks.append(rk)
            d1s.append((m_i - m0) / rk)
        hh = -h if c.predict_x0 else h
        b_h = hh if c.solver_type == "bh1" else math.expm1(hh)
        if c.predict_x0:
            base, scale = sigma_t / sigma_s * x - alpha_t * math.expm1(hh) * m0, alpha_t * b_h
        else:
            base, scale = alpha_t / alpha_s * x - sigma_t * math.expm1(hh) * m0, sigma_t * b_h
        if m_t is None:                                                         # the predictor
            if not d1s:
                return base
            rhos = self._rhos(order, rks, hh, b_h, corrector=False)
            return base - scale * sum(r * d for r, d in zip(rhos, d1s))
        rhos = self._rhos(order, rks, hh, b_h, corrector=True)                  # the corrector
        residual = sum((r * d for r, d in zip(rhos[:-1], d1s)), np.zeros_like(x))
        return base - scale * (residual + rhos[-1] * (m_t - m0))

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        c = self.config
        i = self._current(t)
        x = as_float("sample", sample)                                              # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        alpha, sigma = self._alpha_sigma(i)
        (p_x, p_out), (e_x, e_out) = x0_eps_coefficients(c.prediction_type, alpha, sigma)
        m_t = (p_x * x + p_out * out) if c.predict_x0 else (e_x * x + e_out * out)
        # 1. UniC: correct the sample this output was computed at, from the previous step's start
        if i > 0 and i - 1 not in c.disable_corrector and self._last_sample is not None:
            earlier = [(i - 1 - k, m) for k, m in enumerate(reversed(self._outputs[:-1]), start=1)]
            x = self._update(self._last_sample, i, i - 1, self._outputs[-1], earlier, self._this_order, m_t)
        # 2. UniP: predict the next sample from the corrected one
        self._outputs = [*self._outputs[-(c.solver_order - 1):], m_t] if c.solver_order > 1 else [m_t]
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self._this_order = min(order, self._lower_order_nums + 1)
        self._last_sample = x
        earlier = [(i - k, m) for k, m in enumerate(reversed(self._outputs[:-1]), start=1)]
        prev = self._update(x, i + 1, i, m_t, earlier, self._this_order, None)
        self._lower_order_nums = min(self._lower_order_nums + 1, c.solver_order)
        self.advance()
        return prev.astype(np.float32)
