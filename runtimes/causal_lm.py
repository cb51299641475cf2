"""The causal-LM runtime: a step-wise :class:`Generator`, and ``generate`` / ``stream`` on top.

The caller may own the loop (as in ONNX Runtime GenAI)::

    gen = lm.generator(GenerationSettings(temperature=0), batch=1)
    gen.append_tokens([lm.encode("def fib(n):")])
    while not gen.is_done():
        gen.generate_next_token()
    text = lm.decode(gen.tokens(0))

or use the conveniences ``lm.generate(prompt)``, ``lm.generate_batch(prompts)``,
``lm.stream(prompt)`` and ``lm.complete(prompts)`` (with finish reasons and timings).

Every generation run has its own state (cache, random generator, masks); the loaded
sessions are shared, so one loaded model serves several threads at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tokenizers

from edgegen.errors import CancelledError, ContextOverflowError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.decoder import DecoderGraph, positions_from_mask
from edgegen.runtimes.memory import check_fits
from edgegen.runtimes.lm_settings import CausalLMSampler, GenerationSettings, Resolved, resolve
from edgegen.runtimes.sampling import sample
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.text import IncrementalDecoder, StopStringMatcher


class Generator:
    """One generation run over a batch of sequences: append tokens, then step."""

    def __init__(self, graph: DecoderGraph, sampler: CausalLMSampler, settings: Resolved, batch: int,
                 cancel: threading.Event | None = None) -> None:
        if batch < 1:
            raise InvalidArgumentError(f"batch must be >= 1, got {batch}")
        self.graph, self.sampler, self.settings, self.batch = graph, sampler, settings, batch
        self.rng = np.random.default_rng(settings.seed)
        self.cancel_event = cancel or threading.Event()
        self._eos = frozenset() if settings.ignore_eos else frozenset(sampler.eos_token_ids)
        self._stop_ids = self._eos | settings.stop_token_ids
        self._ids = np.zeros((batch, 0), dtype=np.int64)      # [B, L] all tokens, left-padded
        self._mask = np.zeros((batch, 0), dtype=np.int64)     # [B, L] 1 = real token
        self._past = graph.start_cache(batch) if graph.layout else []
        self._pending: np.ndarray | None = None               # [B, T] tokens not yet run
        self._logits: np.ndarray | None = None                # [B, V] next-token logits
        self._new = [[] for _ in range(batch)]                 # generated ids per row
        self.finished = np.zeros(batch, dtype=bool)
        self.finish_reasons: list[str | None] = [None] * batch
        self._budget = settings.max_new_tokens

    # -- feeding ------------------------------------------------------------------------
    def append_tokens(self, rows: Sequence[Sequence[int]]) -> None:
        """Add tokens to every row (prompts of different lengths are left-padded)."""
        if len(rows) != self.batch:
            raise InvalidArgumentError(f"append_tokens got {len(rows)} rows for a batch of {self.batch}")
        lengths = [len(r) for r in rows]
        if min(lengths) == 0:
            raise InvalidArgumentError("a prompt is empty: give at least one token of text")
        width = max(lengths)
        ids = np.zeros((self.batch, width), dtype=np.int64)       # [B, T]
        mask = np.zeros((self.batch, width), dtype=np.int64)      # [B, T]
        pad = self.sampler.pad_token_id if self.sampler.pad_token_id is not None else 0
        for b, row in enumerate(rows):
            ids[b, :] = pad
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = 1
        self._check_context(self._ids.shape[1] + width)
        self._check_memory(self._ids.shape[1] + width, width)
        self._ids = np.concatenate([self._ids, ids], axis=1)
        self._mask = np.concatenate([self._mask, mask], axis=1)
        self._pending = ids if self._pending is None else np.concatenate([self._pending, ids], axis=1)
        self._logits = None
        # max_new_tokens is bounded by the context.
        if self.sampler.context_length is not None:
            room = self.sampler.context_length - self._ids.shape[1]
            self._budget = min(self.settings.max_new_tokens, room)
            if self._budget < 1:
                self.finished[:] = True
                self.finish_reasons = ["length"] * self.batch

    def _check_memory(self, length: int, new_width: int) -> None:
        """Fail before allocating if the cache for the whole run, or the prompt's logits, cannot fit."""
        total = length + self.settings.max_new_tokens
        if self.sampler.context_length is not None:
            total = min(total, self.sampler.context_length)
        layout = self.graph.layout
        cache = layout.bytes_per_token() * self.batch * total if layout else 0
        logits = 4 * self.batch * new_width * (self.graph.vocab_size or 0)  # the graph returns [B, T, V] float32
        check_fits(2 * cache + logits, f"generating {self.settings.max_new_tokens} tokens for a batch of "
                   f"{self.batch} after {length} prompt tokens",
                   "lower max_new_tokens, the batch size or the prompt length")

    def _check_context(self, length: int) -> None:
        limit = self.sampler.context_length
        if limit is not None and length > limit:
            raise ContextOverflowError(
                f"the prompt is {length} tokens but the model's context is {limit}; shorten it or pass "
                "truncate_prompt=True (--truncate) to keep its last tokens")

    # -- stepping ---------------------------------------------------------------------------
    def is_done(self) -> bool:
        return bool(self.finished.all())

    def _forward(self) -> None:
        """Run the pending tokens through the graph and keep the next-token logits."""
        assert self._pending is not None
        t = self._pending.shape[1]
        if self.graph.layout is None:  # no cache: recompute the whole (windowed) sequence
            self._logits = self._recompute()
        else:
            positions = positions_from_mask(self._mask)[:, -t:]          # [B, T]
            self._logits, self._past = self.graph.step(self._pending, self._mask, positions, self._past)
        self._pending = None

    def _recompute(self) -> np.ndarray:
        rows = []
        for b in range(self.batch):  # rows alone: a graph without a mask cannot skip padding
            real = self._ids[b, self._mask[b] == 1][None, :]            # [1, L_b]
            rows.append(self.graph.full_logits(real, np.ones_like(real))[:, -1, :])
        return np.concatenate(rows, axis=0)                              # [B, V]

    def next_logits(self) -> np.ndarray:
        """The logits [B, V] the next token will be sampled from (runs pending tokens)."""
        if self._logits is None:
            if self._pending is None:
                raise InvalidArgumentError("append_tokens before generating")
            self._forward()
        assert self._logits is not None
        return self._logits

    def generate_next_token(self) -> np.ndarray:
        """Sample one token per row [B] (finished rows repeat their last token and are ignored)."""
        if self.is_done():
            raise InvalidArgumentError("generation is done; check is_done() before stepping")
        if self.cancel_event.is_set():
            self.finished[:] = True
            self.finish_reasons = [r or "cancelled" for r in self.finish_reasons]
            raise CancelledError("generation was cancelled")
        logits = self.next_logits()
        tokens = sample(logits, self.settings.sampling, self.rng, history=self._ids, history_mask=self._mask == 1)
        tokens = np.where(self.finished, self._ids[:, -1], tokens).astype(np.int64)   # [B]
        for b in np.flatnonzero(~self.finished):
            token = int(tokens[b])
            self._new[b].append(token)
            if token in self._stop_ids:
                self.finish(b, "eos" if token in self._eos else "stop")
            elif len(self._new[b]) >= self._budget:
                self.finish(b, "length")
        self._ids = np.concatenate([self._ids, tokens[:, None]], axis=1)
        self._mask = np.concatenate([self._mask, np.ones((self.batch, 1), np.int64)], axis=1)
        self._pending, self._logits = tokens[:, None], None
        return tokens

    def finish(self, row: int, reason: str) -> None:
        """Mark a row finished (the caller does this for stop strings it detects in text)."""
        if not self.finished[row]:
            self.finished[row] = True
            self.finish_reasons[row] = reason

    def cancel(self) -> None:
        """Stop from any thread: the next step raises CancelledError."""
        self.cancel_event.set()

    def tokens(self, row: int) -> list[int]:
        """The generated token ids of a row (a stop token id is included)."""
        return list(self._new[row])


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


