"""Strict conversion between JSON values and frozen dataclasses (standard library only).

One small mechanism serves the manifest and every family's ``sampler`` and ``defaults``
sections: a frozen dataclass declares the fields and their types, and
:func:`from_json` builds it from parsed JSON, refusing unknown keys, missing keys and
values of the wrong type, each named by its full path (``graphs.decoder.inputs[2].dtype``).
All problems are collected and reported at once.

Supported field types: ``str``, ``int``, ``float`` (ints are accepted), ``bool``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``Any`` (any JSON value),
``Literal[...]``, ``int | str`` unions of scalars, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

from edgegen.errors import ManifestError

T = TypeVar("T")

_MISSING = object()


def from_json(cls: type[T], data: Any, where: str = "", error: type[Exception] = ManifestError) -> T:
    """Build dataclass ``cls`` from JSON ``data``; raise ``error`` listing every problem."""
    problems: list[str] = []
    value = _convert(cls, data, where or cls.__name__, problems)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise error(shown)
    return value


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
        if value not in allowed or isinstance(value, bool):
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {_json_kind(value)}")
            return ()
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {_json_kind(value)}")
            return {}
        _key_tp, item_tp = typing.get_args(tp)
        return {str(k): _convert(item_tp, v, f"{where}.{k}", problems) for k, v in value.items()}
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
            problems.append(f"{where}: unknown key {key!r} (known keys: {known})")
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
    except (ValueError, TypeError) as exc:  # __post_init__ checks of the dataclass
        problems.append(f"{where}: {exc}")
        return None
