"""The device-resident diffusion loop (latents on the execution provider) against the numpy loop.

The step graphs are checked step by step against every scheduler's numpy ``step`` (which
tests/runtimes/diffusion/test_schedulers.py checks against diffusers), then whole sampling runs of the
device loop against the numpy loop on real artifacts, on the CPU provider (the same code path
as CUDA and DirectML but for the OrtValues' device; tests/runtimes/diffusion/test_gpu_diffusion.py runs it
there when a GPU is present).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import edgegen
from edgegen.errors import CancelledError
from edgegen.runtimes.diffusion.device_loop import _step_graph, coefficient_vector
from edgegen.runtimes.diffusion.schedulers import make_scheduler
from tests_support import fake_model

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
LINEAR = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}          # clip_sample on (the default)
SHAPE = (2, 3, 4, 4)
#: float32 on the device vs float64 in numpy: the x0 prediction multiplies by up to 1/alpha ~ 160 at the
#: first step, so errors reach ~1e-6 of the step's scale; a wrong coefficient moves samples by 1e-2 or more
TOLERANCE = 2e-5

CASES = [
    ("ddpm", LINEAR, {}), ("ddpm", {**SD, "prediction_type": "v_prediction"}, {}),
    ("ddpm", {**LINEAR, "variance_type": "fixed_large"}, {}),
    ("ddim", SD, {}), ("ddim", LINEAR, {"eta": 0.5}), ("ddim", {**SD, "prediction_type": "sample"}, {}),
    ("euler", SD, {}), ("euler", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("euler-a", SD, {}),
    ("dpm++", SD, {}), ("dpm++", {**SD, "use_karras_sigmas": True}, {}),
    ("dpm++", {**LINEAR, "variance_type": "learned_range"}, {}), ("dpm++", {**SD, "solver_order": 1}, {}),
    ("dpm++", {**SD, "algorithm_type": "sde-dpmsolver++"}, {}),
    ("dpm++", {**SD, "algorithm_type": "dpmsolver", "solver_type": "heun", "final_sigmas_type": "sigma_min"}, {}),
    ("dpm++", {**SD, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, {}),
    ("heun", SD, {}), ("heun", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("heun", {**LINEAR, "clip_sample": True}, {}),
    ("euler", {**SD, "use_beta_sigmas": True}, {}),
    ("kdpm2", SD, {}), ("kdpm2", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("kdpm2-a", SD, {}), ("kdpm2-a", {**LINEAR, "use_exponential_sigmas": True}, {}),
    ("lcm", SD, {}), ("lcm", {**LINEAR, "clip_sample": True, "prediction_type": "v_prediction"}, {}),
    ("tcd", SD, {"eta": 0.3}), ("tcd", {**SD, "prediction_type": "sample"}, {}),
    ("deis", SD, {}), ("deis", {**SD, "solver_order": 1, "use_karras_sigmas": True}, {}),
    ("flow-euler", {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, {}),
    ("flow-euler", {"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True}, {}),
]
#: the schedulers whose steps reach further back than the affine map (they keep the numpy loop)
NUMPY_ONLY = [("pndm", {**SD, "skip_prk_steps": True}), ("pndm", SD), ("lms", SD), ("unipc", SD),
              ("dpm++", {**SD, "solver_order": 3}), ("deis", {**SD, "solver_order": 3}),
              ("dpm-single", SD)]


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("name, config, options", CASES)
def test_step_graph_equals_every_schedulers_numpy_step(name, config, options, guided):
    session = ort.InferenceSession(_step_graph("guided_step" if guided else "step"),
                                   providers=["CPUExecutionProvider"])
    ours, device = make_scheduler(name, config, **options), make_scheduler(name, config, **options)
    ours.set_timesteps(9)
    device.set_timesteps(9)
    assert device.affine
    rng = np.random.default_rng(0)
    variance = device.config.variance_type if device.variance_channels else None
    x = (rng.standard_normal(SHAPE) * ours.init_noise_sigma).astype(np.float32)
    x0_previous = np.zeros(SHAPE, np.float32)
    g = 4.0 if guided else 1.0
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        scaled = ours.scale_model_input(x, t)
        uncond, cond = fake_model(scaled, t, variance), fake_model(scaled[::-1].copy(), t + 1, variance)
        z = rng.standard_normal(SHAPE).astype(np.float32)
        want = ours.step(uncond + g * (cond - uncond) if guided else uncond, t, x, noise=z)

        k = device.plan(t)
        device.advance()
        last = i + 1 == len(ours.timesteps)
        scale = 1.0 if last else device.model_input_scale(ours.timesteps[i + 1])
        pred = np.concatenate([uncond, cond]) if guided else uncond
        got, x0_previous, model_input = session.run(None, {
            "prediction": pred, "sample": x, "x0_previous": x0_previous, "noise": z,
            "coefficients": coefficient_vector(k, g, scale)})
        size = max(1.0, float(np.abs(x).max()), float(np.abs(want).max()))
        worst = max(worst, float(np.abs(got - want).max()) / size)
        if not last:
            next_input = ours.scale_model_input(want, ours.timesteps[i + 1])
            np.testing.assert_allclose(model_input, np.concatenate([next_input] * (2 if guided else 1)),
                                       atol=TOLERANCE * size)
        x = want                                    # teacher forcing: both start each step from numpy's sample
    assert worst <= TOLERANCE, f"{name} {config}: worst step error {worst:.2e}"


@pytest.mark.parametrize("name, config", NUMPY_ONLY)
def test_schedulers_beyond_the_affine_map_say_so_and_keep_the_numpy_loop(name, config, tiny_ddpm):
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(9)
    assert not scheduler.affine
    x = np.zeros(SHAPE, np.float32)
    for t in scheduler.timesteps:             # third-order DPM-Solver plans its first two (lower-order) steps
        try:
            scheduler.plan(t)
        except edgegen.errors.InvalidArgumentError as exc:
            assert "has no StepCoefficients; call step" in str(exc)
            break
        x = scheduler.step(fake_model(x, t), t, x)
    else:
        raise AssertionError(f"{name} planned every step")
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    model.latents_on_device = True
    assert not model._on_device(scheduler)


def test_ddpm_with_a_learned_variance_is_not_affine_and_keeps_the_numpy_loop():
    ddpm = make_scheduler("ddpm", {**LINEAR, "variance_type": "learned_range"})
    ddpm.set_timesteps(3)
    assert not ddpm.affine
    with pytest.raises(edgegen.errors.InvalidArgumentError, match="has no StepCoefficients; call step"):
        ddpm.plan(ddpm.timesteps[0])


def test_shipped_step_graphs_are_what_the_builder_writes(tmp_path):
    step_graph = pytest.importorskip("edgegen.converters.diffusion.step_graph")
    for name, path in zip(step_graph.GRAPHS, step_graph.write(tmp_path), strict=True):
        assert path.read_bytes() == _step_graph(name), (
            f"runtimes/diffusion/graphs/{name}.onnx is stale: run python -m edgegen.converters.diffusion.step_graph")


def both_loops(model, **options) -> tuple[np.ndarray, np.ndarray]:
    """The same call through the numpy loop and the device loop (which must really run)."""
    from edgegen.runtimes.diffusion.device_loop import LatentLoop

    model.latents_on_device = False
    host = model.generate(**options)
    model.latents_on_device = True
    runs = []
    real = LatentLoop.run
    LatentLoop.run = lambda self, *a, **kw: runs.append(1) or real(self, *a, **kw)
    try:
        device = model.generate(**options)
    finally:
        model.latents_on_device = False
        LatentLoop.run = real
    assert runs == [1]
    return host, device


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "heun", "euler", "euler-a", "dpm++", "kdpm2-a"])
def test_device_loop_equals_numpy_loop_unconditional(tiny_ddpm, scheduler):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    assert model.latents_on_device is False        # off by default on the CPU
    host, device = both_loops(model, n=2, seed=3, steps=6, scheduler=scheduler)
    assert np.abs(host - device).max() <= 1e-4 * max(1.0, np.abs(host).max())
    assert np.abs(host[0] - host[1]).max() > 1e-2   # rows differ: a row mix-up would show


@pytest.mark.parametrize("scheduler", ["ddim", "heun", "euler-a", "dpm++"])
def test_device_loop_equals_numpy_loop_with_guidance_and_img2img(tiny_sd, scheduler):
    model = edgegen.load(tiny_sd[1], provider="cpu")
    host, device = both_loops(model, n=2, seed=1, steps=5, scheduler=scheduler, prompt="a red cat",
                              negative_prompt="dog", guidance=6.0)
    assert np.abs(host - device).max() <= 1e-4
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    host, device = both_loops(model, n=1, seed=1, steps=5, scheduler=scheduler, prompt="a red cat", image=image,
                              strength=0.6)
    assert np.abs(host - device).max() <= 1e-4


def test_device_loop_reports_progress_and_cancels(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    model.latents_on_device = True
    seen = []
    model.sample(1, seed=0, steps=4, scheduler="euler", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 4) for i in range(1, 5)]
    with pytest.raises(CancelledError, match="after 2 of 4 steps"):
        model.sample(1, seed=0, steps=4, scheduler="euler", progress=lambda done, total: done < 2)
    again = model.sample(1, seed=0, steps=4, scheduler="euler")     # a cancelled run leaves nothing behind
    model.latents_on_device = False
    assert np.abs(again.astype(int) - model.sample(1, seed=0, steps=4, scheduler="euler")).max() <= 1


def test_which_runs_take_the_device_loop(tiny_ddpm, monkeypatch):
    from dataclasses import replace

    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    model.latents_on_device = True
    ddim = make_scheduler("ddim", SD)
    assert model._on_device(ddim)
    assert not model._on_device(make_scheduler("ddpm", {**LINEAR, "variance_type": "learned_range"}))
    graphs = dict(model.artifact.manifest.graphs)
    denoiser = graphs["denoiser"]
    out = denoiser.outputs[0]
    for changed in (replace(out, dtype="float16"), replace(out, shape=[out.shape[0], 2 * out.shape[1], *out.shape[2:]])):
        graphs["denoiser"] = replace(denoiser, outputs=[changed])
        monkeypatch.setattr(model, "artifact", replace(model.artifact, manifest=replace(model.artifact.manifest,
                                                                                        graphs=graphs)))
        assert not model._on_device(ddim)     # float16 I/O; a variance half that only DPM-Solver reads
    assert model._on_device(make_scheduler("dpm++", {**LINEAR, "variance_type": "learned_range"}))
    model.latents_on_device = False
    assert not model._on_device(make_scheduler("dpm++", {**LINEAR, "variance_type": "learned_range"}))


def test_device_loop_explains_a_broken_free_dimension(tiny_ddpm):
    model = edgegen.load(tiny_ddpm[1], provider="cpu", free_dimensions={"denoiser.batch": 1})
    model.latents_on_device = True
    assert model.generate(1, seed=0, steps=2).shape == (1, 3, 16, 16)
    with pytest.raises(edgegen.errors.InvalidArgumentError, match="graph 'denoiser' .* was opened with "
                                                                  "free_dimensions {'batch': 1}, and input 'sample'"):
        model.generate(2, seed=0, steps=2)


def test_a_build_that_cannot_update_device_values_falls_back_to_the_numpy_loop(tiny_ddpm, monkeypatch):
    from edgegen.runtimes.diffusion import device_loop as diffusion_device

    class Frozen:
        def update_inplace(self, _):
            raise RuntimeError("Cannot update the OrtValue on this device")

    monkeypatch.setattr(diffusion_device.LatentLoop, "_put", lambda self, a: Frozen())
    model = edgegen.load(tiny_ddpm[1], provider="cpu")
    model.latents_on_device = True
    with pytest.warns(RuntimeWarning, match="cannot keep diffusion latents in cpu memory .Cannot update the OrtValue "
                                            "on this device.; sampling keeps them on the host"):
        got = model.generate(1, seed=0, steps=2)
    assert model.latents_on_device is False
    np.testing.assert_array_equal(got, model.generate(1, seed=0, steps=2))
