"""Stopping a graph run in progress (a cancel event set from another thread, a time limit per run), and
saying in one line why a run failed.

ONNX Runtime stops a run when the ``RunOptions`` it was given gets ``terminate = True``, set from any
thread while the run is in progress (that is what the flag is for): the run raises at its next node, or at
the next iteration of a ``Loop`` node.  Every run edgegen makes goes through
:class:`~edgegen.runtimes.session.GuardedSession`, which calls :func:`watched_run`: while a run has a time
limit or a cancel event, it gets a fresh RunOptions registered with the one watchdog thread of the process,
which sets ``terminate`` when the limit passes or an event is set.  The run's exception then becomes a
:class:`RunTimeoutError` or a :class:`CancelledError`.

Cancel events come from :func:`cancel_on` scopes, per thread (a context variable), so the family runtimes
need no parameter on each graph call: ``with cancel_on(event): model.sample(4)`` makes every graph run of
that call stoppable by ``event.set()`` from any thread.  The language models' ``cancel=`` event and
``Generator.cancel()`` open such a scope around their steps.

A plain ``threading.Event`` tells no one that it was set, so the watchdog polls the events of the runs in
progress every :data:`POLL_S`; it sleeps (no wake-ups) while no run is watched.  A run with neither a limit
nor an event is called straight through, with no RunOptions of its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import onnxruntime as ort

from edgegen.errors import CancelledError, GraphMismatchError, InvalidArgumentError, RunTimeoutError

__all__ = ["POLL_S", "cancel_on", "check_timeout", "explain_failure", "watched_run"]

#: how often the watchdog looks at the cancel events of the runs in progress (the most a cancel waits, plus
#: the time ONNX Runtime takes to reach its next node)
POLL_S = 0.05
#: ONNX Runtime logs a terminated run as an error on stderr, besides raising; the exception says it all
_QUIET = 4

T = TypeVar("T")

_cancel_events: contextvars.ContextVar[tuple[threading.Event, ...]] = contextvars.ContextVar(
    "edgegen_cancel_events", default=())


@contextlib.contextmanager
def cancel_on(event: threading.Event | None) -> Iterator[None]:
    """While the block runs (in this thread), ``event.set()`` from any thread stops the graph run in progress
    and refuses the next ones: they raise :class:`CancelledError`.  Scopes nest: any of their events cancels.
    ``None`` opens no scope."""
    if event is None:
        yield
        return
    if not callable(getattr(event, "is_set", None)):
        raise InvalidArgumentError(f"cancel must be a threading.Event (set it to cancel), got {type(event).__name__}")
    token = _cancel_events.set((*_cancel_events.get(), event))
    try:
        yield
    finally:
        _cancel_events.reset(token)


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds, or None for no limit; anything else is an InvalidArgumentError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds (the most one graph run may "
                                   f"take; leave it out for no limit), got {timeout!r}")
    return float(timeout)


class _Watch:
    """One run in progress: its RunOptions, when it must end, the events that cancel it, what stopped it."""

    __slots__ = ("options", "deadline", "events", "fired")

    def __init__(self, options: ort.RunOptions, deadline: float, events: tuple[threading.Event, ...]) -> None:
        self.options, self.deadline, self.events = options, deadline, events
        self.fired: str | None = None          # "timeout" | "cancel", set by the watchdog thread only

    def next_check(self, now: float) -> float:
        return min(self.deadline, now + POLL_S) if self.events else self.deadline

    def check(self, now: float) -> None:
        if any(e.is_set() for e in self.events):
            self.fired = "cancel"
        elif now >= self.deadline:
            self.fired = "timeout"
        if self.fired is not None:
            self.options.terminate = True      # read by the running session's executor between nodes


class _Watchdog:
    """One daemon thread that terminates the watched runs whose deadline passed or whose event was set."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watches: set[_Watch] = set()
        self._wake_at = math.inf               # when the thread looks next (inf: when notified)
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edgegen-run-watchdog", daemon=True)
                self._thread.start()
            # a notify only when this run needs a look before the planned one (not on every LM step)
            if watch.next_check(time.monotonic()) < self._wake_at:
                self._wake_at = -math.inf
                self._cond.notify()

    def remove(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wake = math.inf
                for watch in self._watches:
                    if watch.fired is None:
                        watch.check(now)
                    if watch.fired is None:
                        wake = min(wake, watch.next_check(now))
                self._wake_at = wake
                self._cond.wait(None if wake == math.inf else max(wake - now, 0.001))


_watchdog = _Watchdog()


def _reset_after_fork() -> None:
    global _watchdog
    _watchdog = _Watchdog()                    # the parent's thread (and maybe its held lock) is not in the child


if hasattr(os, "register_at_fork"):           # POSIX only (Windows has no fork)
    os.register_at_fork(after_in_child=_reset_after_fork)


def watched_run(run: Callable[[ort.RunOptions | None], T], *, label: str, timeout: float | None,
                run_options: ort.RunOptions | None = None) -> T:
    """``run(options)`` under ``timeout`` (seconds, or None) and this thread's :func:`cancel_on` events.

    ``label`` names the graph in the errors; ``run_options`` (the caller's own) is watched instead of a fresh
    one.  An event set before the run starts refuses it."""
    events = _cancel_events.get()
    if timeout is None and not events:
        return run(run_options)
    if any(e.is_set() for e in events):
        raise CancelledError(f"cancelled before {label} ran")
    options = run_options
    if options is None:
        options = ort.RunOptions()
        options.log_severity_level = _QUIET
    watchdog = _watchdog
    watch = _Watch(options, math.inf if timeout is None else time.monotonic() + timeout, events)
    watchdog.add(watch)
    try:
        return run(options)
    except Exception:  # noqa: BLE001  (onnxruntime raises its own pybind types; the watch says why it ended)
        if watch.fired == "timeout":
            raise RunTimeoutError(f"{label} ran longer than the time limit of {timeout:g} s and was stopped; raise "
                                  "--timeout (edgegen.load(timeout=...)), or re-convert the model if a graph loops "
                                  "forever") from None
        if watch.fired == "cancel":
            raise CancelledError(f"cancelled while {label} was running") from None
        raise
    finally:
        watchdog.remove(watch)


_NODE_FAILURE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)")
_OUT_OF_MEMORY = re.compile(r"allocate|bad_alloc|out of memory|Available memory of", re.I)


def explain_failure(exc: Exception, label: str) -> None:
    """Raise one line for ONNX Runtime's failure ``exc`` during a run of ``label`` (an index out of range in a
    hostile graph, an exhausted arena): which node and why.  ONNX Runtime raises its own pybind types (a plain
    RuntimeError through IO binding); anything else is left to the caller (returns)."""
    text = str(exc).strip()
    if not (type(exc).__module__.startswith("onnxruntime")
            or (type(exc) is RuntimeError and text.startswith("Error in execution"))):
        return
    first = text.splitlines()[0] if text else type(exc).__name__
    node = _NODE_FAILURE.search(first)
    where = f"{label}, {node.group(1)} node {node.group(2)!r}" if node else label
    cause = (node.group(3) if node else first)[:300]
    if _OUT_OF_MEMORY.search(first):
        raise InvalidArgumentError(f"ONNX Runtime ran out of memory running {where} ({cause}); ask for less (fewer "
                                   "images or frames, a shorter prompt, fewer tokens)") from None
    raise GraphMismatchError(f"ONNX Runtime failed running {where} ({cause}); the artifact's graphs and settings "
                             "disagree: re-convert the model") from None
