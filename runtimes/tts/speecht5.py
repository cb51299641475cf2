"""The tts runtime of SpeechT5 (transformers' ``SpeechT5ForTextToSpeech`` with a ``SpeechT5HifiGan`` vocoder).
No torch, no sentencepiece.

Graphs (written by :mod:`edgegen.converters.tts.speecht5`)::

    encoder   input_ids, attention_mask [1, T] -> cross.N.key / cross.N.value [1, heads, T, head_dim]
    decoder   frame [1, 1, mel], dropout_masks [prenet_layers, 1, units], speaker_embeddings [1, S],
              encoder_attention_mask [1, T], past.N.key / past.N.value [1, heads, P, head_dim], cross.N.*
              -> spectrum [1, r, mel], stop_probabilities [1, r], present.N.key / present.N.value [.., P + 1, ..]
    postnet   spectrogram [1, L, mel] -> spectrogram_post [1, L, mel]
    vocoder   spectrogram_post [1, L, mel] -> waveform [1, L * hop_length]

One utterance, as transformers' ``generate_speech(input_ids, speaker_embeddings, vocoder=...)`` speaks it:

1. :class:`SpeechT5Text` (the spm char model as data) gives the ids, ``</s>`` appended.
2. The encoder runs once; its cross-attention keys and values feed every decoder step.
3. Step i = 1, 2, ... (the decoder's self-attention cache grows by one frame a step): the speech prenet's
   dropout, which transformers applies even in eval mode (``torch.bernoulli(x, p)``: 1 with probability p,
   Tacotron 2 section 2.2), is drawn here from ``np.random.default_rng(seed)``: ``dropout_masks`` [layers, 1,
   units] per step, only the newest frame's row (the prenet works frame by frame; the older rows transformers
   draws change nothing).  The step gives r frames and r stop probabilities; the last frame is the next input.
4. Stop at step i when i >= minlen and (i >= maxlen or sum(stop probabilities) >= threshold), with
   maxlen = int(T * maxlenratio / r), minlen = int(T * minlenratio / r) (transformers' defaults 20.0, 0.0, 0.5).
5. The postnet runs over the whole spectrogram [1, i * r, mel], the vocoder turns it into i * r * hop samples.

``stream`` runs step 5 over windows of frames as the loop makes them, each with ``context_frames`` (an upper bound
of postnet + vocoder's receptive field, from the config at conversion) of its neighbours on both sides.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import unicodedata
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.latents import rng_for
from edgegen.runtimes.memory import check_fits
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.tts.tts import STREAM_SECONDS, Speech, stream_window
from edgegen.strict import FieldError, from_json, short, to_json

__all__ = ["SpeechT5Sampler", "SpeechT5Text", "SpeechT5Voice"]

SPACE = "\u2581"   # sentencepiece's whitespace symbol
#: generate_speech's defaults
THRESHOLD, MINLENRATIO, MAXLENRATIO = 0.5, 0.0, 20.0
_UNKNOWN = ("refuse", "unk", "drop")
FIX = "re-convert the model"


@dataclasses.dataclass(frozen=True)
class SpeechT5Text:
    """SpeechT5Tokenizer as data: the char model's pieces (id order), its special ids, and its normalizer
    (``precompiled_charsmap``: sentencepiece's compiled rules, base64; empty for the identity)."""

    pieces: tuple[str, ...]
    unk_id: int
    eos_id: int
    pad_id: int
    special_tokens: tuple[str, ...]
    precompiled_charsmap: str
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool

    def __post_init__(self) -> None:
        n = len(self.pieces)
        bad = [(name, f"must be an id below {n}") for name in ("unk_id", "eos_id", "pad_id")
               if not 0 <= getattr(self, name) < n]
        if len(set(self.pieces)) != n or not all(isinstance(p, str) and p for p in self.pieces):
            bad.append(("pieces", "must be distinct non-empty strings"))
        if bad:
            raise FieldError(*bad)
        try:
            self._charsmap
        except (ValueError, TypeError) as exc:
            raise FieldError(("precompiled_charsmap", f"is not a sentencepiece charsmap ({exc})")) from None

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "edgegen.json.sampler.text") -> SpeechT5Text:
        return from_json(cls, data, where=where, error=ManifestError, fix=FIX)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {piece: i for i, piece in enumerate(self.pieces)}

    @cached_property
    def _charsmap(self) -> tuple[Any, bytes] | None:
        """(the darts-clone double array as uint32 units, the normalized strings blob), or None (identity)."""
        blob = base64.b64decode(self.precompiled_charsmap.encode("ascii"), validate=True)
        if not blob:
            return None
        size = int.from_bytes(blob[:4], "little")
        if size % 4 or 4 + size > len(blob) or size == 0:
            raise ValueError("its trie size does not fit the blob")
        units = np.frombuffer(blob[4:4 + size], dtype="<u4").tolist()
        return units, blob[4 + size:]

    # ---- encoding ----

    def encode(self, text: str, *, unknown: str = "refuse") -> list[int]:
        """``SpeechT5Tokenizer(text).input_ids`` (``unknown="unk"``: exactly, a run of unknown characters one
        ``<unk>`` as sentencepiece makes it; ``"refuse"``: letters and digits that would become ``<unk>`` are
        refused, named; ``"drop"``: unknown characters are left out)."""
        if unknown not in _UNKNOWN:
            raise InvalidArgumentError(f"unknown={short(unknown)} is not one of 'refuse', 'unk', 'drop'")
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidArgumentError("the text is empty: give it words to say")
        special = [t for t in self.special_tokens if t in text]
        if special:
            raise InvalidArgumentError(f"the text holds the tokenizer's special token {special[0]!r}, which edgegen "
                                       "does not pass on from text; remove it")
        ids, unknown_chars = [], []
        for char in self.normalize(text):
            i = self._ids.get(char, self.unk_id)
            if i == self.unk_id:
                if unknown == "drop":
                    continue
                if unicodedata.category(char)[0] in "LN":
                    unknown_chars.append(char)
                if ids and ids[-1] == self.unk_id:   # sentencepiece merges a run of unknown pieces into one
                    continue
            ids.append(i)
        if unknown == "refuse" and unknown_chars:
            shown = ", ".join(repr(c) for c in dict.fromkeys(unknown_chars))
            raise InvalidArgumentError(f"the text has letters or digits this model's tokenizer lacks, which "
                                       f"transformers turns into <unk>: {shown}; spell them with its characters, "
                                       "or pass unknown='unk' (edgegen speak --drop-unknown drops them)")
        if all(i in (self._ids.get(SPACE, -1), self.unk_id) for i in ids):
            raise InvalidArgumentError(f"the text {short(text)} has no characters this model can say")
        return ids + [self.eos_id]

    def normalize(self, text: str) -> str:
        """sentencepiece's ``Normalizer::Normalize`` (normalizer.cc): the charsmap's longest rule at each position,
        leading / repeated / trailing spaces removed, the dummy prefix, spaces as U+2581."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError("the text is not valid Unicode (it holds a lone surrogate)") from None
        space = SPACE if self.escape_whitespaces else " "
        pos, out = 0, []
        if self.remove_extra_whitespaces:
            while pos < len(data):
                piece, length = self._prefix(data, pos)
                if piece != " ":
                    break
                pos += length
        if pos == len(data):
            return ""
        if self.add_dummy_prefix:
            out.append(space)
        prev_space = self.remove_extra_whitespaces
        while pos < len(data):
            piece, length = self._prefix(data, pos)
            if prev_space:
                piece = piece.lstrip(" ")
            if piece:
                out.append(piece.replace(" ", SPACE) if self.escape_whitespaces else piece)
                prev_space = piece.endswith(" ")
            pos += length
            prev_space = prev_space and self.remove_extra_whitespaces
        normalized = "".join(out)
        return normalized.rstrip(space) if self.remove_extra_whitespaces else normalized

    def _prefix(self, data: bytes, pos: int) -> tuple[str, int]:
        """(normalized text, bytes consumed) at ``pos``: the longest charsmap rule, else one UTF-8 character."""
        if self._charsmap is not None:
            units, strings = self._charsmap
            node, longest, value = _offset(units[0]), 0, 0
            for i in range(pos, len(data)):   # darts-clone commonPrefixSearch
                node ^= data[i]
                if node >= len(units) or (units[node] & 0x800000FF) != data[i]:
                    break
                unit = units[node]
                node ^= _offset(unit)
                if (unit >> 8) & 1:
                    longest, value = i + 1 - pos, units[node] & 0x7FFFFFFF
            if longest:
                end = strings.find(b"\0", value)
                return strings[value:end if end >= 0 else len(strings)].decode("utf-8", "replace"), longest
        lead = data[pos]
        length = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        return data[pos:pos + length].decode("utf-8"), length


def _offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


@dataclasses.dataclass(frozen=True)
class SpeechT5Sampler:
    """The manifest's ``sampler`` section of a SpeechT5 model."""

    model: str
    sampling_rate: int
    hop_length: int
    num_mel_bins: int
    reduction_factor: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    prenet_layers: int
    prenet_units: int
    prenet_dropout: float
    speaker_embedding_dim: int
    max_text_positions: int
    max_speech_positions: int
    vocab_size: int
    bytes_per_frame: int
    text: Any
    #: frames of context on each side of a streamed window (0: converted before streaming)
    context_frames: int = 0

    def __post_init__(self) -> None:
        if self.model != "speecht5":
            raise FieldError(("model", f"must be 'speecht5', got {self.model!r}"))
        bad = [(name, "must be positive") for name in ("sampling_rate", "hop_length", "num_mel_bins",
                                                       "reduction_factor", "decoder_layers", "decoder_heads",
                                                       "head_dim", "prenet_layers", "prenet_units",
                                                       "speaker_embedding_dim", "max_text_positions",
                                                       "max_speech_positions", "vocab_size", "bytes_per_frame")
               if not getattr(self, name) >= 1]
        if not 0 <= self.prenet_dropout < 1:
            bad.append(("prenet_dropout", f"must be in [0, 1), got {self.prenet_dropout!r}"))
        if not self.context_frames >= 0:
            bad.append(("context_frames", "must not be negative"))
        if bad:
            raise FieldError(*bad)


