"""The jinja2 environment chat templates run in: transformers' (``utils/chat_template_utils.py``,
``_compile_jinja_template``), so a template renders here what ``apply_chat_template`` renders.

An ``ImmutableSandboxedEnvironment`` (no attribute access to internals such as ``__class__``, no mutation of the
messages or any list or dict) with ``trim_blocks`` and ``lstrip_blocks``, ``loopcontrols``, a ``{% generation %}``
block that renders its body, transformers' ``tojson`` (no HTML escaping; ``indent``, ``separators``,
``sort_keys``), ``raise_exception`` and ``strftime_now``.  Two additions, since a template is code from whoever
made the model: ``*`` and ``**`` that would build a huge string, list or integer are refused (a hostile template
must not exhaust memory), and a render that runs longer than :data:`RENDER_TIMEOUT_S` (a ``range(100000)`` loop
inside another) is stopped: a timer thread raises an exception in the rendering thread, which CPython delivers
between two bytecodes of the template's compiled code.  Every failure is one InvalidArgumentError line.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import threading
from collections.abc import Iterator
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from edgegen.errors import InvalidArgumentError
from edgegen.strict import short

__all__ = ["render", "template_problems"]

#: The largest string or list a template's ``*`` may build, and the largest integer (in bits) its ``**`` may.
MAX_REPEAT = 1 << 20
MAX_POWER_BITS = 1 << 16


#: A chat template's render that runs longer than this (seconds) is stopped; real ones take a millisecond.
RENDER_TIMEOUT_S = 5.0


class _RenderTimeout(BaseException):
    """Raised in the rendering thread by :func:`_deadline`'s timer (a BaseException: no template code catches it)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the calling thread's Python code with :class:`_RenderTimeout` after ``seconds``.  The timer
    injects only while the block runs (a lock orders it against the block's end), and an exception it injected
    is raised before the block is left, so it never escapes into the caller's later code."""
    target, lock, state = threading.get_ident(), threading.Lock(), {"done": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(_RenderTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
        timer.cancel()


def render(source: str, label: str, variables: Mapping[str, Any]) -> str:
    """``source`` rendered with ``variables``; its failures as one InvalidArgumentError line naming ``label``."""
    compiled = _compile(source)
    try:
        with _deadline(RENDER_TIMEOUT_S):
            return compiled.render(variables)
    except _RenderTimeout:
        raise InvalidArgumentError(f"the chat template {label} ran over {RENDER_TIMEOUT_S:g} s on these messages "
                                   "and was stopped (a template that loops without end?); pass another template"
                                   ) from None
    except _Refusal as exc:
        raise InvalidArgumentError(f"the chat template refused these messages: {_one_line(exc)}") from None
    except RecursionError:
        raise InvalidArgumentError(f"the chat template {label} recursed without end on these messages; pass "
                                   "another template") from None
    except Exception as exc:  # an undefined attribute, a SecurityError, a TypeError of the template's code
        line = _template_line(exc)
        where = f"the chat template {label}{f' at line {line}' if line else ''}"
        if isinstance(exc, SecurityError):
            raise InvalidArgumentError(f"{where} does what the sandbox forbids ({_one_line(exc).rstrip('.')}) "
                                       "and was stopped; the template is unsafe: pass another one") from None
        raise InvalidArgumentError(
            f"{where} failed on these messages ({type(exc).__name__}: {_one_line(exc).rstrip('.')}); check the "
            "messages (roles, content, tool calls) or pass another template") from None


def template_problems(templates: Mapping[str, str]) -> list[str]:
    """One line per template that does not compile: "template 'default' does not compile (jinja: ... at
    line 3)"; empty when all do."""
    problems = []
    for name, source in templates.items():
        if not isinstance(source, str):
            problems.append(f"template {short(name)} is {type(source).__name__}, not a string")
            continue
        try:
            _compile(source)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"template {name!r} does not compile (jinja: {_one_line(exc.message or exc)} at line "
                            f"{exc.lineno})")
        except RecursionError:
            problems.append(f"template {name!r} does not compile (it nests too deeply)")
    return problems


class _Refusal(jinja2.TemplateError):
    """``raise_exception(message)`` in a template: the template refuses the messages."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers' AssistantTracker, which
    also records where the assistant's text is for training masks; not needed to generate)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Environment(ImmutableSandboxedEnvironment):
    """transformers' sandbox, with ``*`` and ``**`` refused where they would build a huge value."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"the template repeats a value {n:,} times (more than {MAX_REPEAT:,} items)")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and left.bit_length() * right > MAX_POWER_BITS:
            raise SecurityError(f"the template raises {short(left)} to the power {right:,} (a number of more than "
                                f"{MAX_POWER_BITS:,} bits)")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: Any) -> None:
    raise _Refusal(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson``: no HTML escaping (jinja's own escapes <, >, &, ')."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> _Environment:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _one_line(exc: Any) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _template_line(exc: BaseException) -> int | None:
    """The template line an error was raised at (jinja rewrites tracebacks to point into ``<template>``)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
