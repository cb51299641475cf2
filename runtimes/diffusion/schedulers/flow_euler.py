"""Flow-matching Euler (Esser et al. 2024, "Scaling rectified flow transformers", section 2; Lipman et al. 2023):
as diffusers' ``FlowMatchEulerDiscreteScheduler``, the sampler of Stable Diffusion 3, Flux, Sana and other
flow-matching models.

The sample lies on the straight path from data to noise, ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with sigma
from 1 (noise) to 0, and the model predicts the velocity ``v = eps - x0`` (there is no ``prediction_type``); a
step is Euler's on ``dx/dsigma = v``.  The denoiser sees the sample unscaled and the timestep ``sigma *
num_train_timesteps`` (fractional).  The schedule has no betas: ``shift`` (SD3: 3.0) bends the sigmas towards
noise, ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)`` (Esser et al., eq. 23), or the resolution-dependent
shift of ``use_dynamic_shifting`` with ``mu`` (Flux: ``mu`` grows linearly with the image's token count, see
:meth:`FlowMatchEulerScheduler.mu_for`), ``exponential`` ``e^mu / (e^mu + 1/sigma - 1)`` or ``linear``
``mu / (mu + 1/sigma - 1)``.  ``stochastic_sampling`` replaces the Euler step by a jump to the predicted x0
noised afresh to the next sigma.

diffusers' dtypes are kept where they decide the last bits: the training table and the shifted sigmas of a run
are float32, the ramp in between float64 (as diffusers builds them with numpy), a step's ``dt`` a float32
difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import (CountedScheduler, StepCoefficients, as_float, per_row)
from edgegen.runtimes.diffusion.schedulers.sigmas import RAMPS, ramp_of

__all__ = ["FlowMatchConfig", "FlowMatchEulerScheduler"]


@dataclass(frozen=True)
class FlowMatchConfig:
    """The keys of a ``FlowMatchEulerDiscreteScheduler`` config (diffusers' names and defaults)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    #: the dynamic shift's mu as a line through (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    #: Mochi: sigmas run from 0 to 1 (the timesteps with them), the last one 1
    invert_sigmas: bool = False
    #: stretch the shifted sigmas so that the last one is this (LTX-Video); None or 0: off
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: Literal["exponential", "linear"] = "exponential"
    stochastic_sampling: bool = False

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a positive number, got {self.shift}")
        if self.shift_terminal is not None and not 0 <= self.shift_terminal < 1:
            raise ValueError(f"shift_terminal must lie in [0, 1), got {self.shift_terminal}")
        ramp_of(self)                                                   # at most one use_*_sigmas


class FlowMatchEulerScheduler(CountedScheduler):
    """Euler steps along the flow's sigmas [steps + 1] with a step counter; the only scheduler here for
    flow-matching models (``flow_matching``), and no other scheduler samples them."""

    name = "flow-euler"
    config_type = FlowMatchConfig                                       # type: ignore[assignment]
    flow_matching = True
    config: FlowMatchConfig                                             # type: ignore[assignment]

    def __init__(self, config: FlowMatchConfig) -> None:                # type: ignore[override]
        # no betas: the base class's alphas_cumprod has no meaning here
        self.config = config
        self.timesteps = np.zeros(0, dtype=np.float32)                  # [steps] after set_timesteps
        self.num_inference_steps: int | None = None
        self._index: int | None = None
        self._begin: int | None = None
        self._mu: float | None = None
        # diffusers' __init__: the training table 1 .. 1/T, shifted unless the shift is dynamic (float32)
        T = config.num_train_timesteps
        table = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)             # [T]
        if not config.use_dynamic_shifting:                             # torch casts the scalars to float32
            shift = config.shift
            table = np.float32(shift) * table / (1 + np.float32(shift - 1) * table)
        self.sigma_max, self.sigma_min = float(table[0]), float(table[-1])
        self.sigmas = table                                             # [T] until set_timesteps

    def fresh(self) -> FlowMatchEulerScheduler:
        return type(self)(self.config)

    @staticmethod
    def _shift(sigmas: np.ndarray, shift: Any) -> np.ndarray:
        """Esser et al. 2024, eq. 23: the timestep shift, in the dtype of ``sigmas`` and ``shift``."""
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def mu_for(self, image_seq_len: int) -> float:
        """The dynamic shift's ``mu`` for an image of ``image_seq_len`` tokens (what diffusers' Flux and SD3
        pipelines compute with their ``calculate_shift``: a line through the config's two end points)."""
        c = self.config
        if c.base_shift is None or c.max_shift is None:
            raise InvalidArgumentError("scheduler_config sets no base_shift / max_shift, so mu cannot be computed "
                                       "from the image size; pass mu= to set_timesteps")
        m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        return image_seq_len * m + (c.base_shift - m * c.base_image_seq_len)

    def set_timesteps(self, num_inference_steps: int, *, mu: float | None = None) -> None:
        """Choose the timesteps of a run of ``num_inference_steps`` steps; ``mu`` is the dynamic shift (needed
        with ``use_dynamic_shifting``, ignored otherwise as in diffusers; :meth:`mu_for` computes it)."""
        if self.config.use_dynamic_shifting and mu is None:
            raise InvalidArgumentError("scheduler_config sets use_dynamic_shifting, whose shift mu depends on the "
                                       "image's token count, which edgegen's sampler does not know; set "
                                       "use_dynamic_shifting to false with a fixed shift, or call "
                                       "set_timesteps(steps, mu=scheduler.mu_for(tokens))")
        if mu is not None and not (isinstance(mu, (int, float)) and math.isfinite(mu)):
            raise InvalidArgumentError(f"mu must be a finite number, got {mu!r}")
        self._mu = None if mu is None else float(mu)
        super().set_timesteps(num_inference_steps)

    def _set_schedule(self, n: int) -> None:
        c, T = self.config, self.config.num_train_timesteps
        sigmas = np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T                # float64 [n]
        if c.use_dynamic_shifting:                                      # resolution-dependent (time_shift)
            assert self._mu is not None
            top = math.exp(self._mu) if c.time_shift_type == "exponential" else self._mu
            sigmas = top / (top + (1 / sigmas - 1))
        else:
            sigmas = self._shift(sigmas, c.shift)
        if c.shift_terminal:                                            # stretch: the last sigma is shift_terminal
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - c.shift_terminal))
        key = ramp_of(c)
        if key is not None:                                             # between this schedule's own ends
            sigmas = RAMPS[key](sigmas[-1].item(), sigmas[0].item(), n)
        sigmas = sigmas.astype(np.float32)                              # [n]
        if c.invert_sigmas:
            sigmas = 1 - sigmas
        self.timesteps = sigmas * np.float32(T)                         # float32 [n]
        self.sigmas = np.append(sigmas, np.float32(1 if c.invert_sigmas else 0)).astype(np.float32)   # [n + 1]
        self._index = self._begin = None

    def plan(self, t: Any) -> StepCoefficients:
        i = self._current(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]          # float32
        if self.config.stochastic_sampling:
            # x0 = x - sigma * v, then the straight path at the next sigma with fresh noise
            # (drawn at the last step too, as diffusers draws it, so that a seed gives its noise)
            return StepCoefficients(x0_x=1.0, x0_out=-float(sigma), x0=1 - float(sigma_next),
                                    noise=float(sigma_next))
        # one Euler step of dx/dsigma = v
        return StepCoefficients(x0_x=1.0, x0_out=0.0, x=1.0, out=float(sigma_next - sigma))

    def timesteps_for_strength(self, strength: float) -> np.ndarray:
        """img2img: the timesteps left for ``strength``, as the flow-matching img2img pipelines (SD3's, Flux's)
        choose them: ``int(steps - steps * strength)`` skipped (Stable Diffusion's rounds ``steps * strength``
        down first, so 10 steps at 0.75 start one step later there)."""
        self._require_timesteps()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise InvalidArgumentError(f"strength must be a number from 0 to 1, got {strength!r}")
        n = self.num_inference_steps
        t_start = int(max(n - min(n * strength, n), 0))
        self._begin_at(t_start)
        return self.timesteps[t_start:].copy()

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """The forward process (diffusers' ``scale_noise``): ``(1 - sigma) * original + sigma * noise``."""
        x0 = as_float("original", original)                                         # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        self._require_timesteps()
        rows = x0.shape[0]
        if self._begin is None:
            index = np.array([self._index_for(v) for v in per_row(t, rows)])
        else:
            index = np.full(rows, self._index if self._index is not None else self._begin)
        sigma = self.sigmas[index].astype(np.float64).reshape(-1, *[1] * (x0.ndim - 1))   # [B, 1, ...]
        return (sigma * eps + (1 - sigma) * x0).astype(np.float32)
