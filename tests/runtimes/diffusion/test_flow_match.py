"""The flow-matching Euler scheduler against diffusers 0.39's ``FlowMatchEulerDiscreteScheduler``, step for step,
on its own configs: the fixed shift (SD3's 3.0), the dynamic shift with mu (exponential and linear), the
terminal stretch, Karras / exponential / beta sigmas, inverted sigmas, stochastic sampling, img2img and the
forward process.  The tolerance is test_schedulers.py's (1e-5 of the step's scale; float32 rounding alone
stays under 1e-6 here, as measured below), and the "model" is the same fixed function of sample and t.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.diffusion.schedulers import make_scheduler
from tests_support import fake_model

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

TOLERANCE = 1e-5
SHAPE = (2, 4, 4, 4)                                              # [B, C, H, W]
FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler"}
SD3 = {**FLOW, "shift": 3.0}                                      # stable-diffusion-3-medium's scheduler config
FLUX = {**FLOW, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
        "base_image_seq_len": 256, "max_image_seq_len": 4096}     # FLUX.1-dev's

#: (config, steps, mu)
CONFIGS = [
    (FLOW, 10, None), (FLOW, 1, None), (SD3, 4, None), (SD3, 28, None), ({**FLOW, "shift": 1.15}, 10, None),
    ({**FLOW, "num_train_timesteps": 100, "shift": 2.0}, 7, None),
    (FLUX, 10, 0.5), (FLUX, 28, 1.15), ({**FLUX, "time_shift_type": "linear"}, 10, 0.9),
    ({**FLUX, "shift_terminal": 0.1}, 10, 0.7), ({**SD3, "shift_terminal": 0.02}, 25, None),
    ({**SD3, "use_karras_sigmas": True}, 10, None), ({**FLOW, "use_exponential_sigmas": True}, 10, None),
    ({**SD3, "use_beta_sigmas": True}, 25, None), ({**FLUX, "use_karras_sigmas": True}, 10, 1.0),
    ({**FLOW, "invert_sigmas": True}, 10, None), ({**SD3, "invert_sigmas": True, "shift_terminal": 0.1}, 6, None),
    ({**SD3, "stochastic_sampling": True}, 10, None), ({**FLUX, "stochastic_sampling": True}, 4, 0.8),
]


@pytest.fixture
def drawn_noise(monkeypatch):
    """Make diffusers' stochastic sampling take its step noise from ``drawn_noise[0]``."""
    box = [None]
    monkeypatch.setattr("diffusers.schedulers.scheduling_flow_match_euler_discrete.randn_tensor",
                        lambda shape, **kw: torch.from_numpy(box[0].copy()))
    return box


def pair(config, steps, mu):
    ours, ref = make_scheduler(None, config), diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    ours.set_timesteps(steps, mu=mu)
    ref.set_timesteps(steps, mu=mu)
    assert ours.timesteps.dtype == ref.timesteps.numpy().dtype == np.float32
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    return ours, ref


def run(ours, ref, x, ts, ts_ref, box, rng) -> float:
    """Both through the timesteps from ``x``; the worst step error relative to the step's scale."""
    x_ref, worst = torch.from_numpy(x.copy()), 0.0
    for t, t_ref in zip(ts, ts_ref):
        np.testing.assert_array_equal(ours.scale_model_input(x, t), x)   # the denoiser sees the sample unscaled
        box[0] = z = rng.standard_normal(x.shape, dtype=np.float32)
        scale = max(1.0, float(x_ref.abs().max()))
        x = ours.step(fake_model(x, t), t, x, noise=z)
        x_ref = ref.step(torch.from_numpy(fake_model(x_ref.numpy(), float(t_ref))), t_ref, x_ref).prev_sample
        assert x.dtype == np.float32 and x.shape == x_ref.shape
        scale = max(scale, float(x_ref.abs().max()))
        error = float(np.abs(x - x_ref.numpy()).max()) / scale
        assert error <= TOLERANCE, f"t={t}: max abs error {error * scale:.3g} at scale {scale:.3g}"
        worst = max(worst, error)
    return worst


def config_id(value) -> str:
    return ",".join(f"{k}={v}" for k, v in value.items() if not k.startswith("_")) or "defaults" \
        if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("config, steps, mu", CONFIGS, ids=config_id)
