"""Constrained decoding (runtimes/text/constrained.py): a JSON schema, a regex, a Lark grammar or any JSON
object holds whatever a random-weight model would say, greedy or sampled, batched or streamed; a run cut by
max_new_tokens is a prefix the grammar allows; bad formats fail in one line before any graph runs; and the
mask/advance pair, on a hand-built tokenizer, allows exactly the tokens the grammar does.

The outputs are checked without llguidance: json.loads and a small validator of the schema's fields,
re.fullmatch, and the grammar's language written out as a Python regex.  Unconstrained, the same random
model says something none of these accept, so it is the constraint that does the work.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

pytest.importorskip("llguidance")

import edgegen  # noqa: E402
from edgegen.errors import InvalidArgumentError, ManifestError  # noqa: E402
from edgegen.runtimes.text.constrained import compile_constraint, response_format_from_options  # noqa: E402
from edgegen.runtimes.text.settings import GenerationSettings, resolve  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
REGEX = r"\d{3}-[a-z]+"
#: a Lark grammar, and the same language as a Python regex (to check outputs without llguidance)
LARK = 'start: greeting " " name "!"\ngreeting: "hi" | "hello"\nname: /[a-z]{1,6}/\n'
LARK_AS_REGEX = r"(hi|hello) [a-z]{1,6}!"
PROMPTS = ["Hello there", "def f(x):", "1 2 3"]
SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def lm(tiny_lm_artifact):
    return edgegen.load(tiny_lm_artifact, provider="cpu")


def run(lm, response_format, seed=None, prompts=PROMPTS, max_new_tokens=120, **extra):
    settings = GenerationSettings(temperature=0 if seed is None else 1.0, seed=seed, max_new_tokens=max_new_tokens,
                                  response_format=response_format, **extra)
    return lm.complete(prompts, settings)


def check_person(value) -> None:
    """SCHEMA, checked by hand."""
    assert isinstance(value, dict) and set(value) == {"name", "age", "color", "tags"}, value
    assert isinstance(value["name"], str) and len(value["name"]) <= 8
    assert type(value["age"]) is int and 0 <= value["age"] <= 150
    assert value["color"] in ("red", "green", "blue")
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(isinstance(t, str) and len(t) <= 5 for t in value["tags"])


# -- outputs that hold -----------------------------------------------------------------------------------
def json_object_of(text: str):
    """The JSON object ``text`` holds, else None (greedy "3333..." is JSON too, a number)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def test_unconstrained_output_of_the_random_model_is_none_of_the_formats(lm):
    for seed in [None, *SEEDS]:
        for c in run(lm, None, seed, max_new_tokens=40):
            assert json_object_of(c.text) is None
            assert not re.fullmatch(REGEX, c.text) and not re.fullmatch(LARK_AS_REGEX, c.text)


@pytest.mark.parametrize("seed", [None, *SEEDS])
def test_a_json_schema_output_parses_and_validates(lm, seed):
    for c in run(lm, JSON_SCHEMA, seed):
        assert c.finish_reason == "stop", c   # the object closed: the grammar allows nothing more
        check_person(json.loads(c.text))


@pytest.mark.parametrize("seed", [None, *SEEDS])
def test_a_regex_output_matches_whole(lm, seed):
    results = run(lm, {"type": "regex", "regex": REGEX}, seed, max_new_tokens=24)
    for c in results:
        if c.finish_reason == "length":   # [a-z]+ never has to end: a prefix of a match
            assert re.fullmatch(r"\d{3}-[a-z]*", c.text), c
        else:
            assert c.finish_reason == "eos" and re.fullmatch(REGEX, c.text), c
            assert c.token_ids[-1] in lm.sampler.eos_token_ids   # EOS came only once the regex had matched


@pytest.mark.parametrize("seed", [None, *SEEDS])
def test_a_lark_grammar_output_is_in_its_language(lm, seed):
    for c in run(lm, {"type": "grammar", "grammar": LARK}, seed):
        assert c.finish_reason == "stop" and re.fullmatch(LARK_AS_REGEX, c.text), c


def test_json_object_gives_a_json_object(lm):
    results = [c for seed in [None, *SEEDS] for c in run(lm, {"type": "json_object"}, seed, max_new_tokens=60)]
    finished = [c for c in results if c.finish_reason != "length"]
    assert finished, "some run should close its object within 60 tokens"
    for c in finished:
        assert json_object_of(c.text) is not None, c
    for c in results:
        assert c.text.startswith("{")


