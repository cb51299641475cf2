"""What the numpy schedulers share: noise schedules, timestep spacing, config parsing, prediction types.

Each function mirrors the code of diffusers 0.39 (``diffusers/schedulers/scheduling_*.py``) that it
replaces, keeping diffusers' dtype choices where they decide the last bits: the schedule (betas,
``alphas_cumprod``, sigmas) is float32 as diffusers builds it with torch, and the per-step maths is
done in float64 from those float32 constants, then cast to float32 (diffusers does it in float32;
the two agree to ~1e-6 relative, see tests/runtimes/diffusion/test_schedulers.py).

Notation: ``x_t = alpha_t * x0 + sigma_t * eps`` with ``alpha_t = sqrt(alphas_cumprod[t])`` and
``sigma_t = sqrt(1 - alphas_cumprod[t])`` (variance preserving).  DDPM and DDIM index the schedule by
``t`` (:class:`VPScheduler`); the sigma schedulers are in :mod:`edgegen.runtimes.diffusion.schedulers.sigmas`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.strict import from_json

PredictionType = Literal["epsilon", "v_prediction", "sample"]
Spacing = Literal["leading", "trailing", "linspace"]
C = TypeVar("C", bound="ScheduleConfig")


@dataclass(frozen=True)
class ScheduleConfig:
    """The keys of a diffusers ``scheduler_config.json`` that every scheduler reads (diffusers' names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: PredictionType = "epsilon"
    timestep_spacing: Spacing = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset must be >= 0, got {self.steps_offset}")
        if self.trained_betas is not None:
            if len(self.trained_betas) != self.num_train_timesteps:
                raise ValueError(f"trained_betas has {len(self.trained_betas)} values but num_train_timesteps is "
                                 f"{self.num_train_timesteps}; they must agree")
            if not all(0.0 < b < 1.0 for b in self.trained_betas):
                raise ValueError("trained_betas must all lie in (0, 1)")
        elif not (0.0 < self.beta_start < 1.0 and 0.0 < self.beta_end < 1.0):
            raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {self.beta_start} and {self.beta_end}")


def parse_config(config_type: type[C], config: Mapping[str, Any], *, scheduler: str,
                 fixed: Mapping[str, tuple[Any, ...]] = {}, aliases: Mapping[str, Mapping[str, Any]] = {},
                 unread: frozenset[str] = frozenset()) -> C:
    """Read a diffusers ``scheduler_config.json`` dict into ``config_type``, like diffusers' ``from_config``.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) and keys this scheduler does not
    read (another scheduler's options, ``skip_prk_steps``...) are ignored, as diffusers ignores them.
    ``fixed`` names keys the diffusers class reads that change the maths, with the only values we
    implement: any other value is refused.  ``aliases`` rename values the way diffusers does
    (DPM-Solver reads a DEIS config's ``algorithm_type: "deis"`` as ``"dpmsolver++"``).  ``unread`` names
    fields of ``config_type`` that this diffusers class has no argument for (PNDM has no
    ``rescale_betas_zero_snr``): they keep their defaults whatever the config says, as in diffusers.
    """
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"a scheduler config must be a JSON object (scheduler_config.json), "
                                   f"got {type(config).__name__}")
    problems = []
    for key, allowed in fixed.items():
        value = config.get(key, allowed[0])
        if not any(type(value) is type(a) and value == a for a in allowed):
            problems.append(f"scheduler_config.{key}: {json.dumps(value)} is not supported by the {scheduler} "
                            f"scheduler (supported: {' or '.join(json.dumps(a) for a in allowed)})")
    names = {f.name for f in dataclasses.fields(config_type)}
    known = {k: aliases.get(k, {}).get(v, v) if isinstance(v, str) else v
             for k, v in config.items() if k in names and k not in unread and not k.startswith("_")}
    try:
        parsed = from_json(config_type, known, where="scheduler_config", error=InvalidArgumentError)
    except InvalidArgumentError as exc:
        problems.insert(0, str(exc))
    if problems:
        raise InvalidArgumentError("; ".join(problems) + f" (for the {scheduler} scheduler); fix scheduler_config.json "
                                   "or choose another scheduler")
    return parsed


