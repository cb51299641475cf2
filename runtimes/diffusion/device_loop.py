"""The diffusion loop with the latents kept on the execution provider's device (CUDA, DirectML).

The numpy loop in :mod:`edgegen.runtimes.diffusion.diffusion` copies the latents to the GPU and the
denoiser's output back to the host at every step, and runs guidance and the scheduler on the
CPU.  This loop keeps them in device memory from the first step to the last: the denoiser and a
small step graph (:mod:`edgegen.converters.diffusion.step_graph`: guidance, the scheduler's affine update,
the next input's scaling) run through ONNX Runtime IO bindings over buffers allocated once per
call, and per step only the timestep, the scheduler's 11 coefficients and, for the stochastic
schedulers, the step's noise go to the device.  The noise is still drawn on the host from the
seeded generator in the numpy loop's order, so a seed gives the same images on either loop (to
float32 rounding: the device computes the update in float32, numpy in float64).

Every buffer is allocated once per call (the latents and x0 ping-pong between two buffers each).

It serves every scheduler whose steps are affine (``Scheduler.affine``: DDPM, DDIM, Euler, Euler ancestral,
Heun, KDPM2 (+ ancestral), LCM, TCD, DPM-Solver and DEIS up to second order; the two-evaluation ones carry the
first evaluation's x0 as ``x0_previous``).  PNDM, LMS, UniPC, DPM-Solver singlestep, third-order DPM-Solver and
DEIS and DDPM with a learned variance reach further back than the affine map and keep the numpy loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from typing import Any

import numpy as np
import onnxruntime as ort

from edgegen.errors import CancelledError, ProviderError
from edgegen.runtimes.diffusion.schedulers.base import Scheduler, StepCoefficients, take_noise
from edgegen.runtimes.session import ORT_DEVICES, SessionConfig, create_session

__all__ = ["LatentLoop", "coefficient_vector"]

N_COEFFICIENTS = 11


def coefficient_vector(k: StepCoefficients, guidance: float, input_scale: float) -> np.ndarray:
    """float32 [11] in the step graph's order (``edgegen.converters.diffusion.step_graph.COEFFICIENTS``)."""
    low, high = (-np.inf, np.inf) if k.clip is None else (-k.clip, k.clip)
    return np.array([guidance, k.x0_x, k.x0_out, low, high, k.x, k.out, k.x0, k.history,
                     0.0 if k.noise is None else k.noise, input_scale], dtype=np.float32)


def _step_graph(name: str) -> bytes:
    return resources.files("edgegen.runtimes.diffusion").joinpath("graphs", f"{name}.onnx").read_bytes()


