"""The tts runtime: a VITS voice (transformers' ``VitsModel``: MMS-TTS and others) speaking text.  No torch.

Graphs (written by :mod:`edgegen.converters.tts.vits`)::

    encoder  input_ids, attention_mask [1, T], duration_noise [1, 2, T] (stochastic duration predictor),
             noise_scale_duration [], length_scale [], speaker_id [1] (multi-speaker voices)
             -> durations [1, 1, T], prior_means, prior_log_variances [1, T, C], speaker_embeddings [1, E, 1]
    decoder  prior_means, prior_log_variances, latent_noise [1, C, L], noise_scale [], padding_mask [1, 1, L],
             speaker_embeddings -> waveform [1, L * hop_length]

One utterance, as ``VitsModel.forward`` speaks it:

1. The voice's character tokenizer (:class:`~edgegen.runtimes.tts.text.VitsText`, transformers' VitsTokenizer
   as data) turns the text into ids.
2. Draws, in transformers' order, from ``np.random.default_rng(seed)``: ``duration_noise`` ~ N(0, 1) [1, 2, T]
   (the stochastic duration predictor's ``torch.randn``), then, once the durations are known, ``latent_noise`` ~
   N(0, 1) [1, C, L] (the prior's ``torch.randn_like``).  Same seed, same waveform; not the same numbers as
   torch's generator (the converter checks the graphs against transformers fed these draws).
3. The encoder gives each token its frame count (``ceil(exp(log_duration) / speaking_rate)``); each token's
   prior mean and log-variance are repeated over its frames (transformers' alignment matmul, whose 0/1 matrix
   selects the same values), L = max(sum of frames, 1).
4. The decoder samples the prior (``means + noise * exp(log_variances) * noise_scale``), runs the flow backwards
   and the HiFi-GAN vocoder: L * hop_length samples at ``sampling_rate``.

``stream`` runs step 4 over windows of frames, each with ``context_frames`` (at least the decoder's receptive
field, from the converter) of its neighbours on both sides, and yields each window's own samples: the same
samples as one run, to float rounding, from the first window on.
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
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.tts.text import VitsText

__all__ = ["TTS", "Speech", "VitsSampler"]

#: seconds of audio per streamed window (before its context), unless the caller says
STREAM_SECONDS = 1.0
def stream_window(chunk_seconds: Any, rate: int, hop: int) -> int:
    """Frames per streamed chunk of about ``chunk_seconds`` (checked: a number from 0.01 to 3600) at ``rate`` Hz
    and ``hop`` samples per frame; at least one."""
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) or \
            not 0.01 <= chunk_seconds <= 3600:
        raise InvalidArgumentError(f"chunk_seconds must be a number from 0.01 to 3600, got {chunk_seconds!r}")
    return max(1, round(chunk_seconds * rate / hop))


#: the manifest sampler's ``model`` -> "module:Class" of its runtime (``vits`` is :class:`TTS` itself)
MODELS = {"speecht5": "edgegen.runtimes.tts.speecht5:SpeechT5Voice"}


@dataclass(frozen=True)
class VitsSampler:
    """The manifest's ``sampler`` section of a VITS voice."""

    model: str
    sampling_rate: int
    hop_length: int
    flow_size: int
    vocab_size: int
    attention_heads: int
    stochastic_duration: bool
    num_speakers: int
    speaker_embedding_size: int
    noise_scale: float
    noise_scale_duration: float
    speaking_rate: float
    context_frames: int
    bytes_per_frame: int
    text: Any

    def __post_init__(self) -> None:
        from edgegen.strict import FieldError

        if self.model != "vits":
            raise FieldError(("model", f"must be 'vits', got {self.model!r}"))
        for name in ("sampling_rate", "hop_length", "flow_size", "vocab_size", "attention_heads", "num_speakers",
                     "bytes_per_frame"):
            if getattr(self, name) < 1:
                raise FieldError((name, f"must be positive, got {getattr(self, name)!r}"))
        for name in ("context_frames", "speaker_embedding_size"):
            if getattr(self, name) < 0:
                raise FieldError((name, "must not be negative"))
        if (self.num_speakers > 1) != (self.speaker_embedding_size > 0):
            raise FieldError(("speaker_embedding_size", "must be positive exactly for a multi-speaker voice"))
        for name in ("noise_scale", "noise_scale_duration", "speaking_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "speaking_rate" and value == 0):
                raise FieldError((name, f"must be a finite non-negative number (speaking_rate positive), got {value!r}"))


@dataclass(frozen=True)
class Speech:
    """One utterance: ``samples`` float32 [n] in [-1, 1] (nominally) at ``rate`` Hz, and the noise it was drawn
    from (``draws``: duration_noise when the voice has a stochastic duration predictor, then latent_noise)."""

    samples: np.ndarray
    rate: int
    draws: tuple[np.ndarray, ...]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def _setting(name: str, value: Any, default: float, *, positive: bool = False) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)) or value < 0 or (positive and value == 0) or value > 100:
        kind = "a positive number" if positive else "a number >= 0"
        raise InvalidArgumentError(f"{name} must be {kind} (at most 100), got {value!r}")
    return float(value)


