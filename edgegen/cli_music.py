"""``edgegen sample`` on a music artifact: ``edgegen sample ART --prompt "lo-fi piano" --seconds 5 -o out.wav``
writes the audio as WAV (16-bit PCM, or float32 with ``--float``) and, with ``--spectrogram``, its spectrogram as a
PNG beside it (``out.png``), as ``edgegen speak`` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgegen.errors import InvalidArgumentError

#: the ``edgegen sample`` options a music artifact takes (the rest are refused, named)
MUSIC_OPTIONS = ("prompt", "guidance", "temperature")
DEFAULT_SECONDS = 5.0


def sample_music(artifact: str, output: str, prompt: str | None, seconds: float | None, seed: int | None,
                 guidance: float | None, temperature: float | None, spectrogram: bool, as_float: bool,
                 runtime: dict[str, Any], as_json: bool, echo_json: Any) -> None:
    import edgegen
    from edgegen.runtimes.audio.wav import check_wav_path, save_spectrogram_png, write_wav

    check_wav_path(output)                               # before loading: a .png path is refused at once
    if prompt is None:
        raise InvalidArgumentError("a music artifact needs --prompt, e.g. --prompt \"lo-fi piano with soft drums\"")
    started = time.perf_counter()
    model = edgegen.load(artifact, **runtime)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    music = model.generate(prompt, seconds=DEFAULT_SECONDS if seconds is None else seconds,
                           seed=0 if seed is None else seed, guidance=guidance, temperature=temperature)
    sample_s = time.perf_counter() - started
    files = [write_wav(output, music.samples, music.rate, sample_format="float" if as_float else "pcm16")]
    if spectrogram:
        mono = music.samples if music.samples.ndim == 1 else music.samples.mean(axis=0)
        files.append(save_spectrogram_png(mono, music.rate, Path(output).with_suffix(".png")))
    if as_json:
        echo_json({"files": [str(f) for f in files], "seconds": round(music.seconds, 4), "sampling_rate": music.rate,
                   "frames": int(music.codes.shape[1]), "provider": model.provider, "load_s": round(load_s, 4),
                   "sample_s": round(sample_s, 4), "real_time_factor": round(sample_s / max(music.seconds, 1e-9), 4)})
        return
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(f"[{model.provider}: {music.seconds:.2f} s of audio at {music.rate} Hz in {sample_s:.2f} s (real-time "
               f"factor {sample_s / max(music.seconds, 1e-9):.3f}), load {load_s:.2f} s]", err=True)
