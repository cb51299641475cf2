"""The rnn-lm runtime: recurrent language models (LSTM, GRU) exported as one ``step`` graph.

The graph (written by :mod:`edgegen.converters.rnn.convert`)::

    inputs   input_ids     int64   [B, T]
             state.{i}     float32 [B, *state_shapes[i]]     (zeros start a sequence)
    outputs  logits        float32 [B, T, V]
             new_state.{i} float32 [B, *state_shapes[i]]     (the state after the T tokens)

The loop carries the state instead of a KV cache, so there is no context limit: memory is
constant in the sequence length.  ``max_new_tokens`` (from the settings, the artifact's
defaults or the built-in 128) bounds every run.

Batches: each prompt's prefill runs alone (prompts of different lengths need no padding,
which an RNN could not skip), then the rows' states are stacked and every decode step runs
the whole batch in one graph call.  Finished rows keep stepping (their tokens are ignored).
Greedy output of a row is therefore the same alone or in a batch; sampled output is
reproducible for the same seed, prompts and settings (one random draw per row per step,
all rows at once, as in the causal-LM runtime).

Same sampling as the causal-LM runtime (:func:`edgegen.runtimes.text.sampling.sample`), same
settings (:class:`GenerationSettings`), same results (:class:`Completion`).  No torch here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import tokenizers

from edgegen.errors import GraphMismatchError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.text.loop import StepGenerator, TextModel, load_checked_tokenizer, load_defaults, require_parts
from edgegen.runtimes.text.settings import GenerationSettings, Resolved
from edgegen.runtimes.text.tokenizer import logits_vocab
from edgegen.runtimes.session import SessionConfig

__all__ = ["RNNLM", "RNNGenerator", "RNNLMSampler", "StepGraph"]

#: The most state tensors a step graph may carry (an LSTM of L layers has 2; real models have a handful).
MAX_STATES = 256


@dataclass(frozen=True)
class RNNLMSampler:
    """The ``sampler`` section of an rnn-lm manifest."""

    #: Per state tensor, its shape without the batch axis (the graph's state.{i} is [B, *shape]).
    state_shapes: tuple[tuple[int, ...], ...]
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    #: The special tokens as the tokenizer spells them, e.g. {"eos": "<|endoftext|>"}.
    special_tokens: dict[str, str] = field(default_factory=dict)

    def token_ids(self) -> dict[str, tuple[int, ...]]:
        """The token ids this section names, by key."""
        return {"eos_token_ids": self.eos_token_ids,
                **{key: (value,) for key, value in (("bos_token_id", self.bos_token_id),
                                                   ("pad_token_id", self.pad_token_id)) if value is not None}}

    @classmethod
    def from_manifest(cls, section: object) -> RNNLMSampler:
        from edgegen.manifest import MAX_COUNT, count_problem, shape_problem
        from edgegen.strict import from_json

        where = "edgegen.json.sampler"
        sampler = from_json(cls, section, where=where, error=ManifestError, fix="re-convert the model")
        problems = []
        if not 1 <= len(sampler.state_shapes) <= MAX_STATES:
            problems.append(f"{where}.state_shapes: must list 1 to {MAX_STATES} shapes, "
                            f"got {len(sampler.state_shapes)}")
        problems += [f"{where}.state_shapes[{i}]: {p}" for i, shape in enumerate(sampler.state_shapes[:MAX_STATES])
                     if (p := shape_problem(shape))]
        for key, ids in sampler.token_ids().items():   # against the vocabulary at load (check_vocabulary)
            if bad := next((p for i in ids if (p := count_problem(i, 0, MAX_COUNT - 1))), None):
                problems.append(f"{where}.{key}: {bad}")
        if problems:
            raise ManifestError("; ".join(problems) + "; re-convert the model")
        return sampler


class StepGraph:
    """The ``step`` graph: one call runs T tokens of B rows from given states."""

    def __init__(self, session: ort.InferenceSession, state_shapes: tuple[tuple[int, ...], ...]) -> None:
        self.session, self.state_shapes = session, state_shapes
        n = len(state_shapes)
        self.state_names = [f"state.{i}" for i in range(n)]
        self.output_names = ["logits", *[f"new_state.{i}" for i in range(n)]]
        inputs = sorted(arg.name for arg in session.get_inputs())
        outputs = {arg.name for arg in session.get_outputs()}
        want = sorted(["input_ids", *self.state_names])
        if inputs != want or not set(self.output_names) <= outputs:
            raise GraphMismatchError(
                f"the rnn-lm step graph has inputs {inputs} and outputs {sorted(outputs)}, but the manifest's "
                f"{n} state shapes need inputs {want} and outputs {self.output_names}; re-convert the model")

    def zero_states(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, *shape), dtype=np.float32) for shape in self.state_shapes]   # [B, *shape]

    def step(self, input_ids: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """input_ids [B, T] int64, states [B, *shape] -> logits [B, T, V] float32, new states."""
        feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64)}
        feed.update({name: np.ascontiguousarray(s, dtype=np.float32) for name, s in zip(self.state_names, states)})
        logits, *new = self.session.run(self.output_names, feed)
        return logits, new

    def full_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [B, T, V] of whole sequences from zero states."""
        return self.step(input_ids, self.zero_states(input_ids.shape[0]))[0]


