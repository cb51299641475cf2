"""Next-token selection: penalties, temperature, truncation and seeded sampling, in numpy.

This runs once per generated token, so it is vectorized over the batch and sorts only what
it must: greedy takes an argmax, top-k partitions, top-p sorts just the tokens that can
survive (a whole row only when the distribution is very flat), typical-p sorts a row.
:func:`process_logits` follows transformers' logits processors and warpers (same order,
same semantics, ``min_tokens_to_keep=1``) so that an exported model
samples from the distribution its PyTorch original would; :func:`sample` then draws one
uniform number per row with the caller's ``numpy.random.Generator`` (inverse CDF), so the
same seed gives the same tokens.  No torch here: this is part of the torch-free runtime.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np

from edgegen.errors import InvalidArgumentError

__all__ = ["SamplingSettings", "process_logits", "probabilities", "sample"]

# field -> (is an integer field, range check, the allowed range as error messages word it)
_RULES = {
    "temperature": (False, lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (True, lambda v: v >= 0, ">= 0 (0 = off)"),
    "top_p": (False, lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (False, lambda v: 0 <= v < 1, "in [0, 1)"),
    "typical_p": (False, lambda v: 0 < v <= 1, "in (0, 1]"),
    "repetition_penalty": (False, lambda v: v > 0, "> 0 (1 = off)"),
    "presence_penalty": (False, lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (False, lambda v: -2 <= v <= 2, "in [-2, 2]"),
}


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen; every field's default turns its step off."""

    temperature: float = 1.0          # >= 0; 0 = greedy (argmax after penalties); tiny > 0: near-greedy (_temper)
    top_k: int = 0                    # >= 0; 0 = off
    top_p: float = 1.0                # in (0, 1]; 1 = off
    min_p: float = 0.0                # in [0, 1); 0 = off
    typical_p: float = 1.0            # in (0, 1]; 1 = off
    repetition_penalty: float = 1.0   # > 0; 1 = off (CTRL / transformers semantics)
    presence_penalty: float = 0.0     # in [-2, 2] (OpenAI semantics)
    frequency_penalty: float = 0.0    # in [-2, 2]

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            is_int, in_range, allowed = _RULES[f.name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if is_int else numbers.Real):
                problems.append(f"{f.name} must be {'an integer' if is_int else 'a finite number'} {allowed}, "
                                f"got {shown(value)}")
            elif not is_int and not _finite(value):
                problems.append(f"{f.name} must be a finite number {allowed}, got {shown(value)}")
            elif not in_range(value):
                problems.append(f"{f.name} must be {allowed}, got {shown(value)}")
            else:   # normalize numpy scalars and ints-for-floats so comparisons and reprs are plain
                object.__setattr__(self, f.name, int(value) if is_int else float(value))
        if problems:
            raise InvalidArgumentError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def _penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for an error message, shortened when long (a 400-digit integer stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-8:]} ({len(text)} characters)"


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:   # an int (or Fraction) beyond float's range
        return False


def process_logits(logits: np.ndarray, settings: SamplingSettings, history: np.ndarray | None = None,
                   history_mask: np.ndarray | None = None) -> np.ndarray:
    """Logits [B, V] -> processed scores [B, V] float32, ``-inf`` where a token is removed.

    Steps, in transformers' order: repetition penalty, presence/frequency penalties,
    temperature, top-k, top-p, min-p, typical-p.  ``history`` [B, L] int64 holds each row's
    token ids so far (prompt + generated); ``history_mask`` [B, L] bool marks the real ones
    (False = left padding, ignored).  Greedy settings keep only the argmax (lowest index on
    ties).  The input array is never modified.
    """
    scores = _penalized_scores(logits, settings, history, history_mask, copy=True)   # [B, V]
    if settings.greedy:
        rows = np.arange(scores.shape[0])                                   # [B]
        best = np.argmax(scores, axis=1)                                    # [B]
        out = np.full_like(scores, -np.inf)                                 # [B, V]
        out[rows, best] = scores[rows, best]
        return out
    if settings.temperature != 1:
        _temper(scores, settings.temperature)                               # [B, V]
    _truncate(scores, settings)
    return scores


def probabilities(logits: np.ndarray, settings: SamplingSettings, history: np.ndarray | None = None,
                  history_mask: np.ndarray | None = None) -> np.ndarray:
    """The distribution [B, V] float64 that :func:`sample` draws from (one-hot when greedy)."""
    if settings.greedy:
        scores = _penalized_scores(logits, settings, history, history_mask, copy=False)   # [B, V]
        out = np.zeros(scores.shape, np.float64)                            # [B, V]
        out[np.arange(scores.shape[0]), np.argmax(scores, axis=1)] = 1.0
        return out
    scores = process_logits(logits, settings, history, history_mask)         # [B, V] float32
    top = scores.max(axis=1, keepdims=True)                                  # [B, 1]
    if not np.all(np.isfinite(top)):
        bad = np.flatnonzero(~np.isfinite(top[:, 0])).tolist()
        raise InvalidArgumentError(f"logits rows {bad} have no finite maximum (all -inf, +inf or NaN)")
    e = np.exp(scores - top).astype(np.float64)                              # [B, V] float32 exp is much faster
    return e / e.sum(axis=1, keepdims=True)                                  # [B, V]


