"""Sampling: transformers parity, hand-computed distributions, seeded draws, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.text.sampling import SamplingSettings, probabilities, process_logits, sample

# A 5-token vocabulary whose softmax is exactly P5 (logits are log-probabilities).
P5 = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
LOGITS5 = np.log(P5).astype(np.float32)[None, :]   # [1, 5]


# ---------------------------------------------------------------- transformers parity

def reference(logits, s, history, mask):
    """The same steps with transformers' processors (repetition penalty row by row: no masks there)."""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.tensor(logits)
    if s.repetition_penalty != 1:
        proc = lp.RepetitionPenaltyLogitsProcessor(s.repetition_penalty)
        rows = [proc(torch.tensor(h[m][None, :]), scores[b:b + 1]) for b, (h, m) in enumerate(zip(history, mask))]
        scores = torch.cat(rows)
    warpers = []
    if s.temperature != 1:
        warpers.append(lp.TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        warpers.append(lp.TopKLogitsWarper(s.top_k))
    if s.top_p < 1:
        warpers.append(lp.TopPLogitsWarper(s.top_p))
    if s.min_p > 0:
        warpers.append(lp.MinPLogitsWarper(s.min_p))
    if s.typical_p < 1:
        warpers.append(lp.TypicalLogitsWarper(s.typical_p))
    ids = torch.tensor(history)
    for w in warpers:
        scores = w(ids, scores)
    return scores.numpy()


PARITY = [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_k=60),                       # >= V: off
    dict(top_p=0.8),
    dict(min_p=0.05),
    dict(typical_p=0.7),
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.8, temperature=1.5),
    dict(top_k=10, top_p=0.9),            # one sort shared by top-k and top-p
    dict(temperature=0.8, top_k=20, top_p=0.95, min_p=0.02, typical_p=0.9, repetition_penalty=1.2),
]


@pytest.mark.parametrize("kwargs", PARITY, ids=lambda k: ",".join(f"{n}={v}" for n, v in k.items()))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_transformers(kwargs, seed):
    rng = np.random.default_rng(seed)
    batch, vocab, length = 3, 50, 12
    logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)   # [B, V]
    history = rng.integers(0, vocab, (batch, length))                       # [B, L]
    mask = np.ones((batch, length), bool)                                   # [B, L]
    mask[1, :4] = False                                                     # left padding
    mask[2, :9] = False
    s = SamplingSettings(**kwargs)
    got = process_logits(logits, s, history, mask)
    want = reference(logits, s, history, mask)
    assert got.dtype == np.float32 and got.shape == (batch, vocab)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    kept = np.isfinite(want)
    np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5, atol=1e-5)
    if kwargs.get("top_p", 1) < 1 or kwargs.get("top_k", 0) in (5, 10):
        assert np.isneginf(got).any()                                       # the filter did something


# top 256 / top 2048 tokens hold (.14, .78) of the mass at scale .3, (.55, .98) at 1.5, (.93, 1.) at 3: so
# top_p .9 sorts the whole row, 2048 candidates, 256 candidates
@pytest.mark.parametrize("scale", [0.3, 1.5, 3.0])
@pytest.mark.parametrize("kwargs", [dict(top_p=0.9), dict(top_k=500, top_p=0.9), dict(top_p=0.5, min_p=0.1)])
def test_large_vocab_top_p_matches_transformers(kwargs, scale):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((2, 3000)) * scale).astype(np.float32)   # [B, V]
    s = SamplingSettings(**kwargs)
    got = process_logits(logits, s)
    want = reference(logits, s, np.zeros((2, 0), np.int64), np.zeros((2, 0), bool))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert 0 < np.isneginf(got).sum() < got.size


def test_input_is_not_modified():
    logits = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
    before = logits.copy()
    s = SamplingSettings(temperature=0.5, top_k=3, repetition_penalty=2.0, presence_penalty=1.0)
    process_logits(logits, s, np.array([[1, 2], [3, 3]]))
    np.testing.assert_array_equal(logits, before)


