"""One forward step of a decoder graph with a KV cache, the one place that calls ``run``.

The graph follows the Optimum / ONNX Runtime GenAI naming: inputs ``input_ids``
[B, T], optionally ``attention_mask`` [B, P+T] and ``position_ids`` [B, T], and
``past_key_values.{i}.key|value`` [B, H_kv, P, D]; outputs ``logits`` [B, T, V] and
``present.{i}.key|value`` [B, H_kv, P+T, D] (D may differ between keys and values:
:class:`CacheLayout`).  Which optional inputs exist is read from
the session, so a graph that needs no positions (BLOOM, ALiBi) is fed none; a graph with
``logits_to_keep`` [1] (edgegen adds it before the LM head at conversion) is asked for the last
position's logits only when generating (1), for the last k when verifying a speculative draft
(:meth:`DecoderGraph.step_window`) and for every position when scoring (0).

The cache stays inside ONNX Runtime between steps: each step's ``present`` OrtValues are
bound as the next step's ``past`` through IO binding, so no cache tensor is converted to
or from numpy per token.  On CUDA and DirectML the cache tensors live on the device and only the
last position's logits come back to the host.  A graph that writes its new positions into the
past in place (GroupQueryAttention; the manifest's ``"kv_buffer": "shared"``) gets one
preallocated buffer per cache tensor (:meth:`DecoderGraph.reserve`), bound as past and present.

A generation run keeps one :class:`StepBinding` across its steps: the cache is bound again only
when its OrtValues change (a shared buffer: once per run), and a step's last-position logits are
written by ORT straight into a new numpy array (no copy; the caller owns it).  Rebuilding the
binding every step cost ~8% of decode tok/s on a 100M Llama int4 (GroupQueryAttention) at
~3 ms/step (benchmarks/lm_genai.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgegen.errors import GraphMismatchError

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_KEEP_LAST, _KEEP_ALL = np.array([1], np.int64), np.array([0], np.int64)   # logits_to_keep values (never written)


@dataclass(frozen=True)
class CacheLayout:
    """What the graph's past inputs say about the cache: layers, heads, head sizes, dtype.  Keys and values
    may have different head sizes (multi-head latent attention, DeepSeek-V2/V3): ``value_head_dim``
    (None: ``head_dim``, the keys' size)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: type
    value_head_dim: int | None = None

    @property
    def value_dim(self) -> int:
        return self.head_dim if self.value_head_dim is None else self.value_head_dim

    def empty(self, batch: int, capacity: int = 0) -> list[np.ndarray]:
        """Zero past tensors, layer by layer key then value: [B, H_kv, P=capacity (0: empty), D_key | D_value]."""
        key, value = ((batch, self.num_kv_heads, capacity, d) for d in (self.head_dim, self.value_dim))
        return [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers) for shape in (key, value)]

    def bytes_per_token(self) -> int:
        return self.num_layers * self.num_kv_heads * (self.head_dim + self.value_dim) * np.dtype(self.dtype).itemsize


def cache_layout(session: ort.InferenceSession) -> CacheLayout | None:
    """The cache layout of a decoder graph, or None if it takes no past.  Every key has one shape and every
    value one shape (the two may differ in head size)."""
    pasts = {}
    for arg in session.get_inputs():
        m = _PAST.match(arg.name)
        if m:
            pasts[(int(m.group(1)), m.group(2))] = arg
    if not pasts:
        return None
    layers = 1 + max(layer for layer, _ in pasts)
    missing = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value") if (i, kind) not in pasts]
    shapes = {kind: {(arg.shape[1], arg.shape[3]) if len(arg.shape) == 4 else tuple(arg.shape)
                     for (_, k), arg in pasts.items() if k == kind} for kind in ("key", "value")}
    fixed = all(len(s) == 1 and len(next(iter(s))) == 2 and all(isinstance(d, int) for d in next(iter(s)))
                for s in shapes.values())
    if missing or not fixed or next(iter(shapes["key"]))[0] != next(iter(shapes["value"]))[0]:
        raise GraphMismatchError(
            f"decoder graph: past inputs must be past_key_values.N.key/value shaped [batch, kv_heads, past, head_dim], "
            f"one shape for every key and one for every value (missing: {', '.join(missing) or 'none'}; key "
            f"[heads, head_dim] {sorted(map(str, shapes['key']))}, value {sorted(map(str, shapes['value']))}); "
            "re-convert the model with edgegen")
    (heads, key_dim), (_, value_dim) = next(iter(shapes["key"])), next(iter(shapes["value"]))
    first = pasts[(0, "key")]
    return CacheLayout(num_layers=layers, num_kv_heads=heads, head_dim=key_dim,
                       dtype=_NP_DTYPES.get(first.type, np.float32),
                       value_head_dim=None if value_dim == key_dim else value_dim)


