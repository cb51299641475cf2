"""Prompt-lookup speculative decoding (runtimes/lm/speculative.py) gives exactly what plain decoding gives: the same
greedy tokens (and transformers' own greedy tokens), the same seeded samples with temperature, top-k, top-p, min-p
and penalties, the same cuts at stop strings, stop ids and max_new_tokens, logprobs within float rounding, on
both cache layouts (``grow``: Optimum's GPT-2; ``shared``: a GroupQueryAttention Llama), while drafts are really
accepted (a test fails if speculation silently does nothing) and rejected ones roll the cache back.

The models are random-weight tiny ones: greedy decoding falls into loops that prompt lookup drafts well, and
sampling at temperature ~1 keeps rejecting drafts, so both halves of the window logic run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.lm.batch_engine import MergedBatch
from edgegen.runtimes.lm import speculative
from edgegen.runtimes.lm.speculative import NgramGenerator, lookup_draft
from tests_support import convert_tiny_cache_lm, run_cli, torch_greedy

pytest.importorskip("torch")

NGRAM = GenerationSettings(speculative="ngram")
GREEDY = GenerationSettings(temperature=0, max_new_tokens=48, ignore_eos=True)
#: Seeded samplers: every processor in play at once, and a run of penalties with min-p.
#: (Temperature 0.5: the random Llama's samples repeat the context rarely; over 8 seeds some drafts are accepted.)
SAMPLERS = [
    GenerationSettings(temperature=0.5, top_k=40, top_p=0.9, repetition_penalty=1.1, max_new_tokens=48,
                       ignore_eos=True),
    GenerationSettings(temperature=0.5, min_p=0.05, presence_penalty=0.2, frequency_penalty=0.1, max_new_tokens=48,
                       ignore_eos=True),
]
#: Code that repeats itself, as an edit of a file does.
PROMPT = ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
          "def fibonacci(n):\n    if n < 2:")


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(loaded artifact, its Hugging Face directory)."""
    art, hf = convert_tiny_cache_lm(tmp_path_factory.mktemp(request.param), request.param)
    lm = edgegen.load(art, provider="cpu", threads=1)
    assert lm.sampler.kv_buffer == ("shared" if request.param == "llama-gqa" else "grow")
    return lm, hf


def run(lm, ids: list[int], settings: GenerationSettings, watch: bool = False):
    """(tokens, the generator, per token: rejections so far) for one batch-1 run."""
    gen = lm.generator(settings)
    gen.append_tokens([ids])
    seen = []
    while not gen.is_done():
        gen.generate_next_token()
        seen.append(getattr(gen, "rejections", 0))
    return gen.tokens(0), gen, seen


# -- the draft ----------------------------------------------------------------------------------------------------
def reference_draft(history: list[int], length: int, max_ngram: int = 3) -> list[int]:
    """lookup_draft's rule in plain Python loops."""
    for n in range(min(max_ngram, len(history) - 1), 0, -1):
        tail = history[-n:]
        starts = [s for s in range(len(history) - n) if history[s:s + n] == tail]
        if starts:
            full = [s for s in starts if s + n + length <= len(history)]
            begin = (full[-1] if full else starts[0]) + n
            return history[begin:begin + length]
    return []


def test_lookup_draft_matches_a_plain_python_lookup() -> None:
    rng = np.random.default_rng(0)
    cases = [[5, 6, 7, 8, 9, 5, 6, 7], [1, 1, 1, 1], [3], [1, 2, 3], [4, 2, 9, 4, 2, 7, 4, 2]]
    cases += [rng.integers(0, 6, size=int(rng.integers(1, 40))).tolist() for _ in range(300)]
    for history in cases:
        for length in (1, 3, 8):
            got = lookup_draft(np.asarray(history, np.int64), length).tolist()
            assert got == reference_draft(history, length), (history, length)
    # the longest n-gram wins over a more recent shorter one; a run of one token drafts more of itself
    assert lookup_draft(np.array([1, 2, 3, 9, 9, 2, 3, 5, 3, 1, 2, 3]), 2).tolist() == [9, 9]
    assert lookup_draft(np.array([7, 7, 7, 7, 7, 7]), 4).tolist() == [7, 7, 7]


