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
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from edgegen.errors import ContextOverflowError, InvalidArgumentError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.lm.decoder import DecoderGraph, StepBinding, positions_from_mask
from edgegen.runtimes.lm.kv_cache import KVState, PrefixCache, state_bytes, trimmed
from edgegen.runtimes.memory import check_fits
from edgegen.runtimes.lm.sampler import CausalLMSampler
from edgegen.runtimes.text.settings import GenerationSettings, Resolved
from edgegen.runtimes.session import ORT_DEVICES, SessionConfig
from edgegen.runtimes.text.loop import (Completion, StepGenerator, TextModel, load_checked_tokenizer, load_defaults,
                                        require_parts)

__all__ = ["CausalLM", "Completion", "Generator"]


class Generator(StepGenerator):
    """One generation run over a batch of sequences: append tokens, then step."""

    def __init__(self, graph: DecoderGraph, sampler: CausalLMSampler, settings: Resolved, batch: int,
                 cancel: threading.Event | None = None) -> None:
        super().__init__(sampler.eos_token_ids, settings, batch, cancel)
        self.graph, self.sampler = graph, sampler
        self._mask = np.zeros((batch, 0), dtype=np.int64)     # [B, L] 1 = real token
        self._past = graph.start_cache(batch) if graph.layout else []
        self._row_past: list[list[Any]] | None = None          # per-row caches once rows run one at a time
        self._binding = graph.new_binding()                   # reused across this run's steps
        self._row_bindings: list[StepBinding] = []            # one per row once rows run one at a time
        self._share = sampler.kv_buffer == "shared" and graph.layout is not None
        self._pending: np.ndarray | None = None               # [B, T] tokens not yet run
        self._logits: np.ndarray | None = None                # [B, V] next-token logits

    # -- feeding ------------------------------------------------------------------------
    def append_tokens(self, rows: Sequence[Sequence[int]]) -> None:
        """Add tokens to every row (prompts of different lengths are left-padded)."""
        self._check_rows(rows)
        width = max(len(r) for r in rows)
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
        rows = 1 if self.graph.has_logits_to_keep else new_width             # the graph returns [B, T or 1, V] float32
        logits = 4 * self.batch * rows * (self.graph.vocab_size or 0)
        check_fits(2 * cache + logits, f"generating {self.settings.max_new_tokens} tokens for a batch of "
                   f"{self.batch} after {length} prompt tokens",
                   "lower max_new_tokens, the batch size or the prompt length")

    def _check_context(self, length: int) -> None:
        limit = self.sampler.context_length
        if limit is not None and length > limit:
            raise ContextOverflowError(
                f"the prompt is {length} tokens but the model's context is {limit}; shorten it or pass "
                "truncate_prompt=True (--truncate) to keep its last tokens")

    # -- KV reuse (batch 1: chat) ---------------------------------------------------------------
    def resume(self, state: KVState, ids: Sequence[int], copy: bool) -> list[int]:
        """Start this batch-1 run from ``state``'s cache: keep the positions of the prefix ``ids`` shares with it
        (at least one token still runs: the next logits come from it) and return the tokens left to append.
        ``copy``: the state stays its owner's (the prefix cache), so this run works on a copy."""
        if self.batch != 1 or self.graph.layout is None or self._ids.shape[1]:
            raise InvalidArgumentError("resume() starts a fresh batch-1 run of a model with a KV cache")
        keep = min(state.common_prefix(ids), len(ids) - 1)
        if keep < 1:
            return list(ids)
        self._past = trimmed(state, keep, self.graph.device, self.graph.device_id, copy)
        self._ids = np.asarray([list(ids[:keep])], dtype=np.int64)      # [1, keep]
        self._mask = np.ones_like(self._ids)                            # [1, keep]
        self.reused_tokens = keep
        return list(ids[keep:])

    def state(self) -> KVState | None:
        """The cache of the tokens run so far (batch 1; the last sampled token has not run yet), or None."""
        if self.batch != 1 or self.graph.layout is None or self._row_past is not None or not self._past:
            return None
        run = self._ids.shape[1] - (self._pending.shape[1] if self._pending is not None else 0)
        if run < 1:
            return None
        itemsize = np.dtype(self.graph.layout.dtype).itemsize
        return KVState(tuple(int(i) for i in self._ids[0, :run]), self._past, self._share,
                       state_bytes(self._past, itemsize))

    # -- stepping ---------------------------------------------------------------------------
    def _forward(self) -> None:
        """Run the pending tokens through the graph and keep the next-token logits."""
        assert self._pending is not None
        t = self._pending.shape[1]
        if self.graph.layout is None:  # no cache: recompute the whole (windowed) sequence
            self._logits = self._recompute()
        elif self._rows_alone(t):
            self._logits = self._forward_rows(t)
        else:
            positions = positions_from_mask(self._mask)[:, -t:] if self.graph.has_positions else None  # [B, T]
            if self._share:
                self._past = self.graph.reserve(self._past, self._ids.shape[1], self._capacity(self._ids.shape[1]),
                                                self._binding)
            self._logits, self._past = self.graph.step(self._pending, self._mask, positions, self._past, self._share,
                                                       self._binding)
        self._pending = None

    def _capacity(self, length: int) -> int:
        """Positions to preallocate for a shared cache buffer holding ``length``: the whole run, up to the context."""
        want = length + self.settings.max_new_tokens
        limit = self.sampler.context_length
        return max(length, min(want, limit) if limit is not None else want)

    def _rows_alone(self, t: int) -> bool:
        """Whether a graph that needs unpadded rows (GroupQueryAttention) must run each row alone: rows of
        different lengths, or several tokens per row after a cache (a batch of 1 only, in ONNX Runtime)."""
        if self.sampler.padding != "none" or self.batch == 1:
            return False
        return self._row_past is not None or not self._mask.all() or (t > 1 and self._ids.shape[1] > t)

    def _forward_rows(self, t: int) -> np.ndarray:
        """Each row alone, unpadded, with its own cache (a graph that cannot skip left padding)."""
        assert self._pending is not None
        if self._row_past is None:
            self._row_past = self.graph.split_cache(self._past, self.batch)
            self._row_bindings = [self.graph.new_binding() for _ in range(self.batch)]
            self._past = []
        logits = np.zeros((self.batch, self.graph.vocab_size or 0), np.float32)         # [B, V]
        for b in np.flatnonzero(~self.finished):  # a finished row's logits are never used again
            ids = self._pending[b:b + 1, self._mask[b, -t:] == 1]                         # [1, T_b]
            length = int(self._mask[b].sum())
            positions = np.arange(length - ids.shape[1], length, dtype=np.int64)[None]    # [1, T_b]
            if self._share:
                self._row_past[b] = self.graph.reserve(self._row_past[b], length, self._capacity(length))
            row, self._row_past[b] = self.graph.step(ids, np.ones((1, length), np.int64), positions,
                                                     self._row_past[b], self._share,
                                                     self._row_bindings[b])
            if logits.shape[1] == 0:
                logits = np.zeros((self.batch, row.shape[1]), np.float32)
            logits[b] = row[0]
        return logits

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

    def _real(self) -> np.ndarray:
        return self._mask == 1

    def _advance(self, tokens: np.ndarray) -> None:
        self._ids = np.concatenate([self._ids, tokens[:, None]], axis=1)
        self._mask = np.concatenate([self._mask, np.ones((self.batch, 1), np.int64)], axis=1)
        self._pending, self._logits = tokens[:, None], None


