"""MusicGen's codebook delay pattern and its logits processing, in numpy: transformers' semantics exactly.

- :func:`build_delay_pattern_mask` / :func:`apply_delay_pattern_mask`: ``MusicgenForCausalLM``'s methods of the
  same names.  Codebook k of each channel is delayed by k steps: its first k + 1 positions hold the start id
  (BOS padding) and its last K - 1 - k positions too (EOS padding); -1 marks the positions the model predicts.
- :func:`process`: the logits processors ``generate`` runs, in its order: classifier-free guidance
  (``ClassifierFreeGuidanceLogitsProcessor``: uncond + (cond - uncond) * scale), then, when sampling,
  temperature (``TemperatureLogitsWarper``) and top-k (``TopKLogitsWarper``: scores below the k-th largest
  set to -inf).
- :func:`choose`: greedy argmax, or one draw per row from softmax(scores) by inverse CDF on a numpy generator
  (not torch's multinomial: same seed, same codes, not the same codes as torch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_delay_pattern_mask", "build_delay_pattern_mask", "choose", "process", "strip_padding"]


def build_delay_pattern_mask(input_ids: np.ndarray, pad_token_id: int, max_length: int, num_codebooks: int,
                             audio_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids up to the first position to predict [B * K, s], the pattern [B * K, max_length]) for the
    prompt ``input_ids`` [B * K, L]; the pattern holds -1 where the model predicts, else the id to force."""
    ids = input_ids.reshape(-1, num_codebooks, input_ids.shape[-1])                      # [B, K, L]
    bsz, k, seq_len = ids.shape
    shifted = np.full((bsz, k, max_length), -1, dtype=np.int64)                         # [B, K, max_length]
    channel_codebooks = k // 2 if audio_channels == 2 else k
    if max_length < 2 * channel_codebooks - 1:   # too short for the pattern: transformers returns them as they are
        return ids.reshape(bsz * k, -1), shifted.reshape(bsz * k, -1)
    for codebook in range(channel_codebooks):
        rows = [codebook] if audio_channels == 1 else [2 * codebook, 2 * codebook + 1]
        for row in rows:
            shifted[:, row, codebook:seq_len + codebook] = ids[:, row, :max_length - codebook]
    upper = np.triu(np.ones((channel_codebooks, max_length), dtype=bool), k=max_length - channel_codebooks + 1)
    lower = np.tril(np.ones((channel_codebooks, max_length), dtype=bool))
    delay = upper | lower                                                                # [K', max_length]
    if audio_channels == 2:
        delay = np.repeat(delay, 2, axis=0)
    pattern = np.where(delay[None], pad_token_id, shifted)                               # [B, K, max_length]
    starts = np.nonzero(pattern[:, 0, :] == -1)[1]
    first = int(starts.min()) if len(starts) else seq_len
    return pattern[..., :first].reshape(bsz * k, -1), pattern.reshape(bsz * k, -1)


def apply_delay_pattern_mask(input_ids: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """``input_ids`` [B * K, L] with the pattern's forced ids where it is not -1."""
    mask = pattern[..., :input_ids.shape[-1]]
    return np.where(mask == -1, input_ids, mask)


def strip_padding(output_ids: np.ndarray, pad_token_id: int, batch: int, num_codebooks: int) -> np.ndarray:
    """``generate``'s last step: the pattern's padding removed -> codes [B, K, frames]."""
    kept = output_ids[output_ids != pad_token_id]
    return kept.reshape(batch, num_codebooks, -1)


def process(scores: np.ndarray, guidance: float | None, temperature: float | None, top_k: int | None) -> np.ndarray:
    """Logits [2N or N, V] (float32) -> processed scores [N, V]: guidance when given (the conditional rows
    first, the unconditional after), then temperature and top-k (None: not applied)."""
    if guidance is not None:
        n = scores.shape[0] // 2
        cond, uncond = scores[:n], scores[n:]
        scores = uncond + (cond - uncond) * np.float32(guidance)
    if temperature is not None:
        scores = scores / np.float32(temperature)
    if top_k is not None:
        k = min(top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]                      # [N, 1]
        scores = np.where(scores < kth, np.float32(-np.inf), scores)
    return scores


def choose(scores: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """One id per row of ``scores`` [N, V]: argmax (``rng`` None), else a draw from softmax(scores)."""
    if rng is None:
        return np.argmax(scores, axis=-1).astype(np.int64)
    x = scores.astype(np.float64)
    probs = np.exp(x - np.max(x, axis=-1, keepdims=True))                              # [N, V]; -inf -> 0
    cdf = np.cumsum(probs, axis=-1)
    cdf /= cdf[:, -1:]
    u = rng.random(scores.shape[0])[:, None]                                           # [N, 1] in [0, 1)
    picked = np.argmax(cdf > u, axis=-1)                                               # first bin past u
    return picked.astype(np.int64)
