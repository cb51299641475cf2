"""Numbers and text on the generation side, through the library: tiny temperatures, one stop string given
as a str, text UTF-8 cannot encode, and fuzzed settings that may only ever raise InvalidArgumentError."""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.text.sampling import SamplingSettings, probabilities, process_logits, sample
from edgegen.runtimes.text.settings import GenerationSettings, check_text, resolve

TINY = [1e-38, 1e-45, 5e-324, 1e-30, 1e-12]


def logits(batch: int = 32, vocab: int = 300, seed: int = 0, scale: float = 30.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, vocab)) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature", TINY)
@pytest.mark.parametrize("extra", [{}, dict(top_k=20, top_p=0.9), dict(min_p=0.1, typical_p=0.9),
                                   dict(repetition_penalty=1.3, presence_penalty=0.5)])
def test_a_tiny_temperature_samples_the_greedy_tokens(temperature, extra):
    x, history = logits(), np.tile(np.arange(5), (32, 1))
    greedy = sample(x, SamplingSettings(temperature=0, **extra), np.random.default_rng(0), history=history)
    s = SamplingSettings(temperature=temperature, **extra)
    for seed in range(3):
        assert np.array_equal(sample(x, s, np.random.default_rng(seed), history=history), greedy)
    probs = probabilities(x, s, history=history)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.max(axis=1), 1.0)


def test_a_tiny_temperature_keeps_removed_tokens_removed_and_splits_exact_ties():
    x = np.array([[3.0, 3.0, 1.0, -np.inf, 2.0]], np.float32)
    scores = process_logits(x, SamplingSettings(temperature=1e-38))
    assert scores[0, 0] == scores[0, 1] == 0 and np.all(scores[0, 2:] <= -1e38) and scores[0, 3] == -np.inf
    np.testing.assert_allclose(probabilities(x, SamplingSettings(temperature=1e-38))[0], [0.5, 0.5, 0, 0, 0])


def test_ordinary_temperatures_still_divide_in_float32_like_transformers():
    x = logits(4, 50)
    for t in (0.05, 0.7, 1.5, 1e6):
        np.testing.assert_array_equal(process_logits(x, SamplingSettings(temperature=t)), x / np.float32(t))


def test_a_huge_temperature_is_uniform_not_nan():
    x = logits(2, 7)
    x[:, 3] = -np.inf
    probs = probabilities(x, SamplingSettings(temperature=1e300))
    assert np.all(np.isfinite(probs)) and probs[0, 3] == 0
    np.testing.assert_allclose(probs[:, [0, 1, 2, 4, 5, 6]], 1 / 6)


def test_tiny_temperature_generates_the_greedy_text(tiny_lm_artifact):
    import edgegen

    lm = edgegen.load(tiny_lm_artifact, provider="cpu")
    greedy = lm.generate("def f", GenerationSettings(temperature=0, max_new_tokens=12))
    for t in (1e-38, 5e-324):
        assert lm.generate("def f", GenerationSettings(temperature=t, max_new_tokens=12, seed=3)) == greedy


def test_a_str_is_one_stop_string_and_an_int_one_stop_id():
    s = GenerationSettings(stop="\n\n", stop_token_ids=7)
    assert s.stop == ("\n\n",) and s.stop_token_ids == (7,)
    r = resolve(s, GenerationSettings())
    assert r.stop == ("\n\n",) and r.stop_token_ids == frozenset({7})
    listed = GenerationSettings(stop=["a", "bc"], stop_token_ids=np.array([3, 4]))
    assert listed.stop == ("a", "bc") and resolve(listed, GenerationSettings()).stop_token_ids == {3, 4}
    assert GenerationSettings(stop="ab").over(GenerationSettings(stop="x")).stop == ("ab",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.stop = "x"   # type: ignore[misc]


def test_a_str_stop_ends_the_text_at_the_whole_string(tiny_lm_artifact):
    """Two one-character stops would cut at the first of either character; one stop string cuts at it."""
    import edgegen

    lm = edgegen.load(tiny_lm_artifact, provider="cpu")
    text = lm.generate("def f", GenerationSettings(temperature=0, max_new_tokens=40))
    pairs = [pair for i in range(1, len(text) - 1) if len(set(pair := text[i:i + 2])) == 2
             and min(text.find(pair[0]), text.find(pair[1])) < text.find(pair)]
    if not pairs:
        pytest.skip("the tiny model's text has no two characters that occur apart first")
    stop = pairs[0]
    cut = lm.generate("def f", GenerationSettings(temperature=0, max_new_tokens=40, stop=stop))
    assert cut == text[:text.find(stop)]


@pytest.mark.parametrize("bad, found", [("\ud800", "a lone surrogate U+D800"),
                                        ("ok\udcff", "character 2 is the byte 0xff")])
def test_text_utf8_cannot_encode_is_refused(tiny_lm_artifact, bad, found):
    import edgegen

    lm = edgegen.load(tiny_lm_artifact, provider="cpu")
    for call in (lambda: lm.generate(bad), lambda: lm.encode(bad), lambda: lm.complete(["fine", bad])):
        with pytest.raises(InvalidArgumentError, match=f"the prompt is not valid UTF-8 .*{re.escape(found)}"):
            call()
    with pytest.raises(InvalidArgumentError, match=f"stop string 1 is not valid UTF-8 .*{re.escape(found)}"):
        lm.generate("hi", GenerationSettings(stop=("x", bad)))
    with pytest.raises(InvalidArgumentError, match="the prompt must be a string, got bytes"):
        check_text(b"hi", "the prompt")
    assert check_text("héllo 🙂", "the prompt") == "héllo 🙂"


@pytest.mark.parametrize("value", [10**400, Fraction(10**400, 3), -(10**400)])
def test_numbers_past_float_are_refused_in_a_short_line(value):
    with pytest.raises(InvalidArgumentError, match=r"temperature must be a finite number .*\(\d+ characters\)") as info:
        SamplingSettings(temperature=value)
    assert len(str(info.value)) < 200


ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**400, max_value=10**400), st.floats(),
    st.fractions(), st.text(max_size=5), st.binary(max_size=3), st.lists(st.integers(-3, 10**20), max_size=3),
    st.lists(st.text(max_size=3), max_size=3), st.sampled_from([np.int64(3), np.float32("nan"), np.float64(1e-40),
                                                                  math.inf, "\udcff", ["\ud800"], {"a": 1}, (1.5,)]))
FIELDS = [f.name for f in dataclasses.fields(GenerationSettings)]


@settings(max_examples=400, deadline=None)
@given(values=st.dictionaries(st.sampled_from(FIELDS), ANYTHING, max_size=6),
       defaults=st.dictionaries(st.sampled_from(FIELDS), ANYTHING, max_size=2))
def test_fuzzed_settings_raise_only_invalid_argument(values, defaults):
    try:
        resolved = resolve(GenerationSettings(**values), GenerationSettings(**defaults))
    except InvalidArgumentError as exc:
        assert "\n" not in str(exc)
        return
    sample(logits(2, 40), resolved.sampling, np.random.default_rng(0))   # a valid result samples


@settings(max_examples=200, deadline=None)
@given(temperature=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
       scale=st.sampled_from([1e-30, 1.0, 1e4, 1e30]))
def test_any_positive_temperature_gives_a_distribution(temperature, scale):
    probs = probabilities(logits(3, 20, scale=scale), SamplingSettings(temperature=temperature, top_p=0.9))
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1.0)
