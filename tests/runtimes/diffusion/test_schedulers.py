"""The numpy schedulers against diffusers 0.39's, step by step, on the same configs, model outputs and noise.

diffusers is only the reference here (edgegen.runtimes.diffusion.schedulers never imports it).  The "model" is a
fixed function of the sample and t, so a step that drifts changes every later model output.  The
tolerance: diffusers computes in float32 torch, we in float64 from the same float32 schedule, so the
two differ by float32 rounding (at most 1.7e-6 of the step's scale over the grid and options below,
measured with diffusers 0.39 / torch 2.13 CPU); 1e-5 of that scale fails on any real formula difference
(a wrong coefficient or an off-by-one sigma moves samples by 1e-3 or more).  The scale is
max(1, max |x|) over the step's input and output: Euler's samples reach ~15 (~3e4 at the first step
of the cosine schedule), and float32 rounds relative to its operands.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.scheduler_names import FLOW_MATCHING
from edgegen.runtimes.diffusion.schedulers import DIFFUSERS_CLASS_NAMES, SCHEDULERS, make_scheduler
from tests_support import fake_model

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

REFERENCE = {ours: theirs for theirs, ours in DIFFUSERS_CLASS_NAMES.items()}
#: the noise-schedule schedulers this file runs on beta schedules (flow matching: test_flow_match.py)
VP_SCHEDULERS = [name for name in SCHEDULERS if name not in FLOW_MATCHING]
#: diffusers modules whose ``randn_tensor`` draws a step's noise (DDIM takes it as an argument)
NOISE_MODULES = {"ddpm": "scheduling_ddpm", "euler-a": "scheduling_euler_ancestral_discrete",
                 "dpm++": "scheduling_dpmsolver_multistep", "kdpm2-a": "scheduling_k_dpm_2_ancestral_discrete",
                 "lcm": "scheduling_lcm", "tcd": "scheduling_tcd", "dpm-single": "scheduling_dpmsolver_singlestep"}
#: what diffusers refuses: PNDM, Euler ancestral and KDPM2 have no "sample" prediction
NO_SAMPLE_PREDICTION = ("euler-a", "pndm", "kdpm2", "kdpm2-a")
#: the schedulers whose timesteps include interpolated (fractional) ones, which torch computes in float32
INTERPOLATED_TIMESTEPS = ("kdpm2", "kdpm2-a")
TOLERANCE = 1e-5
SHAPE = (2, 3, 4, 4)                                              # [B, C, H, W]

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}   # Stable Diffusion 1.x/2.x
LINEAR = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}        # DDPM (Ho et al.)
ZERO_SNR = {**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
SD15_PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def reference(name: str, config: dict):
    return getattr(diffusers, REFERENCE[name]).from_config(config)


@pytest.fixture
def drawn_noise(monkeypatch):
    """Make diffusers' DDPM and Euler ancestral take their step noise from ``drawn_noise[0]``."""
    box = [None]
    for module in NOISE_MODULES.values():
        monkeypatch.setattr(f"diffusers.schedulers.{module}.randn_tensor",
                            lambda shape, **kw: torch.from_numpy(box[0].copy()))
    return box