class CausalLM:
    """A loaded causal-lm artifact."""

    family = "causal-lm"

    def __init__(self, artifact: Artifact, graph: DecoderGraph, tokenizer: tokenizers.Tokenizer, provider: str) -> None:
        self.artifact, self.graph, self.tokenizer, self.provider = artifact, graph, tokenizer, provider
        self.sampler = CausalLMSampler.from_manifest(artifact.manifest.sampler)
        self.defaults = GenerationSettings.from_manifest(artifact.manifest.defaults)

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> CausalLM:
        m = artifact.manifest
        missing = ([] if "decoder" in m.graphs else ["a 'decoder' graph"]) + \
                  ([] if "tokenizer" in m.assets else ["a 'tokenizer' asset"])
        if missing:
            raise ManifestError(f"{artifact.root}: this causal-lm artifact lacks {' and '.join(missing)} "
                                f"(it has graphs {sorted(m.graphs)}, assets {sorted(m.assets)}); re-convert the model")
        CausalLMSampler.from_manifest(m.sampler)   # a bad sampler section fails before any session opens
        GenerationSettings.from_manifest(m.defaults)
        provider, sessions = open_sessions(artifact, config)
        device = "cuda" if provider == "cuda" else "cpu"
        graph = DecoderGraph(sessions["decoder"], device=device, device_id=config.device_id,
                             serialize=provider == "dml")
        tokenizer = tokenizers.Tokenizer.from_file(str(artifact.path(artifact.manifest.assets["tokenizer"].file)))
        return cls(artifact, graph, tokenizer, provider)

    # -- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidArgumentError(f"a prompt must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # -- the step API ------------------------------------------------------------------------------
    def generator(self, settings: GenerationSettings | None = None, batch: int = 1,
                  cancel: threading.Event | None = None) -> Generator:
        return Generator(self.graph, self.sampler, resolve(settings or GenerationSettings(), self.defaults),
                         batch=batch, cancel=cancel)

    def _prompt_ids(self, prompt: str, settings: Resolved) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidArgumentError("the prompt is empty: give some text to continue")
        ids = self.encode(prompt)
        if not ids:
            raise InvalidArgumentError("the prompt encodes to no tokens: give some text to continue")
        limit = self.sampler.context_length
        if limit is not None and len(ids) >= limit:
            if not settings.truncate_prompt:
                raise ContextOverflowError(
                    f"the prompt is {len(ids)} tokens but the model's context is {limit} (and generation needs "
                    "room for at least one new token); shorten it or pass truncate_prompt=True (--truncate)")
            keep = max(1, limit - settings.max_new_tokens)
            ids = ids[-keep:]
        return ids

    # -- conveniences ---------------------------------------------------------------------------
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
        gen = Generator(self.graph, self.sampler, resolved, batch=len(prompts), cancel=cancel)
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