class TTS:
    """A loaded tts artifact: ``speak(text) -> (samples, rate)``, ``stream(text)`` yields chunks of samples."""

    family = "tts"

    def __init__(self, artifact: Artifact, provider: str, sampler: VitsSampler, text: VitsText,
                 sessions: dict[str, Any]) -> None:
        self.artifact, self.provider, self.sampler, self.text = artifact, provider, sampler, text
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]

    @property
    def sampling_rate(self) -> int:
        return self.sampler.sampling_rate

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Any:
        """The runtime of the manifest sampler's ``model``: this class for ``vits``, the others from MODELS."""
        from edgegen.strict import from_json

        m, fix = artifact.manifest, "re-convert the voice"
        other = MODELS.get(m.sampler.get("model")) if isinstance(m.sampler, dict) else None
        if other is not None:
            import importlib

            module, _, name = other.partition(":")
            return getattr(importlib.import_module(module), name).from_artifact(artifact, config)
        sampler = from_json(VitsSampler, m.sampler, where="edgegen.json.sampler", error=ManifestError, fix=fix)
        text = VitsText.from_json(sampler.text, where="edgegen.json.sampler.text")
        c, speakers = sampler.flow_size, sampler.num_speakers > 1
        expect = {"encoder": {"input_ids": (None,), "attention_mask": (None,), "prior_means": (None, c),
                              "prior_log_variances": (None, c), "durations": (1, None)},
                  "decoder": {"prior_means": (c, None), "latent_noise": (c, None), "padding_mask": (1, None)}}
        if sampler.stochastic_duration:
            expect["encoder"]["duration_noise"] = (2, None)
        if speakers:
            expect["encoder"]["speaker_id"] = ()
            expect["decoder"]["speaker_embeddings"] = (sampler.speaker_embedding_size, 1)
        for role, tensors in expect.items():
            graph = m.graphs.get(role)
            if graph is None:
                raise ManifestError(f"{artifact.root}: this tts artifact lacks its {role!r} graph (it has "
                                    f"{sorted(m.graphs)}); {fix}")
            for name, tail in tensors.items():
                tensor = graph.tensor(name)
                fits = tensor is not None and len(tensor.shape) == len(tail) + 1 and all(
                    t is None or not isinstance(d, int) or d == t for d, t in zip(tensor.shape[1:], tail))
                if not fits:
                    raise ManifestError(f"{artifact.root}: the {role} graph should declare {name!r} as [batch, "
                                        f"{', '.join('*' if t is None else str(t) for t in tail)}], it declares "
                                        f"{None if tensor is None else list(tensor.shape)}; {fix}")
            has_speaker = graph.tensor("speaker_id" if role == "encoder" else "speaker_embeddings") is not None
            if has_speaker != speakers:
                raise ManifestError(f"{artifact.root}: the {role} graph takes a speaker exactly when the voice has "
                                    f"several speakers (num_speakers {sampler.num_speakers}); {fix}")
        provider, sessions = open_sessions(artifact, config)
        return cls(artifact, provider, sampler, text, sessions)

    # -- the family contract ------------------------------------------------------------------------------------
    def speak(self, text: str, *, seed: int | None = None, speaker: int | None = None,
              noise_scale: float | None = None, noise_scale_duration: float | None = None,
              speaking_rate: float | None = None, unknown: str = "refuse") -> tuple[np.ndarray, int]:
        """``(samples, rate)``: float32 samples [n] of ``text`` spoken at ``rate`` Hz; same seed, same samples.

        ``speaker``: a multi-speaker voice's speaker id (default 0; transformers' ``VitsModel`` called without
        ``speaker_id`` uses no speaker embedding at all, which edgegen's graphs do not offer).  ``noise_scale`` (the prior's spread),
        ``noise_scale_duration`` (how much durations vary), ``speaking_rate`` (>1 faster): the voice's own
        values unless given.  ``unknown="drop"`` drops letters the voice cannot say, as transformers does
        (by default they are refused, named)."""
        speech = self.speak_with_draws(text, seed=seed, speaker=speaker, noise_scale=noise_scale,
                                       noise_scale_duration=noise_scale_duration, speaking_rate=speaking_rate,
                                       unknown=unknown)
        return speech.samples, speech.rate

    def speak_with_draws(self, text: str, *, seed: int | None = None, speaker: int | None = None,
                         noise_scale: float | None = None, noise_scale_duration: float | None = None,
                         speaking_rate: float | None = None, unknown: str = "refuse") -> Speech:
        """:meth:`speak`, with the noise it drew (for checks against PyTorch fed the same draws)."""
        plan = self._plan(text, seed, speaker, noise_scale, noise_scale_duration, speaking_rate, unknown)
        frames = plan["latent_noise"].shape[2]
        self._check_memory(frames, "speaking this text", "pass a shorter text, or use stream(), which holds "
                           "one window of audio at a time")
        samples = self._decode(plan, 0, frames, 0, frames)
        return Speech(samples, self.sampling_rate, plan["draws"])

    def stream(self, text: str, *, seed: int | None = None, speaker: int | None = None,
               noise_scale: float | None = None, noise_scale_duration: float | None = None,
               speaking_rate: float | None = None, unknown: str = "refuse",
               chunk_seconds: float = STREAM_SECONDS) -> Iterator[np.ndarray]:
        """``speak``'s samples in chunks of about ``chunk_seconds`` (float32 [n] each), the first one ready after
        one window's decode instead of the whole utterance's.  Their concatenation equals :meth:`speak`'s samples
        to float rounding (same seed, same settings)."""
        s = self.sampler
        window = stream_window(chunk_seconds, s.sampling_rate, s.hop_length)
        plan = self._plan(text, seed, speaker, noise_scale, noise_scale_duration, speaking_rate, unknown)
        frames = plan["latent_noise"].shape[2]
        self._check_memory(min(frames, window + 2 * s.context_frames), "one streamed window",
                           "pass a smaller chunk_seconds")

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, frames, window):
                stop = min(frames, start + window)
                lo, hi = max(0, start - s.context_frames), min(frames, stop + s.context_frames)
                yield self._decode(plan, lo, hi, start, stop)
        return chunks()

    # -- the steps ----------------------------------------------------------------------------------------------
    def _plan(self, text: str, seed: int | None, speaker: int | None, noise_scale: float | None,
              noise_scale_duration: float | None, speaking_rate: float | None, unknown: str) -> dict[str, Any]:
        """Steps 1-3: ids, durations, the repeated priors and both draws."""
        s = self.sampler
        scale = _setting("noise_scale", noise_scale, s.noise_scale)
        scale_duration = _setting("noise_scale_duration", noise_scale_duration, s.noise_scale_duration)
        rate = _setting("speaking_rate", speaking_rate, s.speaking_rate, positive=True)
        speaker_id = self._speaker(speaker)
        rng = rng_for(seed)
        ids = self.text.encode(text, unknown=unknown)
        if max(ids) >= s.vocab_size:
            bad = sorted({i for i in ids if i >= s.vocab_size})
            raise InvalidArgumentError(f"the text maps to token id(s) {bad} that this voice's model has no embedding "
                                       f"for (it has {s.vocab_size}); remove the tokenizer's special tokens from the text")
        input_ids = np.asarray([ids], dtype=np.int64)                                # [1, T]
        # the encoder's relative attention holds a few [heads, T, T] float32 matrices per layer
        check_fits(8 * s.attention_heads * len(ids) ** 2 * 4, f"encoding a text of {len(ids)} tokens",
                   "split the text into sentences and speak them one at a time")
        feed: dict[str, np.ndarray] = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
                                       "noise_scale_duration": np.asarray(scale_duration, dtype=np.float32),
                                       "length_scale": np.asarray(1.0 / rate, dtype=np.float32)}
        draws = []
        if s.stochastic_duration:
            feed["duration_noise"] = rng.standard_normal((1, 2, len(ids)), dtype=np.float32)
            draws.append(feed["duration_noise"])
        if speaker_id is not None:
            feed["speaker_id"] = np.asarray([speaker_id], dtype=np.int64)
        out = dict(zip([o.name for o in self.encoder.get_outputs()], self.encoder.run(None, feed)))
        durations = out["durations"][0, 0]                                           # [T] float (ceil'd)
        if not np.all(np.isfinite(durations)) or float(durations.sum()) > 1 << 31:
            raise InvalidArgumentError(f"the voice predicts {float(durations.sum()):.3g} frames for this text at "
                                       f"speaking_rate {rate:g} and noise_scale_duration {scale_duration:g}; raise "
                                       "speaking_rate or lower noise_scale_duration")
        counts = durations.astype(np.int64)
        frames = max(int(counts.sum()), 1)                                          # transformers' clamp_min(1)
        check_fits(4 * s.flow_size * frames * 4, "speaking this text", "pass a shorter text or a higher "
                   "speaking_rate")                                                # the plan: 3 [1, C, L] arrays
        means = np.zeros((1, s.flow_size, frames), dtype=np.float32)               # [1, C, L]
        log_vars = np.zeros_like(means)
        if counts.sum() > 0:
            means[0] = np.repeat(out["prior_means"][0], counts, axis=0).T
            log_vars[0] = np.repeat(out["prior_log_variances"][0], counts, axis=0).T
        noise = rng.standard_normal(means.shape, dtype=np.float32)
        draws.append(noise)
        return {"prior_means": means, "prior_log_variances": log_vars, "latent_noise": noise,
                "noise_scale": np.asarray(scale, dtype=np.float32), "draws": tuple(draws),
                "speaker_embeddings": out.get("speaker_embeddings")}

    def _decode(self, plan: dict[str, Any], lo: int, hi: int, start: int, stop: int) -> np.ndarray:
        """Step 4 over frames [lo, hi); the samples of frames [start, stop)."""
        feed = {k: np.ascontiguousarray(plan[k][:, :, lo:hi]) for k in ("prior_means", "prior_log_variances",
                                                                         "latent_noise")}
        feed["noise_scale"] = plan["noise_scale"]
        feed["padding_mask"] = np.ones((1, 1, hi - lo), dtype=np.float32)
        if plan["speaker_embeddings"] is not None:
            feed["speaker_embeddings"] = plan["speaker_embeddings"]
        (waveform,) = self.decoder.run(["waveform"], feed)
        hop = self.sampler.hop_length
        if waveform.shape != (1, (hi - lo) * hop):
            raise ManifestError(f"{self.artifact.root}: the decoder gave {list(waveform.shape)} samples for {hi - lo} "
                                f"frames, not [1, {(hi - lo) * hop}] (hop_length {hop} in edgegen.json); re-convert "
                                "the voice")
        samples = waveform[0, (start - lo) * hop:(stop - lo) * hop]
        if not np.all(np.isfinite(samples)):
            raise InvalidArgumentError("the voice produced non-finite samples (NaN or inf) for this text and these "
                                       "settings; try lower noise_scale / noise_scale_duration or another seed")
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _speaker(self, speaker: int | None) -> int | None:
        n = self.sampler.num_speakers
        if speaker is None:
            return 0 if n > 1 else None
        if isinstance(speaker, bool) or not isinstance(speaker, (int, np.integer)) or not 0 <= speaker < n:
            which = f"0 to {n - 1}" if n > 1 else "none: it has one speaker (drop the speaker)"
            raise InvalidArgumentError(f"speaker must be an id of this voice's speakers ({which}), got {speaker!r}")
        return int(speaker) if n > 1 else None

    def _check_memory(self, frames: int, what: str, fix: str) -> None:
        """The decoder's memory for ``frames``; the manifest's figure, never below what the flow's state and the
        waveform alone need (a tampered bytes_per_frame cannot switch the check off)."""
        s = self.sampler
        check_fits(frames * max(s.bytes_per_frame, 16 * (s.flow_size + s.hop_length)), what, fix)
