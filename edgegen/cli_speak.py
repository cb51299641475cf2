"""``edgegen speak ART "text" -o out.wav``: a tts artifact reads text aloud into a WAV file (16-bit PCM, or float32
with ``--float``), with its spectrogram as a PNG beside it on request."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from edgegen.cli import _echo_json, cli, runtime_options
from edgegen.errors import InvalidArgumentError


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("text", required=False)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The WAV file to write.")
@click.option("--text-file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the text from this file ('-' for stdin) instead of the argument.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Same seed, same audio.")
@click.option("--speaker", default=None, metavar="ID|FILE",
              help="VITS multi-speaker voices: the speaker id [default: 0]; SpeechT5 (required): a .npy file of the "
                   "speaker's x-vector, shape [512] or [1, 512].")
@click.option("--noise-scale", type=float, default=None, help="The prior's spread [default: the voice's].")
@click.option("--noise-scale-duration", type=float, default=None,
              help="How much durations vary [default: the voice's].")
@click.option("--speaking-rate", type=float, default=None, help="Above 1 speaks faster [default: the voice's].")
@click.option("--drop-unknown", is_flag=True,
              help="Drop letters the voice cannot say, as transformers does (by default they are refused, named).")
@click.option("--float", "as_float", is_flag=True, help="Write float32 samples (needs edgegen[audio]) instead of "
                                                        "16-bit PCM.")
@click.option("--spectrogram", is_flag=True, help="Also write the spectrogram as OUTPUT with .png for .wav.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print the files written and timings as JSON.")
def speak(artifact: str, text: str | None, output: str, text_file: Any, seed: int | None, speaker: str | None,
          noise_scale: float | None, noise_scale_duration: float | None, speaking_rate: float | None,
          drop_unknown: bool, as_float: bool, spectrogram: bool, runtime: dict[str, Any], as_json: bool) -> None:
    """Read TEXT aloud with a tts ARTIFACT into a WAV file."""
    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.audio.wav import check_wav_path, save_spectrogram_png, write_wav

    if (text is None) == (text_file is None):
        raise InvalidArgumentError("give the text to speak as an argument or with --text-file (one of them)")
    if text_file is not None:
        try:
            text = text_file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read --text-file: {exc}") from None
    check_wav_path(output)                                # before loading: a .mp3 path is refused at once
    manifest = open_artifact(artifact).manifest
    if manifest.family != "tts":
        raise InvalidArgumentError(f"{artifact} is a {manifest.family!r} artifact; 'edgegen speak' reads text with a "
                                   "tts artifact (convert a VitsModel or SpeechT5 directory)")
    settings: dict[str, Any] = {"seed": seed, "unknown": "drop" if drop_unknown else "refuse"}
    if manifest.sampler.get("model") == "speecht5":
        given = [name for name, value in (("--noise-scale", noise_scale), ("--noise-scale-duration",
                 noise_scale_duration), ("--speaking-rate", speaking_rate)) if value is not None]
        if given:
            raise InvalidArgumentError(f"{given[0]} applies to VITS voices; a SpeechT5 model has no such setting")
        settings["speaker"] = _xvector(speaker)
    else:
        settings.update(speaker=_speaker_id(speaker), noise_scale=noise_scale,
                        noise_scale_duration=noise_scale_duration, speaking_rate=speaking_rate)
    started = time.perf_counter()
    voice = edgegen.load(artifact, **runtime)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    samples, rate = voice.speak(text, **settings)
    speak_s = time.perf_counter() - started
    files = [write_wav(output, samples, rate, sample_format="float" if as_float else "pcm16")]
    if spectrogram:
        files.append(save_spectrogram_png(samples, rate, Path(output).with_suffix(".png")))
    seconds = len(samples) / rate
    if as_json:
        _echo_json({"files": [str(f) for f in files], "seconds": round(seconds, 4), "sampling_rate": rate,
                    "provider": voice.provider, "load_s": round(load_s, 4), "speak_s": round(speak_s, 4),
                    "real_time_factor": round(speak_s / max(seconds, 1e-9), 4)})
        return
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(f"[{voice.provider}: {seconds:.2f} s of audio at {rate} Hz in {speak_s:.2f} s "
               f"(real-time factor {speak_s / max(seconds, 1e-9):.3f}), load {load_s:.2f} s]", err=True)
    sys.stdout.flush()


def _speaker_id(speaker: str | None) -> int | None:
    """A VITS voice's --speaker: a speaker id."""
    if speaker is None:
        return None
    if not speaker.isdigit():
        raise InvalidArgumentError(f"--speaker {speaker!r}: a VITS voice takes a speaker id (0, 1, ...)")
    return int(speaker)


def _xvector(speaker: str | None) -> Any:
    """A SpeechT5 model's --speaker: the x-vector in a .npy file (read without pickles; its shape is checked by
    the runtime)."""
    import numpy as np

    if speaker is None:
        raise InvalidArgumentError("a SpeechT5 model needs a speaker: pass --speaker FILE.npy (an x-vector of 512 "
                                   "floats, shape [512] or [1, 512]); transformers has no default speaker either")
    path = Path(speaker)
    if path.suffix.lower() != ".npy":
        raise InvalidArgumentError(f"--speaker {speaker}: a SpeechT5 model takes a .npy file holding the speaker's "
                                   "x-vector (numpy.save), not a speaker id or another file type")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidArgumentError(f"--speaker {speaker}: cannot read it as a .npy array "
                                   f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