# ---------------------------------------------------------------- hand-computed distributions

@pytest.mark.parametrize("kwargs, expected", [
    (dict(), P5),
    # p**2 / sum(p**2): (.16, .09, .0225, .01, .0025) / .285
    (dict(temperature=0.5), [0.5614035, 0.3157895, 0.0789474, 0.0350877, 0.0087719]),
    # the two largest, renormalized: (.4, .3) / .7
    (dict(top_k=2), [4 / 7, 3 / 7, 0, 0, 0]),
    # ascending cumulative mass .05, .15, .30, .60, 1: remove while <= 1 - .8 = .2 -> (.4, .3, .15) / .85
    (dict(top_p=0.8), [8 / 17, 6 / 17, 3 / 17, 0, 0]),
    # keep p >= .2 * max = .08 -> (.4, .3, .15, .1) / .95
    (dict(min_p=0.2), [8 / 19, 6 / 19, 3 / 19, 2 / 19, 0]),
    # entropy H = -sum p ln p = 1.392322; |-ln p - H| = .476, .188, .505, .910, 1.603, so by typicality
    # the order is tokens 1, 0, 2, 3, 4 with cumulative mass .3, .7, .85, .95, 1.  mass .8: two cumulative
    # values are < .8, so keep up to the third most typical (token 2) -> (.4, .3, .15) / .85
    (dict(typical_p=0.8), [8 / 17, 6 / 17, 3 / 17, 0, 0]),
    # mass .2: nothing is below it, keep only the most typical token, 1 -- not the argmax (as transformers)
    (dict(typical_p=0.2), [0, 1, 0, 0, 0]),
    (dict(temperature=0), [1, 0, 0, 0, 0]),
])
def test_hand_computed_distributions(kwargs, expected):
    got = probabilities(LOGITS5, SamplingSettings(**kwargs))
    assert got.dtype == np.float64 and got.shape == (1, 5)
    np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_repetition_penalty_distribution():
    # tokens 0 and 3 were seen; their logits ln p < 0 are doubled: weights .4**2, .3, .15, .1**2, .05
    # = (.16, .3, .15, .01, .05) / .67.  Token 4 sits under the mask and must not count.
    history, mask = np.array([[4, 0, 0, 3]]), np.array([[False, True, True, True]])
    got = probabilities(LOGITS5, SamplingSettings(repetition_penalty=2.0), history, mask)
    np.testing.assert_allclose(got[0], np.array([0.16, 0.3, 0.15, 0.01, 0.05]) / 0.67, atol=1e-6)


def test_top_p_ties_keep_the_lowest_indices():
    # ascending cumulative mass .25, .5, .75, 1: the two tokens at <= .5 go, the lowest indices stay
    got = probabilities(np.zeros((1, 4), np.float32), SamplingSettings(top_p=0.5))
    np.testing.assert_allclose(got[0], [0.5, 0.5, 0, 0])