def run_both(name, config, steps, box, *, eta=0.0, strength=None, seed=0):
    """Run ours and diffusers' through a whole sampling run; return the worst scaled error of any step."""
    ours, ref = make_scheduler(name, config, eta=eta), reference(name, config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    if name in INTERPOLATED_TIMESTEPS or ours.timesteps.dtype == np.float32 and any(
            config.get(f"use_{k}_sigmas") for k in ("karras", "exponential", "beta")):
        # fractional timesteps from sigmas that torch's sqrt rounds its own way
        np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    rng = np.random.default_rng(seed)
    variance = config.get("variance_type") if name in ("ddpm", "dpm++", "dpm-single") else None
    ts, ts_ref = ours.timesteps, ref.timesteps
    if strength is None:
        x = (rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(ours.init_noise_sigma)).astype(np.float32)
        x_ref = torch.from_numpy(x.copy())
        if hasattr(ref, "set_begin_index"):                         # as SDXL's pipeline does: a run from the start
            ref.set_begin_index(0)                                  # (diffusers' default skips a repeated first t)
    else:                                                           # img2img: noise an "image" to the first timestep
        ts = ours.timesteps_for_strength(strength)
        ts_ref, _ = img2img_timesteps(ref, steps, strength)
        # interpolated timesteps: as for the whole schedule above (torch's float32 puts KDPM2 ancestral's last
        # one at 3.4e-6 where ours is 0 on this AVX2 CPU)
        np.testing.assert_allclose(ts, ts_ref.numpy(), rtol=1e-6 if name in INTERPOLATED_TIMESTEPS else 0,
                                   atol=1e-4 if name in INTERPOLATED_TIMESTEPS else 0)
        image = np.tanh(rng.standard_normal(SHAPE, dtype=np.float32))
        noise = rng.standard_normal(SHAPE, dtype=np.float32)
        x = ours.add_noise(image, noise, np.full(SHAPE[0], ts[0]))
        x_ref = ref.add_noise(torch.from_numpy(image), torch.from_numpy(noise), ts_ref[:1].repeat(SHAPE[0]))
        assert np.abs(x - x_ref.numpy()).max() <= TOLERANCE * max(1.0, float(x_ref.abs().max()))
    worst = 0.0
    for t, t_ref in zip(ts, ts_ref):
        scaled, scaled_ref = ours.scale_model_input(x, t), ref.scale_model_input(x_ref, t_ref).numpy()
        assert np.abs(scaled - scaled_ref).max() <= TOLERANCE * max(1.0, np.abs(scaled_ref).max())
        z = rng.standard_normal(SHAPE, dtype=np.float32)
        box[0] = z
        kwargs = {"eta": eta, "variance_noise": torch.from_numpy(z.copy())} if name == "ddim" and eta > 0 else {}
        if name == "tcd":                                           # as diffusers' pipelines pass it (default 0)
            kwargs = {"eta": eta}
        scale = max(1.0, float(x_ref.abs().max()))                  # the step's input ...
        x = ours.step(fake_model(scaled, t, variance), t, x, noise=z)
        x_ref = ref.step(torch.from_numpy(fake_model(scaled_ref, float(t_ref), variance)), t_ref, x_ref,
                         **kwargs).prev_sample
        assert x.dtype == np.float32 and x.shape == SHAPE
        scale = max(scale, float(x_ref.abs().max()))                # ... or output, whichever is larger
        error = float(np.abs(x - x_ref.numpy()).max()) / scale
        assert error <= TOLERANCE, f"t={t}: max abs error {error * scale:.3g} at scale {scale:.3g}"
        worst = max(worst, error)
    return worst


def img2img_timesteps(ref, steps, strength):
    """diffusers' own img2img ``get_timesteps`` (it also calls ``set_begin_index`` on the scheduler)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline

    class Pipe:
        scheduler = ref

    return StableDiffusionImg2ImgPipeline.get_timesteps(Pipe(), steps, strength, "cpu")


# -- the grid: every scheduler x prediction type x beta schedule x spacing x step count --------------------

#: the grid's step counts: 10 and 25 for the first five; the later ones run 10 here and their longer runs (the
#: >= 15-step branches of the multistep solvers) in OPTIONS, to keep the file fast
GRID_STEPS = {name: (10, 25) for name in ("ddpm", "ddim", "euler", "euler-a", "dpm++")}
GRID = [pytest.param(name, prediction, beta, spacing, steps, id=f"{name}-{prediction}-{beta}-{spacing}-{steps}")
        for name in VP_SCHEDULERS for prediction in ("epsilon", "v_prediction", "sample")
        for beta in ("linear", "scaled_linear") for spacing in ("leading", "trailing", "linspace")
        for steps in GRID_STEPS.get(name, (10,)) if not (name in NO_SAMPLE_PREDICTION and prediction == "sample")]


@pytest.mark.parametrize("name, prediction, beta, spacing, steps", GRID)
def test_matches_diffusers(name, prediction, beta, spacing, steps, drawn_noise):
    config = {**(LINEAR if beta == "linear" else SD), "prediction_type": prediction, "timestep_spacing": spacing,
              "steps_offset": 1 if spacing == "leading" else 0}
    run_both(name, config, steps, drawn_noise)


# -- each scheduler's own options ------------------------------------------------------------------------

OPTIONS = [
    ("ddpm", {"variance_type": "fixed_small_log"}, 10, 0.0),
    ("ddpm", {"variance_type": "fixed_large", "clip_sample": False}, 10, 0.0),
    ("ddpm", {"variance_type": "learned", **SD}, 10, 0.0),
    ("ddpm", {"variance_type": "learned_range", "prediction_type": "v_prediction"}, 25, 0.0),
    ("ddpm", {"clip_sample_range": 2.0, "prediction_type": "sample"}, 10, 0.0),
    ("ddpm", {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False}, 25, 0.0),
    ("ddpm", {"num_train_timesteps": 40, "trained_betas": np.linspace(1e-3, 0.2, 40).tolist()}, 7, 0.0),
    ("ddpm", ZERO_SNR, 10, 0.0),
    ("ddim", {**SD, "clip_sample": False}, 25, 0.5),
    ("ddim", {**SD, "set_alpha_to_one": False}, 10, 1.0),
    ("ddim", {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False, "timestep_spacing": "linspace"}, 25, 0.0),
    ("ddim", ZERO_SNR, 10, 0.0),
    ("ddim", SD15_PNDM, 25, 0.0),
    ("euler", {**SD, "use_karras_sigmas": True}, 10, 0.0),
    ("euler", {**SD, "use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}, 25, 0.0),
    ("euler", {**SD, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}, 10, 0.0),
    # leading: linspace starts at sigma ~2e4 with this schedule, where diffusers' float32 rounding alone is 1e-4
    ("euler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "leading"},
     25, 0.0),
    ("euler", {**ZERO_SNR, "use_karras_sigmas": True}, 10, 0.0),
    ("euler", {"num_train_timesteps": 100}, 7, 0.0),
    ("euler-a", {"beta_schedule": "squaredcos_cap_v2"}, 10, 0.0),
    ("euler-a", ZERO_SNR, 25, 0.0),
    ("euler-a", SD15_PNDM, 10, 0.0),
    ("dpm++", {**SD, "use_karras_sigmas": True}, 10, 0.0),
    ("dpm++", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 25, 0.0),
    ("dpm++", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 10, 0.0),
    ("dpm++", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, 10, 0.0),
    ("dpm++", {**SD, "solver_order": 1}, 10, 0.0),
    ("dpm++", {**SD, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 10, 0.0),
    ("dpm++", {**SD, "final_sigmas_type": "sigma_min"}, 20, 0.0),
    ("dpm++", {**SD, "euler_at_final": True, "final_sigmas_type": "sigma_min"}, 20, 0.0),
    ("dpm++", {**SD, "variance_type": "learned_range"}, 10, 0.0),
    ("dpm++", ZERO_SNR, 10, 0.0),
    ("dpm++", SD15_PNDM, 25, 0.0),
    ("dpm++", {**SD, "_class_name": "UniPCMultistepScheduler", "solver_type": "bh2", "predict_x0": True}, 10, 0.0),
    # every DPM-Solver algorithm x solver type x order (the eps ones cannot step to sigma 0: sigma_min)
    *[("dpm++", {**SD, "algorithm_type": algorithm, "solver_type": solver, "solver_order": order,
                 "final_sigmas_type": "zero" if algorithm.endswith("++") else "sigma_min"}, steps, 0.0)
      for algorithm in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
      for solver in ("midpoint", "heun") for order in (1, 2, 3) for steps in (8, 20)
      if not (algorithm == "sde-dpmsolver" and order == 3)],
    ("dpm++", {**SD, "solver_order": 3, "prediction_type": "v_prediction", "lower_order_final": False}, 10, 0.0),
    ("dpm++", {**SD, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 25, 0.0),
    ("dpm++", {**SD, "solver_order": 3, "use_lu_lambdas": True}, 10, 0.0),
    ("dpm++", {**LINEAR, "use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}, 10, 0.0),
    ("dpm++", {**SD, "use_beta_sigmas": True}, 10, 0.0),
    ("euler", {**SD, "use_exponential_sigmas": True}, 10, 0.0),
    ("euler", {**SD, "use_exponential_sigmas": True, "sigma_min": 0.1, "sigma_max": 5.0, "timestep_spacing": "leading",
               "steps_offset": 1}, 25, 0.0),
    ("euler", {**SD, "use_beta_sigmas": True, "timestep_spacing": "trailing"}, 10, 0.0),
    ("euler", {**LINEAR, "use_beta_sigmas": True, "prediction_type": "v_prediction"}, 25, 0.0),
    # PNDM: Stable Diffusion 1.x's PLMS, and the Runge-Kutta start (12 evaluations) of its defaults
    ("pndm", SD15_PNDM, 10, 0.0),
    ("pndm", {**SD15_PNDM, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 25, 0.0),
    ("pndm", SD, 10, 0.0),
    ("pndm", {**LINEAR, "set_alpha_to_one": True, "prediction_type": "v_prediction"}, 25, 0.0),
    ("pndm", {**SD, "timestep_spacing": "linspace"}, 4, 0.0),
    ("pndm", {**SD15_PNDM, "rescale_betas_zero_snr": True}, 10, 0.0),          # PNDM has no such key: ignored
    ("lms", {**SD, "use_karras_sigmas": True}, 10, 0.0),
    ("lms", {**SD, "use_karras_sigmas": True, "sigma_min": 0.5}, 10, 0.0),        # LMS's Karras ramp ignores it
    ("lms", {**SD, "use_exponential_sigmas": True, "sigma_max": 8.0}, 25, 0.0),
    ("lms", {**SD, "use_beta_sigmas": True, "prediction_type": "v_prediction"}, 10, 0.0),
    ("lms", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}, 25, 0.0),
    ("heun", {**SD, "use_karras_sigmas": True}, 10, 0.0),
    ("heun", {**SD, "use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 10, 0.0),
    ("heun", {**SD, "use_beta_sigmas": True}, 25, 0.0),
    ("heun", {**LINEAR, "clip_sample": True, "prediction_type": "sample"}, 10, 0.0),
    ("heun", {}, 10, 0.0),                                                        # Heun's own default betas
    # UniPC: bh1 / bh2 x orders 1-3 x data or noise prediction
    # (bh1 and noise prediction end at sigma_min: at sigma 0 their last step is inf * 0, NaN in diffusers too)
    *[("unipc", {**SD, "solver_type": solver, "solver_order": order, "predict_x0": x0,
                 "final_sigmas_type": "zero" if solver == "bh2" and x0 else "sigma_min"}, steps, 0.0)
      for solver in ("bh1", "bh2") for order in (1, 2, 3) for x0 in (True, False) for steps in (8, 20)],
    ("unipc", {**SD, "solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 10, 0.0),
    ("unipc", {**SD, "disable_corrector": [0, 3], "prediction_type": "v_prediction"}, 10, 0.0),
    ("unipc", {**SD, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, 10, 0.0),
    ("unipc", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 10, 0.0),
    ("unipc", {**SD, "use_exponential_sigmas": True, "solver_order": 3}, 25, 0.0),
    ("unipc", {**SD, "use_beta_sigmas": True, "final_sigmas_type": "sigma_min"}, 10, 0.0),
    ("unipc", ZERO_SNR, 10, 0.0),
    *[(name, cfg, steps, 0.0) for name in ("kdpm2", "kdpm2-a") for cfg, steps in (
        ({**SD, "use_karras_sigmas": True}, 10), ({**SD, "use_karras_sigmas": True, "sigma_max": 6.0}, 25),
        ({**SD, "use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 10),
        ({**SD, "use_beta_sigmas": True, "timestep_spacing": "trailing"}, 10), ({}, 25))],
    ("lcm", {}, 4, 0.0), ("lcm", {"clip_sample": True, "prediction_type": "sample"}, 8, 0.0),
    ("lcm", {**SD, "original_inference_steps": 25, "set_alpha_to_one": False, "timestep_scaling": 3.0}, 25, 0.0),
    ("lcm", {**ZERO_SNR, "prediction_type": "v_prediction"}, 6, 0.0),
    ("tcd", {}, 4, 0.3), ("tcd", {"prediction_type": "v_prediction"}, 8, 1.0), ("tcd", {}, 50, 0.0),
    ("tcd", {"original_inference_steps": 20, "prediction_type": "sample"}, 10, 0.6),
    *[("deis", {**SD, "solver_order": order, "prediction_type": prediction}, steps, 0.0)
      for order in (1, 2, 3) for prediction in ("epsilon", "v_prediction") for steps in (8, 20)],
    ("deis", {**SD, "solver_order": 3, "lower_order_final": False}, 10, 0.0),
    ("deis", {**SD, "use_karras_sigmas": True, "solver_order": 3}, 25, 0.0),
    ("deis", {**LINEAR, "use_exponential_sigmas": True, "prediction_type": "sample"}, 10, 0.0),
    ("deis", {"beta_schedule": "squaredcos_cap_v2", "use_beta_sigmas": True}, 10, 0.0),
    *[("dpm-single", {**SD, "algorithm_type": algorithm, "solver_type": solver, "solver_order": order,
                      "final_sigmas_type": "zero" if algorithm.endswith("++") else "sigma_min"}, steps, 0.0)
      for algorithm in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver") for solver in ("midpoint", "heun")
      for order in (1, 2, 3) for steps in (9, 20)],
    ("dpm-single", {**SD, "solver_order": 3, "final_sigmas_type": "sigma_min"}, 12, 0.0),   # whole groups, no lowering
    ("dpm-single", {**SD, "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"}, 12, 0.0),
    ("dpm-single", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 10, 0.0),
    ("dpm-single", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "solver_order": 3}, 10, 0.0),
    ("dpm-single", {**SD, "use_exponential_sigmas": True, "variance_type": "learned_range"}, 10, 0.0),
]


def option_id(value) -> str:
    """A config by what it sets beyond Stable Diffusion's betas (``sd``: it has them)."""
    if not isinstance(value, dict):
        return str(value)
    shown = ["sd"] * all(value.get(k) == v for k, v in SD.items()) + [
        f"{k}={v}" for k, v in value.items() if not (k in SD and SD[k] == v) and not k.startswith("_d")]
    return ",".join(shown)[:100] or "defaults"


@pytest.mark.parametrize("name, config, steps, eta", OPTIONS, ids=option_id)
def test_options_match_diffusers(name, config, steps, eta, drawn_noise):
    run_both(name, config, steps, drawn_noise, eta=eta)


#: configs as diffusers saves them, one per family of keys (the others' keys are a subset of one of these)
SOURCES = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
           "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
           "DPMSolverSinglestepScheduler", "LCMScheduler"]


