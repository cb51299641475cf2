"""The music runtime: MusicGen (transformers' ``MusicgenForConditionalGeneration``) turning a text prompt into
audio.  No torch.

Graphs (written by :mod:`edgegen.converters.music.musicgen`; shapes in :mod:`edgegen.converters.music.graphs`):
``text_encoder``, ``cross_cache``, ``decoder`` (one step with a KV cache) and ``audio_decoder`` (EnCodec).

One run, as ``MusicgenForConditionalGeneration.generate`` makes it:

1. The T5 tokenizer (tokenizer.json) gives the prompt's ids; ``text_encoder`` its hidden states [1, S, H].
   With classifier-free guidance (scale > 1) an unconditional row joins: zero hidden states, a zero mask
   (transformers' "null" input; its projection times the zero mask is exactly zero).  ``cross_cache`` computes
   every layer's cross-attention keys/values once.
2. ``max_new_tokens = round(seconds * frame_rate)``, ``max_length = 1 + max_new_tokens``; the delay pattern is
   built for that length (:mod:`edgegen.runtimes.music.delay`), the sequence starts as the start id.
3. Each step feeds the last column of the pattern-applied sequence (twice under guidance) to ``decoder``; its
   logits [2, K, V] go through guidance, temperature and top-k, and one code per codebook is chosen (argmax, or
   a draw from ``np.random.default_rng(seed)``).
4. The pattern is applied to the whole sequence, its padding dropped: codes [K, frames]; ``audio_decoder``
   turns them into samples at ``sampling_rate`` (stereo models: the even and odd codebooks, one channel each).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.latents import rng_for
from edgegen.runtimes.memory import check_fits
from edgegen.runtimes.music.delay import (apply_delay_pattern_mask, build_delay_pattern_mask, choose, process,
                                          strip_padding)
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.text.tokenizer import load_tokenizer, tokenizer_call

__all__ = ["Music", "MusicGen", "MusicSampler"]

GRAPHS = ("text_encoder", "cross_cache", "decoder", "audio_decoder")


@dataclass(frozen=True)
class MusicSampler:
    """The manifest's ``sampler`` section of a MusicGen artifact (config.json and generation_config.json)."""

    model: str
    num_codebooks: int
    vocab_size: int
    audio_channels: int
    hidden_size: int
    num_layers: int
    num_heads: int
    pad_token_id: int
    decoder_start_token_id: int
    max_position_embeddings: int
    frame_rate: int
    sampling_rate: int
    hop_length: int
    min_audio_frames: int
    do_sample: bool
    top_k: int
    temperature: float
    guidance_scale: float | None = None

    def __post_init__(self) -> None:
        from edgegen.strict import FieldError

        if self.model != "musicgen":
            raise FieldError(("model", f"must be 'musicgen', got {self.model!r}"))
        for name in ("num_codebooks", "vocab_size", "hidden_size", "num_layers", "num_heads",
                     "max_position_embeddings", "frame_rate", "sampling_rate", "hop_length", "min_audio_frames"):
            if not 1 <= getattr(self, name) <= 1 << 24:
                raise FieldError((name, f"must be an integer from 1 to {1 << 24}, got {getattr(self, name)!r}"))
        if self.audio_channels not in (1, 2) or self.num_codebooks % self.audio_channels:
            raise FieldError(("audio_channels", "must be 1 or 2, dividing num_codebooks"))
        if self.hidden_size % self.num_heads:
            raise FieldError(("num_heads", "must divide hidden_size"))
        if self.pad_token_id != self.decoder_start_token_id or self.pad_token_id < self.vocab_size:
            raise FieldError(("pad_token_id", "must equal decoder_start_token_id, beyond the codebook ids"))
        if self.top_k < 0 or not (math.isfinite(self.temperature) and self.temperature > 0):
            raise FieldError(("top_k", "must be >= 0, and temperature a positive number"))
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise FieldError(("guidance_scale", "must be a finite number >= 0 or null"))


@dataclass(frozen=True)
class Music:
    """One run: ``samples`` float32 [n] (mono) or [channels, n] at ``rate`` Hz, the ``codes`` [K, frames] they
    decode, the whole pattern-applied ``sequence`` [K, 1 + steps] (the start column, then what each step chose or
    the pattern forced), and each step's guided logits before temperature and top-k (``scores`` [steps, K, V],
    when asked for).  Unpacks as
    ``samples, rate``."""

    samples: np.ndarray
    rate: int
    codes: np.ndarray
    sequence: np.ndarray
    scores: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.rate

    def __iter__(self) -> Iterator[Any]:
        return iter((self.samples, self.rate))


def _number(name: str, value: Any, *, low: float, integer: bool = False) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if integer else
                                                    (int, float, np.integer, np.floating))
    if not ok or not math.isfinite(float(value)) or value < low or value > 1e6:
        kind = "an integer" if integer else "a number"
        raise InvalidArgumentError(f"{name} must be {kind} from {low:g} to 1e6, got {value!r}")
    return int(value) if integer else float(value)


