"""TCD (Zheng et al. 2024, "Trajectory Consistency Distillation"), as diffusers' ``TCDScheduler``: strategic
stochastic sampling (section 4.2): from the x0 and eps predictions, the sample at the intermediate timestep
s = floor((1 - gamma) t_prev), then fresh noise from s up to t_prev.  gamma (``eta``, 0 to 1) sets the
stochasticity: 0 (what diffusers' Stable Diffusion pipelines pass by default) is deterministic.  Timesteps
as LCM's.  Samples stay at the variance-preserving scale.  Affine, with noise when eta > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import StepCoefficients, x0_eps_coefficients
from edgegen.runtimes.diffusion.schedulers.lcm import LCMConfig, LCMScheduler

__all__ = ["TCDConfig", "TCDScheduler"]


@dataclass(frozen=True)
class TCDConfig(LCMConfig):
    pass


class TCDScheduler(LCMScheduler):
    """``eta`` is TCD's gamma: 0 deterministic, up to 1."""

    name = "tcd"
    config_type = TCDConfig
    config: TCDConfig

    def __init__(self, config: TCDConfig, *, eta: float = 0.0) -> None:
        super().__init__(config)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise InvalidArgumentError(f"eta (TCD's gamma) must be a number from 0 (deterministic) to 1, got {eta!r}")
        self.eta = float(eta)

    @classmethod
    def from_config(cls, config, *, eta: float = 0.0) -> TCDScheduler:   # type: ignore[override]
        return cls(super().from_config(config).config, eta=eta)

    def fresh(self) -> TCDScheduler:
        return type(self)(self.config, eta=self.eta)

    def plan(self, t: Any) -> StepCoefficients:
        c = self.config
        i = self._current(t)
        t = int(t)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else 0
        s = int((1 - self.eta) * prev_t // 1)
        abar_t, abar_prev, abar_s = self._alpha_bar(t), self._alpha_bar(prev_t), self._alpha_bar(s)
        # 1. x0 and eps predictions, 2. the sample they imply at s (eq. 14)
        (p_x, p_out), (e_x, e_out) = x0_eps_coefficients(c.prediction_type, abar_t ** 0.5, (1 - abar_t) ** 0.5)
        a, b = abar_s ** 0.5, (1 - abar_s) ** 0.5
        # 3. noise from s up to t_prev (gamma > 0, all steps but the last)
        stochastic = self.eta > 0 and i != self.num_inference_steps - 1
        f = (abar_prev / abar_s) ** 0.5 if stochastic else 1.0
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x=f * b * e_x, out=f * b * e_out, x0=f * a,
                                noise=(1 - abar_prev / abar_s) ** 0.5 if stochastic else None)
