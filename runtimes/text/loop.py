"""The text conveniences shared by every language-model runtime (causal-lm, rnn-lm).

A runtime supplies a tokenizer, its artifact defaults, ``_prompt_ids`` (checks and
encodes one prompt) and ``_new_generator`` (a step generator: ``append_tokens``,
``generate_next_token``, ``is_done``, ``finished``, ``finish_reasons``, ``tokens``); this
class turns that loop into text: ``complete`` (with finish reasons and timings),
``generate``, ``generate_batch``, ``stream`` and ``stream_batch``, streaming through a
UTF-8-safe incremental detokenizer and stop-string matching.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tokenizers

from edgegen.errors import CancelledError, InvalidArgumentError, ManifestError
from edgegen.runtimes.run_control import cancel_on
from edgegen.runtimes.text.settings import GenerationSettings, Resolved, check_text, resolve, sources
from edgegen.runtimes.text.logprobs import TokenLogprob, token_logprobs
from edgegen.runtimes.text.sampling import sample
from edgegen.runtimes.text.decoding import IncrementalDecoder, StopStringMatcher
from edgegen.runtimes.text.tokenizer import check_vocabulary, load_tokenizer, tokenizer_call


@dataclass(frozen=True)
class Completion:
    """The result of generating from one prompt."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str            # "eos" | "stop" | "length" | "cancelled"
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    #: The most new tokens this run could give: max_new_tokens, cut to the room the context left after the
    #: (longest) prompt; below the setting means the context clamped it.  None: not recorded.
    token_budget: int | None = None
    #: With ``logprobs=True``: one entry per generated token (a stop token included), else None.
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: Prompt tokens whose KV came from a cache (a chat session's last turn, the prefix cache), not run again.
    cached_tokens: int = 0


class StepGenerator:
    """What every LM generator shares: per-run random state, stop ids, finish bookkeeping, and
    ``generate_next_token`` (check, sample, record).  Subclasses own the graph calls and the
    history: ``_ids`` [B, L], ``_real()``, ``next_logits()`` and ``_advance(tokens)``."""

    def __init__(self, eos_token_ids: Sequence[int], settings: Resolved, batch: int,
                 cancel: threading.Event | None) -> None:
        if batch < 1:
            raise InvalidArgumentError(f"batch must be >= 1, got {batch}")
        self.settings, self.batch = settings, batch
        self.rng = np.random.default_rng(settings.seed)
        self.cancel_event = cancel or threading.Event()
        self._eos = frozenset() if settings.ignore_eos else frozenset(eos_token_ids)
        self._stop_ids = self._eos | settings.stop_token_ids
        self._new: list[list[int]] = [[] for _ in range(batch)]   # generated ids per row
        self._budget = settings.max_new_tokens                    # subclasses may bound it further
        self._ids = np.zeros((batch, 0), dtype=np.int64)          # [B, L] all tokens, left-padded
        self.finished = np.zeros(batch, dtype=bool)
        self.finish_reasons: list[str | None] = [None] * batch
        #: per row, with logprobs on: each generated token's TokenLogprob
        self.logprobs: list[list[TokenLogprob]] | None = \
            [[] for _ in range(batch)] if settings.top_logprobs is not None else None
        #: a token constraint (:mod:`edgegen.runtimes.text.constrained`): ``mask(logits, live) -> logits`` before
        #: sampling, ``advance(tokens, live) -> rows it ended`` after; set before the first step
        self.constraint: Any = None
        #: prompt tokens of row 0 whose KV a cache gave (set by a runtime that can resume one)
        self.reused_tokens = 0

    def _check_rows(self, rows: Sequence[Sequence[int]]) -> None:
        if len(rows) != self.batch:
            raise InvalidArgumentError(f"append_tokens got {len(rows)} rows for a batch of {self.batch}")
        if min(len(r) for r in rows) == 0:
            raise InvalidArgumentError("a prompt is empty: give at least one token of text")

    def next_logits(self) -> np.ndarray:
        """The logits [B, V] the next token will be sampled from."""
        raise NotImplementedError

    def _real(self) -> np.ndarray:
        """[B, L] bool: which history positions are real tokens (False = left padding)."""
        raise NotImplementedError

    def _advance(self, tokens: np.ndarray) -> None:
        """Append the sampled tokens [B] to the history and prepare the next logits."""
        raise NotImplementedError

    def generate_next_token(self) -> np.ndarray:
        """Sample one token per row [B] (finished rows repeat their last token and are ignored)."""
        if self.is_done():
            raise InvalidArgumentError("generation is done; check is_done() before stepping")
        if self.cancel_event.is_set():
            self._mark_cancelled()
            raise CancelledError("generation was cancelled")
        with self.cancellable():
            return self._step()

    def _step(self) -> np.ndarray:
        logits, history = self.next_logits(), self._ids                            # [B, V], [B, L]
        live = ~self.finished                                                       # [B]
        allowed = logits if self.constraint is None else self.constraint.mask(logits, live)   # [B, V]
        tokens = sample(allowed, self.settings.sampling, self.rng, history=history, history_mask=self._real())
        tokens = np.where(self.finished, history[:, -1], tokens).astype(np.int64)   # [B] finished rows repeat
        if self.logprobs is not None:
            rows = np.flatnonzero(live)
            for b, entry in zip(rows, token_logprobs(logits[rows], tokens[rows], self.settings.top_logprobs or 0)):
                self.logprobs[b].append(entry)
        ended = set(self.constraint.advance(tokens, live)) if self.constraint is not None else set()
        for b in np.flatnonzero(live):
            token = int(tokens[b])
            self._new[b].append(token)
            if token in self._stop_ids:
                self.finish(b, "eos" if token in self._eos else "stop")
            elif b in ended:   # the constraint's grammar is complete and allows nothing more
                self.finish(b, "stop")
            elif len(self._new[b]) >= self._budget:
                self.finish(b, "length")
        self._advance(tokens)
        return tokens

    def is_done(self) -> bool:
        return bool(self.finished.all())

    def finish(self, row: int, reason: str) -> None:
        """Mark a row finished (the caller does this for stop strings it detects in text)."""
        if not self.finished[row]:
            self.finished[row] = True
            self.finish_reasons[row] = reason

    def cancel(self) -> None:
        """Stop from any thread: a graph run in progress is interrupted, and the step (or the next one)
        raises CancelledError."""
        self.cancel_event.set()

    @contextlib.contextmanager
    def cancellable(self) -> Iterator[None]:
        """Around this run's graph calls: the cancel event stops a run in progress (run_control), and a
        cancelled step marks every row "cancelled" as the check before a step does."""
        try:
            with cancel_on(self.cancel_event):
                yield
        except CancelledError:
            self._mark_cancelled()
            raise

    def _mark_cancelled(self) -> None:
        self.finished[:] = True
        self.finish_reasons = [r or "cancelled" for r in self.finish_reasons]

    def tokens(self, row: int) -> list[int]:
        """The generated token ids of a row (a stop token id is included)."""
        return list(self._new[row])


def require_parts(artifact: Any, family: str, graph: str) -> None:
    """A clear ManifestError when an LM artifact lacks its graph or its tokenizer."""
    m = artifact.manifest
    missing = ([] if graph in m.graphs else [f"a {graph!r} graph"]) + \
              ([] if "tokenizer" in m.assets else ["a 'tokenizer' asset"])
    if missing:
        raise ManifestError(f"{artifact.root}: this {family} artifact lacks {' and '.join(missing)} "
                            f"(it has graphs {sorted(m.graphs)}, assets {sorted(m.assets)}); re-convert the model")


def load_defaults(section: Any) -> GenerationSettings:
    """The ``defaults`` section, parsed and checked the way a run checks settings (ManifestError: the
    artifact's values are at fault, not the caller's)."""
    defaults = GenerationSettings.from_manifest(section)
    try:
        resolve(GenerationSettings(), defaults)
    except InvalidArgumentError as exc:
        raise ManifestError(f"edgegen.json.defaults: {exc}; re-convert the model") from None
    return defaults


def load_checked_tokenizer(artifact: Any, graph: str, token_ids: dict[str, tuple[int, ...]]) -> tokenizers.Tokenizer:
    """Before any session opens: the checksums (the tokenizer is read before the graphs), the tokenizer
    (tokenizer.load_tokenizer), and that its ids and the sampler's fit ``graph``'s logits."""
    from edgegen.runtimes.artifact import verify_checksums

    verify_checksums(artifact)
    tokenizer = load_tokenizer(artifact)
    check_vocabulary(artifact, tokenizer, graph, token_ids)
    return tokenizer


class TextModel:
    """Text in, text out, on top of a runtime's step generator."""

    tokenizer: Any
    defaults: GenerationSettings
    sampler: Any            # its eos_token_ids end a run (and a constrained run where the grammar may end)

    def _prompt_ids(self, prompt: str, settings: Resolved) -> list[int]:
        raise NotImplementedError

    def _new_generator(self, settings: Resolved, batch: int, cancel: threading.Event | None) -> Any:
        raise NotImplementedError

    def generator(self, settings: GenerationSettings | None = None, batch: int = 1,
                  cancel: threading.Event | None = None) -> Any:
        """A step generator for one run (the caller owns the loop)."""
        resolved = resolve(settings or GenerationSettings(), self.defaults)
        gen = self._new_generator(resolved, batch, cancel)
        self._constrain(gen, resolved)
        return gen

    def _constrain(self, gen: Any, settings: Resolved) -> None:
        """Give ``gen`` the token constraint ``settings.response_format`` asks for (structured output,
        :mod:`edgegen.runtimes.text.constrained`), before any graph runs: a bad grammar fails first."""
        if settings.response_format is None:
            return
        from edgegen.runtimes.text.constrained import compile_constraint

        gen.constraint = compile_constraint(settings.response_format, self.tokenizer, self.sampler.eos_token_ids,
                                            self._vocab_size(), gen.batch, stop_ids=sorted(settings.stop_token_ids))

    def _vocab_size(self) -> int | None:
        """The width of the logits the loop samples from, where the graph fixes it (None: unknown)."""
        return None

    def settings_sources(self, settings: GenerationSettings | None = None) -> dict[str, tuple[Any, str]]:
        """Each setting's value for a run with ``settings`` and where it comes from: "caller", "artifact"
        (this artifact's defaults) or "built-in" (:func:`edgegen.runtimes.text.settings.sources`)."""
        return sources(settings or GenerationSettings(), self.defaults)

    def encode(self, text: str) -> list[int]:
        check_text(text, "the prompt")   # a lone surrogate is a TypeError inside tokenizers
        return tokenizer_call(self.tokenizer.encode, text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return tokenizer_call(self.tokenizer.decode, list(ids))

    def _encode_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidArgumentError("the prompt is empty: give some text to continue")
        ids = self.encode(prompt)
        if not ids:
            raise InvalidArgumentError("the prompt encodes to no tokens: give some text to continue")
        return ids

    # -- chat (edgegen.runtimes.text.chat) ----------------------------------------------------------
    def chat(self, messages: Sequence[dict[str, Any]], settings: GenerationSettings | None = None, *,
             template: Any = None, tools: Any = None, documents: Any = None,
             cancel: threading.Event | None = None) -> Any:
        """The assistant's reply to ``messages`` (a :class:`~edgegen.runtimes.text.chat.ChatReply`), rendered
        with the model's chat template (or ``template``: "chatml", a file) and ended at its end-of-turn tokens."""
        stream = self.chat_stream(messages, settings, template=template, tools=tools, documents=documents,
                                  cancel=cancel)
        for _ in stream:
            pass
        return stream.reply

    def chat_stream(self, messages: Sequence[dict[str, Any]], settings: GenerationSettings | None = None, *,
                    template: Any = None, tools: Any = None, documents: Any = None,
                    cancel: threading.Event | None = None) -> Any:
        """The reply's text pieces as they come (a ChatStream; its ``reply`` is set once iterated)."""
        from edgegen.runtimes.text.chat import ChatStream, chat_ids, run_chat, template_of

        chosen = template_of(self, template)
        ids = chat_ids(self, chosen, messages, tools=tools, documents=documents)
        return ChatStream(*run_chat(self, ids, chosen, settings, cancel))

    def chat_session(self, *, system: str | None = None, settings: GenerationSettings | None = None,
                     template: Any = None, tools: Any = None) -> Any:
        """A :class:`~edgegen.runtimes.text.chat.ChatSession`: a conversation that keeps its KV cache."""
        from edgegen.runtimes.text.chat import ChatSession

        return ChatSession(self, system=system, settings=settings, template=template, tools=tools)

    def _kv_start(self, gen: Any, ids: list[int], state: Any) -> list[int]:
        """Seed a batch-1 generator from a cache; the tokens still to run (a model without KV reuse: all)."""
        return ids

    def _kv_state(self, gen: Any) -> Any:
        """The finished run's cache to keep (None: this model cannot reuse one)."""
        return None

    def stream_batch(self, prompts: Sequence[str], settings: GenerationSettings | None = None,
                     cancel: threading.Event | None = None) -> Iterator[tuple[int, str]]:
        """Yield (row, text) pieces as they become final; the last state is in ``self`` of the run."""
        yield from self._run(prompts, settings, cancel, results=None)

    def complete(self, prompts: Sequence[str], settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None,
                 on_text: Callable[[int, str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[Completion]:
        """Generate for each prompt (batched); texts with finish reasons and timings.

        ``on_text(row, piece)`` is called with each piece of text as it becomes final, ``progress(steps,
        budget)`` after each decoding step (the run ends at ``budget`` steps, or sooner when every row stops).
        """
        results: list[Completion] = []
        for row, piece in self._run(prompts, settings, cancel, results=results, progress=progress):
            if on_text is not None:
                on_text(row, piece)
        return results

    def generate(self, prompt: str, settings: GenerationSettings | None = None, *, max_new_tokens: int | None = None,
                 temperature: float | None = None, seed: int | None = None) -> str:
        """The continuation of ``prompt`` as text."""
        merged = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed).over(
            settings or GenerationSettings())
        return self.complete([prompt], merged)[0].text

    def generate_batch(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[str]:
        return [c.text for c in self.complete(prompts, settings)]

    def stream(self, prompt: str, settings: GenerationSettings | None = None, *, max_new_tokens: int | None = None,
               temperature: float | None = None, seed: int | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield the continuation piece by piece, never splitting a character."""
        merged = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed).over(
            settings or GenerationSettings())
        for _row, piece in self._run([prompt], merged, cancel, results=None):
            yield piece

    def _run(self, prompts: Sequence[str], settings: GenerationSettings | None, cancel: threading.Event | None,
             results: list[Completion] | None,
             progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, str]]:
        if isinstance(prompts, str) or not prompts:
            raise InvalidArgumentError("prompts must be a non-empty list of strings")
        resolved = resolve(settings or GenerationSettings(), self.defaults)
        prompt_ids = [self._prompt_ids(p, resolved) for p in prompts]
        yield from self._run_ids(prompt_ids, resolved, cancel, results, progress)

    def _run_ids(self, prompt_ids: list[list[int]], resolved: Resolved, cancel: threading.Event | None,
                 results: list[Completion] | None, progress: Callable[[int, int], None] | None = None,
                 start: Callable[[Any, list[int]], list[int]] | None = None,
                 done: Callable[[Any], None] | None = None) -> Iterator[tuple[int, str]]:
        """The run itself, on encoded prompts.  ``start(gen, ids) -> ids to append`` may seed a batch-1
        generator with a cache it already has (chat: KV reuse) and return the tokens it still has to run;
        ``done(gen)`` sees the generator at the end (a chat session keeps its cache)."""
        gen = self._new_generator(resolved, len(prompt_ids), cancel)
        self._constrain(gen, resolved)
        decoders = [IncrementalDecoder(self.tokenizer, ids) for ids in prompt_ids]
        stops = [StopStringMatcher(resolved.stop) for _ in prompt_ids]
        texts = [""] * len(prompt_ids)
        started = time.perf_counter()
        gen.append_tokens(prompt_ids if start is None else [start(gen, prompt_ids[0])])
        first_token_at = None
        budget, steps = gen._budget, 0    # after append_tokens: bounded by the context
        while not gen.is_done():
            live = np.flatnonzero(~gen.finished)
            tokens = gen.generate_next_token()
            if first_token_at is None:
                first_token_at = time.perf_counter()
            steps += 1
            if progress is not None:
                progress(steps, budget)
            for b in live:
                token = int(tokens[b])
                is_stop_token = token in gen._stop_ids   # not a token a constraint ended the row after
                piece = decoders[b].add([] if is_stop_token else [token])
                if gen.finished[b]:
                    piece += decoders[b].flush()
                out, stopped = stops[b].push(piece)
                if not stopped and gen.finished[b]:
                    out += stops[b].flush()
                    stopped = stops[b].stopped   # a stop string settled only at the end
                if stopped:  # the text was cut at a stop string, even if the length ran out at this token
                    gen.finished[b], gen.finish_reasons[b] = True, "stop"
                if out:
                    texts[b] += out
                    yield int(b), out
        end = time.perf_counter()
        if done is not None:
            done(gen)
        if results is not None:
            first_token_at = first_token_at or end
            prefill = first_token_at - started
            for b, ids in enumerate(prompt_ids):
                new = gen.tokens(b)
                decode_n = max(len(new) - 1, 0)
                results.append(Completion(
                    text=texts[b], token_ids=tuple(new), prompt_tokens=len(ids),
                    finish_reason=gen.finish_reasons[b] or "length", time_to_first_token_s=prefill,
                    prefill_tokens_per_s=len(ids) / prefill if prefill > 0 else float("inf"),
                    decode_tokens_per_s=decode_n / (end - first_token_at) if end > first_token_at else 0.0,
                    token_budget=max(budget, 0),
                    logprobs=None if gen.logprobs is None else tuple(gen.logprobs[b]),
                    cached_tokens=gen.reused_tokens if b == 0 else 0))