@pytest.mark.parametrize("name", VP_SCHEDULERS)
@pytest.mark.parametrize("source", SOURCES)
def test_switching_algorithm_reads_another_schedulers_config_like_from_config(name, source, drawn_noise):
    """The full config diffusers saves for ``source`` (every key, DPM-Solver's ``variance_type: null``,
    DDPM's ``"fixed_small"``, UniPC's ``solver_type: "bh2"``...) drives ``name`` as ``from_config`` does."""
    config = {**getattr(diffusers, source)(**SD).config, "_class_name": source}
    config = json.loads(json.dumps({k: v for k, v in config.items() if k != "_use_default_values"}))
    if (source, name) in (("DEISMultistepScheduler", "dpm++"), ("DEISMultistepScheduler", "dpm-single")):
        # diffusers refuses it too (a ValueError: its algorithm "deis" cannot end at sigma 0)
        assert "algorithm_type: 'deis' is not one of 'dpmsolver++'" in one_line_error(name, config)
        return
    if (source, name) == ("DPMSolverSinglestepScheduler", "unipc"):   # lower_order_final false: diffusers' UniPC
        assert "without lower_order_final cannot step to sigma 0" in one_line_error(name, config)   # returns inf
        return
    run_both(name, config, 10, drawn_noise)


@pytest.mark.parametrize("name", VP_SCHEDULERS)
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_diffusers(name, strength, drawn_noise):
    """Timesteps for a strength, add_noise at the first of them, and the run from there."""
    run_both(name, {**SD, "steps_offset": 1}, 20, drawn_noise, strength=strength)