def test_flow_match_euler_matches_diffusers_step_for_step(config, steps, mu, drawn_noise):
    ours, ref = pair(config, steps, mu)
    assert ours.init_noise_sigma == 1.0                           # the SD3 / Flux pipelines scale no noise
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    worst = run(ours, ref, x, ours.timesteps, ref.timesteps, drawn_noise, np.random.default_rng(1))
    assert worst < 1e-6                                           # float32 rounding only


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("config, mu", [(SD3, None), (FLUX, 0.9)], ids=["sd3", "flux"])
def test_img2img_matches_the_flow_pipelines(config, mu, strength, drawn_noise):
    """SD3's img2img timesteps for a strength (not Stable Diffusion's rounding), scale_noise at the first of
    them, and the run from there."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import (
        StableDiffusion3Img2ImgPipeline)

    ours, ref = pair(config, 10, mu)

    class Pipe:
        scheduler = ref

    ts_ref, _ = StableDiffusion3Img2ImgPipeline.get_timesteps(Pipe(), 10, strength, "cpu")
    ts = ours.timesteps_for_strength(strength)
    np.testing.assert_array_equal(ts, ts_ref.numpy())
    rng = np.random.default_rng(2)
    image, noise = np.tanh(rng.standard_normal(SHAPE, dtype=np.float32)), rng.standard_normal(SHAPE, dtype=np.float32)
    x = ours.add_noise(image, noise, np.full(SHAPE[0], ts[0]))
    x_ref = ref.scale_noise(torch.from_numpy(image), ts_ref[:1].repeat(SHAPE[0]), torch.from_numpy(noise))
    np.testing.assert_allclose(x, x_ref.numpy(), rtol=1e-6, atol=1e-6)
    run(ours, ref, x, ts, ts_ref, drawn_noise, rng)


def test_stable_diffusions_img2img_rounding_would_start_a_step_later():
    """Why the flow scheduler has its own timesteps_for_strength: 10 steps at 0.75 keep 8 timesteps in SD3's
    pipeline, 7 in Stable Diffusion's."""
    flow, euler = make_scheduler(None, SD3), make_scheduler("euler", {})
    flow.set_timesteps(10)
    euler.set_timesteps(10)
    assert (len(flow.timesteps_for_strength(0.75)), len(euler.timesteps_for_strength(0.75))) == (8, 7)


def test_add_noise_at_any_timestep_matches_scale_noise():
    ours, ref = pair(SD3, 20, None)
    rng = np.random.default_rng(3)
    image, noise = rng.standard_normal((2, 3, *SHAPE[1:]), dtype=np.float32)
    for t in (ours.timesteps[:3], ours.timesteps[-3:], ours.timesteps[7:8]):
        got = ours.add_noise(image, noise, t if len(t) == 3 else t[0])
        want = ref.scale_noise(torch.from_numpy(image), torch.from_numpy(np.resize(t, 3)), torch.from_numpy(noise))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096, 6000])
def test_mu_for_an_image_is_the_flux_pipelines_calculate_shift(image_seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    ours = make_scheduler(None, FLUX)
    c = FLUX
    assert ours.mu_for(image_seq_len) == pytest.approx(calculate_shift(
        image_seq_len, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"]), abs=1e-12)


def test_a_seeded_stochastic_run_repeats_and_draws_noise_every_step_even_the_last():
    def sample(seed):
        s = make_scheduler(None, {**SD3, "stochastic_sampling": True})
        s.set_timesteps(5)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(SHAPE, dtype=np.float32)
        for t in s.timesteps:
            x = s.step(fake_model(x, t), t, x, rng=rng)
        return x, rng.standard_normal()

    (a, after_a), (b, after_b), (c, _) = sample(7), sample(7), sample(8)
    assert np.array_equal(a, b) and after_a == after_b and np.abs(a - c).max() > 1e-3
    s = make_scheduler(None, {**SD3, "stochastic_sampling": True})
    s.set_timesteps(5)
    assert s.plan(s.timesteps[0]).noise is not None
    for t in s.timesteps[:-1]:
        s.plan(t)
        s.advance()
    assert s.plan(s.timesteps[-1]).noise == 0.0                   # drawn (diffusers draws it), weighted 0


def one_line(name, config, steps=10, **kwargs) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        make_scheduler(name, config).set_timesteps(steps, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_refusals_are_one_line():
    assert "which the euler scheduler cannot sample; choose flow-euler" in one_line("euler", SD3)
    assert "FlowMatchEulerDiscreteScheduler: a flow-matching model" in one_line("dpm++", FLUX)
    message = one_line("flow-euler", {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear"})
    assert "flow-euler samples flow-matching models, but the scheduler config is PNDMScheduler" in message
    assert "a schedule of betas" in one_line("flow-euler", {"beta_schedule": "linear", "beta_end": 0.02})
    assert "a flow-matching schedule" in one_line("ddim", {"shift": 3.0})
    assert "use_dynamic_shifting" in one_line(None, FLUX) and "mu=scheduler.mu_for" in one_line(None, FLUX)
    assert "at most one of use_karras_sigmas" in one_line(None, {**FLOW, "use_karras_sigmas": True,
                                                                 "use_beta_sigmas": True})
    assert "shift must be a positive number" in one_line(None, {**FLOW, "shift": 0.0})
    assert "time_shift_type" in one_line(None, {**FLOW, "time_shift_type": "cosine"})
    assert "mu must be a finite number" in one_line(None, FLUX, mu=float("nan"))
    assert "steps must be an integer from 1 to 1000" in one_line(None, SD3, 0)
    # a bare config (no _class_name) runs either kind unless its keys say which; the spec's case
    make_scheduler("flow-euler", {"num_train_timesteps": 1000}).set_timesteps(4)
    make_scheduler("ddim", {"num_train_timesteps": 1000}).set_timesteps(4)