class RNNGenerator(StepGenerator):
    """One generation run over a batch: append tokens (each row alone), then step the batch."""

    def __init__(self, graph: StepGraph, sampler: RNNLMSampler, settings: Resolved, batch: int,
                 cancel: threading.Event | None = None) -> None:
        super().__init__(sampler.eos_token_ids, settings, batch, cancel)
        self.graph, self.sampler = graph, sampler
        self._states = graph.zero_states(batch)                 # each [B, *shape]
        self._mask = np.zeros((batch, 0), dtype=bool)           # [B, L] True = real token
        self._logits: np.ndarray | None = None                  # [B, V] next-token logits

    def append_tokens(self, rows: Sequence[Sequence[int]]) -> None:
        """Run each row's tokens alone from its current state (rows may differ in length)."""
        self._check_rows(rows)
        width = max(len(r) for r in rows)
        ids = np.zeros((self.batch, width), dtype=np.int64)     # [B, T]
        mask = np.zeros((self.batch, width), dtype=bool)        # [B, T]
        last = []
        for b, row in enumerate(rows):
            seq = np.asarray([row], dtype=np.int64)             # [1, T_b]
            with self.cancellable():                            # a prefill run stops on cancel too
                logits, new = self.graph.step(seq, [s[b:b + 1] for s in self._states])
            for s, n in zip(self._states, new):
                s[b] = n[0]
            last.append(logits[0, -1])                          # [V]
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = True
        self._ids = np.concatenate([self._ids, ids], axis=1)
        self._mask = np.concatenate([self._mask, mask], axis=1)
        self._logits = np.stack(last).astype(np.float32)        # [B, V]

    def next_logits(self) -> np.ndarray:
        if self._logits is None:
            raise InvalidArgumentError("append_tokens before generating")
        return self._logits

    def _real(self) -> np.ndarray:
        return self._mask

    def _advance(self, tokens: np.ndarray) -> None:
        """Record the tokens [B], then run the batch one step (unless nothing more will be sampled)."""
        self._ids = np.concatenate([self._ids, tokens[:, None]], axis=1)
        self._mask = np.concatenate([self._mask, np.ones((self.batch, 1), dtype=bool)], axis=1)
        if self.is_done():
            self._logits = None
        else:
            step_logits, self._states = self.graph.step(tokens[:, None], self._states)   # [B, 1, V]
            self._logits = step_logits[:, -1, :]


class RNNLM(TextModel):
    """A loaded rnn-lm artifact."""

    family = "rnn-lm"

    def __init__(self, artifact: Artifact, graph: StepGraph, tokenizer: tokenizers.Tokenizer, provider: str, *,
                 sampler: RNNLMSampler, defaults: GenerationSettings) -> None:
        self.artifact, self.graph, self.tokenizer, self.provider = artifact, graph, tokenizer, provider
        self.sampler, self.defaults = sampler, defaults   # parsed and checked once, in from_artifact

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> RNNLM:
        m = artifact.manifest
        require_parts(artifact, cls.family, "step")
        # bad sections, a bad tokenizer, or ids beyond the vocabulary fail before any session opens
        sampler = RNNLMSampler.from_manifest(m.sampler)
        defaults = load_defaults(m.defaults)
        declared = [(i, spec.shape) for i, shape in enumerate(sampler.state_shapes)
                    if (spec := m.graphs["step"].tensor(f"state.{i}")) is not None and not spec.fits(shape)]
        if declared:
            i, shape = declared[0]
            raise ManifestError(f"{artifact.root}: edgegen.json.sampler.state_shapes[{i}] is "
                                f"{list(sampler.state_shapes[i])}, but the step graph declares state.{i} as "
                                f"{list(shape)}; re-convert the model")
        tokenizer = load_checked_tokenizer(artifact, "step", sampler.token_ids())
        provider, sessions = open_sessions(artifact, config, roles=("step",))
        graph = StepGraph(sessions["step"], sampler.state_shapes)
        return cls(artifact, graph, tokenizer, provider, sampler=sampler, defaults=defaults)

    # -- the step API -----------------------------------------------------------------------------
    def _new_generator(self, settings: Resolved, batch: int, cancel: threading.Event | None) -> RNNGenerator:
        return RNNGenerator(self.graph, self.sampler, settings, batch=batch, cancel=cancel)

    def _vocab_size(self) -> int | None:
        return logits_vocab(self.artifact, "step")

    def _prompt_ids(self, prompt: str, settings: Resolved) -> list[int]:
        return self._encode_prompt(prompt)   # no context limit: the state has a fixed size