@pytest.mark.parametrize("name", VP_SCHEDULERS)
def test_add_noise_matches_diffusers(name):
    ours, ref = make_scheduler(name, SD), reference(name, SD)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    rng = np.random.default_rng(3)
    image, noise = rng.standard_normal((2, 3, *SHAPE), dtype=np.float32)
    for t in (ours.timesteps[:3], ours.timesteps[-3:], ours.timesteps[7:8]):
        got = ours.add_noise(image[:3], noise[:3], t if len(t) == 3 else t[0])
        want = ref.add_noise(torch.from_numpy(image[:3]), torch.from_numpy(noise[:3]),
                             torch.from_numpy(np.resize(t, 3)))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


# -- the interface ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler-a"])
def test_same_seed_same_samples(name):
    def run(seed):
        scheduler = make_scheduler(name, SD, eta=0.8 if name == "ddim" else 0.0)
        scheduler.set_timesteps(8)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
        for t in scheduler.timesteps:
            x = scheduler.step(fake_model(scheduler.scale_model_input(x, t), t), t, x, rng=rng)
        return x

    np.testing.assert_array_equal(run(7), run(7))
    assert np.abs(run(7) - run(8)).max() > 1e-2


@pytest.mark.parametrize("name, eta, t_index", [("ddpm", 0.0, 0), ("ddim", 0.5, 0), ("euler-a", 0.0, 0)])
def test_a_stochastic_step_needs_noise_or_rng(name, eta, t_index):
    scheduler = make_scheduler(name, SD, eta=eta)
    scheduler.set_timesteps(5)
    x = np.zeros(SHAPE, np.float32)
    t = scheduler.timesteps[t_index]
    with pytest.raises(InvalidArgumentError, match="adds noise: pass noise="):
        scheduler.step(x, t, x)
    with pytest.raises(InvalidArgumentError, match="noise has shape"):
        scheduler.step(x, t, x, noise=np.zeros((1, 3, 4, 4)))


