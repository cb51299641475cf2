"""Continuous batching (runtimes/lm/batch_engine.py): runs that join a running merged batch at different steps,
with prompts of different lengths, several rows, their own settings (greedy with penalties, seeded sampling,
logprobs), each get the tokens (and logprobs) they get run alone; the batch stays as long as its longest live
row; GroupQueryAttention artifacts (unpadded rows) are not merged."""

from __future__ import annotations

import numpy as np
import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.runtimes.lm.batch_engine import MergedBatch
from tests_support import write_tiny_hf_lm

pytest.importorskip("torch")

GREEDY = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=14, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("merged-gpt2")
    art = edgegen.convert(write_tiny_hf_lm(root / "hf", "gpt2", n_positions=192), root / "art", optimize=False)
    return edgegen.load(art, provider="cpu", threads=1)


def alone(lm, prompt: str, settings: GenerationSettings, n: int = 1):
    gen = lm.generator(settings, batch=n)
    gen.append_tokens([lm.encode(prompt)] * n)
    while not gen.is_done():
        gen.generate_next_token()
    return [gen.tokens(b) for b in range(n)], gen.logprobs


#: (step it joins at, prompt, settings, rows)
RUNS = [
    (0, "def fib(n):", GREEDY, 1),
    (0, "a much longer prompt " * 6, GenerationSettings(temperature=0, max_new_tokens=6, ignore_eos=True), 1),
    (2, "x", GREEDY, 2),
    (3, "seeded sampling at", GenerationSettings(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10,
                                                 ignore_eos=True), 1),
    (5, "with logprobs " * 3, GenerationSettings(temperature=0, presence_penalty=0.3, max_new_tokens=9,
                                                 ignore_eos=True, logprobs=True, top_logprobs=3), 1),
    (9, "late", GREEDY, 1),
]


def test_runs_joining_a_merged_batch_get_what_they_get_alone(lm) -> None:
    batch = MergedBatch(lm)
    gens: list = [None] * len(RUNS)
    step, widths = 0, []
    while step < 100 and (len(batch) or any(g is None for g in gens)):
        for k, (at, prompt, settings, n) in enumerate(RUNS):
            if at == step:
                gens[k] = gen = lm.generator(settings, batch=n)
                gen.append_tokens([lm.encode(prompt)] * n)
                gen.generate_next_token()                 # its prompt, on its own
                batch.add(gen)
        runs_before = batch.steps
        batch.step()
        assert batch.steps == runs_before + (1 if len(batch) else 0)       # one graph run for every member
        for gen in batch.members:
            gen.generate_next_token()
        batch.remove_done()
        widths.append(batch.width)
        step += 1
    assert all(g is not None and g.is_done() for g in gens)
    assert batch.peak_members == 5 and batch.peak_rows == 6          # steps 9-10: all but the long prompt
    for (_, prompt, settings, n), gen in zip(RUNS, gens):
        tokens, logprobs = alone(lm, prompt, settings, n)
        assert [gen.tokens(b) for b in range(n)] == tokens, prompt
        assert gen.finish_reasons == ["length"] * n
        if logprobs is not None:
            for got, want in zip(gen.logprobs[0], logprobs[0]):
                assert len(gen.logprobs[0]) == 9 and got.token_id == want.token_id and got.logprob == pytest.approx(want.logprob, abs=1e-4)
                assert [t for t, _ in got.top] == [t for t, _ in want.top] and len(got.top) == 3
    # the long prompt's columns were cut once it left: the batch is as long as its longest live row
    long_ids = len(lm.encode(RUNS[1][1]))
    assert max(widths) >= long_ids and widths[-2] < long_ids
    assert len(batch) == 0 and batch.width == 0


def test_a_run_must_have_stepped_alone_first(lm) -> None:
    gen = lm.generator(GREEDY)
    gen.append_tokens([lm.encode("not yet")])
    with pytest.raises(ValueError, match="one step on its own"):
        MergedBatch(lm).add(gen)


def test_group_query_attention_artifacts_are_not_merged(tmp_path) -> None:
    hf = write_tiny_hf_lm(tmp_path / "hf", "llama", hidden_size=64, max_position_embeddings=64)
    gqa = edgegen.load(edgegen.convert(hf, tmp_path / "art", attention="gqa"), provider="cpu")
    assert gqa.sampler.padding == "none" and not MergedBatch.supports(gqa)
    with pytest.raises(ValueError, match="skips left padding"):
        MergedBatch(gqa)
    assert not np.any([MergedBatch.supports(object())])
