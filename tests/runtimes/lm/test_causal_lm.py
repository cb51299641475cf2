"""The causal-LM runtime's loop: settings, stops, seeds, context bounds, streaming, threads, cancellation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen.errors import CancelledError, ContextOverflowError, InvalidArgumentError
from edgegen import GenerationSettings

SAMPLED = GenerationSettings(temperature=1.0, top_k=50, max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(tiny_lm_artifact: Path):
    return edgegen.load(tiny_lm_artifact, provider="cpu")


def test_generate_returns_the_decoded_continuation(lm) -> None:
    done = lm.complete(["def fibonacci(n):"], GenerationSettings(temperature=0, max_new_tokens=10, ignore_eos=True))[0]
    assert len(done.token_ids) == 10 and done.finish_reason == "length"
    assert done.text == lm.decode(done.token_ids)
    assert lm.generate("def fibonacci(n):", temperature=0, max_new_tokens=10) == done.text or done.token_ids[0] == 0


def test_same_seed_same_text_and_different_seed_differs(lm) -> None:
    a = lm.complete(["The quick"], GenerationSettings(seed=7).over(SAMPLED))[0].token_ids
    b = lm.complete(["The quick"], GenerationSettings(seed=7).over(SAMPLED))[0].token_ids
    c = lm.complete(["The quick"], GenerationSettings(seed=8).over(SAMPLED))[0].token_ids
    assert a == b and a != c


def test_sampled_batch_rows_are_reproducible_per_seed(lm) -> None:
    s = GenerationSettings(seed=3).over(SAMPLED)
    assert [c.token_ids for c in lm.complete(["ab", "The quick brown"], s)] == \
           [c.token_ids for c in lm.complete(["ab", "The quick brown"], s)]


def test_stop_token_id_ends_generation_and_is_not_in_the_text(lm) -> None:
    free = lm.complete(["The quick"], GenerationSettings(temperature=0, max_new_tokens=16, ignore_eos=True))[0]
    stop_id = free.token_ids[3]
    first = free.token_ids.index(stop_id)
    got = lm.complete(["The quick"], GenerationSettings(temperature=0, max_new_tokens=16, ignore_eos=True,
                                                       stop_token_ids=(stop_id,)))[0]
    assert got.finish_reason == "stop" and got.token_ids == free.token_ids[:first + 1]
    assert got.text == lm.decode(free.token_ids[:first])


def test_stop_string_cuts_the_text_before_it(lm) -> None:
    free = lm.complete(["The quick"], GenerationSettings(temperature=0, max_new_tokens=16, ignore_eos=True))[0]
    stop = free.text[4:6]
    assert stop
    got = lm.complete(["The quick"], GenerationSettings(temperature=0, max_new_tokens=16, ignore_eos=True,
                                                       stop=(stop,)))[0]
    assert got.finish_reason == "stop" and got.text == free.text[:free.text.index(stop)]


def test_stream_pieces_join_to_the_generated_text_and_never_split_a_character(lm) -> None:
    settings = GenerationSettings(seed=0).over(SAMPLED)
    pieces = list(lm.stream("héllo wörld 日本", settings))
    whole = lm.complete(["héllo wörld 日本"], settings)[0].text
    assert "".join(pieces) == whole
    for piece in pieces[:-1]:  # only the final flush may carry U+FFFD for a truly broken byte sequence
        assert "\ufffd" not in piece or "\ufffd" in whole
        piece.encode("utf-8")  # no lone surrogates


def test_prompt_longer_than_the_context_is_an_error_unless_truncation_is_asked(lm) -> None:
    long = "word " * 400
    with pytest.raises(ContextOverflowError, match="context is 96.*truncate"):
        lm.generate(long)
    got = lm.complete([long], GenerationSettings(truncate_prompt=True, max_new_tokens=8, temperature=0,
                                                 ignore_eos=True))[0]
    assert got.prompt_tokens == 96 - 8 and len(got.token_ids) == 8


def test_max_new_tokens_is_bounded_by_the_context(lm) -> None:
    prompt = "word " * 10
    n = len(lm.encode(prompt))
    assert 10 < n < 90
    got = lm.complete([prompt], GenerationSettings(temperature=0, max_new_tokens=500, ignore_eos=True))[0]
    assert len(got.token_ids) == 96 - n and got.finish_reason == "length"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"seed": -1}, "seed"), ({"stop": ("",)}, "stop"),
])
def test_bad_settings_are_clear_errors(lm, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        lm.generate("hello", GenerationSettings(**kwargs))


@pytest.mark.parametrize("prompt", ["", None])
def test_empty_or_missing_prompt_is_a_clear_error(lm, prompt) -> None:
    with pytest.raises(InvalidArgumentError, match="prompt"):
        lm.generate(prompt)


def test_step_api_matches_generate(lm) -> None:
    settings = GenerationSettings(temperature=0, max_new_tokens=6, ignore_eos=True)
    gen = lm.generator(settings)
    gen.append_tokens([lm.encode("def f")])
    while not gen.is_done():
        gen.generate_next_token()
    assert tuple(gen.tokens(0)) == lm.complete(["def f"], settings)[0].token_ids
    with pytest.raises(InvalidArgumentError, match="done"):
        gen.generate_next_token()


def test_threads_sharing_one_model_each_get_their_own_result(lm) -> None:
    prompts = ["def f", "The quick brown", "x", "Once upon"] * 3
    settings = [GenerationSettings(seed=i).over(SAMPLED) for i in range(len(prompts))]
    alone = [lm.complete([p], s)[0].token_ids for p, s in zip(prompts, settings)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda ps: lm.complete([ps[0]], ps[1])[0].token_ids, zip(prompts, settings)))
    assert together == alone


def test_cancel_from_another_thread_stops_within_one_step(lm) -> None:
    cancel = threading.Event()
    produced = []
    settings = GenerationSettings(max_new_tokens=80, ignore_eos=True).over(SAMPLED)
    with pytest.raises(CancelledError):
        for piece in lm.stream("The quick", GenerationSettings(max_new_tokens=80).over(settings), cancel=cancel):
            produced.append(piece)
            if len(produced) == 3:
                threading.Thread(target=cancel.set).start()
                threading.Event().wait(0.05)
    assert 3 <= len(produced) <= 4


def test_logits_are_float32_vectors_of_the_vocab(lm) -> None:
    gen = lm.generator(GenerationSettings(temperature=0), batch=2)
    gen.append_tokens([lm.encode("hi"), lm.encode("hello there")])
    logits = gen.next_logits()
    assert logits.shape == (2, lm.graph.vocab_size) and logits.dtype == np.float32


def test_a_request_that_cannot_fit_in_memory_fails_fast_with_the_estimate(lm, monkeypatch) -> None:
    monkeypatch.setattr("edgegen.runtimes.memory.available_bytes", lambda: 200_000)
    with pytest.raises(InvalidArgumentError, match=r"batch of 8 .* needs about .* available; lower"):
        lm.complete(["hello"] * 8, GenerationSettings(max_new_tokens=80))
    monkeypatch.setattr("edgegen.runtimes.memory.available_bytes", lambda: 1 << 34)
    assert len(lm.complete(["hello"] * 8, GenerationSettings(max_new_tokens=2, ignore_eos=True))) == 8


def test_a_fixed_batch_size_serves_that_batch_and_names_itself_otherwise(tiny_lm_artifact: Path, lm) -> None:
    greedy = GenerationSettings(temperature=0, max_new_tokens=6, ignore_eos=True)
    fixed = edgegen.load(tiny_lm_artifact, provider="cpu", free_dimensions={"batch_size": 1})
    assert fixed.complete(["def f"], greedy)[0].token_ids == lm.complete(["def f"], greedy)[0].token_ids
    with pytest.raises(InvalidArgumentError, match="opened with free_dimensions {'batch_size': 1}, and input "
                                                   "'input_ids' breaks them"):
        fixed.complete(["def f", "class A"], greedy)      # through IO binding, as every decode step runs
