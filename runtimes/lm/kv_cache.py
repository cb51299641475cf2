"""KV reuse: a batch-1 generator's cache taken out as a :class:`KVState`, resumed on a longer sequence, and a
bounded :class:`PrefixCache` of such states shared by independent requests (a system prompt's KV computed once).

A state is the cache of the tokens ``ids`` that went through the decoder.  Resuming it on a new sequence keeps
the positions of the longest common prefix and runs only the rest: a chat's next turn runs the new messages,
and when the template renders the last reply with other tokens than were generated (a retokenization, a
stripped space), the cache is rolled back to where they part.  At least one token always runs, since the
next-token logits come from the last position run.

Both cache layouts are handled: ``grow`` (each step returns a new present; a state's tensors hold exactly its
positions, trimmed by a copy) and ``shared`` (GroupQueryAttention writes new positions into one preallocated
buffer, the mask says how much is used; rolling back only shortens the mask, so a state handed to a run is
its to write).  The prefix cache therefore gives every taker a copy and never hands out what it holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgegen.errors import InvalidArgumentError

#: The prefix cache's default bound: a few long system prompts of a small model, a short one of a 1B model.
DEFAULT_PREFIX_CACHE_BYTES = 256 << 20
#: Shorter shared prefixes are not worth a cache copy.
MIN_PREFIX_TOKENS = 8


@dataclass
class KVState:
    """A batch-1 cache covering ``ids``: ``past`` [1, H_kv, P >= len(ids), D] per layer and kind."""

    ids: tuple[int, ...]
    past: list[ort.OrtValue]
    shared: bool          # a shared buffer (GroupQueryAttention): P is its capacity, the mask its use
    nbytes: int

    def common_prefix(self, ids: Sequence[int]) -> int:
        """How many leading tokens ``ids`` shares with this state."""
        n = min(len(self.ids), len(ids))
        if n == 0:
            return 0
        differ = np.flatnonzero(np.asarray(self.ids[:n]) != np.asarray(ids[:n], dtype=np.int64))
        return int(differ[0]) if differ.size else n


def state_bytes(past: Sequence[ort.OrtValue], itemsize: int) -> int:
    return sum(int(np.prod(v.shape())) for v in past) * itemsize


def trimmed(state: KVState, keep: int, device: str, device_id: int, copy: bool) -> list[ort.OrtValue]:
    """``state``'s cache cut to its first ``keep`` positions; a copy when ``copy`` (or when cutting a grow cache)."""
    if state.shared and not copy:
        return state.past            # the mask decides what is read; new positions overwrite the rest
    if not copy and state.past and state.past[0].shape()[2] == keep:
        return state.past            # grow caches are never written by a run: shared as they are
    return truncated(state.past, keep, device, device_id)


def truncated(past: Sequence[ort.OrtValue], keep: int, device: str, device_id: int) -> list[ort.OrtValue]:
    """A copy of the first ``keep`` positions of each cache tensor [B, H_kv, P, D] (a grow cache rolled back)."""
    # copies: numpy() may view memory that the OrtValue frees when it goes
    return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :keep]), device, device_id)
            for v in past]


class PrefixCache:
    """Recently used KV states, bounded by bytes (least recently used first out), looked up by longest common
    prefix.  Thread-safe; what :meth:`take` returns is the caller's own copy."""

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidArgumentError(f"the prefix cache's max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], KVState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def best(self, ids: Sequence[int]) -> tuple[KVState | None, int]:
        """The entry sharing the longest prefix with ``ids`` (of at least MIN_PREFIX_TOKENS), and that length."""
        with self._lock:
            found, length = None, 0
            for key, state in self._entries.items():
                n = state.common_prefix(ids)
                if n > length:
                    found, length = key, n
            if found is None or length < MIN_PREFIX_TOKENS:
                self.misses += 1
                return None, 0
            self._entries.move_to_end(found)
            self.hits += 1
            return self._entries[found], length

    def put(self, state: KVState) -> None:
        """Keep ``state`` (the caller gives it up: a run must not write it afterwards)."""
        if state.nbytes > self.max_bytes or len(state.ids) < MIN_PREFIX_TOKENS:
            return
        with self._lock:
            # an entry that is a prefix of the new one says nothing the new one does not
            for key in [k for k, s in self._entries.items() if len(k) <= len(state.ids)
                        and state.ids[:len(k)] == k]:
                del self._entries[key]
            self._entries[state.ids] = state
            total = sum(s.nbytes for s in self._entries.values())
            while total > self.max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                total -= old.nbytes
