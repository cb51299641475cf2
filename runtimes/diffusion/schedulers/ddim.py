"""DDIM (Song et al. 2021): the non-Markovian sampler, deterministic at eta = 0, as diffusers' ``DDIMScheduler``."""

from __future__ import annotations

from dataclasses import dataclass

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import ScheduleConfig, StepCoefficients, VPScheduler, x0_eps_coefficients

__all__ = ["DDIMConfig", "DDIMScheduler"]


@dataclass(frozen=True)
class DDIMConfig(ScheduleConfig):
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    #: the alpha-bar after the last step: 1 (a clean image), or alphas_cumprod[0] as at training
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")


class DDIMScheduler(VPScheduler):
    """``eta`` scales the noise of each step: 0 is DDIM, 1 is DDPM's variance (eq. 16 of the paper)."""

    name = "ddim"
    config_type = DDIMConfig
    fixed = {"thresholding": (False,)}
    config: DDIMConfig

    def __init__(self, config: DDIMConfig, *, eta: float = 0.0) -> None:
        super().__init__(config)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise InvalidArgumentError(f"eta must be a number from 0 (deterministic DDIM) to 1, got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_cumprod = 1.0 if config.set_alpha_to_one else float(self.alphas_cumprod[0])

    @classmethod
    def from_config(cls, config, *, eta: float = 0.0) -> DDIMScheduler:   # type: ignore[override]
        scheduler = super().from_config(config)
        return cls(scheduler.config, eta=eta)

    def fresh(self) -> DDIMScheduler:
        return type(self)(self.config, eta=self.eta)

    def plan(self, t: int) -> StepCoefficients:
        c = self.config
        t = self._check_t(t)

        # 1. the previous timestep: diffusers steps back by T // steps whatever the spacing
        prev_t = t - c.num_train_timesteps // self.num_inference_steps
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod

        # 2. predicted x0 and eps (eq. 12 of Song et al. 2021), x0 clipped
        (p_x, p_out), (e_x, e_out) = x0_eps_coefficients(c.prediction_type, abar_t ** 0.5, (1 - abar_t) ** 0.5)

        # 3. sigma_t(eta) (eq. 16)
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        std = self.eta * variance ** 0.5

        # 4. x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std z (eq. 12)
        to_eps = (1 - abar_prev - std ** 2) ** 0.5
        return StepCoefficients(x0_x=p_x, x0_out=p_out, x0=abar_prev ** 0.5, x=to_eps * e_x, out=to_eps * e_out,
                                noise=std if self.eta > 0 else None,
                                clip=c.clip_sample_range if c.clip_sample else None)
