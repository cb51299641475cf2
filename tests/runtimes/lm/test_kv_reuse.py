"""KV reuse: a run resumed from another run's cache (a chat's next turn, the prefix cache) gives what a cold
run gives, on both cache layouts (``grow``: Optimum's GPT-2; ``shared``: a GroupQueryAttention Llama), including
a rollback when the new sequence leaves the cached one part-way, and the prefix cache stays bounded and intact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.lm.kv_cache import MIN_PREFIX_TOKENS, KVState, PrefixCache
from tests_support import convert_tiny_cache_lm

pytest.importorskip("torch")

GREEDY = GenerationSettings(temperature=0, max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    art, _hf = convert_tiny_cache_lm(tmp_path_factory.mktemp(request.param), request.param)
    model = edgegen.load(art, provider="cpu")
    assert model.sampler.kv_buffer == ("shared" if request.param == "llama-gqa" else "grow")
    return model


def run(lm, ids: list[int], state: KVState | None = None, copy: bool = False, settings=GREEDY):
    """(tokens, first-step logits, the run's final state, reused count)."""
    gen = lm.generator(settings)
    rest = ids if state is None else gen.resume(state, ids, copy=copy)
    gen.append_tokens([rest])
    first = gen.next_logits().copy()
    while not gen.is_done():
        gen.generate_next_token()
    return gen.tokens(0), first, gen.state(), gen.reused_tokens


def ids_of(lm, text: str) -> list[int]:
    return lm.encode(text)


def test_a_resumed_run_equals_a_cold_run(lm) -> None:
    turn1 = ids_of(lm, "def fibonacci(n):\n    if n < 2:")
    tokens1, _, state, _ = run(lm, turn1)
    assert state is not None and state.ids == tuple(turn1 + tokens1[:-1])   # the last sampled token has not run
    follow = turn1 + tokens1 + ids_of(lm, " return n\n    return")
    cold, cold_logits, _, _ = run(lm, follow)
    warm, warm_logits, _, reused = run(lm, follow, state)
    assert reused == len(turn1) + len(tokens1) - 1
    assert warm == cold
    np.testing.assert_allclose(warm_logits, cold_logits, atol=1e-4 * np.abs(cold_logits).max())


def test_a_sequence_that_leaves_the_cache_part_way_rolls_back(lm) -> None:
    shared = ids_of(lm, "class Stack:\n    def push(self, x):")
    _, _, state, _ = run(lm, shared + ids_of(lm, " self.items.append(x)"))
    other = shared + ids_of(lm, " return None  # nothing")
    cold, cold_logits, _, _ = run(lm, other)
    warm, warm_logits, _, reused = run(lm, other, state)
    assert reused == state.common_prefix(other) >= len(shared) - 1   # a merge at the seam may cost a token
    assert reused < len(other)
    assert warm == cold
    np.testing.assert_allclose(warm_logits, cold_logits, atol=1e-4 * np.abs(cold_logits).max())


def test_the_same_sequence_again_runs_its_last_token(lm) -> None:
    _, _, state, _ = run(lm, ids_of(lm, "import os\nimport sys\n"))
    same = list(state.ids)
    warm, _, _, reused = run(lm, same, state)
    assert reused == len(same) - 1          # the next logits come from a token that runs
    assert warm == run(lm, same)[0]


def test_a_copied_state_is_left_as_it_was(lm) -> None:
    """The prefix cache hands out copies: a run from one must not write the cached buffer (a shared
    GroupQueryAttention buffer is written in place)."""
    base = ids_of(lm, "for i in range(10):\n    print(i)\n")
    _, _, state, _ = run(lm, base)
    before = [v.numpy().copy() for v in state.past]
    run(lm, list(state.ids[:-3]) + ids_of(lm, "while True: pass"), state, copy=True)
    for old, value in zip(before, state.past):
        np.testing.assert_array_equal(old, value.numpy())
    again, _, _, _ = run(lm, list(state.ids) + ids_of(lm, " x"), state, copy=True)
    assert again == run(lm, list(state.ids) + ids_of(lm, " x"))[0]


def test_sampled_runs_resume_identically(lm) -> None:
    sampled = GenerationSettings(temperature=0.9, top_k=20, max_new_tokens=10, seed=7, ignore_eos=True)
    head = ids_of(lm, "def add(a, b):")
    _, _, state, _ = run(lm, head, settings=sampled)
    follow = head + ids_of(lm, " return a + b\n\ndef sub(a, b):")
    assert run(lm, follow, state, settings=sampled)[0] == run(lm, follow, settings=sampled)[0]


def test_resume_needs_a_fresh_batch_one_run(lm) -> None:
    ids = ids_of(lm, "a = 1\nb = 2\n")
    _, _, state, _ = run(lm, ids)
    gen = lm.generator(GREEDY, batch=2)
    with pytest.raises(InvalidArgumentError, match="batch-1"):
        gen.resume(state, ids, copy=True)


def test_prefix_cache_finds_the_longest_prefix_and_stays_bounded(lm) -> None:
    system = ids_of(lm, "# You are a careful Python assistant. Answer in code.\n")
    assert len(system) >= MIN_PREFIX_TOKENS
    _, _, b, _ = run(lm, system)
    _, _, a, _ = run(lm, list(b.ids) + ids_of(lm, "def a(): pass"))
    cache = PrefixCache(max_bytes=a.nbytes + b.nbytes)
    cache.put(b)
    cache.put(a)                       # b is a prefix of a: dropped, a says all it said
    assert len(cache) == 1
    found, n = cache.best(system + ids_of(lm, "def b(): pass"))
    assert found is a and n >= len(system)
    assert cache.best(ids_of(lm, "zzz qqq"))[0] is None
    small = PrefixCache(max_bytes=a.nbytes)
    _, _, c, _ = run(lm, ids_of(lm, "while x:\n    x -= 1\n    y += 2\n"))
    small.put(a)
    small.put(c)                       # over the bound: the least recently used goes
    assert len(small) == 1 and small.nbytes <= small.max_bytes
    with pytest.raises(InvalidArgumentError, match="max_bytes"):
        PrefixCache(max_bytes=-1)


def test_no_state_for_a_batch(lm) -> None:
    gen = lm.generator(GREEDY, batch=2)
    gen.append_tokens([ids_of(lm, "x = 1"), ids_of(lm, "y = 22")])
    gen.generate_next_token()
    assert gen.state() is None