class MusicGen:
    """A loaded music artifact: ``generate(prompt, seconds=5) -> Music`` (unpacks as ``samples, rate``)."""

    family = "music"

    def __init__(self, artifact: Artifact, provider: str, sampler: MusicSampler, tokenizer: Any,
                 sessions: dict[str, Any]) -> None:
        self.artifact, self.provider, self.sampler, self.tokenizer = artifact, provider, sampler, tokenizer
        self.sessions = sessions
        self._cache_names = [i.name for i in sessions["decoder"].get_inputs() if i.name.startswith("past_key_values.")]

    @property
    def sampling_rate(self) -> int:
        return self.sampler.sampling_rate

    @property
    def max_seconds(self) -> float:
        """The longest ``seconds`` one run takes: max_position_embeddings decoder steps."""
        return self.sampler.max_position_embeddings / self.sampler.frame_rate

    @property
    def min_seconds(self) -> float:
        """The shortest ``seconds`` one run takes: enough steps for min_audio_frames frames."""
        steps = next((n for n in range(1, self.sampler.max_position_embeddings + 1)
                      if self.frames_for(n) >= self.sampler.min_audio_frames), 1)
        return steps / self.sampler.frame_rate

    def frames_for(self, steps: int) -> int:
        """Code frames ``steps`` decoder steps leave once the delay pattern's padding is dropped."""
        s = self.sampler
        channel_codebooks = s.num_codebooks // s.audio_channels
        return steps if steps + 1 < 2 * channel_codebooks - 1 else steps + 1 - channel_codebooks

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> MusicGen:
        from edgegen.strict import from_json

        m, fix = artifact.manifest, "re-convert the model"
        sampler = from_json(MusicSampler, m.sampler, where="edgegen.json.sampler", error=ManifestError, fix=fix)
        missing = [g for g in GRAPHS if g not in m.graphs] + ([] if "tokenizer" in m.assets else ["tokenizer"])
        if missing:
            raise ManifestError(f"{artifact.root}: this music artifact lacks {', '.join(missing)} (it has graphs "
                                f"{sorted(m.graphs)}); {fix}")
        logits = m.graphs["decoder"].tensor("logits")
        if logits is None or list(logits.shape[1:]) != [sampler.num_codebooks, sampler.vocab_size]:
            raise ManifestError(f"{artifact.root}: the decoder graph should declare logits as [batch, "
                                f"{sampler.num_codebooks}, {sampler.vocab_size}], it declares "
                                f"{None if logits is None else list(logits.shape)}; {fix}")
        provider, sessions = open_sessions(artifact, config)    # every file's checksum, the tokenizer's too
        return cls(artifact, provider, sampler, load_tokenizer(artifact), sessions)

    # -- the family contract ------------------------------------------------------------------------------------
    def generate(self, prompt: str, seconds: float = 5, seed: int | None = 0, guidance: float | None = None,
                 top_k: int | None = None, temperature: float | None = None, *,
                 keep_scores: bool = False) -> Music:
        """Music for ``prompt``: ``seconds`` of it (``round(seconds * frame_rate)`` decoder steps, as MusicGen's
        ``max_new_tokens``; the delay pattern leaves K - 1 frames fewer).  ``guidance`` (classifier-free guidance
        scale, at least 1; 1: none), ``top_k`` and ``temperature`` (0: greedy) default to the model's
        generation_config.json; same seed, same audio.  ``keep_scores`` keeps each step's guided logits."""
        ids = self.encode(prompt)
        steps = self.steps_for(seconds)
        return self.generate_ids(ids, steps, seed=seed, guidance=guidance, top_k=top_k, temperature=temperature,
                                 keep_scores=keep_scores)

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"the prompt must be a str, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InvalidArgumentError("the prompt is empty; describe the music, e.g. \"lo-fi piano with soft drums\"")
        return list(tokenizer_call(self.tokenizer.encode, prompt).ids)

    def steps_for(self, seconds: Any) -> int:
        """Decoder steps (max_new_tokens) for ``seconds`` of audio, refused beyond the model's positions."""
        s = self.sampler
        seconds = _number("seconds", seconds, low=0)
        steps = round(seconds * s.frame_rate)
        shortest = self.min_seconds
        if steps < 1 or self.frames_for(steps) < s.min_audio_frames:
            raise InvalidArgumentError(f"seconds must be at least {shortest:g} for this model (its EnCodec decodes "
                                       f"{s.min_audio_frames} frames or more), got {seconds:g}")
        if steps > s.max_position_embeddings:
            raise InvalidArgumentError(f"seconds must be at most {self.max_seconds:g} for this model (its "
                                       f"max_position_embeddings, {s.max_position_embeddings} frames at {s.frame_rate}"
                                       f" frames/s), got {seconds:g}; generate shorter pieces")
        return steps

    def settings(self, guidance: Any, top_k: Any,
                 temperature: Any) -> tuple[float | None, float | None, int | None, bool]:
        """(guidance scale, temperature, top-k, whether to sample) as transformers' ``generate`` applies them: None
        for a processor it leaves out (guidance <= 1, temperature 1, top-k 0, and both warpers when greedy)."""
        s = self.sampler
        scale = s.guidance_scale if guidance is None else _number("guidance", guidance, low=1)
        temp = (s.temperature if s.do_sample else 0.0) if temperature is None else \
            _number("temperature", temperature, low=0)
        k = s.top_k if top_k is None else _number("top_k", top_k, low=0, integer=True)
        cfg = scale if scale is not None and scale > 1 else None
        if temp == 0:
            return cfg, None, None, False
        return cfg, (temp if temp != 1.0 else None), (k if k else None), True

    def generate_ids(self, ids: list[int], steps: int, *, seed: int | None = 0, guidance: Any = None,
                     top_k: Any = None, temperature: Any = None, keep_scores: bool = False) -> Music:
        """Steps 1-4 for the prompt's token ids and ``steps`` new tokens."""
        s = self.sampler
        cfg, temp, k, sample = self.settings(guidance, top_k, temperature)
        rng = rng_for(seed) if sample else None
        rows = 2 if cfg is not None else 1
        head = s.hidden_size // s.num_heads
        check_fits(rows * s.num_layers * 2 * s.hidden_size * (steps + 1 + len(ids)) * 4 * 2,
                   f"{steps} decoder steps", "ask for fewer seconds")
        cross, mask = self._condition(ids, rows)
        k_total = s.num_codebooks
        start = np.full((k_total, 1), s.decoder_start_token_id, dtype=np.int64)              # [K, 1]
        sequence, pattern = build_delay_pattern_mask(start, s.decoder_start_token_id, 1 + steps, k_total,
                                                     s.audio_channels)
        past = {n: np.zeros((rows, s.num_heads, 0, head), dtype=np.float32)
                for n in self._cache_names if ".decoder." in n}
        kept: list[np.ndarray] = []
        while sequence.shape[1] < 1 + steps:
            token = apply_delay_pattern_mask(sequence, pattern)[:, -1:]                     # [K, 1]
            feed = {"input_ids": np.concatenate([token] * rows, axis=0), "encoder_attention_mask": mask,
                    **past, **cross}
            logits, *present = self.sessions["decoder"].run(None, feed)                     # [rows, K, V]
            past = dict(zip(past, present))
            guided = process(logits.reshape(rows * k_total, -1), cfg, None, None)           # [K, V]
            if keep_scores:
                kept.append(guided)
            scores = process(guided, None, temp, k)
            sequence = np.concatenate([sequence, choose(scores, rng)[:, None]], axis=1)
        final = apply_delay_pattern_mask(sequence, pattern)                                 # [K, 1 + steps]
        codes = strip_padding(final, s.pad_token_id, 1, k_total)[0]                        # [K, frames]
        samples = self.decode(codes)
        return Music(samples, s.sampling_rate, codes, final, np.stack(kept) if kept else None)

    def _condition(self, ids: list[int], rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Cross-attention keys/values (past_key_values.{i}.encoder.*) and the encoder mask [rows, S]."""
        input_ids = np.asarray([ids], dtype=np.int64)                                       # [1, S]
        mask = np.ones_like(input_ids)
        (hidden,) = self.sessions["text_encoder"].run(None, {"input_ids": input_ids, "attention_mask": mask})
        if rows == 2:   # the unconditional half: null hidden states, nothing to attend to
            hidden = np.concatenate([hidden, np.zeros_like(hidden)], axis=0)
            mask = np.concatenate([mask, np.zeros_like(mask)], axis=0)
        outputs = self.sessions["cross_cache"].run(None, {"encoder_hidden_states": hidden})
        names = [o.name.replace("present.", "past_key_values.", 1) for o in self.sessions["cross_cache"].get_outputs()]
        return dict(zip(names, outputs)), mask

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [K, frames] -> samples float32 [n] (mono) or [2, n] (stereo: even codebooks left, odd right)."""
        s, graph = self.sampler, self.sessions["audio_decoder"]
        groups = [codes] if s.audio_channels == 1 else [codes[0::2], codes[1::2]]
        check_fits(len(groups) * codes.shape[1] * s.hop_length * 4 * 64, "decoding the audio", "ask for fewer seconds")
        channels = []
        for group in groups:
            (wave,) = graph.run(None, {"audio_codes": np.ascontiguousarray(group[None], dtype=np.int64)})
            channels.append(wave[0])                                                        # [C, n]
        audio = np.concatenate(channels, axis=0)
        if not np.all(np.isfinite(audio)):
            raise InvalidArgumentError("the model produced non-finite samples (NaN or inf); try another seed or a "
                                       "lower guidance")
        return np.ascontiguousarray(audio[0] if audio.shape[0] == 1 else audio, dtype=np.float32)
