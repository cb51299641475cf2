"""Many clients on one language model: a worker thread that steps every running request as one batch, new
requests joining it at step boundaries (continuous, iteration-level batching over the runtime's step API).

Each loaded text model gets one :class:`LMScheduler` with its own worker thread, so the model's graph runs one
at a time and in a known order.  A request (:class:`LMRequest`: one prompt's token ids, its settings, ``n``
rows) waits in a bounded FIFO queue (full: :class:`QueueFullError`, HTTP 429).  The worker loops:

1. **admit** at the step boundary every waiting request that fits (at most ``max_batch`` live rows in all);
   requests admitted together whose resolved settings are equal share one *cohort*: one
   ``lm.generator(settings, batch=rows)`` that runs their prompts as one left-padded batch and gives each its
   first token;
2. **merge**: the new cohorts' rows join the running batch
   (:class:`~edgegen.runtimes.lm.batch_engine.MergedBatch`: their caches padded on the left to the batch's
   length and stacked), so **one graph run per step** computes the next token of every live row of every
   request, whatever step it joined at; each cohort then samples its rows from those logits with its own
   generator (its settings, random stream, grammar, penalties' history), decodes incrementally, cuts at stop
   strings and hands the text to the request's :class:`Sink` as it comes;
3. a row that ends is reported at once (its client is answered) and leaves the batch; leading columns that no
   live row uses are cut, so the batch is as long as its longest live row.

Greedy requests get the tokens they get alone (rows are independent given the mask; tested).  Requests run in a
cohort of their own when sharing a *generator* would change their result: a ``response_format`` (its grammar
state is per generator) or a seeded sampling run (its random stream); they still join the merged batch.

Models whose decoder cannot take left-padded rows (GroupQueryAttention artifacts, ``padding: none``) and models
without a KV cache are not merged (``MergedBatch.supports``): there each cohort runs its own steps (one graph
run per cohort and step; inside it, rows of different lengths run one by one, as the runtime decides), and a
finished row stays in its cohort until the cohort ends.

A cancelled request (its client went away) stops within one step: its rows end at the next boundary and leave
the batch; a cohort whose requests are all cancelled has its generator's cancel event set, which stops even a
graph run of its own in progress (:mod:`edgegen.runtimes.run_control`); closing the scheduler stops the
merged run in progress.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgegen.errors import CancelledError, EdgegenError
from edgegen.runtimes.lm.batch_engine import MergedBatch
from edgegen.runtimes.text.decoding import IncrementalDecoder, StopStringMatcher
from edgegen.runtimes.text.settings import GenerationSettings, Resolved, resolve

__all__ = ["LMRequest", "LMScheduler", "QueueFullError", "RowResult", "ShuttingDownError", "Sink"]


class QueueFullError(EdgegenError):
    """The model's queue of waiting requests is full (HTTP 429)."""


class ShuttingDownError(EdgegenError):
    """The server is stopping; the request was not (or not completely) run (HTTP 503)."""


@dataclass(frozen=True)
class RowResult:
    """One finished row (one ``choice``) of a request."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str                   # edgegen's: "eos" | "stop" | "length" | "cancelled"
    logprobs: tuple[Any, ...] | None     # TokenLogprob per generated token, with logprobs on


class Sink(Protocol):
    """Where a request's results go; called from the worker thread (implementations hand them over)."""

    def piece(self, row: int, text: str, logprobs: Sequence[Any]) -> None: ...
    def done(self, row: int, result: RowResult) -> None: ...
    def error(self, exc: BaseException) -> None: ...


@dataclass(eq=False)
class LMRequest:
    """One prompt to run ``n`` times (``n`` rows, OpenAI's choices) with ``settings``."""

    prompt_ids: list[int]
    settings: GenerationSettings
    n: int
    sink: Sink
    cancel: threading.Event = field(default_factory=threading.Event)
    received: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    cohort: Any = None                   # the _Cohort running it, once admitted


class _Cohort:
    """Requests admitted together with equal settings: one generator, one row per choice."""

    def __init__(self, lm: Any, requests: list[LMRequest], resolved: Resolved, settings: GenerationSettings) -> None:
        self.requests = requests
        self.owner = [(r, j) for r in requests for j in range(r.n)]                 # row -> (request, choice)
        prompts = [r.prompt_ids for r, _ in self.owner]
        self.event = threading.Event()
        self.gen = lm.generator(settings, batch=len(prompts), cancel=self.event)
        self.gen.append_tokens(prompts)
        eos = frozenset() if resolved.ignore_eos else frozenset(int(i) for i in lm.sampler.eos_token_ids)
        self.stop_ids = eos | resolved.stop_token_ids      # tokens that end a row and add no text
        self.decoders = [IncrementalDecoder(lm.tokenizer, p) for p in prompts]
        self.stops = [StopStringMatcher(resolved.stop) for _ in prompts]
        self.texts = [""] * len(prompts)
        self.reported = [False] * len(prompts)
        self.logprobs_sent = [0] * len(prompts)
        self.merged = False              # its rows are in the scheduler's merged batch (after its first token)

    def live_rows(self) -> int:
        return int((~self.gen.finished).sum())