def _setting(name: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not 0 <= value <= 1000:
        raise InvalidArgumentError(f"{name} must be a number from 0 to 1000, got {short(value)}")
    return float(value)


class SpeechT5Voice:
    """A loaded SpeechT5 tts artifact: ``speak(text, speaker=xvector) -> (samples, rate)``."""

    family = "tts"

    def __init__(self, artifact: Artifact, provider: str, sampler: SpeechT5Sampler, text: SpeechT5Text,
                 sessions: dict[str, Any]) -> None:
        self.artifact, self.provider, self.sampler, self.text = artifact, provider, sampler, text
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]
        self.postnet, self.vocoder = sessions["postnet"], sessions["vocoder"]

    @property
    def sampling_rate(self) -> int:
        return self.sampler.sampling_rate

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> SpeechT5Voice:
        m = artifact.manifest
        s = from_json(SpeechT5Sampler, m.sampler, where="edgegen.json.sampler", error=ManifestError, fix=FIX)
        text = SpeechT5Text.from_json(s.text)
        if len(text.pieces) > s.vocab_size:
            raise ManifestError(f"{artifact.root}: the tokenizer has {len(text.pieces)} pieces, the model's "
                                f"embedding {s.vocab_size}; {FIX}")
        kv = (s.decoder_heads, None, s.head_dim)
        expect = {"encoder": {"input_ids": (None,), "cross.0.key": kv},
                  "decoder": {"frame": (1, s.num_mel_bins), "dropout_masks": (1, s.prenet_units),
                              "speaker_embeddings": (s.speaker_embedding_dim,), "spectrum": (s.reduction_factor,
                                                                                            s.num_mel_bins),
                              "stop_probabilities": (s.reduction_factor,),
                              **{f"{k}.{i}.{w}": kv for i in range(s.decoder_layers) for k in ("past", "cross")
                                 for w in ("key", "value")}},
                  "postnet": {"spectrogram": (None, s.num_mel_bins)},
                  "vocoder": {"spectrogram_post": (None, s.num_mel_bins)}}
        problems = []
        for role, tensors in expect.items():
            graph = m.graphs.get(role)
            if graph is None:
                raise ManifestError(f"{artifact.root}: this SpeechT5 artifact lacks its {role!r} graph; {FIX}")
            for name, tail in tensors.items():
                t = graph.tensor(name)
                if t is None or len(t.shape) != len(tail) + 1 or any(
                        want is not None and isinstance(d, int) and d != want for d, want in zip(t.shape[1:], tail)):
                    problems.append(f"{role} {name} {None if t is None else list(t.shape)}")
        if problems:
            raise ManifestError(f"{artifact.root}: graphs disagree with edgegen.json's sampler: "
                                f"{'; '.join(problems)}; {FIX}")
        provider, sessions = open_sessions(artifact, config)
        return cls(artifact, provider, s, text, sessions)

    # -- the family contract ------------------------------------------------------------------------------------
    def speak(self, text: str, *, seed: int | None = None, speaker: Any = None, threshold: float | None = None,
              minlenratio: float | None = None, maxlenratio: float | None = None,
              unknown: str = "refuse") -> tuple[np.ndarray, int]:
        """``(samples, rate)``: float32 samples [n] of ``text`` said by ``speaker`` (an x-vector: 512 floats,
        [512] or [1, 512], as transformers takes them; there is no default speaker).  ``threshold``,
        ``minlenratio``, ``maxlenratio``: generate_speech's (0.5, 0.0, 20.0).  Same seed, same samples."""
        speech = self.speak_with_draws(text, seed=seed, speaker=speaker, threshold=threshold,
                                       minlenratio=minlenratio, maxlenratio=maxlenratio, unknown=unknown)
        return speech.samples, speech.rate

    def speak_with_draws(self, text: str, *, seed: int | None = None, speaker: Any = None,
                         threshold: float | None = None, minlenratio: float | None = None,
                         maxlenratio: float | None = None, unknown: str = "refuse") -> Speech:
        """:meth:`speak`, with its draws: ``(dropout_masks [steps, prenet_layers, units],)``."""
        spectra, masks = [], []
        for spectrum, drawn in self._steps(self._prepare(text, seed, speaker, threshold, minlenratio, maxlenratio,
                                                         unknown)):
            spectra.append(spectrum)
            masks.append(drawn)
        spectrogram = np.concatenate(spectra, axis=1)                                    # [1, steps * r, mel]
        samples = self._render(spectrogram, 0, spectrogram.shape[1])
        return Speech(samples, self.sampler.sampling_rate, (np.stack(masks),))

    def stream(self, text: str, *, seed: int | None = None, speaker: Any = None, threshold: float | None = None,
               minlenratio: float | None = None, maxlenratio: float | None = None, unknown: str = "refuse",
               chunk_seconds: float = STREAM_SECONDS) -> Iterator[np.ndarray]:
        """:meth:`speak`'s samples in chunks of about ``chunk_seconds`` (float32 [n] each), each rendered (postnet
        and vocoder over its frames and ``context_frames`` of their neighbours) as soon as the decoder loop has
        made them, the first long before the loop stops.  Their concatenation equals :meth:`speak`'s samples to
        float rounding (same seed, same settings)."""
        s = self.sampler
        window, context = stream_window(chunk_seconds, s.sampling_rate, s.hop_length), s.context_frames
        if not context:
            raise InvalidArgumentError(f"{self.artifact.root} was converted before edgegen streamed SpeechT5 (its "
                                       "sampler has no context_frames); re-convert the model, or call speak")
        prepared = self._prepare(text, seed, speaker, threshold, minlenratio, maxlenratio, unknown)
        check_fits((window + 2 * context) * s.bytes_per_frame, "one streamed window", "pass a smaller chunk_seconds")

        def chunks() -> Iterator[np.ndarray]:
            spectra, made, done = [], 0, 0                            # frames made by the loop, frames rendered
            for spectrum, _ in self._steps(prepared):
                spectra.append(spectrum[0])                                           # [r, mel]
                made += spectrum.shape[1]
                while made - done >= window + context:                # its right context is all made
                    frames = np.concatenate(spectra)[None]                             # [1, made, mel]
                    yield self._render(frames, done, done + window)
                    done += window
            frames = np.concatenate(spectra)[None]
            while done < made:
                yield self._render(frames, done, min(made, done + window))
                done = min(made, done + window)
        return chunks()

    # -- the steps ----------------------------------------------------------------------------------------------
    def _prepare(self, text: str, seed: int | None, speaker: Any, threshold: float | None,
                 minlenratio: float | None, maxlenratio: float | None, unknown: str) -> dict[str, Any]:
        """Steps 1-2 and the loop's settings, checked."""
        s = self.sampler
        threshold = _setting("threshold", threshold, THRESHOLD)
        minlen_ratio = _setting("minlenratio", minlenratio, MINLENRATIO)
        maxlen_ratio = _setting("maxlenratio", maxlenratio, MAXLENRATIO)
        xvector = self._speaker(speaker)
        rng = rng_for(seed)
        ids = self.text.encode(text, unknown=unknown)
        if len(ids) > s.max_text_positions:
            raise InvalidArgumentError(f"the text is {len(ids)} tokens, more than this model's {s.max_text_positions} "
                                       "text positions; split it into sentences and speak them one at a time")
        tokens, r = len(ids), s.reduction_factor
        maxlen, minlen = int(tokens * maxlen_ratio / r), int(tokens * minlen_ratio / r)
        bound = min(max(maxlen, minlen, 1), s.max_speech_positions + 1)              # steps the loop may run
        kv_bytes = 4 * s.decoder_layers * 2 * s.decoder_heads * s.head_dim * (bound + tokens)
        check_fits(kv_bytes + bound * r * s.bytes_per_frame, f"speaking a text of {tokens} tokens (up to {bound} "
                   "decoder steps)", "split the text into sentences, or lower maxlenratio")
        input_ids = np.asarray([ids], dtype=np.int64)                                     # [1, T]
        mask = (input_ids != self.text.pad_id).astype(np.int64)                          # [1, T]
        cross = dict(zip([o.name for o in self.encoder.get_outputs()],
                         self.encoder.run(None, {"input_ids": input_ids, "attention_mask": mask})))
        return {"cross": cross, "mask": mask, "xvector": xvector, "rng": rng, "threshold": threshold,
                "minlen": minlen, "maxlen": maxlen}

    def _steps(self, prepared: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Steps 3-4: the decoder until it stops; per step (spectrum [1, r, mel], dropout masks [layers, units])."""
        s, cross, threshold = self.sampler, prepared["cross"], prepared["threshold"]
        minlen, maxlen, rng = prepared["minlen"], prepared["maxlen"], prepared["rng"]
        feed = {"speaker_embeddings": prepared["xvector"], "encoder_attention_mask": prepared["mask"],
                "frame": np.zeros((1, 1, s.num_mel_bins), dtype=np.float32)}
        feed.update({f"cross.{i}.{w}": cross[f"cross.{i}.{w}"] for i in range(s.decoder_layers)
                     for w in ("key", "value")})
        empty = np.zeros((1, s.decoder_heads, 0, s.head_dim), dtype=np.float32)           # [1, heads, 0, hd]
        feed.update({f"past.{i}.{w}": empty for i in range(s.decoder_layers) for w in ("key", "value")})
        names = [o.name for o in self.decoder.get_outputs()]
        step = 0
        while True:
            step += 1
            if step > s.max_speech_positions:
                raise InvalidArgumentError(f"the model did not stop within its {s.max_speech_positions} speech "
                                           "positions; split the text into shorter sentences or lower maxlenratio")
            drawn = rng.random((s.prenet_layers, 1, s.prenet_units), dtype=np.float32) < s.prenet_dropout
            feed["dropout_masks"] = drawn.astype(np.float32)                              # [layers, 1, units]
            out = dict(zip(names, self.decoder.run(None, feed)))
            yield out["spectrum"], feed["dropout_masks"][:, 0]                            # [1, r, mel]
            feed["frame"] = out["spectrum"][:, -1:]                                       # [1, 1, mel]
            feed.update({f"past.{i}.{w}": out[f"present.{i}.{w}"] for i in range(s.decoder_layers)
                         for w in ("key", "value")})
            if step < minlen:
                continue
            if step >= maxlen or float(out["stop_probabilities"].sum()) >= threshold:
                return

    def _render(self, spectrogram: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Step 5 for frames [start, stop) of ``spectrogram`` [1, L, mel]: postnet and vocoder over them and up to
        ``context_frames`` on each side (all of it when start = 0 and stop = L); float32 samples [(stop - start) *
        hop]."""
        s, total = self.sampler, spectrogram.shape[1]
        lo, hi = max(0, start - s.context_frames), min(total, stop + s.context_frames)
        (post,) = self.postnet.run(["spectrogram_post"], {"spectrogram": spectrogram[:, lo:hi]})
        (waveform,) = self.vocoder.run(["waveform"], {"spectrogram_post": post})
        if waveform.shape != (1, (hi - lo) * s.hop_length):
            raise ManifestError(f"{self.artifact.root}: the vocoder gave {list(waveform.shape)} samples for {hi - lo} "
                                f"frames, not [1, {(hi - lo) * s.hop_length}] (hop_length in edgegen.json); {FIX}")
        samples = waveform[0, (start - lo) * s.hop_length:(stop - lo) * s.hop_length]
        if not np.all(np.isfinite(samples)):
            raise InvalidArgumentError("the model produced non-finite samples (NaN or inf) for this text and speaker")
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _speaker(self, speaker: Any) -> np.ndarray:
        n = self.sampler.speaker_embedding_dim
        if speaker is None:
            raise InvalidArgumentError(f"SpeechT5 needs a speaker: pass speaker= an x-vector of {n} floats "
                                       "(edgegen speak --speaker FILE.npy); transformers has no default speaker either")
        if isinstance(speaker, (bool, int, str)):
            raise InvalidArgumentError(f"speaker must be an x-vector of {n} floats ([{n}] or [1, {n}]), got "
                                       f"{short(speaker)}")
        array = np.asarray(speaker)
        if array.dtype.kind not in "fiu" or array.shape not in ((n,), (1, n)):
            raise InvalidArgumentError(f"speaker must be an x-vector of {n} floats ([{n}] or [1, {n}]), got an array "
                                       f"of shape {list(array.shape)} and dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise InvalidArgumentError("the speaker x-vector holds NaN or inf; give finite numbers")
        return np.ascontiguousarray(array.reshape(1, n), dtype=np.float32)