def test_top_k_ties_then_top_p_rows_of_different_widths():
    logits = np.concatenate([[[1.0, 1.0, 1.0, 0.0, 0.0]], LOGITS5]).astype(np.float32)   # [2, 5]
    # row 0: top-k 2 keeps the three tied 1s (1/3 each); ascending cumulative 1/3, 2/3, 1 -> one goes, index 2
    # row 1: top-k 2 keeps (.4, .3) / .7; ascending cumulative 3/7 <= .5 -> only token 0 stays
    got = probabilities(logits, SamplingSettings(top_k=2, top_p=0.5))
    np.testing.assert_allclose(got, [[0.5, 0.5, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_top_k_keeps_ties_with_the_kth():
    logits = np.array([[1.0, 1.0, 1.0, 0.0, 0.0]], np.float32)
    got = probabilities(logits, SamplingSettings(top_k=2))
    np.testing.assert_allclose(got[0], [1 / 3, 1 / 3, 1 / 3, 0, 0])


# ---------------------------------------------------------------- penalties

LOGITS_PEN = np.array([[1.0, -1.0, 2.0, 0.0, -0.5]], np.float32)
HISTORY = np.array([[2, 0, 1, 1, 3]])                  # token 2 is padding
MASK = np.array([[False, True, True, True, True]])     # counts: token 0 once, 1 twice, 3 once


@pytest.mark.parametrize("kwargs, expected", [
    # seen tokens 0, 1, 3 lose .5 once each
    (dict(presence_penalty=0.5), [0.5, -1.5, 2.0, -0.5, -0.5]),
    # a negative presence penalty encourages them
    (dict(presence_penalty=-1.0), [2.0, 0.0, 2.0, 1.0, -0.5]),
    # .25 per occurrence: token 0 -.25, token 1 -.5, token 3 -.25
    (dict(frequency_penalty=0.25), [0.75, -1.5, 2.0, -0.25, -0.5]),
    # positive / 2, negative * 2, zero stays: 1 -> .5, -1 -> -2, 0 -> 0
    (dict(repetition_penalty=2.0), [0.5, -2.0, 2.0, 0.0, -0.5]),
    # all three, in order: (.5, -2, ., 0) - .5 - .25 * (1, 2, ., 1)
    (dict(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25), [-0.25, -3.0, 2.0, -0.75, -0.5]),
])
def test_penalties_hand_computed(kwargs, expected):
    np.testing.assert_allclose(process_logits(LOGITS_PEN, SamplingSettings(**kwargs), HISTORY, MASK)[0], expected)


def test_penalties_are_per_row_and_greedy_sees_them():
    logits = np.array([[3.0, 2.9, 0.0], [3.0, 2.9, 0.0]], np.float32)      # [2, 3]
    history = np.array([[0, 0], [1, 1]])
    s = SamplingSettings(temperature=0, presence_penalty=0.5)
    np.testing.assert_array_equal(sample(logits, s, np.random.default_rng(0), history), [1, 0])
    # without a history the penalties are off
    np.testing.assert_array_equal(sample(logits, s, np.random.default_rng(0)), [0, 0])


def test_bad_history_is_rejected():
    s = SamplingSettings(presence_penalty=1.0)
    with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
        process_logits(LOGITS5, s, np.array([[7]]))
    process_logits(LOGITS5, s, np.array([[7]]), np.array([[False]]))      # masked ids are ignored
    with pytest.raises(InvalidArgumentError, match="history must be"):
        process_logits(LOGITS5, s, np.array([[1], [2]]))
    with pytest.raises(InvalidArgumentError, match="logits must be"):
        process_logits(LOGITS5[0], s)


# ---------------------------------------------------------------- sampling

def test_empirical_frequencies_match_probabilities():
    s = SamplingSettings(temperature=0.8, top_k=4, repetition_penalty=1.5)
    draws = 20_000
    logits = np.repeat(LOGITS5, draws, axis=0)                              # [N, 5]
    history = np.zeros((draws, 1), np.int64)                                # token 0 penalized
    want = probabilities(LOGITS5, s, history[:1])[0]
    tokens = sample(logits, s, np.random.default_rng(123), history)
    freq = np.bincount(tokens, minlength=5) / draws
    assert want[4] == 0 and freq[4] == 0                                    # removed by top-k, never drawn
    assert np.abs(freq - want).max() < 0.01


def test_same_seed_same_tokens_and_batching_does_not_matter():
    s = SamplingSettings(temperature=1.2, top_p=0.95)
    logits = np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)
    a = sample(logits, s, np.random.default_rng(7))
    b = sample(logits, s, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (64,)
    assert not np.array_equal(a, sample(logits, s, np.random.default_rng(8)))
    rng = np.random.default_rng(7)                                          # one draw per row, in row order
    one_by_one = [sample(logits[i:i + 1], s, rng)[0] for i in range(64)]
    np.testing.assert_array_equal(a, one_by_one)


def test_one_draw_per_row():
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    sample(np.zeros((4, 9), np.float32), SamplingSettings(top_k=2), rng)
    twin.random(4)
    assert rng.random() == twin.random()


def test_greedy_ties_lowest_index_and_no_randomness():
    logits = np.array([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    s = SamplingSettings(temperature=0, top_k=3, top_p=0.5)
    np.testing.assert_array_equal(sample(logits, s, rng), [1, 0])
    assert rng.bit_generator.state == state
    np.testing.assert_array_equal(probabilities(logits, s), [[0, 1, 0, 0], [1, 0, 0, 0]])
    processed = process_logits(logits, s)
    assert processed[0, 1] == 3.0 and np.isneginf(processed).sum() == 6


def test_zero_probability_tokens_are_never_drawn_even_at_u_near_one():
    class AlmostOne:
        def random(self, n):
            return np.full(n, np.nextafter(1.0, 0.0))
    tokens = sample(LOGITS5, SamplingSettings(top_k=2), AlmostOne())       # type: ignore[arg-type]
    assert tokens.tolist() == [1]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "0.5"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("min_p", 1.0), ("min_p", -0.1), ("typical_p", 0.0), ("repetition_penalty", 0.0),
    ("presence_penalty", 3.0), ("frequency_penalty", -2.5),
])
def test_each_bad_value_is_named(field, value):
    with pytest.raises(InvalidArgumentError) as info:
        SamplingSettings(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field} must be") and f"got {value!r}" in message
    assert ";" not in message


def test_all_problems_in_one_error():
    with pytest.raises(InvalidArgumentError) as info:
        SamplingSettings(temperature=-1.0, top_p=1.5)
    assert str(info.value) == "temperature must be >= 0 (0 = greedy), got -1.0; top_p must be in (0, 1], got 1.5"
    with pytest.raises(InvalidArgumentError) as info:
        SamplingSettings(temperature=math.nan, top_k=True, min_p=1, presence_penalty=3, frequency_penalty=-3)
    parts = str(info.value).split("; ")
    assert [p.split()[0] for p in parts] == ["temperature", "top_k", "min_p", "presence_penalty", "frequency_penalty"]
    assert "top_k must be an integer >= 0 (0 = off), got True" in parts


def test_valid_edges_and_numpy_scalars():
    s = SamplingSettings(temperature=0, top_k=np.int64(3), top_p=1, min_p=0, typical_p=np.float32(0.5),
                         repetition_penalty=5, presence_penalty=-2, frequency_penalty=2)
    assert s.greedy and not SamplingSettings().greedy
    assert type(s.top_k) is int and type(s.top_p) is float and s.typical_p == 0.5


# ---------------------------------------------------------------- properties

valid_settings = st.builds(
    SamplingSettings,
    temperature=st.one_of(st.just(0.0), st.floats(0.05, 5.0)),
    top_k=st.integers(0, 10),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    min_p=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    typical_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    repetition_penalty=st.floats(0.5, 2.0),
    presence_penalty=st.floats(-2.0, 2.0),
    frequency_penalty=st.floats(-2.0, 2.0),
)


@hyp_settings(max_examples=150, deadline=None)
@given(s=valid_settings, data=st.data())
def test_probabilities_are_a_distribution(s, data):
    batch, vocab = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 8))
    logits = data.draw(hnp.arrays(np.float32, (batch, vocab), elements=st.floats(-20, 20, width=32)))
    history = data.draw(hnp.arrays(np.int64, (batch, 4), elements=st.integers(0, vocab - 1)))
    mask = data.draw(hnp.arrays(np.bool_, (batch, 4)))
    probs = probabilities(logits, s, history, mask)
    assert probs.shape == (batch, vocab)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    if s.typical_p == 1:   # typical-p may drop the argmax (see test_hand_computed_distributions)
        best = np.argmax(process_logits(logits, SamplingSettings(
            repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty), history, mask), axis=1)
        assert (probs[np.arange(batch), best] > 0).all()
    token = sample(logits, s, np.random.default_rng(0), history, mask)
    assert (probs[np.arange(batch), token] > 0).all()