def test_a_run_cut_by_max_new_tokens_is_a_prefix_the_schema_allows(lm):
    # fixed separators and the schema's property order: every output starts this way
    start = '{"name": "'
    for seed in [None, 0]:
        for c in run(lm, JSON_SCHEMA, seed, max_new_tokens=4):
            assert c.finish_reason == "length" and len(c.token_ids) == 4
            assert start.startswith(c.text) or c.text.startswith(start), c.text
            with pytest.raises(ValueError):
                json.loads(c.text)


def test_streaming_gives_the_same_constrained_text(lm):
    settings = GenerationSettings(seed=5, max_new_tokens=120, response_format=JSON_SCHEMA)
    streamed = "".join(lm.stream("Hello there", settings))
    check_person(json.loads(streamed))
    assert streamed == lm.complete(["Hello there"], settings)[0].text


def test_the_step_api_gets_the_constraint_too(lm):
    gen = lm.generator(GenerationSettings(temperature=0, max_new_tokens=40,
                                          response_format={"type": "grammar", "grammar": LARK}), batch=2)
    assert gen.constraint is not None
    gen.append_tokens([lm.encode("Hello"), lm.encode("def f(x):")])
    while not gen.is_done():
        gen.generate_next_token()
    for b in range(2):
        assert gen.finish_reasons[b] == "stop" and re.fullmatch(LARK_AS_REGEX, lm.decode(gen.tokens(b)))


def test_text_type_is_no_constraint(lm):
    assert resolve(GenerationSettings(response_format={"type": "text"}), GenerationSettings()).response_format is None
    plain = run(lm, None, max_new_tokens=10, prompts=PROMPTS[:1])[0]
    assert run(lm, {"type": "text"}, max_new_tokens=10, prompts=PROMPTS[:1])[0].text == plain.text


