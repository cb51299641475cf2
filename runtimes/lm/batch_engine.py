"""Continuous batching: the rows of several running :class:`~edgegen.runtimes.lm.causal_lm.Generator` runs
decoded as one left-padded batch, one graph run per step for all of them, runs joining and leaving at step
boundaries (a server's many clients on one model: :mod:`edgegen.serve.scheduler`).

A generator's own batch is fixed when it is made; a :class:`MergedBatch` takes over its graph runs once it has
run its prompt::

    batch = MergedBatch(lm)                      # lm: a CausalLM that MergedBatch.supports
    gen = lm.generator(settings, batch=n)
    gen.append_tokens(prompts)
    gen.generate_next_token()                    # the prompt's forward and the first token, in its own run
    batch.add(gen)                               # its rows join the running batch
    while batch:
        batch.step()                             # one graph run: every member's next-token logits
        for gen in batch.members:
            gen.generate_next_token()            # samples only, with its own settings, random stream, grammar
        batch.remove_done()

Each generator keeps everything that makes a run its own (settings, random generator, token constraint,
penalties' history, finish bookkeeping); the batch holds only the merged cache ``past`` [B, H_kv, P, D] per
layer and kind, its mask [B, P] and which member row each batch row is.  A joining run's cache (P' positions)
and the batch's are padded on the left to max(P, P') with masked zero positions and stacked; a finished row
leaves the batch (its generator gets zero logits for it, which it ignores: finished rows repeat their last
token), and leading columns that no row uses any more are cut, so the batch is as long as its longest live row.

Why a row gets what it gets alone: the graph's rows are independent given the attention mask; a masked position
contributes an exact zero to the softmax, and the position ids come from the mask (0, 1, ... over a row's real
tokens), so the extra left padding changes nothing but the summation's shape (float rounding at the last bit,
which the tests check does not change greedy tokens).

Only graphs that skip left padding qualify (:meth:`MergedBatch.supports`: a KV cache, an attention mask,
``sampler.padding == "left"``, a growing cache).  GroupQueryAttention graphs read each row's length from the
mask and need unpadded rows (``padding: none``, a shared cache buffer); their runs are not merged.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnxruntime as ort

from edgegen.runtimes.lm.causal_lm import CausalLM, Generator
from edgegen.runtimes.lm.decoder import positions_from_mask
from edgegen.runtimes.run_control import cancel_on

__all__ = ["MergedBatch"]


class MergedBatch:
    """The merged batch of one model (see the module docstring); used from one thread.  ``cancel``: set from any
    thread, it stops a :meth:`step` in progress (CancelledError)."""

    def __init__(self, lm: CausalLM, cancel: threading.Event | None = None) -> None:
        if not self.supports(lm):
            raise ValueError("MergedBatch needs a causal LM whose decoder skips left padding (MergedBatch.supports)")
        self.graph = lm.graph
        self.cancel = cancel or threading.Event()
        self.members: list[Generator] = []
        self._rows: list[tuple[Generator, int]] = []        # batch row -> (member, its row)
        self._past: list[ort.OrtValue] = []                  # [B, H_kv, P, D] per layer and kind
        self._mask = np.zeros((0, 0), np.int64)              # [B, P] 1 = a real position of the past
        self._binding = self.graph.new_binding()
        #: graph runs made, and the most member runs / rows one of them held (for tests and benchmarks)
        self.steps = self.peak_members = self.peak_rows = 0

    @staticmethod
    def supports(lm: Any) -> bool:
        """Whether ``lm``'s runs can be merged: a causal LM whose cached decoder takes a mask and left padding."""
        if not isinstance(lm, CausalLM):
            return False
        graph, sampler = lm.graph, lm.sampler
        return (graph.layout is not None and graph.has_mask and sampler.cache == "kv" and sampler.padding == "left"
                and sampler.kv_buffer == "grow")

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def width(self) -> int:
        """Positions of the merged past (the longest live row's)."""
        return int(self._mask.shape[1])

    # -- joining and leaving -----------------------------------------------------------------------------------
    def add(self, gen: Generator) -> None:
        """Let ``gen``'s live rows join the batch.  ``gen`` has run at least one step on its own (its prompt is in
        its cache; its last sampled token is pending) and is not done; from now on :meth:`step` runs its graph."""
        pending, mask = gen._pending, gen._mask                          # [n, 1], [n, L]
        if gen.graph is not self.graph or gen._row_past is not None or gen._logits is not None \
                or pending is None or pending.shape[1] != 1 or not gen._past:
            raise ValueError("MergedBatch.add takes a generator of this model that has run one step on its own")
        rows = np.flatnonzero(~gen.finished)
        if rows.size == 0:
            return
        theirs = [np.asarray(v.numpy())[rows] for v in gen._past]       # [k, H_kv, L - 1, D] (copies)
        their_mask = mask[rows, :-1]                                       # [k, L - 1]
        gen._past = []                                                     # the batch holds it now
        ours = [np.asarray(v.numpy()) for v in self._past] if self._rows else None
        width = max(self.width, their_mask.shape[1])
        if ours is None:
            arrays, self._mask = theirs, their_mask.copy()
        else:
            arrays = [np.concatenate([_left_pad(a, width), _left_pad(b, width)], axis=0) for a, b in zip(ours, theirs)]
            self._mask = np.concatenate([_left_pad(self._mask, width), _left_pad(their_mask, width)], axis=0)
        self._set_past(arrays)
        self._rows.extend((gen, int(b)) for b in rows)
        self.members.append(gen)
        self.peak_members = max(self.peak_members, len(self.members))
        self.peak_rows = max(self.peak_rows, len(self._rows))

    def remove_done(self) -> list[Generator]:
        """Drop the rows that finished (and the members that are done); the members dropped."""
        keep = [i for i, (gen, b) in enumerate(self._rows) if not gen.finished[b]]
        done = [gen for gen in self.members if gen.is_done()]
        self.members = [gen for gen in self.members if not gen.is_done()]
        if len(keep) == len(self._rows):
            return done
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._past, self._mask = [], np.zeros((0, 0), np.int64)
            return done
        mask = self._mask[keep]                                            # [B', P]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]              # columns no row uses any more: cut
        self._mask = np.ascontiguousarray(mask[:, start:])
        self._set_past([np.ascontiguousarray(np.asarray(v.numpy())[keep][:, :, start:]) for v in self._past])
        return done

    # -- stepping ----------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One graph run for every live row: each member's next-token logits [n, V] are set (zeros for its
        finished rows), so its ``generate_next_token()`` samples without running the graph."""
        self.remove_done()
        if not self._rows:
            return
        ids = np.array([[gen._pending[b, 0]] for gen, b in self._rows], np.int64)       # [B, 1]
        mask = np.concatenate([self._mask, np.ones((len(self._rows), 1), np.int64)], axis=1)   # [B, P + 1]
        positions = positions_from_mask(mask)[:, -1:] if self.graph.has_positions else None  # [B, 1]
        with cancel_on(self.cancel):
            logits, self._past = self.graph.step(ids, mask, positions, self._past, False, self._binding)  # [B, V]
        self._mask = mask
        self.steps += 1
        at: dict[int, list[tuple[int, int]]] = {}
        for i, (gen, b) in enumerate(self._rows):
            at.setdefault(id(gen), []).append((i, b))
        for gen in self.members:
            rows = at.get(id(gen), [])
            full = np.zeros((gen.batch, logits.shape[1]), np.float32)                      # [n, V]
            if rows:
                full[[b for _, b in rows]] = logits[[i for i, _ in rows]]
            gen._logits = full

    def _set_past(self, arrays: list[np.ndarray]) -> None:
        graph = self.graph
        self._past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), graph.device, graph.device_id)
                      for a in arrays]


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` ([B, P] mask or [B, H, P, D] cache) with zero positions in front up to ``width``."""
    axis = 1 if a.ndim == 2 else 2
    short = width - a.shape[axis]
    if short == 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (short, 0)
    return np.pad(a, pad)