class LatentLoop:
    """Runs a sampling loop on the device of ``provider`` with the ``denoiser`` session's provider."""

    def __init__(self, denoiser: ort.InferenceSession, provider: str, config: SessionConfig) -> None:
        self.denoiser, self.provider = denoiser, provider
        self.device, self.device_id = ORT_DEVICES[provider], config.device_id
        # one thread: a few elementwise ops on latents (a pool of spinning threads beside the denoiser's costs more);
        # the user's free-dimension overrides name the artifact's graphs, not these
        internal = replace(config, threads=1, free_dimensions={})
        self._steps = {guided: create_session(_step_graph(name), internal, provider,  # type: ignore[arg-type]
                                              label=f"the diffusion runtime's {name} graph", memory_pattern=False,
                                              role=name)
                       for guided, name in ((False, "step"), (True, "guided_step"))}
        self._out_name = denoiser.get_outputs()[0].name
        try:          # what the loop does to device memory, once (some builds' DirectML values lack update_inplace)
            probe = self._put(np.zeros(2, np.float32))
            probe.update_inplace(np.ones(2, np.float32))
            ok = np.array_equal(probe.numpy(), np.ones(2, np.float32))
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own pybind types)
            ok, why = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        else:
            why = "a value written in place read back wrong"
        if not ok:
            raise ProviderError(f"onnxruntime {ort.__version__} cannot keep diffusion latents in {provider} memory "
                                f"({why}); sampling keeps them on the host instead (latents_on_device = False)")

    def _put(self, array: np.ndarray) -> ort.OrtValue:
        # a copy: on the CPU an OrtValue borrows the array's memory, and two buffers must never share it
        return ort.OrtValue.ortvalue_from_numpy(np.array(array, copy=True, order="C"), self.device, self.device_id)

    def _empty(self, shape: tuple[int, ...]) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)

    def run(self, scheduler: Scheduler, timesteps: np.ndarray, latents: np.ndarray, *, guided: bool,
            guidance: float, cond: dict[str, np.ndarray], rng: np.random.Generator,
            progress: Callable[[int, int], Any] | None) -> np.ndarray:
        """``len(timesteps)`` steps from ``latents`` [N, C, h, w] (host); the final latents on the host.

        ``cond``: the denoiser's conditioning inputs by name, for all its rows (uncond rows first under guidance).
        """
        n, total = latents.shape[0], len(timesteps)
        rows = 2 * n if guided else n
        first_in = scheduler.scale_model_input(latents, timesteps[0])
        model_input = self._put(np.concatenate([first_in, first_in]) if guided else first_in)    # [M, C, h, w]
        x = [self._put(latents), self._empty(latents.shape)]                                      # ping-pong
        x0 = [self._put(np.zeros_like(latents)), self._empty(latents.shape)]
        noise, zeros = self._empty(latents.shape), None       # zeros: the noise input of a step that draws none
        coefficients = self._put(np.zeros(N_COEFFICIENTS, np.float32))
        timestep = self._put(np.full((rows,), timesteps[0], np.float32))

        denoise = self.denoiser.io_binding()
        denoise.bind_ortvalue_input("sample", model_input)
        denoise.bind_ortvalue_input("timestep", timestep)
        # every OrtValue bound stays referenced here until the loop ends: a CPU OrtValue made from numpy
        # borrows the array's memory, and a binding does not keep the Python object alive
        cond_values = {name: self._put(value) for name, value in cond.items()}
        for name, value in cond_values.items():
            denoise.bind_ortvalue_input(name, value)
        denoise.bind_output(self._out_name, self.device, self.device_id)
        step = self._steps[guided].io_binding()
        step.bind_ortvalue_output("model_input", model_input)
        prediction = None
        cur = 0
        for i, t in enumerate(timesteps):
            self.denoiser.run_with_iobinding(denoise)
            if prediction is None:                      # ORT allocated it on the first run; reuse it from now on
                prediction = denoise.get_outputs()[0]
                denoise.bind_ortvalue_output(self._out_name, prediction)
                step.bind_ortvalue_input("prediction", prediction)
            k = scheduler.plan(t)
            scheduler.advance()
            last = i + 1 == total
            scale = 1.0 if last else scheduler.model_input_scale(timesteps[i + 1])
            if k.noise is not None:
                noise.update_inplace(take_noise(latents.shape, None, rng, scheduler.name, t))      # float32
            coefficients.update_inplace(coefficient_vector(k, guidance, scale))                 # float32 [11]
            step.bind_ortvalue_input("sample", x[cur])
            step.bind_ortvalue_input("x0_previous", x0[cur])
            if k.noise is None and zeros is None:
                zeros = self._put(np.zeros_like(latents))
            step.bind_ortvalue_input("noise", noise if k.noise is not None else zeros)
            step.bind_ortvalue_input("coefficients", coefficients)
            step.bind_ortvalue_output("next_sample", x[1 - cur])
            step.bind_ortvalue_output("x0", x0[1 - cur])
            self._steps[guided].run_with_iobinding(step)
            cur = 1 - cur
            if not last:
                timestep.update_inplace(np.full((rows,), timesteps[i + 1], np.float32))
            if progress is not None and progress(i + 1, total) is False:
                raise CancelledError(f"sampling cancelled by the progress callback after {i + 1} of {total} steps")
        return x[cur].numpy().copy()        # on the CPU, numpy() may share the buffer freed with this frame