# -- bad formats: one line, before any graph runs -----------------------------------------------------------
BAD = {
    "a schema llguidance cannot compile": ({"type": "json_schema", "json_schema": {"schema": {"not": {}}}},
                                           "Unimplemented keys"),
    "an unknown JSON type": ({"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}, "strin"),
    "an invalid regex": ({"type": "regex", "regex": "(("}, "unclosed group"),
    "a regex that matches nothing": ({"type": "regex", "regex": "[a&&b]"}, "allows no text at all"),
    "a grammar that matches nothing": ({"type": "grammar", "grammar": "start: /[a&&b]/"}, "allows no text at all"),
    "an unsatisfiable schema": ({"type": "json_schema", "json_schema": {"schema": {
        "allOf": [{"type": "string"}, {"type": "integer"}]}}}, "Unsatisfiable"),
    "a Lark grammar with an unknown rule": ({"type": "grammar", "grammar": "start: foo"}, "unknown name"),
    "an unknown type": ({"type": "yaml"}, "response_format type must be one of"),
    "a missing schema": ({"type": "json_schema", "json_schema": {"name": "x"}}, "must be a JSON schema"),
    "no json_schema at all": ({"type": "json_schema"}, 'needs "json_schema"'),
    "an unknown key": ({"type": "regex", "regex": "a", "flags": "i"}, "unknown keys ['flags']"),
    "not an object": ("json", "response_format must be an object"),
    "an empty regex": ({"type": "regex", "regex": ""}, "non-empty string"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_format_is_one_line_before_generation_starts(lm, name):
    fmt, words = BAD[name]
    with pytest.raises(InvalidArgumentError) as info:
        lm.generator(GenerationSettings(response_format=fmt))   # made before any token is appended or run
    message = str(info.value)
    assert words in message and "\n" not in message and len(message) < 600, message


def test_strict_false_ignores_what_llguidance_does_not_implement(lm):
    lenient = {"type": "json_schema", "json_schema": {"strict": False, "schema": {"type": "object", "not": {}}}}
    c = run(lm, lenient, max_new_tokens=60, prompts=PROMPTS[:1])[0]
    assert c.text.startswith("{")


def test_an_artifact_cannot_set_response_format():
    with pytest.raises(ManifestError, match="defaults.response_format"):
        GenerationSettings.from_manifest({"temperature": 0.5, "response_format": {"type": "json_object"}})


def test_without_llguidance_the_message_says_how_to_install_it(lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)   # import llguidance -> ImportError
    with pytest.raises(InvalidArgumentError, match=r"llguidance, which edgegen's \[structured\] extra installs"):
        lm.generator(GenerationSettings(response_format={"type": "json_object"}))


# -- mask and advance on a tokenizer whose allowed sets are known ------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer():
    """Byte-level BPE, 8 tokens (ids 0..7), whose token texts are their own bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, "a": 1, "b": 2, "ab": 3, "-": 4, "1": 5, "2": 6, "12": 7}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("1", "2")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<eos>", special=True)])
    return tok


def allowed_ids(masked: np.ndarray, row: int) -> set[int]:
    return set(np.flatnonzero(np.isfinite(masked[row])).tolist())


def test_mask_and_advance_follow_the_grammar_token_by_token(tiny_tokenizer):
    # 10 logits for 8 tokens: ids 8 and 9 are padding, never allowed
    c = compile_constraint({"type": "regex", "regex": "[ab]-[12]"}, tiny_tokenizer, [0], 10, batch=2)
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    both = np.array([True, True])
    masked = c.mask(logits, both)
    assert allowed_ids(masked, 0) == allowed_ids(masked, 1) == {1, 2}            # "a" or "b", not "ab"
    np.testing.assert_array_equal(masked[:, [1, 2]], logits[:, [1, 2]])         # allowed logits unchanged
    assert c.advance(np.array([1, 2]), both) == []                              # row 0 "a", row 1 "b"
    masked = c.mask(logits, both)
    assert allowed_ids(masked, 0) == allowed_ids(masked, 1) == {4}               # "-"
    assert c.advance(np.array([4, 4]), both) == []
    only_0 = np.array([True, False])
    masked = c.mask(logits, only_0)
    assert allowed_ids(masked, 0) == {5, 6}                                      # "1" or "2", not "12"
    np.testing.assert_array_equal(masked[1], logits[1])                         # a row not live is left alone
    assert c.advance(np.array([5, 7]), only_0) == [0]                           # row 0 complete: "a-1"
    only_1 = np.array([False, True])
    assert allowed_ids(c.mask(logits, only_1), 1) == {5, 6}                      # row 1 was not fed the 7
    assert c.advance(np.array([5, 6]), only_1) == [1]                           # "b-2"


def test_eos_and_stop_ids_are_allowed_only_where_the_grammar_may_end(tiny_tokenizer):
    c = compile_constraint({"type": "regex", "regex": "a+"}, tiny_tokenizer, [0], 8, batch=1, stop_ids=[4])
    logits, live = np.zeros((1, 8), np.float32), np.array([True])
    assert allowed_ids(c.mask(logits, live), 0) == {1}                            # "a" only: not yet a match
    assert c.advance(np.array([1]), live) == []
    assert allowed_ids(c.mask(logits, live), 0) == {0, 1, 4}                      # more "a", EOS, stop id 4
    assert c.advance(np.array([4]), live) == []                                 # the loop ends it at the stop id


def test_a_token_the_grammar_refuses_is_one_line(tiny_tokenizer):
    c = compile_constraint({"type": "regex", "regex": "ab"}, tiny_tokenizer, [0], 8, batch=1)
    c.mask(np.zeros((1, 8), np.float32), np.array([True]))
    with pytest.raises(InvalidArgumentError, match="structured output failed at token 1 of row 0") as info:
        c.advance(np.array([4]), np.array([True]))
    assert "\n" not in str(info.value)


# -- the command line's options --------------------------------------------------------------------------
def test_options_give_the_response_format(tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    assert response_format_from_options(str(schema), None, None) == {
        "type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    assert response_format_from_options(None, REGEX, None) == {"type": "regex", "regex": REGEX}
    lark = tmp_path / "greeting.lark"
    lark.write_text(LARK)
    assert response_format_from_options(None, None, str(lark)) == {"type": "grammar", "grammar": LARK}
    gbnf = tmp_path / "digits.gbnf"
    gbnf.write_text('root ::= "n" [0-9]+\n')
    fmt = response_format_from_options(None, None, str(gbnf))
    assert fmt["type"] == "grammar" and "start" in fmt["grammar"]
    assert response_format_from_options(None, None, None) is None


def test_bad_options_are_one_line(tmp_path):
    bad_json, bad_lark, bad_gbnf = tmp_path / "bad.json", tmp_path / "bad.lark", tmp_path / "bad.gbnf"
    bad_json.write_text('{"type": "object",')
    bad_lark.write_text("start: missing_rule\n")
    bad_gbnf.write_text("root ::= (\n")
    cases = [
        ((str(tmp_path / "absent.json"), None, None), "cannot read --json-schema"),
        ((str(bad_json), None, None), "is not valid JSON"),
        ((None, "((", None), "--regex: the regex cannot be compiled"),
        ((None, None, str(bad_lark)), "unknown name"),
        ((None, None, str(bad_gbnf)), "not a GBNF grammar"),
        ((str(bad_json), "a", None), "give one of --json-schema, --regex and --grammar, not --json-schema and --regex"),
    ]
    for args, words in cases:
        with pytest.raises(InvalidArgumentError) as info:
            response_format_from_options(*args)
        assert words in str(info.value) and "\n" not in str(info.value), (args, str(info.value))
