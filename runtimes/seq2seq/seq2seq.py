"""The seq2seq runtime: run the encoder once per input, then decode step by step with a KV cache.

Graphs (Optimum's names): ``encoder`` (input_ids, attention_mask -> last_hidden_state); ``decoder``
(the first step: encoder_attention_mask, input_ids, encoder_hidden_states -> logits, present.{i}.decoder.*,
present.{i}.encoder.*); ``decoder_with_past`` (later steps: past_key_values.{i}.{decoder,encoder}.{key,value}
-> logits, present.{i}.decoder.*). The cross-attention keys/values come from the first step and are reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tokenizers

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.seq2seq.search import Forcing, beam_search, sample_search
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.text.loop import load_checked_tokenizer, load_defaults, require_parts
from edgegen.runtimes.text.settings import GenerationSettings, check_text, resolve, sources
from edgegen.runtimes.text.tokenizer import tokenizer_call
from edgegen.strict import from_json

__all__ = ["BeamSettings", "Seq2Seq", "Seq2SeqSampler"]

GRAPHS = ("encoder", "decoder", "decoder_with_past")


@dataclass(frozen=True)
class Seq2SeqSampler:
    """The ``sampler`` section of a seq2seq artifact (from the model's generation config)."""

    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    context_length: int | None = None


@dataclass(frozen=True)
class BeamSettings:
    """Beam search (transformers' semantics); ``num_beams`` 1 = greedy or sampled decoding."""

    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or not 1 <= self.num_beams <= 64:
            problems.append(f"num_beams must be an integer in [1, 64], got {self.num_beams!r}")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)) \
                or not np.isfinite(self.length_penalty):
            problems.append(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            problems.append(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size must be a non-negative integer, got {self.no_repeat_ngram_size!r}")
        if problems:
            raise InvalidArgumentError("; ".join(problems))


class Seq2Seq:
    """A loaded encoder-decoder artifact: ``generate(text, settings)`` -> text."""

    family = "seq2seq"

    def __init__(self, artifact: Artifact, sessions: dict[str, Any], tokenizer: tokenizers.Tokenizer,
                 sampler: Seq2SeqSampler, defaults: GenerationSettings, beams: BeamSettings) -> None:
        self.artifact, self.sessions, self.tokenizer = artifact, sessions, tokenizer
        self.sampler, self.defaults, self.beams = sampler, defaults, beams
        dec = sessions["decoder_with_past"]
        self._past_names = [i.name for i in dec.get_inputs() if i.name.startswith("past_key_values.")]
        self._self_names = [n for n in self._past_names if ".decoder." in n]
        self._cross_names = [n for n in self._past_names if ".encoder." in n]

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Seq2Seq:
        m = artifact.manifest
        for graph in GRAPHS:
            require_parts(artifact, "seq2seq", graph)
        sampler = from_json(Seq2SeqSampler, m.sampler, "edgegen.json.sampler")
        section = dict(m.defaults)
        beam_fields = {k: section.pop(k) for k in list(section) if k in BeamSettings.__dataclass_fields__}
        try:
            beams = BeamSettings(**beam_fields)
        except InvalidArgumentError as exc:
            raise ManifestError(f"edgegen.json.defaults: {exc}; re-convert the model") from None
        defaults = load_defaults(section)
        ids = {"eos_token_ids": sampler.eos_token_ids, "decoder_start_token_id": (sampler.decoder_start_token_id,)}
        tokenizer = load_checked_tokenizer(artifact, "decoder", ids)
        _, sessions = open_sessions(artifact, config)
        return cls(artifact, sessions, tokenizer, sampler, defaults, beams)

    # -- text ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        check_text(text, "the prompt")
        if not text.strip():
            raise InvalidArgumentError("the prompt is empty; give the text to translate or summarize")
        ids = list(tokenizer_call(self.tokenizer.encode, text).ids)
        if self.sampler.context_length is not None and len(ids) > self.sampler.context_length:
            raise InvalidArgumentError(f"the prompt is {len(ids)} tokens but the model reads at most "
                                       f"{self.sampler.context_length}; shorten it")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return tokenizer_call(self.tokenizer.decode, list(ids), True)

    def settings_sources(self, settings: GenerationSettings | None = None) -> dict[str, tuple[Any, str]]:
        return sources(settings or GenerationSettings(), self.defaults)

    # -- generation ------------------------------------------------------------------------
    def generate(self, text: str, settings: GenerationSettings | None = None, *, num_beams: int | None = None,
                 length_penalty: float | None = None, early_stopping: bool | str | None = None,
                 no_repeat_ngram_size: int | None = None) -> str:
        """The output text for ``text`` (special tokens dropped)."""
        return self.decode(self.generate_ids(self.encode(text), settings, num_beams=num_beams,
                                             length_penalty=length_penalty, early_stopping=early_stopping,
                                             no_repeat_ngram_size=no_repeat_ngram_size))

    def generate_ids(self, input_ids: Sequence[int], settings: GenerationSettings | None = None, *,
                     num_beams: int | None = None, length_penalty: float | None = None,
                     early_stopping: bool | str | None = None, no_repeat_ngram_size: int | None = None) -> list[int]:
        """Generated token ids (without the decoder start token, with the end token if one came)."""
        if len(input_ids) == 0:
            raise InvalidArgumentError("the prompt is empty; give the text to translate or summarize")
        resolved = resolve(settings or GenerationSettings(), self.defaults)
        given = {"num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping,
                 "no_repeat_ngram_size": no_repeat_ngram_size}
        beams = replace(self.beams, **{k: v for k, v in given.items() if v is not None})
        s = self.sampler
        eos = () if resolved.ignore_eos else s.eos_token_ids
        forcing = Forcing(eos_token_ids=eos, pad_token_id=s.pad_token_id, forced_bos_token_id=s.forced_bos_token_id,
                          forced_eos_token_id=None if resolved.ignore_eos else s.forced_eos_token_id,
                          no_repeat_ngram_size=beams.no_repeat_ngram_size)
        rows = beams.num_beams
        hidden, mask = self._encode(np.asarray([list(input_ids)], dtype=np.int64))
        step = _Stepper(self, np.repeat(hidden, rows, axis=0), np.repeat(mask, rows, axis=0))
        if rows == 1:
            rng = np.random.default_rng(resolved.seed)
            return sample_search(step, s.decoder_start_token_id, forcing, resolved.max_new_tokens,
                                 resolved.sampling, rng, resolved.stop_token_ids)
        if not resolved.sampling.greedy:
            raise InvalidArgumentError("beam search is deterministic here: use temperature 0 with num_beams > 1, "
                                       "or num_beams 1 to sample")
        return beam_search(step, s.decoder_start_token_id, forcing, resolved.max_new_tokens, rows,
                           float(beams.length_penalty), beams.early_stopping)

    def forced_logits(self, input_ids: Sequence[int], decoder_ids: Sequence[int]) -> np.ndarray:
        """Next-token logits [T, V] at each of ``decoder_ids``' T positions (teacher-forced: the decoder start
        token, then ``decoder_ids[:-1]``), through ``decoder`` then ``decoder_with_past`` as generation runs."""
        hidden, mask = self._encode(np.asarray([list(input_ids)], dtype=np.int64))
        step = _Stepper(self, hidden, mask)
        tokens = [self.sampler.decoder_start_token_id, *decoder_ids[:-1]]
        return np.stack([step(np.array([[t]], dtype=np.int64), None)[0] for t in tokens])   # [T, V]

    def with_sessions(self, sessions: dict[str, Any]) -> Seq2Seq:
        """The same model (tokenizer, sampler, defaults) running other graphs: a converter's variant."""
        return Seq2Seq(self.artifact, sessions, self.tokenizer, self.sampler, self.defaults, self.beams)

    def _encode(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.ones_like(ids)
        session = self.sessions["encoder"]
        names = {i.name for i in session.get_inputs()}
        feeds = {"input_ids": ids, **({"attention_mask": mask} if "attention_mask" in names else {})}
        return session.run(["last_hidden_state"], feeds)[0], mask


class _Stepper:
    """One decoding run's state: the cross-attention cache (computed at the first step) and the self cache."""

    def __init__(self, model: Seq2Seq, hidden: np.ndarray, mask: np.ndarray) -> None:
        self.model, self.hidden, self.mask = model, hidden, mask
        self.past: dict[str, np.ndarray] | None = None

    def __call__(self, tokens: np.ndarray, reorder: np.ndarray | None) -> np.ndarray:
        m = self.model
        if self.past is None:
            session = m.sessions["decoder"]
            names = {i.name for i in session.get_inputs()}
            feeds = {"input_ids": tokens, "encoder_hidden_states": self.hidden}
            if "encoder_attention_mask" in names:
                feeds["encoder_attention_mask"] = self.mask
            outs = [o.name for o in session.get_outputs()]
            values = dict(zip(outs, session.run(outs, feeds)))
        else:
            past = self.past
            if reorder is not None:
                past = {k: (v[reorder] if k in m._self_names else v) for k, v in past.items()}
            session = m.sessions["decoder_with_past"]
            names = {i.name for i in session.get_inputs()}
            feeds = {"input_ids": tokens, **past}
            if "encoder_attention_mask" in names:
                feeds["encoder_attention_mask"] = self.mask
            if "encoder_hidden_states" in names:
                feeds["encoder_hidden_states"] = self.hidden
            outs = [o.name for o in session.get_outputs()]
            values = dict(zip(outs, session.run(outs, feeds)))
            values.update({k.replace("past_key_values.", "present."): v for k, v in past.items()
                           if k in m._cross_names})
        self.past = {n: values[n.replace("past_key_values.", "present.")] for n in m._past_names}
        return values["logits"][:, -1, :]
