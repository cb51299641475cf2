"""Strict conversion between JSON values and frozen dataclasses (standard library only).

One small mechanism serves the manifest and every family's ``sampler`` and ``defaults``
sections: a frozen dataclass declares the fields and their types, and
:func:`from_json` builds it from parsed JSON, refusing unknown keys, missing keys and
values of the wrong type, each named by its full path (``graphs.decoder.inputs[2].dtype``).
All problems are collected and reported at once.

Supported field types: ``str``, ``int``, ``float`` (ints are accepted), ``bool``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``Any`` (any JSON value),
``Literal[...]``, ``int | str`` unions of scalars, and nested dataclasses.  A dataclass's
``__post_init__`` may raise :class:`FieldError` to name the key a bad value is at.

:func:`parse_json` reads JSON that edgegen did not write (an artifact's manifest) strictly: no NaN
or Infinity, no integers of absurd length, no repeated keys, no absurd nesting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import types
import typing
from typing import Any, Literal, TypeVar, Union

from edgegen.errors import ManifestError

T = TypeVar("T")

_MISSING = object()

#: JSON nested deeper than this is refused by :func:`parse_json`: far deeper than any manifest needs, and far
#: below Python's recursion limit, which code walking the parsed value (to_json, the CLI's printing) would hit.
MAX_JSON_DEPTH = 64
#: Integers with more digits than this are refused by :func:`parse_json`: longer than any size, count or id a
#: manifest holds (int64 has 19), and Python itself refuses more than 4300 digits with a ValueError of its own.
MAX_INT_DIGITS = 40

#: Values quoted in messages are cut short: a hostile manifest must not turn one error line into megabytes.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 6, 6
#: Keys shown as ``where.key``; any other key (a newline, a 5,000-character name) is shown as ``where['...']``.
_PLAIN_KEY = re.compile(r"[\w.\-]{1,64}")


class FieldError(ValueError):
    """Raised by a dataclass's ``__post_init__`` for bad values of its own fields: each ``(field, message)``
    becomes ``<path>.<field>: <message>`` in :func:`from_json`'s error, like a wrong type does."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))


class JSONValueError(ValueError):
    """JSON that parses but that :func:`parse_json` refuses (NaN, a 5,000-digit integer, a repeated key...)."""


def short(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters (and a few levels of nesting), for one-line messages."""
    return _REPR.repr(value)


def from_json(cls: type[T], data: Any, where: str = "", error: type[Exception] = ManifestError,
              fix: str | None = None) -> T:
    """Build dataclass ``cls`` from JSON ``data``; raise ``error`` listing every problem (then ``fix``)."""
    problems: list[str] = []
    where = where or cls.__name__
    value = None
    if _too_deep(data):  # parse_json refuses such files; this is for values built in Python (to_json recurses)
        problems.append(f"{where}: nests lists and objects more than {MAX_JSON_DEPTH} levels deep")
    else:
        value = _convert(cls, data, where, problems)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise error(shown + (f"; {fix}" if fix else ""))
    return value


def parse_json(text: str) -> Any:
    """``json.loads`` for JSON edgegen did not write: json.JSONDecodeError for text that is not JSON, and
    :class:`JSONValueError` for NaN/Infinity (Python accepts them, JSON does not, and ``info --json`` would
    print them back as invalid JSON), numbers too large for a float, integers of more than
    ``MAX_INT_DIGITS`` digits, a key repeated in one object (parsers disagree on which one counts) and
    nesting deeper than ``MAX_JSON_DEPTH``."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except RecursionError:   # json's C scanner stops near Python's recursion limit (1000 levels)
        raise JSONValueError(f"it nests lists and objects more than {MAX_JSON_DEPTH} levels deep") from None
    if _too_deep(value):
        raise JSONValueError(f"it nests lists and objects more than {MAX_JSON_DEPTH} levels deep")
    return value


def _too_deep(value: Any) -> bool:
    """Whether lists and objects nest more than MAX_JSON_DEPTH levels (iterative: it must not recurse itself)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, tuple, dict)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def _refuse_constant(name: str) -> Any:
    raise JSONValueError(f"it holds {name}, which is not a JSON number (JSON numbers are finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONValueError(f"it holds the number {short(text)}, too large for a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONValueError(f"it holds an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS} "
                             "are allowed)")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONValueError(f"it repeats the key {short(key)} in one object")
            seen.add(key)
    return out


def _key_path(where: str, key: Any) -> str:
    key = str(key)
    return f"{where}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{where}[{short(key)}]"


def to_json(value: Any) -> Any:
    """The JSON form of a dataclass tree (tuples become lists, ``None`` fields are kept)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                "dict": "an object", "tuple": "a list"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, problems)
    if origin in (Union, types.UnionType):
        return _convert_union(typing.get_args(tp), value, where, problems)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # a list or object is unhashable: compare it to the choices without `in` raising TypeError
        if isinstance(value, (bool, list, dict)) or value not in allowed:
            problems.append(f"{where}: {short(value)} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {_json_kind(value)}")
            return ()
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):  # tuple[X, Y]: exactly that many items
            problems.append(f"{where}: expected a list of {len(args)} items, got {len(value)}")
            return ()
        return tuple(_convert(t, v, f"{where}[{i}]", problems) for i, (t, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {_json_kind(value)}")
            return {}
        _key_tp, item_tp = typing.get_args(tp)
        return {str(k): _convert(item_tp, v, _key_path(where, k), problems) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {_json_kind(value)}")
            return value
        return float(value)
    if tp in (str, int, bool):
        # bool is a subclass of int in Python but not in JSON: refuse true for an integer.
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{where}: expected {_type_name(tp)}, got {_json_kind(value)}")
        return value
    raise TypeError(f"strict.from_json does not support the field type {tp!r} (at {where})")


def _convert_union(options: tuple[Any, ...], value: Any, where: str, problems: list[str]) -> Any:
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        trial: list[str] = []
        result = _convert(option, value, where, trial)
        if not trial:
            return result
    names = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
    problems.append(f"{where}: expected {names}, got {_json_kind(value)}")
    return value


def _convert_dataclass(cls: Any, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object, got {_json_kind(value)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{where}: unknown key {short(key)} (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}", problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"{where}: missing required key {name!r}")
    if problems:
        return None
    try:
        return cls(**kwargs)
    except FieldError as exc:  # __post_init__ checks that name their field
        problems.extend(f"{where}.{name}: {message}" for name, message in exc.problems)
        return None
    except (ValueError, TypeError) as exc:  # __post_init__ checks of the dataclass
        problems.append(f"{where}: {exc}")
        return None