def test_ddpm_draws_nothing_at_t0_and_deterministic_schedulers_need_no_noise():
    ddpm = make_scheduler("ddpm", {"timestep_spacing": "linspace"})
    ddpm.set_timesteps(4)
    assert ddpm.timesteps[-1] == 0
    x = np.full(SHAPE, 0.5, np.float32)
    assert np.isfinite(ddpm.step(x, 0, x)).all()
    for name in ("ddim", "euler", "dpm++"):
        scheduler = make_scheduler(name, SD)
        scheduler.set_timesteps(3)
        for t in scheduler.timesteps:
            x = scheduler.step(fake_model(x, t), t, x)
        assert np.isfinite(x).all()


def test_sigma_schedulers_check_the_order_of_steps_and_fresh_starts_over():
    euler = make_scheduler("euler", SD)
    euler.set_timesteps(3)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(InvalidArgumentError, match="is not one of the euler scheduler's timesteps"):
        euler.step(x, 500.5, x)
    for t in euler.timesteps:
        x = euler.step(fake_model(x, t), t, x)
    with pytest.raises(InvalidArgumentError, match="has done all its 3 steps; use scheduler.fresh"):
        euler.step(x, euler.timesteps[0], x)
    again = euler.fresh()
    with pytest.raises(InvalidArgumentError, match="call set_timesteps"):
        again.step(x, 999.0, x)
    again.set_timesteps(3)
    again.step(x, again.timesteps[0], x)
    with pytest.raises(InvalidArgumentError, match="expected step 1 at t="):
        again.step(x, again.timesteps[2], x)


