"""Greedy, sampled and beam decoding over a step function, as transformers' ``generate`` does it.

``step(tokens [N, 1], reorder [N] | None) -> logits [N, V]`` runs the decoder one token further for N rows
(``reorder`` picks, before the step, which rows' caches continue: beam search's survivors).
Sequences start with the decoder start token; :func:`beam_search` follows transformers 4.57's vectorized
``_beam_search`` (top 2*beams continuations, finished hypotheses scored ``sum_logprobs / len**length_penalty``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgegen.runtimes.text.sampling import SamplingSettings, sample

Step = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
NEG = -1.0e9


@dataclass(frozen=True)
class Forcing:
    """The logits processors a seq2seq generation config turns on."""

    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    no_repeat_ngram_size: int = 0


def _banned(row: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of ``row`` (transformers' NoRepeatNGramLogitsProcessor)."""
    if n <= 0 or len(row) + 1 < n:
        return []
    prefix = tuple(row[len(row) + 1 - n:])
    return [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == prefix]


def process(scores: np.ndarray, rows: list[list[int]], forcing: Forcing, max_length: int) -> np.ndarray:
    """Apply no-repeat-ngram, forced BOS and forced EOS to ``scores`` [N, V] in place (rows: tokens so far)."""
    cur_len = len(rows[0])
    for b, row in enumerate(rows):
        scores[b, _banned(row, forcing.no_repeat_ngram_size)] = -np.inf
    if forcing.forced_bos_token_id is not None and cur_len == 1:
        scores[:] = -np.inf
        scores[:, forcing.forced_bos_token_id] = 0
    if forcing.forced_eos_token_id is not None and cur_len == max_length - 1:
        scores[:] = -np.inf
        scores[:, forcing.forced_eos_token_id] = 0
    return scores


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sample_search(step: Step, start: int, forcing: Forcing, max_new_tokens: int, sampling: SamplingSettings,
                  rng: np.random.Generator, stop_ids: frozenset[int] = frozenset()) -> list[int]:
    """One sequence (without the start token, with its end token) by greedy or sampled decoding."""
    row = [start]
    max_length = max_new_tokens + 1
    ends = set(forcing.eos_token_ids) | set(stop_ids)
    tokens = np.array([[start]], dtype=np.int64)
    while len(row) < max_length:
        logits = step(tokens, None).astype(np.float32)                    # [1, V]
        scores = process(logits.copy(), [row], forcing, max_length)
        history = np.array([row[1:]], dtype=np.int64)
        token = int(sample(scores, sampling, rng, history if history.size else None)[0])
        row.append(token)
        if token in ends:
            break
        tokens = np.array([[token]], dtype=np.int64)
    return row[1:]


def beam_search(step: Step, start: int, forcing: Forcing, max_new_tokens: int, num_beams: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False) -> list[int]:
    """The best hypothesis (without the start token) of a beam search over one input."""
    k, max_length = num_beams, max_new_tokens + 1
    eos = np.array(forcing.eos_token_ids, dtype=np.int64)
    keep = max(2, 1 + len(eos)) * k
    running = [[start] for _ in range(k)]
    running_scores = np.full(k, NEG, dtype=np.float32)
    running_scores[0] = 0.0
    finished: list[list[int]] = [[start] for _ in range(k)]
    finished_scores = np.full(k, NEG, dtype=np.float32)
    is_finished = np.zeros(k, dtype=bool)
    heuristic_open = True
    tokens = np.full((k, 1), start, dtype=np.int64)
    reorder: np.ndarray | None = None
    cur_len = 1
    while True:
        logits = step(tokens, reorder)                                      # [k, V]
        vocab = logits.shape[1]
        log_probs = process(_log_softmax(logits), running, forcing, max_length)
        total = (log_probs + running_scores[:, None]).reshape(-1)          # [k*V]
        top = np.argsort(-total, kind="stable")[:keep]
        top_scores = total[top].astype(np.float32)
        top_beams, top_ids = top // vocab, top % vocab
        top_rows = [running[b] + [int(t)] for b, t in zip(top_beams, top_ids)]
        hits = np.isin(top_ids, eos) | (cur_len + 1 >= max_length)         # stopping criteria
        # survivors: the best k that did not stop
        alive = top_scores + hits.astype(np.float32) * NEG
        nxt = np.argsort(-alive, kind="stable")[:k]
        new_running = [top_rows[i] for i in nxt]
        new_running_scores = alive[nxt]
        reorder = top_beams[nxt].astype(np.int64)
        # finished: merge the top-k candidates that stopped into the kept hypotheses
        fin = top_scores / np.float32((cur_len + 1 - 1) ** length_penalty)
        top_mask = np.arange(keep) < k
        just = hits & top_mask
        if is_finished.all() and early_stopping is True:
            fin = fin + NEG
        if not heuristic_open:
            fin = fin + NEG
        fin = fin + (~just).astype(np.float32) * NEG
        merged_scores = np.concatenate([finished_scores, fin.astype(np.float32)])
        merged_rows = finished + top_rows
        merged_done = np.concatenate([is_finished, just])
        best = np.argsort(-merged_scores, kind="stable")[:k]
        finished = [merged_rows[i] for i in best]
        finished_scores, is_finished = merged_scores[best], merged_done[best]
        running, running_scores = new_running, new_running_scores
        cur_len += 1
        # transformers' early-stop heuristic
        if early_stopping == "never" and length_penalty > 0.0:
            hypothetical = max_length - 1
        else:
            hypothetical = cur_len - 1
        best_running = running_scores[0] / np.float32(hypothetical ** length_penalty)
        worst_finished = finished_scores.min() if is_finished.all() else NEG
        heuristic_open = heuristic_open and bool(best_running > worst_finished)
        exists_open = not (is_finished.all() and early_stopping is True)
        if not (heuristic_open and exists_open and not hits.all()) or cur_len >= max_length:
            break
        tokens = np.array([[r[-1]] for r in running], dtype=np.int64)
    return finished[0][1:]
