"""Diffusion schedulers in numpy (no torch), each matching its diffusers 0.39 counterpart step for step.

- ``ddpm``    DDPM (Ho et al. 2020): ancestral sampling, noise at every step but the last.
- ``ddim``    DDIM (Song et al. 2021): deterministic at ``eta=0``, DDPM-like noise as eta -> 1.
- ``pndm``    PNDM (Liu et al. 2022): pseudo Runge-Kutta, then pseudo linear multistep (PLMS); Stable Diffusion 1.x.
- ``lms``     LMS: a fourth-order linear multistep ODE solver in sigma (k-diffusion's sample_lms).
- ``heun``    Heun (Karras et al. 2022, algorithm 1): Euler plus a correction, two model calls per step.
- ``euler``   Euler (Karras et al. 2022): first-order ODE steps in sigma; Karras, exponential or beta sigmas.
- ``euler-a`` Euler ancestral: Euler steps plus fresh noise each step (k-diffusion's default sampler).
- ``dpm++``   DPM-Solver(++) multistep (Lu et al. 2022): orders 1-3, ODE or SDE, x0- or noise-prediction.
- ``unipc``   UniPC (Zhao et al. 2023): a multistep predictor-corrector, orders 1-3.
- ``kdpm2``   KDPM2 (k-diffusion's sample_dpm_2): a midpoint step in sigma, two model calls per step.
- ``kdpm2-a`` KDPM2 ancestral: KDPM2 to sigma_down, then fresh noise up to the next sigma.
- ``lcm``     LCM (Luo et al. 2023): consistency-model steps for latent consistency (distilled) models.
- ``tcd``     TCD (Zheng et al. 2024): trajectory consistency distillation's sampler, gamma as ``eta``.
- ``deis``    DEIS (Zhang & Chen 2023): the exponential integrator, multistep in log(rho), orders 1-3.
- ``dpm-single`` DPM-Solver(++) singlestep (Lu et al. 2022): groups of steps from one sample, orders 1-3.
- ``flow-euler`` flow-matching Euler (Esser et al. 2024): SD3 / Flux-style models, velocity along the straight
  path from noise; the only one for flow-matching models, which the others cannot sample (and vice versa).

The names and the diffusers classes they reproduce are :mod:`edgegen.runtimes.diffusion.scheduler_names`
(either spelling picks one: ``"pndm"`` or ``"PNDMScheduler"``).  Each runs in the device loop
(:mod:`edgegen.runtimes.diffusion.device_loop`) when its steps are ``StepCoefficients`` (``affine``): all but
PNDM, LMS, UniPC, DPM-Solver singlestep, third-order DPM-Solver and DEIS, and DDPM with a learned variance,
which keep the numpy loop.

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
from edgegen.runtimes.diffusion.scheduler_names import (DIFFUSERS_CLASSES, FLOW_MATCHING, closest_to, config_is_flow,
                                                       resolve_name)
from edgegen.runtimes.diffusion.schedulers.base import Scheduler
from edgegen.runtimes.diffusion.schedulers.ddim import DDIMScheduler
from edgegen.runtimes.diffusion.schedulers.ddpm import DDPMScheduler
from edgegen.runtimes.diffusion.schedulers.deis import DEISScheduler
from edgegen.runtimes.diffusion.schedulers.dpm_singlestep import DPMSinglestepScheduler
from edgegen.runtimes.diffusion.schedulers.dpm_solver import DPMSolverScheduler
from edgegen.runtimes.diffusion.schedulers.euler import EulerScheduler
from edgegen.runtimes.diffusion.schedulers.euler_ancestral import EulerAncestralScheduler
from edgegen.runtimes.diffusion.schedulers.flow_euler import FlowMatchEulerScheduler
from edgegen.runtimes.diffusion.schedulers.heun import HeunScheduler
from edgegen.runtimes.diffusion.schedulers.kdpm2 import KDPM2Scheduler
from edgegen.runtimes.diffusion.schedulers.kdpm2_ancestral import KDPM2AncestralScheduler
from edgegen.runtimes.diffusion.schedulers.lcm import LCMScheduler
from edgegen.runtimes.diffusion.schedulers.lms import LMSScheduler
from edgegen.runtimes.diffusion.schedulers.pndm import PNDMScheduler
from edgegen.runtimes.diffusion.schedulers.tcd import TCDScheduler
from edgegen.runtimes.diffusion.schedulers.unipc import UniPCScheduler

__all__ = ["DIFFUSERS_CLASS_NAMES", "SCHEDULERS", "Scheduler", "check_kind", "make_scheduler", "scheduler_for_config"]

#: our name -> scheduler class (in the order of scheduler_names.DIFFUSERS_CLASSES)
SCHEDULERS: dict[str, type[Scheduler]] = {cls.name: cls for cls in sorted(
    (DDPMScheduler, DDIMScheduler, PNDMScheduler, LMSScheduler, HeunScheduler, EulerScheduler,
     EulerAncestralScheduler, DPMSolverScheduler, UniPCScheduler, KDPM2Scheduler, KDPM2AncestralScheduler,
     LCMScheduler, TCDScheduler, DEISScheduler, DPMSinglestepScheduler, FlowMatchEulerScheduler),
    key=lambda cls: list(DIFFUSERS_CLASSES).index(cls.name))}

#: diffusers' ``_class_name`` -> our name
DIFFUSERS_CLASS_NAMES: dict[str, str] = {cls: name for name, cls in DIFFUSERS_CLASSES.items()}

if set(SCHEDULERS) != set(DIFFUSERS_CLASSES) or FLOW_MATCHING != {n for n, c in SCHEDULERS.items()
                                                                   if c.flow_matching}:   # pragma: no cover
    raise ImportError(f"scheduler_names lists {sorted(DIFFUSERS_CLASSES)} (flow matching: {sorted(FLOW_MATCHING)}) but "
                      f"the registry holds {sorted(SCHEDULERS)}")


def scheduler_for_config(config: Mapping[str, Any]) -> str:
    """Our name of the scheduler a diffusers config's ``_class_name`` names; one line naming the closest one
    edgegen has when it does not implement that class."""
    class_name = config.get("_class_name") if isinstance(config, Mapping) else None
    if not isinstance(class_name, str):
        raise InvalidArgumentError(f"the scheduler config names no scheduler (_class_name); choose one of "
                                   f"{', '.join(SCHEDULERS)} (its noise schedule is kept)")
    name = DIFFUSERS_CLASS_NAMES.get(class_name)
    if name is None:
        raise InvalidArgumentError(f"the scheduler config names {class_name}, which edgegen does not implement; the "
                                   f"closest it has is {closest_to(class_name)}: choose it (or another of "
                                   f"{', '.join(SCHEDULERS)}) and the noise schedule is kept")
    return name


def check_kind(name: str, config: Mapping[str, Any]) -> None:
    """Refuse a flow-matching scheduler on a noise schedule's config, and the other way round: the model was
    trained for one kind of path, and the other kind's sampler would draw noise from it without a word."""
    flow = config_is_flow(dict(config)) if isinstance(config, Mapping) else None
    if flow is None or flow == (name in FLOW_MATCHING):
        return
    what = config.get("_class_name") or ("a flow-matching schedule" if flow else "a schedule of betas")
    if flow:
        raise InvalidArgumentError(f"the scheduler config is {what}: a flow-matching model, which the {name} "
                                   f"scheduler cannot sample; choose {', '.join(sorted(FLOW_MATCHING))}")
    raise InvalidArgumentError(f"{name} samples flow-matching models, but the scheduler config is {what}, for a "
                               f"noise-schedule model; choose one of "
                               f"{', '.join(n for n in SCHEDULERS if n not in FLOW_MATCHING)}")


def make_scheduler(name: str | None, config: Mapping[str, Any], *, eta: float = 0.0) -> Scheduler:
    """Scheduler ``name`` (ours or the diffusers class name; None: the one the config's ``_class_name`` names)
    on the config's noise schedule, reading the config as that diffusers class's ``from_config`` does (its
    own defaults for the keys the config lacks).

    ``eta`` is DDIM's noise scale and TCD's gamma (0 to 1); the other schedulers take none.
    """
    name = scheduler_for_config(config) if name is None else resolve_name(name)
    cls = SCHEDULERS[name]
    check_kind(name, config)
    if cls in (DDIMScheduler, TCDScheduler):
        return cls.from_config(config, eta=eta)
    if eta != 0.0:
        raise InvalidArgumentError(f"eta is DDIM's and TCD's setting, but the scheduler is {name}; drop eta or use "
                                   "ddim or tcd")
    return cls.from_config(config)