def test_make_scheduler_takes_the_class_name_and_ignores_harmless_keys():
    ddim = make_scheduler(None, {**SD, "_class_name": "DDIMScheduler", "_diffusers_version": "0.39.0",
                                 "skip_prk_steps": True, "some_future_key": [1, 2]})
    assert ddim.name == "ddim" and ddim.config == make_scheduler("ddim", SD).config
    assert make_scheduler("euler", SD15_PNDM).config.steps_offset == 1


def one_line_error(name, config, steps=10, **kwargs) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        make_scheduler(name, config, **kwargs).set_timesteps(steps)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_configs_and_settings_are_one_line_errors():
    message = one_line_error("plms", SD)
    assert "unknown scheduler 'plms'" in message and "ddpm, ddim, pndm, lms, heun, euler, euler-a, dpm++" in message
    message = one_line_error(None, {**SD, "_class_name": "KarrasVeScheduler"})
    assert "KarrasVeScheduler, which edgegen does not implement; the closest it has is euler" in message
    assert "names no scheduler (_class_name)" in one_line_error(None, SD)
    assert "the closest scheduler it has is dpm++" in one_line_error("DPMSolverSDEScheduler", SD)
    message = one_line_error("ddim", {"beta_schedule": "sigmoid"})
    assert ("scheduler_config.beta_schedule: 'sigmoid' is not one of 'linear', 'scaled_linear', "
            "'squaredcos_cap_v2'") in message
    message = one_line_error("ddpm", {"thresholding": True})
    assert "scheduler_config.thresholding: true is not supported by the ddpm scheduler (supported: false)" in message
    message = one_line_error("dpm++", {"algorithm_type": "sde-dpmsolver++", "use_flow_sigmas": True,
                                       "solver_order": 4})
    assert "solver_order: 4 is not one of 1, 2, 3" in message and "use_flow_sigmas" in message
    assert "cannot step to sigma 0" in one_line_error("dpm++", {"algorithm_type": "dpmsolver"})
    assert "sde-dpmsolver has no third-order step" in one_line_error(
        "dpm++", {"algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"})
    assert "at most one of use_karras_sigmas" in one_line_error("euler", {"use_karras_sigmas": True,
                                                                          "use_beta_sigmas": True})
    assert "Runge-Kutta start needs at least 4 steps" in one_line_error("pndm", SD, 3)
    assert "UniPC with solver_type 'bh1' cannot step to sigma 0" in one_line_error("unipc", {"solver_type": "bh1"})
    assert "without lower_order_final cannot step to sigma 0" in one_line_error("unipc", {"lower_order_final": False})
    assert "'sample' is not one of 'epsilon', 'v_prediction'" in one_line_error("pndm", {"prediction_type": "sample"})
    assert "interpolation_type" in one_line_error("euler", {"interpolation_type": "log_linear"})
    assert "prediction_type 'sample'" in one_line_error("euler-a", {"prediction_type": "sample"})
    assert "trained_betas has 3 values" in one_line_error("ddpm", {"trained_betas": [0.1, 0.2, 0.3]})
    assert "expected an integer, got a string" in one_line_error("euler", {"num_train_timesteps": "1000"})
    assert "JSON object" in one_line_error("ddim", ["not", "a", "dict"])
    for steps in (0, -3, 1001, 2.5, True):
        assert "steps must be an integer from 1 to 1000" in one_line_error("euler", SD, steps)
    assert "eta must be a number from 0" in one_line_error("ddim", SD, eta=1.5)
    assert "eta is DDIM's and TCD's setting" in one_line_error("euler", SD, eta=0.5)
    assert "runs at most original_inference_steps = 50 steps" in one_line_error("lcm", SD, 51)
    scheduler = make_scheduler("ddim", SD)
    with pytest.raises(InvalidArgumentError, match="call set_timesteps"):
        scheduler.timesteps_for_strength(0.5)
    scheduler.set_timesteps(10)
    with pytest.raises(InvalidArgumentError, match="strength must be a number from 0 to 1"):
        scheduler.timesteps_for_strength(1.5)


