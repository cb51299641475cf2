"""The sigma side shared by the Euler, Heun, LMS, DPM-Solver and UniPC schedulers: they index the schedule by
the variance-exploding sigma ``s_t = sigma_t / alpha_t = sqrt((1 - abar_t) / abar_t)`` and walk a table of
sigmas with a step counter, as diffusers' ``*DiscreteScheduler`` / ``*MultistepScheduler`` do.

The sigma ramps that replace the interpolated schedule: Karras et al. 2022 (eq. 5), exponential (evenly spaced
in log sigma) and beta (Lee et al. 2024, "Beta sampling is all you need": the Beta(0.6, 0.6) quantiles)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import (CountedScheduler, ScheduleConfig, alphas_cumprod, as_float,
                                                        per_row,
                                                        spaced_timesteps, x0_eps_coefficients)


def train_sigmas(abar: np.ndarray) -> np.ndarray:
    """float32 [T]: s_t = sqrt((1 - abar_t) / abar_t), the variance-exploding sigma of each training step."""
    return np.sqrt((1 - abar) / abar)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """float64 [steps]: Karras et al. 2022, eq. 5 (rho = 7 as in the paper and diffusers)."""
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """float64 [steps]: evenly spaced in log sigma from sigma_max down to sigma_min (diffusers'
    ``_convert_to_exponential``)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def _betainc(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Numerical Recipes 6.4,
    modified Lentz), to float64 precision."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):                                       # the fraction converges fast on this side
        return 1.0 - _betainc(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return front * f


def beta_ppf(p: float, a: float, b: float) -> float:
    """The Beta(a, b) quantile of ``p`` (scipy.stats.beta.ppf), by bisection of :func:`_betainc` to float64."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if _betainc(mid, a, b) < p else (low, mid)
    return 0.5 * (low + high)


def beta_sigmas(sigma_min: float, sigma_max: float, steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """float64 [steps]: sigma_min + Beta(0.6, 0.6) quantiles of 1 .. 0 times the range (diffusers'
    ``_convert_to_beta``)."""
    return np.array([sigma_min + beta_ppf(q, alpha, beta) * (sigma_max - sigma_min)
                     for q in 1 - np.linspace(0, 1, steps)])


#: ``use_*_sigmas`` config key -> its ramp(sigma_min, sigma_max, steps)
RAMPS = {"use_karras_sigmas": karras_sigmas, "use_exponential_sigmas": exponential_sigmas,
         "use_beta_sigmas": beta_sigmas}


def ramp_of(config: Any) -> str | None:
    """Which ``use_*_sigmas`` key of ``config`` is on (None: the interpolated schedule); at most one may be."""
    on = [key for key in RAMPS if getattr(config, key, False)]
    if len(on) > 1:
        raise InvalidArgumentError(f"scheduler_config sets {' and '.join(on)}; at most one of use_karras_sigmas, "
                                   "use_exponential_sigmas and use_beta_sigmas may be true")
    return on[0] if on else None


def ramp_sigmas(config: Any, key: str, low: float, high: float, steps: int, *, read_limits: bool = True) -> np.ndarray:
    """The ``key`` ramp from ``high`` to ``low``, where the config's ``sigma_min`` / ``sigma_max`` (when set and
    ``read_limits``) replace them, as diffusers' ``_convert_to_*`` read any such config key."""
    if read_limits:
        low = low if getattr(config, "sigma_min", None) is None else config.sigma_min
        high = high if getattr(config, "sigma_max", None) is None else config.sigma_max
    return RAMPS[key](low, high, steps)


def discrete_schedule(config: Any, abar: np.ndarray, steps: int, *, karras_limits: bool = True,
                      ramp_float32: bool = True, round_karras: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps float32 [steps], sigmas float64 [steps]) of the Euler / Heun / LMS / KDPM2 family: the spaced
    timesteps (fractional for linspace), their interpolated sigmas, or a ramp between those sigmas' ends
    with its timesteps interpolated back.  ``karras_limits``: whether the Karras ramp reads the config's
    sigma_min / sigma_max (LMS's does not); ``ramp_float32``: a ramp's timesteps as float32 (else float64, as
    KDPM2 keeps them), ``round_karras``: the Karras ramp's rounded (KDPM2)."""
    c = config
    timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, steps, c.steps_offset,
                                 round_linspace=False).astype(np.float32)       # [n]
    table = train_sigmas(abar)                                                  # float32 [T]
    sigmas = np.interp(timesteps, np.arange(len(table)), table)                 # [n]
    key = ramp_of(c)
    if key is not None:
        limits = karras_limits or key != "use_karras_sigmas"
        sigmas = ramp_sigmas(c, key, sigmas[-1].item(), sigmas[0].item(), steps, read_limits=limits)
        timesteps = sigma_to_t(sigmas, np.log(table))
        if round_karras and key == "use_karras_sigmas":
            timesteps = timesteps.round()
        if ramp_float32:
            timesteps = timesteps.astype(np.float32)
    return timesteps, sigmas


