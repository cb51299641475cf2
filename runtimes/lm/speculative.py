"""Lossless speculative decoding by prompt lookup (``GenerationSettings(speculative="ngram")``).

Text that repeats what came before (a code edit that rewrites a file, a summary quoting its source) is cheap to
guess: find the last few tokens earlier in the context and propose the ones that followed them there (prompt
lookup decoding, Saxena 2023; llama.cpp's ``lookup``; transformers' ``prompt_lookup_num_tokens``).  The decoder
then runs the last token and the k drafted ones in one call and gives the logits of all k + 1 positions; on a CPU
that costs little more than one token, since a step of a small model is bound by reading its weights.

Why the output is exactly plain decoding's, for every sampler: the draft is a deterministic function of the
tokens so far, and it only decides which logits are computed ahead, never how a token is chosen.  Each token is
still sampled by :meth:`StepGenerator._step` from its own position's logits, one ``generate_next_token`` at a
time, with the same processors, penalties' history, token constraint, random draws and stop checks as plain
decoding.  Position i's logits were computed with draft[:i] in the context, so they are the right ones as long as
every token emitted so far in the window equals the draft; the first token that differs (it is what plain
decoding samples there) ends the window, and the cache is rolled back to the tokens emitted.  A window whose
draft all matched ends with one more token from its last position's logits.  The one difference is float
rounding: a window's logits come from a [k + 1]-token run instead of k + 1 one-token runs (the tests check that it
does not change tokens on tiny models).

The cache rollback: a shared buffer (GroupQueryAttention) needs nothing, since the mask says how many positions
a run reads and the next run overwrites the rest.  A growing cache (Optimum graphs) keeps the rejected positions
and masks them out: the graph's attention mask gets zeros there (an exact zero weight in the softmax, as left
padding gets) and the position ids count only the positions in use, so no copy is made per rejection (cutting a
GPT-2-small cache of 400 positions cost 16 ms, two thirds of a decode step, on the 2-core machine).  Once masked
positions pass a quarter of the cache (at least 64), or the cache nears the context, it is compacted by one copy.
A graph without a mask or position ids input is cut instead.

The draft length adapts as transformers' assistant does: +2 after a window that matched in full, -1 otherwise
(a function of the tokens only, so still lossless).  Drafts never run past ``max_new_tokens`` (or the context):
a window emits at most the tokens the budget has left.

Speculation runs on batch-1 generators of decoders with a KV cache (each row would need its own window length
otherwise).  A prompt's forward is never speculated, so a generator still joins a continuous batch
(:mod:`edgegen.runtimes.lm.batch_engine`) after its first token, where it then decodes plainly.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgegen.runtimes.lm.causal_lm import Generator
from edgegen.runtimes.lm.decoder import positions_from_mask
from edgegen.runtimes.lm.kv_cache import KVState, truncated

__all__ = ["NgramGenerator", "lookup_draft"]

#: Longest n-gram looked up (then shorter ones, down to one token).
MAX_NGRAM = 3
#: Draft lengths: the first window's, and the bounds the adaptation keeps to.
START_DRAFT, MAX_DRAFT = 8, 16
#: A growing cache is compacted once it masks more than COMPACT_AFTER positions and COMPACT_SHARE of those in use.
COMPACT_AFTER, COMPACT_SHARE = 64, 0.25


def lookup_draft(history: np.ndarray, length: int, max_ngram: int = MAX_NGRAM) -> np.ndarray:
    """Up to ``length`` tokens that followed an earlier occurrence of the last n tokens of ``history`` [L]
    (n = max_ngram down to 1; the longest n that occurs wins) -> draft [k <= length] int64.  Of several
    occurrences, the most recent that has ``length`` tokens after it, else the earliest (a run of one token
    repeated matches just before itself, with a single token after it)."""
    size = history.shape[0]
    # ends [E]: where an occurrence of the last n tokens ends, before the last position (so a token follows)
    ends = np.flatnonzero(history[:size - 1] == history[size - 1])                # n = 1
    found = ends
    for n in range(2, min(max_ngram, size - 1) + 1):
        ends = ends[ends >= n - 1]
        ends = ends[history[ends - (n - 1)] == history[size - n]]                # the n-gram, one token longer
        if not ends.size:
            break
        found = ends
    if not found.size:
        return np.zeros(0, np.int64)
    full = found[found + 1 + length <= size]
    begin = int(full[-1] if full.size else found[0]) + 1
    return history[begin:begin + length].astype(np.int64)


class NgramGenerator(Generator):
    """A batch-1 :class:`Generator` whose decode steps verify prompt-lookup drafts (the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002,ANN003  (Generator's own arguments)
        super().__init__(*args, **kwargs)
        self._window: np.ndarray | None = None     # [k + 1, V] logits of a verified window, row i after draft[:i]
        self._draft = np.zeros(0, np.int64)        # [k] the window's drafted tokens
        self._at = 0                               # the window row the next token is sampled from
        self.draft_length = START_DRAFT
        #: a growing cache that keeps rejected positions: the graph's mask over its positions [1, P] (0 = rejected);
        #: None while the cache holds exactly the positions of the tokens run
        self._holes: np.ndarray | None = None
        self._may_hole = not self._share and self.graph.has_mask and self.graph.has_positions
        #: windows run, tokens drafted in them, drafted tokens emitted (accepted), windows a differing token ended
        self.windows = self.drafted = self.accepted = self.rejections = 0
        self.compactions = 0                       # copies of a growing cache without its masked positions

    def next_logits(self) -> np.ndarray:
        if self._window is not None:
            return self._window[self._at:self._at + 1]                         # [1, V]
        if self._logits is None and self._may_draft():
            room = self._budget - len(self._new[0]) - 1        # a window emits up to k + 1 tokens
            draft = lookup_draft(self._ids[0], min(self.draft_length, room))  # [k]
            if draft.size:
                self._verify(draft)
                assert self._window is not None
                return self._window[0:1]                                       # [1, V]
        return super().next_logits()

    def _may_draft(self) -> bool:
        """A decode step of this run's own cache: one pending token after a run prompt (not a prompt's forward,
        not a step whose logits a merged batch gave)."""
        pending = self._pending
        return (pending is not None and pending.shape[1] == 1 and self._ids.shape[1] > 1 and bool(self._past)
                and self._row_past is None)

    def _verify(self, draft: np.ndarray) -> None:
        """Run the pending token and ``draft`` [k] in one call; keep the k + 1 positions' logits."""
        assert self._pending is not None
        k = draft.shape[0]
        ids = np.concatenate([self._pending, draft[None, :]], axis=1)                  # [1, 1 + k]
        if self._holes is None:
            mask = np.concatenate([self._mask, np.ones((1, k), np.int64)], axis=1)     # [1, L + k]
        else:
            mask = np.concatenate([self._holes, np.ones((1, 1 + k), np.int64)], axis=1)   # [1, P + 1 + k]
        positions = positions_from_mask(mask)[:, -(1 + k):] if self.graph.has_positions else None   # [1, 1 + k]
        if self._share:
            self._past = self.graph.reserve(self._past, mask.shape[1], self._capacity(self._ids.shape[1]),
                                            self._binding)
        logits, self._past = self.graph.step_window(ids, mask, positions, self._past, 1 + k, self._share,
                                                    self._binding)                     # [1, 1 + k, V]
        self._window, self._draft, self._at, self._pending = logits[0], draft, 0, None
        if self._holes is not None:
            self._holes = mask
        self.windows += 1
        self.drafted += k

    def _advance(self, tokens: np.ndarray) -> None:
        if self._window is None:
            super()._advance(tokens)
            return
        self._ids = np.concatenate([self._ids, tokens[:, None]], axis=1)               # [1, L + 1]
        self._mask = np.concatenate([self._mask, np.ones((1, 1), np.int64)], axis=1)   # [1, L + 1]
        self._logits = None
        at, k = self._at, self._draft.shape[0]
        if at < k and int(tokens[0]) == int(self._draft[at]):   # it ran in the window: the next row is right
            self._at += 1
            self.accepted += 1
            return
        # The window ends: a token that differs from the draft (the positions after it are wrong), or the
        # token after a draft that matched in full.  The new token has not run; the cache holds those before it.
        if at < k:
            self.rejections += 1
            if not self._share and not self.finished[0]:   # (a finished run's state() reads only its ids' part)
                self._reject(k - at)
        self.draft_length = min(self.draft_length + 2, MAX_DRAFT) if at == k else max(self.draft_length - 1, 1)
        self._window, self._pending = None, tokens[:, None]

    def _reject(self, n: int) -> None:
        """Take the last ``n`` positions of a growing cache out of use: masked (no copy) where the graph takes a
        mask and positions, else cut off; a cache with many masked positions is compacted."""
        if not self._may_hole:
            self._past = truncated(self._past, self._ids.shape[1] - 1, self.graph.device, self.graph.device_id)
            return
        size = self._past[0].shape()[2]
        holes = np.ones((1, size), np.int64) if self._holes is None else self._holes.copy()   # [1, P]
        holes[:, size - n:] = 0
        self._holes = holes
        valid = int(holes.sum())
        limit = self.sampler.context_length
        if size - valid > max(COMPACT_AFTER, COMPACT_SHARE * valid) or (limit is not None and size + 1 + MAX_DRAFT > limit):
            self._compact()

    def _compact(self) -> None:
        """Copy the cache's positions in use into a cache without masked ones."""
        assert self._holes is not None
        keep = np.flatnonzero(self._holes[0])                                          # [P']
        # copies: numpy() may view memory that the OrtValue frees when it goes
        self._past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, keep]), self.graph.device,
                                                       self.graph.device_id) for v in self._past]
        self._holes = None
        self.compactions += 1

    def _forward(self) -> None:
        if self._holes is None:
            super()._forward()
            return
        assert self._pending is not None
        t = self._pending.shape[1]
        mask = np.concatenate([self._holes, np.ones((1, t), np.int64)], axis=1)       # [1, P + T]
        positions = positions_from_mask(mask)[:, -t:]                                 # [1, T]
        self._logits, self._past = self.graph.step(self._pending, mask, positions, self._past, False, self._binding)
        self._holes, self._pending = mask, None

    def state(self) -> KVState | None:
        if self._holes is not None and self._past:
            self._compact()
        return super().state()