def test_every_scheduler_has_a_diffusers_reference():
    """A guard: a scheduler registered without its diffusers original would skip the parity tests."""
    assert sorted(REFERENCE) == sorted(SCHEDULERS)
    assert all(hasattr(diffusers, cls) for cls in DIFFUSERS_CLASS_NAMES)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_reads_its_diffusers_classs_keys_with_that_classs_defaults(name):
    """A key the config lacks takes the default of the class that runs (PNDM saves no clip_sample: DDIM's
    default would clip, PNDM has none; Heun's betas default to Stable Diffusion's)."""
    import dataclasses
    import inspect

    cls = SCHEDULERS[name]
    params = inspect.signature(getattr(diffusers, REFERENCE[name]).__init__).parameters
    for field in dataclasses.fields(cls.config_type):
        if field.name in cls.unread:
            assert field.name not in params, f"{name} ignores {field.name}, which diffusers reads"
        elif field.name in ("sigma_min", "sigma_max") and field.name not in params:
            continue                        # read through hasattr(config, ...) from any config that has them
        else:
            assert field.name in params, f"{name} reads {field.name}, which {REFERENCE[name]} has no argument for"
            theirs = params[field.name].default
            theirs = tuple(theirs) if isinstance(theirs, list) else theirs
            assert field.default == theirs, f"{name}.{field.name}: default {field.default!r}, diffusers {theirs!r}"
    assert set(cls.fixed) <= set(params), f"{name} fixes keys {REFERENCE[name]} does not read"


def test_importing_the_schedulers_loads_no_torch():
    code = ("import sys, edgegen.runtimes.diffusion.schedulers; "
            "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
