"""The causal-LM loop on GPU providers: runs where the provider is present, skips with the reason elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.runtimes.session import available_providers

pytestmark = pytest.mark.gpu
GREEDY = GenerationSettings(temperature=0, max_new_tokens=24, ignore_eos=True)


@pytest.mark.parametrize("provider", ["cuda", "dml"])
def test_gpu_greedy_tokens_equal_cpu_and_cache_stays_on_device(tiny_lm_artifact: Path, provider: str) -> None:
    if provider not in available_providers():
        pytest.skip(f"{provider} is not offered by this onnxruntime build ({', '.join(available_providers())})")
    cpu = edgegen.load(tiny_lm_artifact, provider="cpu").complete(["def f", "The quick brown"], GREEDY)
    lm = edgegen.load(tiny_lm_artifact, provider=provider)
    assert lm.provider == provider
    gpu = lm.complete(["def f", "The quick brown"], GREEDY)
    assert [c.token_ids for c in gpu] == [c.token_ids for c in cpu]
    if provider == "cuda":
        gen = lm.generator(GREEDY)
        gen.append_tokens([lm.encode("def f")])
        gen.generate_next_token()
        assert all(value.device_name().lower() == "cuda" for value in gen._past)
