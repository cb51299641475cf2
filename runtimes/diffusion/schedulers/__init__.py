"""Diffusion schedulers in numpy (no torch), each matching its diffusers 0.39 counterpart.

- ``ddpm``    DDPM (Ho et al. 2020): ancestral sampling, noise at every step but the last.
- ``ddim``    DDIM (Song et al. 2021): deterministic at ``eta=0``, DDPM-like noise as eta -> 1.
- ``euler``   Euler (Karras et al. 2022): first-order ODE steps in sigma, optional Karras sigmas.
- ``euler-a`` Euler ancestral: Euler steps plus fresh noise each step (k-diffusion's default sampler).
- ``dpm++``   DPM-Solver++(2M) (Lu et al. 2022): second-order multistep ODE solver, good in 15-25 steps.

A scheduler is built from a diffusers ``scheduler_config.json`` dict: the config carries the noise
schedule (betas, ``num_train_timesteps``, ``prediction_type``, timestep spacing...) and the name picks
the algorithm, so switching algorithm keeps the schedule, like diffusers' ``from_config``::

    scheduler = make_scheduler("dpm++", json.load(open("scheduler_config.json")))
    scheduler.set_timesteps(25)
    x = rng.standard_normal(shape, dtype=np.float32) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = denoiser(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, rng=rng)       # rng (or noise=) only matters to the stochastic ones

tests/runtimes/diffusion/test_schedulers.py runs every scheduler next to diffusers' on the same configs, model
outputs and noise, and checks every step's sample to 1e-5 (relative to the sample's scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers.base import Scheduler
from edgegen.runtimes.diffusion.schedulers.ddim import DDIMScheduler
from edgegen.runtimes.diffusion.schedulers.ddpm import DDPMScheduler
from edgegen.runtimes.diffusion.schedulers.dpm_solver import DPMSolverScheduler
from edgegen.runtimes.diffusion.schedulers.euler import EulerScheduler
from edgegen.runtimes.diffusion.schedulers.euler_ancestral import EulerAncestralScheduler

__all__ = ["DIFFUSERS_CLASS_NAMES", "SCHEDULERS", "Scheduler", "make_scheduler"]

#: our name -> scheduler class
SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerScheduler,
    "euler-a": EulerAncestralScheduler,
    "dpm++": DPMSolverScheduler,
}

#: diffusers' ``_class_name`` -> our name
DIFFUSERS_CLASS_NAMES: dict[str, str] = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a",
    "DPMSolverMultistepScheduler": "dpm++",
}


def make_scheduler(name: str | None, config: Mapping[str, Any], *, eta: float = 0.0) -> Scheduler:
    """Scheduler ``name`` (None: the one the config's ``_class_name`` names) on the config's noise schedule.

    ``eta`` is DDIM's noise scale (0 to 1); the other schedulers take none.
    """
    ours = ", ".join(SCHEDULERS)
    if name is None:
        class_name = config.get("_class_name") if isinstance(config, Mapping) else None
        name = DIFFUSERS_CLASS_NAMES.get(class_name) if isinstance(class_name, str) else None
        if name is None:
            raise InvalidArgumentError(f"the scheduler config names {class_name or 'no _class_name'}, which edgegen "
                                       f"does not implement; choose one of {ours} (its noise schedule is kept)")
    cls = SCHEDULERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InvalidArgumentError(f"unknown scheduler {name!r}; choose one of {ours}")
    if cls is DDIMScheduler:
        return DDIMScheduler.from_config(config, eta=eta)
    if eta != 0.0:
        raise InvalidArgumentError(f"eta is DDIM's setting, but the scheduler is {name}; drop eta or use ddim")
    return cls.from_config(config)