class StepBinding:
    """One generation run's IO binding, reused across its steps (see the module docstring)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.binding = session.io_binding()
        self.bound: list[ort.OrtValue] | None = None   # the cache list bound now (as past, and present if shared)
        self.capacity = 0                              # positions the bound shared buffer holds


class DecoderGraph:
    """A decoder session plus the names it takes, and its step function."""

    def __init__(self, session: ort.InferenceSession, device: str = "cpu", device_id: int = 0) -> None:
        self.session = session      # DirectML's is a GuardedSession: one run at a time (session.py)
        names = {arg.name for arg in session.get_inputs()}
        self.has_mask = "attention_mask" in names
        self.has_positions = "position_ids" in names
        #: ``logits_to_keep`` [1]: the graph computes logits for only the last k positions (0: all)
        self.has_logits_to_keep = "logits_to_keep" in names
        self.layout = cache_layout(session)
        n = self.layout.num_layers if self.layout else 0
        self.past_names = [f"past_key_values.{i}.{k}" for i in range(n) for k in ("key", "value")]
        self.present_names = [f"present.{i}.{k}" for i in range(n) for k in ("key", "value")]
        logits = session.get_outputs()[0]
        self.vocab_size: int | None = logits.shape[-1] if isinstance(logits.shape[-1], int) else None
        #: a step's [B, 1, V] logits can be written straight into a numpy array (edgegen graphs' logits are float32)
        self._logits_into_numpy = self.vocab_size is not None and logits.type == "tensor(float)"
        self.device = device
        self.device_id = device_id

    def start_cache(self, batch: int) -> list[ort.OrtValue]:
        assert self.layout is not None
        return [ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for a in self.layout.empty(batch)]

    def reserve(self, past: list[ort.OrtValue], length: int, capacity: int,
                state: StepBinding | None = None) -> list[ort.OrtValue]:
        """A shared past/present buffer that holds ``length`` positions: ``past`` if it does, else a new
        one of ``capacity`` positions with ``past``'s contents at the start.  With the run's ``state``, the
        held size is read from it instead of from the OrtValue (one call fewer per step)."""
        assert self.layout is not None
        if state is not None and state.bound is past and state.capacity >= length:
            return past
        held = past[0].shape()[2] if past else 0
        if held >= length:
            return past
        batch = past[0].shape()[0] if past else 1
        grown = self.layout.empty(batch, max(capacity, length))                         # [B, H_kv, C, D] each
        for new, old in zip(grown, past):
            new[:, :, :held] = old.numpy()
        return [ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for a in grown]

    def split_cache(self, past: list[ort.OrtValue], batch: int) -> list[list[ort.OrtValue]]:
        """One batch-1 cache per row of a batched cache (whose rows are unpadded)."""
        if not past or past[0].shape()[2] == 0:
            return [self.start_cache(1) for _ in range(batch)]
        arrays = [value.numpy() for value in past]                                     # each [B, H_kv, P, D]
        # copies: numpy() may view memory that the batched OrtValue frees when it goes
        return [[ort.OrtValue.ortvalue_from_numpy(a[b:b + 1].copy(), self.device, self.device_id)
                 for a in arrays] for b in range(batch)]

    def new_binding(self) -> StepBinding:
        """A binding for one generation run's steps (not shared between threads)."""
        return StepBinding(self.session)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
             past: list[ort.OrtValue], share: bool = False,
             state: StepBinding | None = None) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """Run one forward: input_ids [B, T] -> (logits of the last position [B, V] float32, present).

        ``share``: the graph writes the new positions into ``past`` in place (see :meth:`reserve`), which is
        bound as the present too and returned.  ``state``: the run's :class:`StepBinding` (default: a new one)."""
        logits, present = self._run(input_ids, attention_mask, position_ids, past, share, state, 1)
        return logits[:, -1, :], present

    def step_window(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
                    past: list[ort.OrtValue], keep: int, share: bool = False,
                    state: StepBinding | None = None) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """As :meth:`step`, but the logits of the last ``keep`` positions [B, keep, V] float32 (speculative
        decoding verifies a drafted window in one run; a graph with ``logits_to_keep`` computes only those)."""
        if not 1 <= keep <= input_ids.shape[1]:
            raise ValueError(f"keep must be in [1, {input_ids.shape[1]}], got {keep}")
        return self._run(input_ids, attention_mask, position_ids, past, share, state, keep)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
             past: list[ort.OrtValue], share: bool, state: StepBinding | None,
             keep: int) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One forward -> (logits of the last ``keep`` positions [B, keep, V] float32, present)."""
        state = state or self.new_binding()
        binding = state.binding
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        if self.has_mask:
            assert attention_mask is not None
            binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        if self.has_positions:
            assert position_ids is not None
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        if self.has_logits_to_keep:
            binding.bind_cpu_input("logits_to_keep", _KEEP_LAST if keep == 1 else np.array([keep], np.int64))
        # logits first: get_outputs() lists outputs in the order they were first bound
        exact = input_ids.shape[1] == keep or self.has_logits_to_keep        # the graph returns [B, keep, V]
        into_numpy = self._logits_into_numpy and exact
        if into_numpy:  # ORT writes them into a fresh numpy array: returned without a copy, owned by the caller
            logits = np.empty((input_ids.shape[0], keep, self.vocab_size), np.float32)             # [B, keep, V]
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        else:
            binding.bind_output("logits", "cpu")
        if not (share and state.bound is past):
            for name, value in zip(self.past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
            if share:
                for name, value in zip(self.present_names, past, strict=True):
                    binding.bind_ortvalue_output(name, value)
                state.bound, state.capacity = past, past[0].shape()[2] if past else 0
        if not share:  # a grown present each step: ORT allocates it (bound again, or it would reuse the last shape)
            for name in self.present_names:
                binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = None if share and into_numpy else binding.get_outputs()
        if not into_numpy:
            # a copy: outputs[0].numpy() views memory that ORT frees with the OrtValue
            logits = np.array(outputs[0].numpy()[:, -keep:, :], dtype=np.float32)           # [B, keep, V] of [B, T, V]
        return logits, past if share else list(outputs[1:])

    def full_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of every position [B, T, V] for a whole sequence (validation, scoring)."""
        return self.session.run(["logits"], self.full_feeds(input_ids, attention_mask))[0]

    def full_feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs :meth:`full_logits` runs the graph on: the sequence [B, T] with an empty cache."""
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids.astype(np.int64)}
        if self.has_mask:
            feeds["attention_mask"] = attention_mask.astype(np.int64)
        if self.has_positions:
            feeds["position_ids"] = positions_from_mask(attention_mask)[:, -input_ids.shape[1]:]
        if self.has_logits_to_keep:
            feeds["logits_to_keep"] = _KEEP_ALL
        if self.layout is not None:
            feeds.update(zip(self.past_names, self.layout.empty(input_ids.shape[0]), strict=True))
        return feeds


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """position_ids [B, L] for a left-padded mask [B, L]: 0.. for real tokens, 0 for pads (as HF does)."""
    positions = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    return np.maximum(positions, 0)