class LMScheduler:
    """The worker of one text model (see the module docstring).  ``metrics`` (optional) gets ``queued(n)``,
    ``running(rows)``, ``prompt_tokens(n)``, ``generated_tokens(n)`` and ``first_token(seconds)``."""

    def __init__(self, lm: Any, *, name: str, max_batch: int = 16, max_queue: int = 64, metrics: Any = None) -> None:
        self.lm, self.name, self.max_batch, self.max_queue, self.metrics = lm, name, max_batch, max_queue, metrics
        self._cond = threading.Condition()
        self._waiting: deque[LMRequest] = deque()
        self._cohorts: list[_Cohort] = []          # the worker's alone (read elsewhere under _cond)
        self._closing = False
        self._stop = threading.Event()             # set on close: stops a merged run in progress
        #: the running rows of every cohort as one batch (a model whose runs can merge), else None
        self.merged: MergedBatch | None = MergedBatch(lm, cancel=self._stop) if MergedBatch.supports(lm) else None
        self._thread = threading.Thread(target=self._loop, name=f"edgegen-serve-{name}", daemon=True)
        self._thread.start()

    # -- called from the server's threads -----------------------------------------------------------------
    def submit(self, requests: Sequence[LMRequest]) -> None:
        """Queue ``requests`` (all or none: a full queue raises QueueFullError, a closing one ShuttingDownError)."""
        with self._cond:
            if self._closing:
                raise ShuttingDownError("the server is shutting down; retry on another server or later")
            if len(self._waiting) + len(requests) > self.max_queue:
                raise QueueFullError(f"model {self.name!r} has {len(self._waiting)} requests waiting (the queue holds "
                                     f"{self.max_queue}, --max-queue); retry after a moment")
            self._waiting.extend(requests)
            self._report_queue()
            self._cond.notify()

    def cancel(self, request: LMRequest) -> None:
        """Stop ``request`` (its client went away): dropped from the queue, or its rows ended within a step."""
        request.cancel.set()
        with self._cond:
            if request in self._waiting:
                self._waiting.remove(request)
                self._report_queue()
            cohort = request.cohort
            if cohort is not None and all(r.cancel.is_set() for r in cohort.requests):
                cohort.event.set()       # stops the graph run in progress, too

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: running and waiting requests end with ShuttingDownError."""
        with self._cond:
            self._closing = True
            self._stop.set()
            for cohort in self._cohorts:
                cohort.event.set()
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # -- the worker thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._cohorts and not self._closing:
                    self._cond.wait()
                if self._closing:
                    break
            fresh = self._admit()
            for cohort in list(self._cohorts):
                if cohort in fresh or cohort.merged:
                    continue
                if not self._step(cohort):     # a cohort of its own (a model whose runs cannot merge)
                    self._drop(cohort)
            for cohort in fresh:               # the prompt's forward and first token, in its own run
                if not self._step(cohort):
                    self._drop(cohort)
                elif self.merged is not None:
                    try:
                        self.merged.add(cohort.gen)
                    except Exception as exc:  # noqa: BLE001  (its requests fail, the batch and the server go on)
                        for request in cohort.requests:
                            request.sink.error(exc)
                        self._drop(cohort)
                        continue
                    cohort.merged = True
            if self.merged is not None:     # the fresh ones too: their first token is pending
                self._step_merged([c for c in self._cohorts if c.merged])
            if self.metrics is not None:
                self.metrics.running(sum(c.live_rows() for c in self._cohorts))
        stopped = ShuttingDownError("the server shut down before this request finished")
        with self._cond:
            pending = [r for c in self._cohorts for r in c.requests] + list(self._waiting)
            self._cohorts.clear()
            self._waiting.clear()
        for request in pending:
            request.sink.error(stopped)

    def _drop(self, cohort: _Cohort) -> None:
        """Forget ``cohort`` (ended, failed or cancelled): its rows leave the merged batch at its next step."""
        for b in range(cohort.gen.batch):
            cohort.gen.finish(b, "cancelled")          # a no-op for rows that ended (and were reported)
        with self._cond:
            self._cohorts.remove(cohort)

    def _step_merged(self, cohorts: list[_Cohort]) -> None:
        """One graph run for every row of the merged batch, then each cohort samples its tokens from it."""
        assert self.merged is not None
        live = [c for c in cohorts if self._check(c)]
        for cohort in cohorts:
            if cohort not in live:
                self._drop(cohort)
        self.merged.remove_done()
        if not live:
            return
        try:
            self.merged.step()
        except Exception as exc:  # noqa: BLE001  (a failed run fails its requests, not the server)
            if isinstance(exc, CancelledError):     # only the server closing cancels the merged batch
                exc = ShuttingDownError("the server shut down before this request finished")
            for cohort in live:
                for request in cohort.requests:
                    request.sink.error(exc)
                self._drop(cohort)
            self.merged = MergedBatch(self.lm, cancel=self._stop) if not self._closing else None
            return
        for cohort in live:
            if not self._step(cohort):
                self._drop(cohort)
        self.merged.remove_done()

    def _admit(self) -> list[_Cohort]:
        """Take the waiting requests that fit into cohorts (FIFO; one larger than the room waits for it); the new
        cohorts."""
        with self._cond:
            room = self.max_batch - sum(c.live_rows() for c in self._cohorts)
            taken: list[LMRequest] = []
            while self._waiting and (self._waiting[0].n <= room or (not self._cohorts and not taken)):
                request = self._waiting.popleft()
                if not request.cancel.is_set():
                    taken.append(request)
                    room -= request.n
            if taken:
                self._report_queue()
        groups: dict[Any, list[LMRequest]] = {}
        for request in taken:
            groups.setdefault(self._batch_key(request), []).append(request)
        fresh: list[_Cohort] = []
        for group in groups.values():
            self._start(group, fresh)
        return fresh

    def _batch_key(self, request: LMRequest) -> Any:
        """Requests with equal keys may share a generator: their resolved settings, unless sharing would change
        what they get (a grammar's state, a seeded random stream): then a key of their own."""
        try:
            resolved = resolve(request.settings, self.lm.defaults)
        except EdgegenError:
            return object()            # reported by _start, alone
        if resolved.response_format is not None or (resolved.seed is not None and resolved.sampling.temperature > 0):
            return object()
        return resolved

    def _start(self, group: list[LMRequest], fresh: list[_Cohort]) -> None:
        try:
            resolved = resolve(group[0].settings, self.lm.defaults)
            cohort = _Cohort(self.lm, group, resolved, group[0].settings)
        except Exception as exc:  # noqa: BLE001  (the request's error goes to its client, the worker goes on)
            if len(group) > 1:         # whose fault it was: each alone
                for request in group:
                    self._start([request], fresh)
                return
            group[0].sink.error(exc)
            return
        with self._cond:
            for request in group:
                request.cohort = cohort
            self._cohorts.append(cohort)
            cancelled = all(r.cancel.is_set() for r in group)
        fresh.append(cohort)
        if cancelled:
            cohort.event.set()
        if self.metrics is not None:
            self.metrics.prompt_tokens(sum(len(r.prompt_ids) * r.n for r in group))

    def _check(self, c: _Cohort) -> bool:
        """End the rows of ``c`` whose requests were cancelled (reporting what ended); False if none is left."""
        gen = c.gen
        for b, (request, _) in enumerate(c.owner):
            if request.cancel.is_set() and not gen.finished[b]:
                gen.finish(b, "cancelled")
        self._report_ended(c)
        return not gen.is_done()

    def _step(self, c: _Cohort) -> bool:
        """One token for each live row of ``c`` (in the merged batch: sampled from the logits its run gave);
        False once the cohort is done."""
        gen = c.gen
        if not self._check(c):
            return False
        live = np.flatnonzero(~gen.finished)
        try:
            tokens = gen.generate_next_token()                                     # [B]
        except CancelledError:         # every request of the cohort cancelled, or the server closing
            if self._closing:
                stopped = ShuttingDownError("the server shut down before this request finished")
                for request in c.requests:
                    request.sink.error(stopped)
            else:
                self._report_ended(c)
            return False
        except Exception as exc:  # noqa: BLE001  (a failed run fails its requests, not the server)
            for request in c.requests:
                request.sink.error(exc)
            return False
        now = time.perf_counter()
        for request in c.requests:
            if request.first_token_at is None:
                request.first_token_at = now
                if self.metrics is not None:
                    self.metrics.first_token(now - request.received)
        if self.metrics is not None:
            self.metrics.generated_tokens(len(live))
        for b in live:
            self._emit(c, int(b), int(tokens[b]))
        self._report_ended(c)
        return not gen.is_done()

    def _emit(self, c: _Cohort, b: int, token: int) -> None:
        """Row ``b``'s new token as text (as TextModel's own loop decodes it: stop tokens add none)."""
        gen = c.gen
        piece = c.decoders[b].add([] if token in c.stop_ids else [token])
        if gen.finished[b]:
            piece += c.decoders[b].flush()
        out, stopped = c.stops[b].push(piece)
        if not stopped and gen.finished[b]:
            out += c.stops[b].flush()
            stopped = c.stops[b].stopped          # a stop string settled only at the end
        if stopped:                               # cut at a stop string, even if the length ran out here
            gen.finish(b, "stop")
            gen.finish_reasons[b] = "stop"
        new = []
        if gen.logprobs is not None:
            new = gen.logprobs[b][c.logprobs_sent[b]:]
            c.logprobs_sent[b] = len(gen.logprobs[b])
        c.texts[b] += out
        if out or new:
            request, choice = c.owner[b]
            request.sink.piece(choice, out, new)

    def _report_ended(self, c: _Cohort) -> None:
        gen = c.gen
        for b in np.flatnonzero(gen.finished):
            if c.reported[b]:
                continue
            c.reported[b] = True
            request, choice = c.owner[b]
            request.sink.done(choice, RowResult(
                text=c.texts[b], token_ids=tuple(gen.tokens(int(b))),
                finish_reason=gen.finish_reasons[b] or "length",
                logprobs=None if gen.logprobs is None else tuple(gen.logprobs[b])))

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queued(len(self._waiting))