def multistep_schedule(config: Any, abar: np.ndarray, steps: int, *, lambda_min_clipped: float = -math.inf,
                       round_on_cosine: bool, final_from_ramp: bool,
                       final_type: str | None = None, spacing: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 [steps], sigmas float32 [steps + 1]) of the multistep solvers (DPM-Solver, UniPC):
    ``steps + 1`` spaced timesteps less the last (0), or a ramp over the whole training table with its
    timesteps interpolated back (Karras' and Lu's rounded, on the cosine schedule only if ``round_on_cosine``),
    then the final sigma: 0, or ``sigma_min`` (the table's smallest; the ramp's own last when
    ``final_from_ramp``), as the config's ``final_sigmas_type`` or ``final_type`` says.  ``spacing`` replaces
    the config's ``timestep_spacing`` (DPM-Solver singlestep has none: linspace).  ``lambda_min_clipped``:
    timesteps whose log-SNR lies below it are not visited."""
    c, T = config, config.num_train_timesteps
    table = train_sigmas(abar)                                                      # float32 [T]
    lambdas = np.log(np.sqrt(abar)) - np.log(np.sqrt(1 - abar))                      # float32 [T]
    last = T - int(np.searchsorted(lambdas[::-1], lambda_min_clipped))               # the timesteps run below this
    spacing = spacing or c.timestep_spacing
    if spacing == "linspace":
        timesteps = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        timesteps = (np.arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + c.steps_offset
    else:
        timesteps = np.arange(last, 0, -T / steps).round() - 1
    key = ramp_of(c)
    if getattr(c, "use_lu_lambdas", False):                                         # Lu et al. 2022: uniform in log-SNR
        if key is not None:
            raise InvalidArgumentError(f"scheduler_config sets use_lu_lambdas and {key}; choose one")
        log_sigmas = np.log(table)[::-1]                                            # = -lambda, descending
        sigmas = np.exp(np.linspace(log_sigmas[0].item(), log_sigmas[-1].item(), steps))
        timesteps = sigma_to_t(sigmas, np.log(table))
        key = "use_lu_lambdas"
    elif key is not None:
        sigmas = ramp_sigmas(c, key, table[0].item(), table[-1].item(), steps)      # [n]
        timesteps = sigma_to_t(sigmas, np.log(table))
    else:
        sigmas = np.interp(timesteps, np.arange(len(table)), table)                 # [n]
    if key in ("use_karras_sigmas", "use_lu_lambdas") and (round_on_cosine or c.beta_schedule != "squaredcos_cap_v2"):
        timesteps = timesteps.round()
    final = 0.0
    if (final_type or c.final_sigmas_type) == "sigma_min":
        final = sigmas[-1] if final_from_ramp and key is not None else table[0]
    return timesteps.astype(np.int64), np.append(sigmas, final).astype(np.float32)   # [n], [n + 1]


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """float64 [n]: each sigma's fractional training timestep, interpolating log-sigma (diffusers' ``_sigma_to_t``)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))                      # [n]
    dists = log_sigma - log_sigmas[:, np.newaxis]                      # [T, n]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * (low_idx + 1)).reshape(sigmas.shape)


class SigmaScheduler(CountedScheduler):
    """A scheduler that walks a table of sigmas [steps + 1] with a step counter (:class:`CountedScheduler`)."""

    def __init__(self, config: ScheduleConfig) -> None:
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(config, terminal_floor=True)                     # float32 [T]
        self.sigmas = np.append(train_sigmas(self.alphas_cumprod)[::-1], 0).astype(np.float32)  # [T + 1]

    def _set_schedule(self, n: int) -> None:
        self.timesteps, self.sigmas = self._sigma_schedule(n)
        self._index = self._begin = None

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps [steps], sigmas float32 [steps + 1]) for ``n`` steps."""
        raise NotImplementedError

    def _sigma_indices(self, t: Any, rows: int) -> np.ndarray:
        """add_noise's sigma index per row, as diffusers picks it (the run's start once it is set)."""
        self._require_timesteps()
        if self._begin is None:
            return np.array([self._index_for(v) for v in per_row(t, rows)])
        return np.full(rows, self._index if self._index is not None else self._begin)


class VESigmaScheduler(SigmaScheduler):
    """The sigma schedulers whose samples live at the variance-exploding scale (x_t / alpha_t): Euler, Euler
    ancestral, Heun, LMS.  The first sample is noise * ``init_noise_sigma`` and the denoiser sees
    ``scale_model_input(x, t)`` = x / sqrt(sigma^2 + 1), the variance-preserving sample."""

    @property
    def init_noise_sigma(self) -> float:                                           # type: ignore[override]
        top = self.sigmas.max()
        return float(top if self.config.timestep_spacing in ("linspace", "trailing") else np.sqrt(top ** 2 + 1))

    def model_input_scale(self, t: Any) -> float:
        """1 / sqrt(sigma^2 + 1): the denoiser's input at the variance-preserving scale."""
        sigma = float(self.sigmas[self._current(t)])
        return 1 / (sigma ** 2 + 1) ** 0.5

    def _x0(self, sigma: float) -> tuple[float, float]:
        """x0 = p_x * sample + p_out * model output at ``sigma`` (the VP sample is alpha * x with
        alpha = 1 / sqrt(sigma^2 + 1))."""
        alpha = 1 / (sigma ** 2 + 1) ** 0.5
        (p_x, p_out), _ = x0_eps_coefficients(self.config.prediction_type, alpha, sigma * alpha)
        return p_x * alpha, p_out

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        x0 = as_float("original", original)                                         # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        sigma = self.sigmas[self._sigma_indices(t, x0.shape[0])].astype(np.float64)
        return (x0 + eps * sigma.reshape(-1, *[1] * (x0.ndim - 1))).astype(np.float32)


class VPSigmaScheduler(SigmaScheduler):
    """The sigma schedulers whose samples stay at the variance-preserving scale (DPM-Solver, UniPC): the first
    sample is plain noise, the denoiser sees the sample as it is."""

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        x0 = as_float("original", original)                                         # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        s = self.sigmas[self._sigma_indices(t, x0.shape[0])].astype(np.float64).reshape(-1, *[1] * (x0.ndim - 1))
        alpha = 1 / np.sqrt(s ** 2 + 1)
        return (alpha * x0 + alpha * s * eps).astype(np.float32)
