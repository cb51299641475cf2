"""The diffusion loop on GPU providers: runs where the provider is present, skips with the reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

import edgegen
from edgegen.runtimes.session import available_providers

pytestmark = pytest.mark.gpu
PROVIDERS = [pytest.param(p, marks=pytest.mark.skipif(
    p not in available_providers(),
    reason=f"{p} is not offered by this onnxruntime build ({', '.join(available_providers())})")) for p in ("cuda", "dml")]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("scheduler", ["ddim", "euler-a", "dpm++", "heun", "pndm"])   # pndm: the numpy loop on a GPU
def test_gpu_device_loop_equals_cpu_numpy_loop(tiny_sd, provider, scheduler):
    options = dict(n=2, seed=1, steps=5, scheduler=scheduler, prompt="a red cat", negative_prompt="dog", guidance=6.0)
    cpu = edgegen.load(tiny_sd[1], provider="cpu").generate(**options)
    model = edgegen.load(tiny_sd[1], provider=provider)
    assert model.latents_on_device                        # the default on a GPU provider (pndm: not affine,
    gpu = model.generate(**options)                       # so its run keeps the latents on the host)
    # fp32 graphs; GPU kernels (TF32 convolutions on Ampere+, other reduction orders) round differently
    assert np.abs(gpu - cpu).max() <= 2e-2
    model.latents_on_device = False
    assert np.abs(model.generate(**options) - gpu).max() <= 1e-3