class CausalLM(TextModel):
    """A loaded causal-lm artifact."""

    family = "causal-lm"

    def __init__(self, artifact: Artifact, graph: DecoderGraph, tokenizer: tokenizers.Tokenizer, provider: str, *,
                 sampler: CausalLMSampler, defaults: GenerationSettings) -> None:
        self.artifact, self.graph, self.tokenizer, self.provider = artifact, graph, tokenizer, provider
        self.sampler, self.defaults = sampler, defaults   # parsed and checked once, in from_artifact
        #: KV states of recent chat requests, reused by a later request sharing their prefix (a system prompt)
        self.prefix_cache = PrefixCache()

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> CausalLM:
        m = artifact.manifest
        require_parts(artifact, cls.family, "decoder")
        # bad sections, a bad tokenizer, or ids beyond the vocabulary fail before any session opens
        sampler = CausalLMSampler.from_manifest(m.sampler)
        defaults = load_defaults(m.defaults)
        tokenizer = load_checked_tokenizer(artifact, "decoder", sampler.token_ids())
        provider, sessions = open_sessions(artifact, config)
        # the KV cache lives in the provider's memory (CUDA, DirectML): no host round trip per token
        graph = DecoderGraph(sessions["decoder"], device=ORT_DEVICES[provider], device_id=config.device_id)
        return cls(artifact, graph, tokenizer, provider, sampler=sampler, defaults=defaults)

    # -- the step API ------------------------------------------------------------------------------
    def _new_generator(self, settings: Resolved, batch: int, cancel: threading.Event | None) -> Generator:
        if settings.speculative == "ngram" and batch == 1 and self.graph.layout is not None:
            from edgegen.runtimes.lm.speculative import NgramGenerator   # it subclasses Generator

            return NgramGenerator(self.graph, self.sampler, settings, batch=batch, cancel=cancel)
        return Generator(self.graph, self.sampler, settings, batch=batch, cancel=cancel)

    def _vocab_size(self) -> int | None:
        return self.graph.vocab_size

    def _prompt_ids(self, prompt: str, settings: Resolved) -> list[int]:
        ids = self._encode_prompt(prompt)
        limit = self.sampler.context_length
        if limit is not None and len(ids) >= limit:
            if not settings.truncate_prompt:
                raise ContextOverflowError(
                    f"the prompt is {len(ids)} tokens but the model's context is {limit} (and generation needs "
                    "room for at least one new token); shorten it or pass truncate_prompt=True (--truncate)")
            keep = max(1, limit - settings.max_new_tokens)
            ids = ids[-keep:]
        return ids

    # -- KV reuse for chat (TextModel's hooks) --------------------------------------------------------
    def _kv_start(self, gen: Generator, ids: list[int], state: KVState | None) -> list[int]:
        """Seed ``gen`` from a session's own ``state`` (no copy), else from the prefix cache (a copy)."""
        if gen.batch != 1 or self.graph.layout is None:
            return ids
        if state is not None:
            return gen.resume(state, ids, copy=False)
        cached, _ = self.prefix_cache.best(ids)
        return ids if cached is None else gen.resume(cached, ids, copy=True)

    def _kv_state(self, gen: Generator) -> KVState | None:
        return gen.state()

    # -- conveniences ---------------------------------------------------------------------------
