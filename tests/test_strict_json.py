"""Strict JSON in (edgegen.strict.parse_json, read_manifest) and the messages of from_json for hostile values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from edgegen.errors import ManifestError
from edgegen.manifest import MANIFEST_NAME, count_problem, read_manifest, shape_problem
from edgegen.strict import MAX_INT_DIGITS, MAX_JSON_DEPTH, FieldError, JSONValueError, from_json, parse_json, short

from test_manifest import good_json


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("text, words", [
    ('{"a": NaN}', "holds NaN, which is not a JSON number"),
    ('{"a": [Infinity]}', "holds Infinity"),
    ('{"a": -Infinity}', "holds -Infinity"),
    ('{"a": 1e999}', "the number '1e999', too large for a float"),
    ('{"a": -1e400}', "too large for a float"),
    ('{"a": ' + "9" * 5000 + "}", "an integer of 5000 digits"),      # Python's own limit is 4300
    ('{"a": -' + "1" * (MAX_INT_DIGITS + 1) + "}", f"an integer of {MAX_INT_DIGITS + 1} digits"),
    ('{"a": 1, "b": {"c": 2, "c": 3}}', "repeats the key 'c' in one object"),
    (nested(100_000), f"more than {MAX_JSON_DEPTH} levels deep"),         # RecursionError inside json.loads
    (nested(MAX_JSON_DEPTH + 1), f"more than {MAX_JSON_DEPTH} levels deep"),   # parses, then refused
    ('{"a": ' * 500 + "1" + "}" * 500, "levels deep"),
])
def test_parse_json_refuses_what_no_manifest_holds(text, words):
    with pytest.raises(JSONValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_json(text)


def test_parse_json_accepts_ordinary_json():
    value = {"a": [1, -2.5, 1e300, "x", None, True, {"b": "9" * 100}], "n": -(10 ** MAX_INT_DIGITS - 1)}
    assert parse_json(json.dumps(value)) == value
    assert parse_json(nested(MAX_JSON_DEPTH)) == json.loads(nested(MAX_JSON_DEPTH))
    with pytest.raises(json.JSONDecodeError):
        parse_json("{")


@pytest.mark.parametrize("payload, words", [
    ('NaN', "holds NaN"),
    ("9" * 5000, "5000 digits"),
    (nested(100_000), "levels deep"),
])
def test_read_manifest_gives_one_line_with_the_fix(tmp_path, payload, words):
    text = json.dumps(good_json()).replace("{", '{"x": ' + payload + ", ", 1)
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    message = str(info.value)
    assert words in message and "re-convert" in message and "\n" not in message


def test_read_manifest_refuses_a_huge_file_unread(tmp_path):
    with open(tmp_path / MANIFEST_NAME, "wb") as fh:
        fh.truncate(17 << 20)   # sparse: 17 MiB of NUL bytes, never read
    with pytest.raises(ManifestError, match="more than any manifest"):
        read_manifest(tmp_path)


def test_info_json_of_a_parsed_manifest_is_strict_json():
    """What parse_json accepts, json.dumps writes back as strict JSON (no NaN: allow_nan=False passes)."""
    data = parse_json(json.dumps(good_json()))
    json.dumps(data, allow_nan=False)


# -- from_json on values built in Python, and its messages --------------------------------------------


@dataclass(frozen=True)
class Section:
    size: int
    mode: str = "a"
    pair: tuple[float, float] = (0.0, 1.0)
    names: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [("size", p)] if (p := count_problem(self.size, 1, 10)) else []
        if self.mode not in ("a", "b"):
            problems.append(("mode", f"{short(self.mode)} is not a or b"))
        if problems:
            raise FieldError(*problems)


def test_field_errors_name_each_key():
    with pytest.raises(ManifestError) as info:
        from_json(Section, {"size": 99, "mode": "c"}, where="edgegen.json.sampler", fix="re-convert the model")
    assert str(info.value) == ("edgegen.json.sampler.size: must be an integer from 1 to 10, got 99; "
                               "edgegen.json.sampler.mode: 'c' is not a or b; re-convert the model")


def test_fixed_length_tuples_are_checked():
    assert from_json(Section, {"size": 1, "pair": [2, 3]}).pair == (2.0, 3.0)
    with pytest.raises(ManifestError, match=r"Section.pair: expected a list of 2 items, got 3"):
        from_json(Section, {"size": 1, "pair": [1, 2, 3]})


def test_hostile_keys_and_values_stay_one_short_line():
    key = "x\n" + "k" * 5000
    with pytest.raises(ManifestError) as info:
        from_json(Section, {"size": 1, "names": {key: "v"}, "y" * 5000: 1, "mode": ["z" * 5000]})
    message = str(info.value)
    assert "\n" not in message and len(message) < 800, message
    assert "Section.names['x\\nkkk" in message and "unknown key 'yyy" in message


def test_values_nested_in_python_are_refused_not_recursed():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ManifestError, match="levels deep"):
        from_json(Section, {"size": 1, "names": {"a": deep}})
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ManifestError, match="levels deep"):
        from_json(Section, {"size": cyclic})


@pytest.mark.parametrize("shape, words", [
    ([1, 100_000, 100_000], "has an axis over 65,536"),
    ([4, 50_000, 50_000], "values per sample, more than"),
    ([], "non-empty list of positive integers"),
    ([3, 0, 8], "non-empty list of positive integers"),
    ([3, True, 8], "non-empty list of positive integers"),
])
def test_shape_problem(shape, words):
    assert words in shape_problem(shape)
    assert shape_problem([3, 64, 64]) is None and "must have 3 axes" in shape_problem([3, 64], rank=3)
