"""How close the bundled voice (models/speech/) speaks to held-out espeak-ng audio of the same text.

    python models/speech_eval.py                       # trained voice vs its untrained twin, the card's figure
    python models/speech_eval.py --model /tmp/x        # another voice written by models/train_speech.py

The distance: log-mel spectra (80 bands, 0-8 kHz, 64 ms windows, 16 ms hop, natural log of power floored at
1e-5) of the voice's waveform and of the reference, aligned by dynamic time warping (steps (1,0), (0,1), (1,1))
on the per-frame mean absolute difference; the figure is the mean frame cost along the best path, in nats.
The lengths differ (the voice picks its own durations), hence the warping.  Also reported: the same L1 after
stretching the voice's frames linearly to the reference's count (no warping).

The held-out references are models/speech/heldout/*.wav (16 kHz PCM, written by train_speech.py from
espeak-ng with the reference setting), listed in heldout.json; their texts are not in the training set.
Everything but ``main`` is numpy-only, so tests can score a converted voice without torch.  Loadable by path:
nothing runs on import.
"""

from __future__ import annotations

import argparse
import json
import wave
from pathlib import Path

import numpy as np

RATE = 16000
N_FFT, HOP, MELS = 1024, 256, 80
DEFAULT_DIR = Path(__file__).resolve().with_name("speech")


def mel_filterbank(rate: int = RATE, n_fft: int = N_FFT, mels: int = MELS, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular filters [mels, n_fft // 2 + 1] evenly spaced on the HTK mel scale, each peaking at 1."""
    fmax = rate / 2 if fmax is None else fmax
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)   # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)   # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), mels + 2))         # [mels + 2] Hz
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)                                 # [bins] Hz
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)             # [mels, bins]


def log_mel(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Log-mel frames [frames, MELS] of a mono waveform [n] (Hann windows, zero-padded to one window)."""
    x = np.asarray(samples, dtype=np.float64)
    x = np.pad(x, (N_FFT // 2, N_FFT // 2 + max(0, N_FFT - len(x))))
    frames = 1 + (len(x) - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]                 # [frames, N_FFT]
    power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2                          # [frames, bins]
    return np.log(np.maximum(power @ mel_filterbank(rate).T, 1e-5)).astype(np.float32)  # [frames, MELS]


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame L1 (averaged over bands) along the cheapest monotonic warping path of frames a [N, M]
    onto b [K, M] (steps (1,0), (0,1), (1,1)); the path's cost divided by its length."""
    cost = np.abs(a[:, None, :] - b[None, :, :]).mean(-1)                              # [N, K]
    n, k = cost.shape
    total = np.full((n + 1, k + 1), np.inf)
    steps = np.zeros((n + 1, k + 1))
    total[0, 0] = 0.0
    for i in range(1, n + 1):          # row by row; the (0,1) step within a row needs a running loop
        diag, up = total[i - 1, :-1], total[i - 1, 1:]
        best_from_prev = np.minimum(diag, up)
        length_prev = np.where(diag <= up, steps[i - 1, :-1], steps[i - 1, 1:])
        for j in range(1, k + 1):
            left = total[i, j - 1]
            if best_from_prev[j - 1] <= left:
                total[i, j], steps[i, j] = best_from_prev[j - 1] + cost[i - 1, j - 1], length_prev[j - 1] + 1
            else:
                total[i, j], steps[i, j] = left + cost[i - 1, j - 1], steps[i, j - 1] + 1
    return float(total[n, k] / steps[n, k])


def stretch_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean L1 between b [K, M] and a [N, M] linearly resampled (per band) to K frames."""
    pos = np.linspace(0, len(a) - 1, len(b))
    stretched = np.stack([np.interp(pos, np.arange(len(a)), a[:, m]) for m in range(a.shape[1])], 1)
    return float(np.abs(stretched - b).mean())


def distances(samples: np.ndarray, reference: np.ndarray, rate: int = RATE) -> dict[str, float]:
    """Both distances (nats) between a waveform and a reference waveform at ``rate``."""
    ours, theirs = log_mel(samples, rate), log_mel(reference, rate)
    return {"dtw_log_mel_l1": dtw_distance(ours, theirs), "stretched_log_mel_l1": stretch_distance(ours, theirs)}


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit PCM WAV file as float32 [n] in [-1, 1] and its rate."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        return data.astype(np.float32) / 32768.0, f.getframerate()


def heldout(model_dir: Path = DEFAULT_DIR) -> list[tuple[str, np.ndarray]]:
    """The held-out (text, reference waveform [n]) pairs listed in ``model_dir``/heldout/heldout.json."""
    folder = Path(model_dir) / "heldout"
    listing = json.loads((folder / "heldout.json").read_text(encoding="utf-8"))
    return [(item["text"], read_wav(folder / item["file"])[0]) for item in listing["utterances"]]


def score(speak, pairs: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Mean distances over held-out pairs; ``speak(text, index)`` returns the voice's waveform [n] at RATE."""
    rows = [distances(np.asarray(speak(text, i), dtype=np.float32), ref) for i, (text, ref) in enumerate(pairs)]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def transformers_speaker(model):
    """``speak(ids, index)`` for a transformers VitsModel: the waveform [n] of token ids (the caller's
    VitsTokenizer), torch seeded with ``index`` before the utterance."""
    import torch

    def speak(ids, index: int) -> np.ndarray:
        torch.manual_seed(index)
        with torch.no_grad():
            return model(torch.tensor([ids])).waveform[0].numpy()
    return speak


def evaluate(model_dir: Path, seed: int) -> dict[str, dict[str, float]]:
    """The figure: the trained voice in ``model_dir`` vs the same architecture at its initial weights (``seed``),
    both through transformers' VitsModel.forward (torch seeded per utterance, the config's noise scales)."""
    import importlib.util
    import sys

    import torch
    from transformers import VitsModel, VitsTokenizer

    if "train_speech" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_speech", Path(__file__).with_name("train_speech.py"))
        spec.loader.exec_module(sys.modules.setdefault("train_speech", importlib.util.module_from_spec(spec)))
    train_speech = sys.modules["train_speech"]
    tokenizer = VitsTokenizer.from_pretrained(model_dir)
    trained = VitsModel.from_pretrained(model_dir).eval()
    untrained = train_speech.build_model(trained.config, seed).eval()
    pairs = heldout(model_dir)
    figures = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        speak = transformers_speaker(model)
        figures[name] = score(lambda text, i, speak=speak: speak(tokenizer(text).input_ids, i), pairs)
    torch.manual_seed(seed)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_DIR, help="a directory train_speech.py wrote")
    parser.add_argument("--seed", type=int, default=0, help="the untrained twin's initial-weight seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    figures = evaluate(args.model, args.seed)
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
