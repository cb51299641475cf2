"""The text conveniences shared by every language-model runtime (causal-lm, rnn-lm).

A runtime supplies a tokenizer, its artifact defaults, ``_prompt_ids`` (checks and
encodes one prompt) and ``_new_generator`` (a step generator: ``append_tokens``,
``generate_next_token``, ``is_done``, ``finished``, ``finish_reasons``, ``tokens``); this
class turns that loop into text: ``complete`` (with finish reasons and timings),
``generate``, ``generate_batch``, ``stream`` and ``stream_batch``, streaming through a
UTF-8-safe incremental detokenizer and stop-string matching.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.lm_settings import GenerationSettings, Resolved, resolve
from edgegen.runtimes.text import IncrementalDecoder, StopStringMatcher


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


class TextModel:
    """Text in, text out, on top of a runtime's step generator."""

    tokenizer: Any
    defaults: GenerationSettings

    def _prompt_ids(self, prompt: str, settings: Resolved) -> list[int]:
        raise NotImplementedError

    def _new_generator(self, settings: Resolved, batch: int, cancel: threading.Event | None) -> Any:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidArgumentError(f"a prompt must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _encode_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidArgumentError("the prompt is empty: give some text to continue")
        ids = self.encode(prompt)
        if not ids:
            raise InvalidArgumentError("the prompt encodes to no tokens: give some text to continue")
        return ids

    def stream_batch(self, prompts: Sequence[str], settings: GenerationSettings | None = None,
                     cancel: threading.Event | None = None) -> Iterator[tuple[int, str]]:
        """Yield (row, text) pieces as they become final; the last state is in ``self`` of the run."""
        yield from self._run(prompts, settings, cancel, results=None)

    def complete(self, prompts: Sequence[str], settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None,
                 on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
        """Generate for each prompt (batched); texts with finish reasons and timings.

        ``on_text(row, piece)`` is called with each piece of text as it becomes final.
        """
        results: list[Completion] = []
        for row, piece in self._run(prompts, settings, cancel, results=results):
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
             results: list[Completion] | None) -> Iterator[tuple[int, str]]:
        if isinstance(prompts, str) or not prompts:
            raise InvalidArgumentError("prompts must be a non-empty list of strings")
        resolved = resolve(settings or GenerationSettings(), self.defaults)
        prompt_ids = [self._prompt_ids(p, resolved) for p in prompts]
        gen = self._new_generator(resolved, len(prompts), cancel)
        decoders = [IncrementalDecoder(self.tokenizer, ids) for ids in prompt_ids]
        stops = [StopStringMatcher(resolved.stop) for _ in prompts]
        texts = [""] * len(prompts)
        start = time.perf_counter()
        gen.append_tokens(prompt_ids)
        first_token_at = None
        while not gen.is_done():
            live = np.flatnonzero(~gen.finished)
            tokens = gen.generate_next_token()
            if first_token_at is None:
                first_token_at = time.perf_counter()
            for b in live:
                token = int(tokens[b])
                is_stop_token = gen.finish_reasons[b] in ("eos", "stop") and gen.finished[b]
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
        if results is not None:
            first_token_at = first_token_at or end
            prefill = first_token_at - start
            for b, ids in enumerate(prompt_ids):
                new = gen.tokens(b)
                decode_n = max(len(new) - 1, 0)
                results.append(Completion(
                    text=texts[b], token_ids=tuple(new), prompt_tokens=len(ids),
                    finish_reason=gen.finish_reasons[b] or "length", time_to_first_token_s=prefill,
                    prefill_tokens_per_s=len(ids) / prefill if prefill > 0 else float("inf"),
                    decode_tokens_per_s=decode_n / (end - first_token_at) if end > first_token_at else 0.0))
