"""The names of the diffusion schedulers: edgegen's short names, the diffusers classes they reproduce, and the
closest one for each diffusers class edgegen does not implement.  Standard library only (the CLI reads it for
``--scheduler``'s choices without loading numpy); :mod:`edgegen.runtimes.diffusion.schedulers` registers the
numpy implementations under these names and a test checks the two agree.
"""

from __future__ import annotations

from edgegen.errors import InvalidArgumentError

__all__ = ["BETA_KEYS", "CLOSEST", "DIFFUSERS_CLASSES", "FLOW_DEFAULT", "FLOW_KEYS", "FLOW_MATCHING",
           "SCHEDULER_CHOICES", "closest_to", "config_is_flow", "resolve_name"]

#: edgegen's name -> the diffusers class it reproduces step for step (its ``_class_name``)
DIFFUSERS_CLASSES: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2-a": "KDPM2AncestralDiscreteScheduler",
    "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
    "deis": "DEISMultistepScheduler",
    "dpm-single": "DPMSolverSinglestepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}

#: the schedulers of flow-matching models (SD3, Flux...: velocity on the straight path from noise, no betas);
#: the others sample noise-schedule (variance-preserving) models, and neither kind samples the other's
FLOW_MATCHING: frozenset[str] = frozenset({"flow-euler"})
#: the scheduler of a flow-matching config that names no class
FLOW_DEFAULT = "flow-euler"

#: keys only a flow-matching scheduler config has (a config without ``_class_name`` says its kind by them)
FLOW_KEYS = frozenset({"shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
                       "max_image_seq_len", "invert_sigmas", "shift_terminal", "time_shift_type",
                       "stochastic_sampling"})
#: keys only a noise-schedule config has
BETA_KEYS = frozenset({"beta_schedule", "beta_start", "beta_end", "trained_betas"})

#: diffusers classes edgegen does not implement -> the closest scheduler it has (what to choose instead)
CLOSEST: dict[str, str] = {
    "DPMSolverSDEScheduler": "dpm++",
    "SASolverScheduler": "unipc",
    "CosineDPMSolverMultistepScheduler": "dpm++",
    "EDMDPMSolverMultistepScheduler": "dpm++",
    "EDMEulerScheduler": "euler",
    "IPNDMScheduler": "pndm",
    "DDIMParallelScheduler": "ddim",
    "DDPMParallelScheduler": "ddpm",
    "DDPMWuerstchenScheduler": "ddpm",
    "UnCLIPScheduler": "ddpm",
    "ScoreSdeVeScheduler": "euler",
    "KarrasVeScheduler": "euler",
}

#: what ``--scheduler`` accepts: edgegen's names, then the diffusers class names (a pipeline's own spelling)
SCHEDULER_CHOICES: tuple[str, ...] = (*DIFFUSERS_CLASSES, *DIFFUSERS_CLASSES.values())

_BY_CLASS = {cls: name for name, cls in DIFFUSERS_CLASSES.items()}


def closest_to(class_name: str) -> str:
    """The scheduler edgegen has that is nearest to the diffusers class ``class_name`` (one it lacks)."""
    if class_name in CLOSEST:
        return CLOSEST[class_name]
    for part, name in (("FlowMatch", "flow-euler"), ("Ancestral", "euler-a"), ("DPM", "dpm++"), ("Euler", "euler"),
                       ("Heun", "heun"), ("DDIM", "ddim"), ("DDPM", "ddpm"), ("PNDM", "pndm"), ("UniPC", "unipc")):
        if part.lower() in class_name.lower():
            return name
    return "ddim"


def config_is_flow(config: object) -> bool | None:
    """Whether a scheduler config is a flow-matching model's (True), a noise schedule's (False), or cannot say
    (None): by its ``_class_name`` (a ``FlowMatch*`` class, or one of edgegen's), else by its keys."""
    if not isinstance(config, dict):
        return None
    class_name = config.get("_class_name")
    if isinstance(class_name, str):
        if class_name.startswith("FlowMatch"):
            return True
        if class_name in _BY_CLASS or class_name in CLOSEST:
            return False
    keys = set(config)
    if keys & FLOW_KEYS and not keys & BETA_KEYS:
        return True
    if keys & BETA_KEYS and not keys & FLOW_KEYS:
        return False
    return None


def resolve_name(name: str) -> str:
    """edgegen's name for ``name`` (edgegen's own, or a diffusers class name such as ``"PNDMScheduler"``)."""
    if isinstance(name, str):
        if name in DIFFUSERS_CLASSES:
            return name
        if name in _BY_CLASS:
            return _BY_CLASS[name]
        lowered = {n.lower(): n for n in SCHEDULER_CHOICES}.get(name.lower())
        if lowered is not None:
            return resolve_name(lowered)
        if name.endswith("Scheduler"):
            raise InvalidArgumentError(f"edgegen does not implement the diffusers {name}; the closest scheduler it "
                                       f"has is {closest_to(name)} (choose one of {', '.join(DIFFUSERS_CLASSES)})")
    raise InvalidArgumentError(f"unknown scheduler {name!r}; choose one of {', '.join(DIFFUSERS_CLASSES)} (or the "
                               "diffusers class name, e.g. PNDMScheduler)")