def sample(logits: np.ndarray, settings: SamplingSettings, rng: np.random.Generator,
           history: np.ndarray | None = None, history_mask: np.ndarray | None = None) -> np.ndarray:
    """Next token ids [B] int64.

    Greedy: argmax after penalties (lowest index on ties), consuming no randomness.
    Otherwise exactly one ``rng.random()`` draw per row, all rows at once, mapped through
    the inverse CDF of :func:`probabilities`; tokens of zero probability are never drawn.
    """
    if settings.greedy:
        scores = _penalized_scores(logits, settings, history, history_mask, copy=False)   # [B, V]
        return np.argmax(scores, axis=1).astype(np.int64)                   # [B]
    probs = probabilities(logits, settings, history, history_mask)           # [B, V] float64
    cdf = np.cumsum(probs, axis=1)                                           # [B, V]
    u = rng.random(probs.shape[0])                                           # [B]
    target = u * cdf[:, -1]                                                  # [B]
    chosen = (cdf <= target[:, None]).sum(axis=1)                            # [B] first cdf > target
    last_kept = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)   # [B] guards u*total == total
    return np.minimum(chosen, last_kept).astype(np.int64)                    # [B]


def _temper(scores: np.ndarray, temperature: float) -> None:
    """scores [B, V] float32 /= temperature, in place, without overflow.

    The usual case divides in float32, as transformers' TemperatureLogitsWarper does.  A temperature
    so small that a score / temperature would pass float32's range (or below its smallest normal
    number, or above its largest) instead divides in float64 after shifting each row so its largest
    finite score is 0 (softmax and the truncation steps do not change under a shift): the row's best
    token keeps 0 and a token whose gap to it overflows gets -inf, probability 0, as in exact
    arithmetic.  So a tiny positive temperature samples near-greedily (1e-38: the argmax, ties split
    evenly) instead of failing on infinite scores.
    """
    tiny, big = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if tiny <= temperature <= big:
        t32 = np.float32(temperature)
        if temperature >= 1:
            scores /= t32                                                   # cannot overflow
            return
        peak = float(np.max(np.abs(scores), where=np.isfinite(scores), initial=0.0))
        if peak / temperature < big / 2:
            scores /= t32
            return
    finite = np.isfinite(scores)                                            # [B, V]
    top = np.max(scores, axis=1, keepdims=True, where=finite, initial=-np.inf)   # [B, 1]
    top = np.where(np.isfinite(top), top, 0.0)                              # rows without a finite score: as is
    with np.errstate(over="ignore"):                                        # overflow -> -inf is the point
        scores[...] = (scores.astype(np.float64) - top) / temperature       # [B, V]