# -- same tokens as plain decoding ----------------------------------------------------------------------------------
def test_greedy_tokens_equal_plain_decoding_and_transformers(model) -> None:
    lm, hf = model
    ids = lm.encode(PROMPT)
    plain, _, _ = run(lm, ids, GREEDY)
    fast, gen, _ = run(lm, ids, NGRAM.over(GREEDY))
    assert isinstance(gen, NgramGenerator)
    assert fast == plain
    assert fast == torch_greedy(hf, ids, len(fast))
    assert gen.accepted >= len(fast) // 4, (gen.windows, gen.drafted, gen.accepted)   # it did speculate


@pytest.mark.parametrize("sampler", SAMPLERS, ids=["topk-topp-repetition", "minp-presence-frequency"])
def test_seeded_samples_equal_plain_decoding_and_rejected_drafts_roll_back(model, sampler) -> None:
    lm, _ = model
    ids = lm.encode(PROMPT)
    accepted = rejected_early = 0
    for seed in range(8):
        settings = GenerationSettings(seed=seed).over(sampler)
        plain, _, _ = run(lm, ids, settings)
        fast, gen, seen = run(lm, ids, NGRAM.over(settings))
        assert fast == plain, seed
        accepted += gen.accepted
        # a rejection with tokens after it: decoding went on from the rolled-back cache
        rejected_early += bool(seen and seen[len(seen) // 2] > 0)
    assert accepted > 0 and rejected_early > 0, (accepted, rejected_early)


def test_a_compacted_cache_decodes_on_as_plain_decoding(model, monkeypatch) -> None:
    """A growing cache masks rejected positions; compacting it after every rejection changes no token."""
    lm, _ = model
    if lm.sampler.kv_buffer == "shared":
        pytest.skip("a shared buffer is never compacted: its mask says how much is in use")
    monkeypatch.setattr(speculative, "COMPACT_AFTER", 0)
    monkeypatch.setattr(speculative, "COMPACT_SHARE", 0.0)
    ids = lm.encode(PROMPT)
    settings = GenerationSettings(seed=1).over(SAMPLERS[0])
    plain, _, _ = run(lm, ids, settings)
    fast, gen, _ = run(lm, ids, NGRAM.over(settings))
    assert fast == plain and gen.compactions > 0 and gen.rejections > 0


def test_logprobs_equal_plain_decoding_within_float_rounding(model) -> None:
    lm, _ = model
    settings = GenerationSettings(temperature=0, logprobs=True, top_logprobs=3, max_new_tokens=24, ignore_eos=True)
    prompt = [PROMPT]
    plain = lm.complete(prompt, settings)[0]
    fast = lm.complete(prompt, NGRAM.over(settings))[0]
    assert fast.token_ids == plain.token_ids
    assert [e.token_id for e in fast.logprobs] == [e.token_id for e in plain.logprobs]
    # a window's logits come from one multi-token run: the same up to float32 rounding of the graph's sums
    np.testing.assert_allclose([e.logprob for e in fast.logprobs], [e.logprob for e in plain.logprobs], atol=1e-4)


# -- where a run ends ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [1, 2, 3, 7, 20])
def test_max_new_tokens_cuts_where_plain_decoding_does(model, budget) -> None:
    lm, _ = model
    settings = GenerationSettings(max_new_tokens=budget).over(GREEDY)
    plain = lm.complete([PROMPT], settings)[0]
    fast = lm.complete([PROMPT], NGRAM.over(settings))[0]
    assert fast.token_ids == plain.token_ids and len(fast.token_ids) == budget
    assert (fast.text, fast.finish_reason) == (plain.text, plain.finish_reason) == (plain.text, "length")


def test_context_bounds_the_drafts(model) -> None:
    lm, _ = model
    base = lm.encode(PROMPT)
    loop = base + run(lm, base, GREEDY)[0]     # a context that greedy continues by looping: drafts get accepted
    ids = (base * 20)[:lm.sampler.context_length - 5 - len(loop)] + loop   # room for 5 tokens only
    plain, _, _ = run(lm, ids, GREEDY)
    fast, gen, _ = run(lm, ids, NGRAM.over(GREEDY))
    assert fast == plain and len(fast) == 5 and gen.windows > 0


def test_stop_strings_and_stop_ids_cut_where_plain_decoding_does(model) -> None:
    lm, _ = model
    free = lm.complete([PROMPT], GREEDY)[0]
    tokens = free.token_ids
    cuts = [GenerationSettings(stop_token_ids=(tokens[k],)) for k in (1, len(tokens) // 2)]
    cuts += [GenerationSettings(stop=(free.text[k:k + 3],)) for k in (2, len(free.text) // 2)
             if free.text[k:k + 3].strip()]
    for cut in cuts:
        settings = cut.over(GREEDY)
        plain = lm.complete([PROMPT], settings)[0]
        fast = lm.complete([PROMPT], NGRAM.over(settings))[0]
        assert (fast.text, fast.token_ids, fast.finish_reason) == (plain.text, plain.token_ids, plain.finish_reason)
        assert plain.finish_reason == "stop"


def test_a_speculative_runs_cache_resumes_like_a_plain_one(model) -> None:
    """A chat keeps a finished run's cache (state()); one that ended inside a window holds extra positions."""
    lm, _ = model
    ids = lm.encode(PROMPT)
    settings = GenerationSettings(max_new_tokens=9).over(GREEDY)
    tokens, gen, _ = run(lm, ids, NGRAM.over(settings))
    state = gen.state()
    assert state is not None and state.ids[:len(ids)] == tuple(ids)
    follow = ids + tokens + lm.encode(" return n\n")
    cold, _, _ = run(lm, follow, GREEDY)
    warm = lm.generator(GREEDY)
    warm.append_tokens([warm.resume(state, follow, copy=True)])
    while not warm.is_done():
        warm.generate_next_token()
    assert warm.reused_tokens > len(ids) and warm.tokens(0) == cold


def test_a_token_constraint_gives_what_it_gives_plainly(model) -> None:
    """The constraint masks each token's logits in turn, so a window's rows are masked like plain steps."""
    pytest.importorskip("llguidance")
    lm, _ = model
    ids = lm.encode(PROMPT)
    for extra in (GenerationSettings(response_format={"type": "regex", "regex": "(fib ){3,12}"}),
                  GenerationSettings(response_format={"type": "json_object"}, temperature=0.8, seed=1)):
        settings = extra.over(GenerationSettings(max_new_tokens=40).over(GREEDY))
        plain, _, _ = run(lm, ids, settings)
        fast, gen, _ = run(lm, ids, NGRAM.over(settings))
        assert fast == plain
        if "regex" in extra.response_format:   # "fib fib ...": the lookup drafts what the grammar forces
            assert gen.accepted > 0


# -- where it does not speculate ----------------------------------------------------------------------------------------
def test_batches_decode_plainly_with_the_same_tokens(model) -> None:
    lm, _ = model
    assert not isinstance(lm.generator(NGRAM.over(GREEDY), batch=2), NgramGenerator)
    prompts = [PROMPT, "The quick brown fox"]
    assert [c.token_ids for c in lm.complete(prompts, NGRAM.over(GREEDY))] == \
           [c.token_ids for c in lm.complete(prompts, GREEDY)]


def test_a_speculative_generator_still_joins_a_merged_batch(model) -> None:
    lm, _ = model
    if not MergedBatch.supports(lm):
        pytest.skip("a GroupQueryAttention artifact's runs are not merged")
    ids = lm.encode(PROMPT)
    alone, _, _ = run(lm, ids, GREEDY)
    gen = lm.generator(NGRAM.over(GREEDY))
    gen.append_tokens([ids])
    gen.generate_next_token()                     # its prompt, on its own (never speculated)
    batch = MergedBatch(lm)
    batch.add(gen)
    while len(batch):
        batch.step()
        gen.generate_next_token()
        batch.remove_done()
    assert gen.tokens(0) == alone


# -- the setting ----------------------------------------------------------------------------------------------------
def test_an_unknown_speculative_value_is_one_clear_error(model) -> None:
    lm, _ = model
    for bad in ("fast", 1, True):
        with pytest.raises(InvalidArgumentError, match="speculative must be one of 'off', 'ngram'"):
            lm.generator(GenerationSettings(speculative=bad))
    assert lm.settings_sources()["speculative"] == ("off", "built-in")


def test_cli_generate_speculative(model) -> None:
    lm, _ = model
    art = lm.artifact.root
    args = ["generate", art, "-p", PROMPT, "-n", "12", "-t", "0", "--ignore-eos", "--json"]
    plain, fast = run_cli(*args), run_cli(*args, "--speculative", "ngram")
    assert plain.exit_code == 0 and fast.exit_code == 0, fast.output
    got, want = json.loads(fast.stdout), json.loads(plain.stdout)
    assert got["settings"]["speculative"] == "ngram"
    assert [c["text"] for c in got["completions"]] == [c["text"] for c in want["completions"]]
    bad = run_cli(*args, "--speculative", "fast")                 # click's usage error: exit 2, one Error line
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.output.strip().splitlines()[-1].startswith("Error: Invalid value for '--speculative'"), bad.output
