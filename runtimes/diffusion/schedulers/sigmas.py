"""The sigma side shared by Euler, Euler ancestral and DPM-Solver: they index the schedule by the
variance-exploding sigma ``s_t = sigma_t / alpha_t = sqrt((1 - abar_t) / abar_t)`` and walk a table of
sigmas with a step counter, as diffusers' ``*DiscreteScheduler`` / ``DPMSolverMultistepScheduler`` do."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, Scheduler, alphas_cumprod, per_row


def train_sigmas(abar: np.ndarray) -> np.ndarray:
    """float32 [T]: s_t = sqrt((1 - abar_t) / abar_t), the variance-exploding sigma of each training step."""
    return np.sqrt((1 - abar) / abar)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """float64 [steps]: Karras et al. 2022, eq. 5 (rho = 7 as in the paper and diffusers)."""
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """float64 [n]: each sigma's fractional training timestep, interpolating log-sigma (diffusers' ``_sigma_to_t``)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))                      # [n]
    dists = log_sigma - log_sigmas[:, np.newaxis]                      # [T, n]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * (low_idx + 1)).reshape(sigmas.shape)


class SigmaScheduler(Scheduler):
    """A scheduler that walks a table of sigmas [steps + 1] with a step counter.

    The counter starts at 0 when the first timestep seen is the schedule's first, else where
    ``timesteps_for_strength`` put it, else at that timestep's index (the second of two equal ones, as
    in diffusers); each ``step`` checks ``t`` against it.
    """

    def __init__(self, config: ScheduleConfig) -> None:
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(config, terminal_floor=True)                     # float32 [T]
        self.sigmas = np.append(train_sigmas(self.alphas_cumprod)[::-1], 0).astype(np.float32)  # [T + 1]
        self._index: int | None = None
        self._begin: int | None = None

    def _set_schedule(self, n: int) -> None:
        self.timesteps, self.sigmas = self._sigma_schedule(n)
        self._index = self._begin = None

    def _sigma_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps [steps], sigmas float32 [steps + 1]) for ``n`` steps."""
        raise NotImplementedError

    def _begin_at(self, index: int) -> None:
        self._begin = index

    def _index_for(self, t: Any) -> int:
        matches = np.flatnonzero(self.timesteps == t)
        if len(matches) == 0:
            raise InvalidArgumentError(f"t={t!r} is not one of the {self.name} scheduler's timesteps; pass the values "
                                       "of scheduler.timesteps in order")
        return int(matches[1] if len(matches) > 1 else matches[0])

    def _current(self, t: Any) -> int:
        """The step index of this call at timestep ``t`` (the run's counter, started on the first call)."""
        self._require_timesteps()
        if self._index is None and self._begin is None and np.ndim(t) == 0 and t == self.timesteps[0]:
            self._index = 0                                  # a run from the start (diffusers' SDXL pipelines
        elif self._index is None:                            # say so with set_begin_index(0))
            self._index = self._begin if self._begin is not None else self._index_for(t)
        i = self._index
        if i >= len(self.timesteps):
            raise InvalidArgumentError(f"this {self.name} run has done all its {len(self.timesteps)} steps; "
                                       "use scheduler.fresh() (and set_timesteps) for a new run")
        if np.ndim(t) != 0 or float(t) != float(self.timesteps[i]):
            raise InvalidArgumentError(f"the {self.name} scheduler expected step {i} at t={self.timesteps[i]}, got "
                                       f"t={t!r}; call step once per value of scheduler.timesteps, in order")
        return i

    def advance(self) -> None:
        assert self._index is not None, "plan() starts the step counter"
        self._index += 1

    def _sigma_indices(self, t: Any, rows: int) -> np.ndarray:
        """add_noise's sigma index per row, as diffusers picks it (the run's start once it is set)."""
        self._require_timesteps()
        if self._begin is None:
            return np.array([self._index_for(v) for v in per_row(t, rows)])
        return np.full(rows, self._index if self._index is not None else self._begin)