def _penalized_scores(logits: np.ndarray, settings: SamplingSettings, history: np.ndarray | None,
                      history_mask: np.ndarray | None, copy: bool) -> np.ndarray:
    """float32 scores [B, V] after repetition/presence/frequency penalties (a copy when asked or changed)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise InvalidArgumentError(f"logits must be [batch, vocab], got shape {logits.shape}")
    penalize = settings._penalized and history is not None
    scores = logits.astype(np.float32, copy=copy or penalize)                # [B, V]
    if penalize:
        _apply_penalties(scores, settings, history, history_mask)            # type: ignore[arg-type]
    return scores


def _apply_penalties(scores: np.ndarray, s: SamplingSettings, history: np.ndarray,
                     history_mask: np.ndarray | None) -> None:
    """Repetition, presence and frequency penalties, in place on scores [B, V] float32."""
    batch, vocab = scores.shape
    history = np.asarray(history)                                            # [B, L]
    if history.ndim != 2 or history.shape[0] != batch:
        raise InvalidArgumentError(f"history must be [batch={batch}, length], got shape {history.shape}")
    if history_mask is None:
        mask = np.ones(history.shape, bool)                                  # [B, L]
    else:
        mask = np.asarray(history_mask, bool)                                # [B, L]
        if mask.shape != history.shape:
            raise InvalidArgumentError(f"history_mask shape {mask.shape} differs from history shape {history.shape}")
    ids = history[mask].astype(np.int64)                                     # [N] real tokens only
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise InvalidArgumentError(f"history holds token ids outside the vocabulary [0, {vocab})")
    rows = np.broadcast_to(np.arange(batch)[:, None], history.shape)[mask]   # [N]
    flat_ids, counts = np.unique(rows * vocab + ids, return_counts=True)      # [U], [U] distinct (row, token)
    flat = scores.reshape(-1)                                                # [B*V] view
    vals = flat[flat_ids]                                                    # [U] float32
    if s.repetition_penalty != 1:
        rp = np.float32(s.repetition_penalty)
        vals = np.where(vals < 0, vals * rp, vals / rp)                      # [U]
    if s.presence_penalty != 0:
        vals = vals - np.float32(s.presence_penalty)                         # [U]
    if s.frequency_penalty != 0:
        vals = vals - np.float32(s.frequency_penalty) * counts.astype(np.float32)   # [U]
    flat[flat_ids] = vals


def _truncate(scores: np.ndarray, s: SamplingSettings) -> None:
    """top-k, top-p, min-p, typical-p in place on tempered scores [B, V] float32 (removed -> -inf)."""
    batch, vocab = scores.shape
    kth = None
    if 0 < s.top_k < vocab:   # a linear-time partition finds the k-th largest; ties with it stay
        kth = np.partition(scores, vocab - s.top_k, axis=1)[:, vocab - s.top_k:vocab - s.top_k + 1]   # [B, 1]
        scores[scores < kth] = -np.inf
    if s.top_p < 1:
        _top_p(scores, s.top_p, kth)
    if s.min_p > 0:
        probs = _softmax(scores)                                             # [B, V]
        scores[probs < np.float32(s.min_p) * probs.max(axis=1, keepdims=True)] = -np.inf
    if s.typical_p < 1:
        top = scores.max(axis=1, keepdims=True)                              # [B, 1]
        logp = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))   # [B, V]
        p = np.exp(logp)                                                     # [B, V]
        entropy = -(p * np.where(p > 0, logp, 0)).sum(axis=1, keepdims=True)  # [B, 1]
        shifted = np.abs(-logp - entropy)                                    # [B, V] inf if removed
        by_typical = np.argsort(shifted, axis=1, kind="stable")              # [B, V]
        sorted_shift = np.take_along_axis(shifted, by_typical, axis=1)       # [B, V]
        cum = np.cumsum(np.take_along_axis(p, by_typical, axis=1), axis=1)   # [B, V]
        last = np.minimum((cum < np.float32(s.typical_p)).sum(axis=1), vocab - 1)   # [B]
        drop = sorted_shift > sorted_shift[np.arange(batch), last][:, None]  # [B, V]
        drop[:, 0] = False                                                   # keep the most typical
        _remove_sorted(scores, by_typical, drop)


def _top_p(scores: np.ndarray, top_p: float, floor: np.ndarray | None) -> None:
    """Nucleus filter in place on scores [B, V]: transformers' ascending cumulative mass <= 1 - top_p goes.

    Only tokens at or above a per-row floor [B, 1] are sorted: the top-k threshold, else the
    m-th largest score for the smallest m in 256, 2048, ... whose tokens hold >= top_p of the
    mass (everything below it is removed anyway).  Ties rank the lowest index highest.
    """
    batch, vocab = scores.shape
    probs = _softmax(scores)                                                 # [B, V]
    m = 256
    while floor is None and m < vocab:
        t = np.partition(scores, vocab - m, axis=1)[:, vocab - m:vocab - m + 1]   # [B, 1]
        if (np.where(scores >= t, probs, 0).sum(axis=1) >= top_p).all():
            floor = t
        m *= 8
    if floor is None:
        cand = np.broadcast_to(np.arange(vocab), (batch, vocab))             # [B, V] everything
        pad = np.zeros(cand.shape, bool)                                     # [B, V]
    else:   # the candidates of each row, left-aligned and padded with index V
        rows, cols = np.nonzero(scores >= floor)                             # [N], [N] row-major
        counts = np.bincount(rows, minlength=batch)                          # [B]
        cand = np.full((batch, int(counts.max())), vocab)                    # [B, M]
        cand[rows, np.arange(rows.size) - (np.cumsum(counts) - counts)[rows]] = cols
        pad = cand == vocab                                                  # [B, M]
        scores[scores < floor] = -np.inf
    safe = np.minimum(cand, vocab - 1)                                       # [B, M]
    cand_scores = np.where(pad, -np.inf, np.take_along_axis(scores, safe, axis=1))   # [B, M]
    order = np.lexsort((-cand, cand_scores), axis=-1)                        # [B, M] ascending, pads first
    ascending = np.take_along_axis(safe, order, axis=1)                      # [B, M]
    pad_asc = np.take_along_axis(pad, order, axis=1)                         # [B, M]
    p_asc = np.where(pad_asc, 0, np.take_along_axis(probs, ascending, axis=1))   # [B, M]
    below = probs.sum(axis=1, keepdims=True) - p_asc.sum(axis=1, keepdims=True)   # [B, 1] mass not sorted
    drop = below + np.cumsum(p_asc, axis=1) <= np.float32(1 - top_p)          # [B, M]
    drop[:, -1] = False                                                      # keep the most likely
    r, j = np.nonzero(drop & ~pad_asc)                                       # [D], [D]
    scores[r, ascending[r, j]] = -np.inf


def _softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax [B, V] in x's dtype."""
    e = np.exp(x - x.max(axis=1, keepdims=True))                             # [B, V]
    return e / e.sum(axis=1, keepdims=True)                                  # [B, V]


def _remove_sorted(scores: np.ndarray, order: np.ndarray, drop_sorted: np.ndarray) -> None:
    """Set scores [B, V] to -inf where drop_sorted [B, V] (indexed like order [B, V]) is True."""
    drop = np.empty_like(drop_sorted)                                        # [B, V]
    np.put_along_axis(drop, order, drop_sorted, axis=1)
    scores[drop] = -np.inf
