"""Log-probabilities of generated tokens, and their OpenAI shape (``logprobs.content``).

A token's logprob is the log-softmax of the model's logits at that position, before any sampling setting
(temperature, top-k, penalties) or constraint: what the model thinks, as OpenAI and vLLM report it.  The
``bytes`` of a token are its own UTF-8 bytes (a byte-level token may hold part of a character, whose text alone
is U+FFFD): read from the tokenizer's byte-level alphabet or ``<0xAB>`` byte-fallback pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["TokenLogprob", "openai_logprobs", "token_bytes", "token_logprobs"]


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (log-softmax of its logits, before any
    sampling setting or constraint), and the ``top_logprobs`` likeliest tokens at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: np.ndarray, tokens: np.ndarray, top: int) -> list[TokenLogprob]:
    """logits [B, V], chosen tokens [B] -> one :class:`TokenLogprob` per row (``top`` alternatives each)."""
    x = logits.astype(np.float64)                                                     # [B, V]
    peak = x.max(axis=1, keepdims=True)                                               # [B, 1]
    logz = peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))                          # [B]
    out = []
    for b, token in enumerate(tokens.tolist()):
        alternatives: tuple[tuple[int, float], ...] = ()
        if top:
            best = np.argpartition(-x[b], top - 1)[:top] if top < x.shape[1] else np.arange(x.shape[1])
            best = best[np.lexsort((best, -x[b, best]))]                               # likeliest first, ties by id
            alternatives = tuple((int(i), float(x[b, i] - logz[b])) for i in best)
        out.append(TokenLogprob(int(token), float(x[b, token] - logz[b]), alternatives))
    return out


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes one token stands for: byte-level pieces mapped back, ``<0xAB>`` as that byte, SentencePiece's
    U+2581 as a space; otherwise its decoded text."""
    piece = tokenizer.id_to_token(int(token_id))
    if piece is None:
        return b""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    table = _byte_decoder()
    if _is_byte_level(tokenizer) and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    if "\u2581" in piece:
        return piece.replace("\u2581", " ").encode("utf-8")
    return tokenizer.decode([int(token_id)], skip_special_tokens=False).encode("utf-8")


def _is_byte_level(tokenizer: Any) -> bool:
    decoder = getattr(tokenizer, "decoder", None)
    return type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)


def openai_logprobs(tokenizer: Any, entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """``entries`` as OpenAI's ``logprobs.content``: token, logprob, bytes, top_logprobs."""
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(tokenizer, token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return [{**one(e.token_id, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]