# -- the noise schedule ---------------------------------------------------------------------------------

def _torch_linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` bit for bit (its CPU kernel: a float32
    step, fused multiply-add from the nearer end)."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    i = np.arange(steps)
    low = np.float64(start32) + step * i                               # exact in float64, rounded once: FMA
    high = np.float64(end32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(np.float32)      # [T]


def _squaredcos_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal 2021, eq. 17 (diffusers' ``betas_for_alpha_bar``)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                    dtype=np.float32)                                  # [T]


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"), algorithm 1."""
    alphas_bar_sqrt = np.sqrt(np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32))   # [T]
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def betas(config: ScheduleConfig) -> np.ndarray:
    """float32 [T]: the betas of the training schedule."""
    c = config
    if c.trained_betas is not None:
        out = np.asarray(c.trained_betas, dtype=np.float32)
    elif c.beta_schedule == "linear":
        out = _torch_linspace32(c.beta_start, c.beta_end, c.num_train_timesteps)
    elif c.beta_schedule == "scaled_linear":
        out = _torch_linspace32(c.beta_start ** 0.5, c.beta_end ** 0.5, c.num_train_timesteps) ** 2
    else:
        out = _squaredcos_betas(c.num_train_timesteps)
    return _rescale_zero_terminal_snr(out) if c.rescale_betas_zero_snr else out


def alphas_cumprod(config: ScheduleConfig, *, terminal_floor: bool = False) -> np.ndarray:
    """float32 [T]: prod_{s<=t} (1 - beta_s), accumulated in float64 as torch.cumprod does on CPU.

    ``terminal_floor``: the sigma schedulers replace a zero-SNR schedule's last value 0 by 2**-24,
    so that its sigma stays finite (diffusers does it in Euler, Euler ancestral and DPM-Solver).
    """
    out = np.cumprod((1.0 - betas(config)).astype(np.float64)).astype(np.float32)
    if terminal_floor and config.rescale_betas_zero_snr:
        out[-1] = 2.0 ** -24
    return out


def spaced_timesteps(spacing: str, num_train_timesteps: int, steps: int, steps_offset: int, *,
                     round_linspace: bool = True) -> np.ndarray:
    """float64 [steps], descending: which training timesteps ``steps`` inference steps visit.

    Table 2 of Lin et al. 2023: ``leading`` = 0, r, 2r... (+ ``steps_offset``), ``trailing`` ends at
    T - 1, ``linspace`` spreads from 0 to T - 1 (rounded, except in the Euler schedulers).
    """
    T = num_train_timesteps
    if spacing == "linspace":
        out = np.linspace(0, T - 1, steps)[::-1]
        return out.round() if round_linspace else out.astype(np.float32).astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, steps) * (T // steps)).round()[::-1] + steps_offset
    return np.round(np.arange(T, 0, -T / steps)) - 1                  # trailing


# -- prediction types ----------------------------------------------------------------------------------

def x0_eps_coefficients(prediction_type: str, alpha: float, sigma: float) -> tuple[tuple[float, float],
                                                                                   tuple[float, float]]:
    """``((p_x, p_out), (e_x, e_out))``: the predicted x0 and eps as ``p_x * sample + p_out * model_output``
    (and likewise eps), for ``sample = alpha * x0 + sigma * eps``.

    ``epsilon`` predicts eps (Ho et al. 2020), ``sample`` predicts x0, ``v_prediction`` predicts
    v = alpha * eps - sigma * x0 (Salimans & Ho 2022, section 4).
    """
    if prediction_type == "epsilon":
        return (1 / alpha, -sigma / alpha), (0.0, 1.0)
    if prediction_type == "v_prediction":
        return (alpha, -sigma), (sigma, alpha)
    return (0.0, 1.0), (1 / sigma, -alpha / sigma)


@dataclass(frozen=True)
class StepCoefficients:
    """One scheduler step as an affine map, the form every scheduler here takes::

        x0   = clip(x0_x * sample + x0_out * model_output, -clip, clip)      (no clip when clip is None)
        next = x * sample + out * model_output + x0 * x0 + history * x0_previous + noise * z

    ``x0_previous`` is the x0 of the step before (multistep solvers); ``z`` is fresh standard
    normal noise, drawn only when ``noise`` is not None.  The numpy ``step`` applies it in float64;
    the device loop (:mod:`edgegen.runtimes.diffusion.device_loop`) applies the same numbers in a graph
    on the execution provider, so that latents never leave the GPU.
    """

    x0_x: float
    x0_out: float
    x: float = 0.0
    out: float = 0.0
    x0: float = 0.0
    history: float = 0.0
    noise: float | None = None
    clip: float | None = None


# -- the scheduler interface --------------------------------------------------------------------------

def take_noise(shape: tuple[int, ...], noise: np.ndarray | None, rng: np.random.Generator | None,
               scheduler: str, t: float) -> np.ndarray:
    """The standard normal noise of a stochastic step: ``noise`` as given, or drawn from ``rng`` (float32)."""
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != shape:
            raise InvalidArgumentError(f"{scheduler} step: noise has shape {list(noise.shape)} but the sample has "
                                       f"{list(shape)}; pass noise shaped like the sample")
        return noise
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise InvalidArgumentError(f"{scheduler} step: rng must be a numpy Generator, got {type(rng).__name__}; "
                                       "pass rng=np.random.default_rng(seed)")
        return rng.standard_normal(shape, dtype=np.float32)
    raise InvalidArgumentError(f"the {scheduler} step at t={t} adds noise: pass noise= (an array shaped like the "
                               "sample) or rng=np.random.default_rng(seed)")


def as_float(name: str, value: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float64 copy of an array argument, checked against ``shape``."""
    out = np.asarray(value, dtype=np.float64)
    if shape is not None and out.shape != shape:
        raise InvalidArgumentError(f"{name} has shape {list(out.shape)} but the sample has {list(shape)}; "
                                   "they must match")
    return out


def per_row(t: Any, rows: int) -> np.ndarray:
    """add_noise's timesteps: a scalar for all ``rows``, or one per row -> [rows]."""
    ts = np.asarray(t).reshape(-1)
    if len(ts) not in (1, rows):
        raise InvalidArgumentError(f"add_noise: got {len(ts)} timesteps for {rows} samples; pass one timestep or "
                                   "one per sample")
    return np.broadcast_to(ts, (rows,))


class Scheduler:
    """One sampling run's scheduler: ``set_timesteps``, then ``scale_model_input`` and ``step`` once per timestep.

    Instances hold per-run state (like diffusers' schedulers); ``fresh()`` gives a new run's scheduler
    with the same config.  Subclasses define ``name``, ``config_type``, ``_set_schedule`` and ``step``.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[ScheduleConfig]] = ScheduleConfig
    #: keys the diffusers class reads that change the maths, with the only values implemented here
    fixed: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: fields of ``config_type`` the diffusers class does not read (they keep their defaults)
    unread: ClassVar[frozenset[str]] = frozenset()
    #: diffusers' ``order``: model evaluations per inference step (2 for Heun: ``timesteps`` holds each
    #: evaluation, so a loop over them calls the model twice per step; img2img skips ``order`` per step)
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0
    #: whether it samples flow-matching models (velocity on the straight path from noise, no betas) rather
    #: than noise-schedule (variance-preserving) ones; no scheduler samples the other kind's models
    flow_matching: ClassVar[bool] = False

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.alphas_cumprod = alphas_cumprod(config)          # float32 [T]
        self.timesteps = np.zeros(0, dtype=np.int64)          # [steps] after set_timesteps
        self.num_inference_steps: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Scheduler:
        """Build from a diffusers ``scheduler_config.json`` dict (see :func:`parse_config`)."""
        return cls(parse_config(cls.config_type, config, scheduler=cls.name, fixed=cls.fixed, aliases=cls.aliases,
                                unread=cls.unread))

    def fresh(self) -> Scheduler:
        """A scheduler for a new run: same config, no timesteps set."""
        return type(self)(self.config)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the timesteps of a run of ``num_inference_steps`` steps (and start a new run)."""
        n, T = num_inference_steps, self.config.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
            raise InvalidArgumentError(f"steps must be an integer from 1 to {T} (the model's num_train_timesteps), "
                                       f"got {n!r}; pass a step count in that range")
        self.num_inference_steps = int(n)
        self._set_schedule(int(n))

    def _set_schedule(self, n: int) -> None:
        """Set ``timesteps`` (and the scheduler's own tables) for ``n`` steps; reset the run's state."""
        raise NotImplementedError

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise InvalidArgumentError(f"the {self.name} scheduler has no timesteps yet; "
                                       "call set_timesteps(steps) first")

    #: whether the model output carries a predicted variance in a second half of its channels (ignored)
    variance_channels: bool = False
    #: whether a step reads the previous step's x0 (StepCoefficients.history)
    multistep: ClassVar[bool] = False

    def model_input_scale(self, t: float) -> float:
        """The factor ``scale_model_input`` applies at timestep ``t`` (1 unless the scheduler scales)."""
        return 1.0

    def scale_model_input(self, sample: np.ndarray, t: float) -> np.ndarray:
        """The denoiser's input at timestep ``t`` (identity unless the scheduler scales it)."""
        scale = self.model_input_scale(t)
        if scale == 1.0:
            return np.asarray(sample, dtype=np.float32)
        return (as_float("sample", sample) * scale).astype(np.float32)

    @property
    def affine(self) -> bool:
        """Whether every step of this configuration is a :class:`StepCoefficients` (all but DDPM's learned variance)."""
        return True

    def plan(self, t: float) -> StepCoefficients:
        """The coefficients of the step at ``t`` (checks ``t``; the run's state moves on in :meth:`advance`, not
        here: the sigma schedulers only start their step counter on the first call)."""
        raise NotImplementedError

    def advance(self) -> None:
        """Count the step just planned as done (the schedulers that keep a step counter)."""

    def step(self, model_output: np.ndarray, t: float, sample: np.ndarray, *,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        """x_t [B, C, H, W] and the model output at ``t`` -> the sample at the next timestep (float32)."""
        k = self.plan(t)
        x = as_float("sample", sample)                                          # [B, C, H, W]
        out, _ = self._split_output(model_output, x.shape)
        x0, prev = self._apply(k, x, out, t, noise, rng)
        if self.multistep:
            self._x0_previous = x0
        self.advance()
        return prev.astype(np.float32)

    def _apply(self, k: StepCoefficients, x: np.ndarray, out: np.ndarray, t: float, noise: np.ndarray | None,
               rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(x0, next sample) of the step ``k`` in float64 (``k.noise`` may be an array: DDPM's learned variance)."""
        x0 = k.x0_x * x + k.x0_out * out
        if k.clip is not None:
            x0 = np.clip(x0, -k.clip, k.clip)
        prev = k.x * x + k.out * out + k.x0 * x0
        if k.history:
            prev = prev + k.history * self._x0_previous
        if k.noise is not None:
            prev = prev + k.noise * take_noise(x.shape, noise, rng, self.name, t)
        return x0, prev

    def _split_output(self, model_output: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """The model output as float64 shaped like the sample, and its predicted-variance half for variance
        models (``variance_channels``; None otherwise)."""
        out = np.asarray(model_output, dtype=np.float64)
        variance = None
        if self.variance_channels:                                              # out [B, 2C, H, W]
            if out.ndim < 2 or len(shape) < 2 or out.shape[1] != 2 * shape[1]:
                raise InvalidArgumentError(f"variance_type {self.config.variance_type!r} needs a model output with "
                                           f"twice the sample's {shape[1]} channels, got shape {list(out.shape)}")
            out, variance = out[:, :shape[1]], out[:, shape[1]:]
        return as_float("model_output", out, shape), variance

    def timesteps_for_strength(self, strength: float) -> np.ndarray:
        """img2img: the timesteps left when a run starts from an image noised to ``strength`` in [0, 1].

        diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps``; like it (it calls
        ``set_begin_index``), this also makes the run start at the first of them.
        """
        self._require_timesteps()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise InvalidArgumentError(f"strength must be a number from 0 to 1, got {strength!r}")
        n = self.num_inference_steps
        init_timestep = min(int(n * strength), n)
        t_start = max(n - init_timestep, 0)
        self._begin_at(t_start * self.order)
        return self.timesteps[t_start * self.order:].copy()

    def _begin_at(self, index: int) -> None:
        """Where a run starts (only the schedulers that count steps need it)."""

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """The forward process: ``original`` [B, ...] noised to timestep ``t`` (a scalar or one per row [B])."""
        raise NotImplementedError


class CountedScheduler(Scheduler):
    """A scheduler that keeps a step counter over ``timesteps`` (the sigma schedulers, LCM, TCD), as diffusers'
    ``step_index``.

    The counter starts at 0 when the first timestep seen is the schedule's first, else where
    ``timesteps_for_strength`` put it, else at that timestep's index (the second of two equal ones, as
    in diffusers); each ``step`` checks ``t`` against it.
    """

    def __init__(self, config: ScheduleConfig) -> None:
        super().__init__(config)
        self._index: int | None = None
        self._begin: int | None = None

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


class VPScheduler(Scheduler):
    """The schedulers that index ``alphas_cumprod`` by the timestep itself (DDPM, DDIM)."""

    def _set_schedule(self, n: int) -> None:
        c = self.config
        self.timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).astype(np.int64)

    def _check_t(self, t: Any) -> int:
        self._require_timesteps()
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.config.num_train_timesteps:
            raise InvalidArgumentError(f"the {self.name} scheduler steps at integer timesteps from 0 to "
                                       f"{self.config.num_train_timesteps - 1}, got {t!r}; pass the values of "
                                       "scheduler.timesteps")
        return int(t)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        x0 = as_float("original", original)                            # [B, ...]
        eps = as_float("noise", noise, x0.shape)
        ts = per_row(t, x0.shape[0])
        if ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= self.config.num_train_timesteps:
            raise InvalidArgumentError(f"add_noise: timesteps must be integers in [0, "
                                       f"{self.config.num_train_timesteps}), got {t!r}")
        abar = self.alphas_cumprod[ts].astype(np.float64).reshape(-1, *[1] * (x0.ndim - 1))   # [B, 1, ...]
        return (np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps).astype(np.float32)


class NumpyStepScheduler(Scheduler):
    """A scheduler whose step is more than :class:`StepCoefficients`' affine map of the sample, the model output
    and the previous step's x0 (it combines several earlier model outputs, or an earlier sample): it has no
    ``plan``, overrides ``step``, and runs in the numpy loop only (the device loop asks ``affine``)."""

    #: what the step combines that the affine map cannot hold (for the error of ``plan``)
    not_affine_because: ClassVar[str] = "combines several earlier model outputs"

    @property
    def affine(self) -> bool:
        return False

    def plan(self, t: float) -> StepCoefficients:
        raise InvalidArgumentError(f"a {self.name} step {self.not_affine_because}, which the device loop's affine "
                                   "map cannot hold: it has no StepCoefficients; call step()")
