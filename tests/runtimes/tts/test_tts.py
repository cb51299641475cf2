"""The tts runtime's contract: settings and speakers checked, memory refused in one line, hostile manifests
refused, no torch on the speaking path; and ``edgegen speak``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli
from edgegen.errors import InvalidArgumentError, ManifestError

TEXT = "hello there"


def tampered(tiny_voices, tmp_path, edit) -> Path:
    """A copy of the single-speaker voice whose manifest's sampler section ``edit`` changed in place."""
    art = tmp_path / "art"
    shutil.copytree(tiny_voices["single"][1], art)
    manifest = json.loads((art / "edgegen.json").read_text())
    edit(manifest["sampler"])
    (art / "edgegen.json").write_text(json.dumps(manifest))
    return art


@pytest.fixture(scope="module")
def voice(tiny_voices):
    return edgegen.load(tiny_voices["single"][1])


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_scale": -1}, "noise_scale must be"), ({"noise_scale": float("nan")}, "noise_scale must be"),
    ({"speaking_rate": 0}, "speaking_rate must be a positive"), ({"speaking_rate": "fast"}, "speaking_rate"),
    ({"noise_scale_duration": True}, "noise_scale_duration"), ({"speaker": 1}, "one speaker"),
    ({"seed": -3}, "seed must be"), ({"unknown": "keep"}, "unknown"),
])
def test_bad_settings(voice, kwargs, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        voice.speak(TEXT, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, match", [("", "empty"), ("?!", "no characters"), ("naïve", "'ï'"), (3, "str")])
def test_bad_text(voice, text, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        voice.speak(text)


def test_drop_unknown_speaks_what_is_left(voice) -> None:
    dropped, _ = voice.speak("naïve", seed=1, unknown="drop")
    plain, _ = voice.speak("nave", seed=1)
    assert np.array_equal(dropped, plain)


def test_speakers_are_checked(tiny_voices) -> None:
    voice = edgegen.load(tiny_voices["speakers"][1])
    default, _ = voice.speak(TEXT, seed=0)
    zero, _ = voice.speak(TEXT, seed=0, speaker=0)
    assert np.array_equal(default, zero)
    with pytest.raises(InvalidArgumentError, match="0 to 2"):
        voice.speak(TEXT, speaker=3)


def test_memory_is_refused_in_one_line(voice, monkeypatch) -> None:
    import edgegen.runtimes.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 16)
    with pytest.raises(InvalidArgumentError, match="encoding a text of 441 tokens needs about"):
        voice.speak(TEXT * 20)
    with pytest.raises(InvalidArgumentError, match="chunk_seconds"):
        list(voice.stream(TEXT, chunk_seconds=0))


def test_stream_speaks_what_does_not_fit_at_once(voice, monkeypatch) -> None:
    """Memory enough for the encoder and one window, not for the whole decode: speak refuses and says to stream,
    stream speaks it, equal to the unconstrained speak."""
    import edgegen.runtimes.memory as memory

    text, rate = TEXT * 10, 0.05                      # slow: many frames per token
    whole, _ = voice.speak(text, seed=1, speaking_rate=rate)
    s = voice.sampler
    per_frame = max(s.bytes_per_frame, 16 * (s.flow_size + s.hop_length))
    frames = len(whole) // s.hop_length
    tokens = len(voice.text.encode(text))
    window = round(0.05 * s.sampling_rate / s.hop_length) + 2 * s.context_frames
    small = max(8 * s.attention_heads * tokens ** 2 * 4, 16 * s.flow_size * frames, window * per_frame)
    assert small * 2 < frames * per_frame             # the setting this test is about
    monkeypatch.setattr(memory, "available_bytes", lambda: int(small * 2 / memory.HEADROOM))
    with pytest.raises(InvalidArgumentError, match="use stream()"):
        voice.speak(text, seed=1, speaking_rate=rate)
    streamed = np.concatenate(list(voice.stream(text, seed=1, speaking_rate=rate, chunk_seconds=0.05)))
    assert streamed.shape == whole.shape and np.allclose(streamed, whole, atol=1e-5)


def test_tampered_bytes_per_frame_cannot_switch_memory_off(tiny_voices, tmp_path, monkeypatch) -> None:
    import edgegen.runtimes.memory as memory

    art = tampered(tiny_voices, tmp_path, lambda sampler: sampler.update(bytes_per_frame=1))
    voice = edgegen.load(art)
    frames = len(voice.speak("a b", seed=0, speaking_rate=0.01)[0]) // voice.sampler.hop_length
    s = voice.sampler
    between = (16 * s.flow_size + 16 * (s.flow_size + s.hop_length)) // 2   # above the plan's need, below the floor's
    monkeypatch.setattr(memory, "available_bytes", lambda: int(between * frames / memory.HEADROOM))
    with pytest.raises(InvalidArgumentError, match="speaking this text needs about"):
        voice.speak("a b", seed=0, speaking_rate=0.01)


def test_wrong_hop_length_is_caught(tiny_voices, tmp_path) -> None:
    art = tampered(tiny_voices, tmp_path, lambda sampler: sampler.update(hop_length=15))
    with pytest.raises(ManifestError, match="hop_length 15"):
        edgegen.load(art).speak(TEXT)


def test_ids_beyond_the_embedding_are_refused(tiny_voices, tmp_path) -> None:
    art = tampered(tiny_voices, tmp_path, lambda sampler: sampler.update(vocab_size=5))
    with pytest.raises(InvalidArgumentError, match="no embedding"):
        edgegen.load(art).speak(TEXT)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("hop_length"), "hop_length"),
    (lambda s: s.update(model="bark"), "must be 'vits'"),
    (lambda s: s.update(flow_size=7), "prior_means"),
    (lambda s: s.update(num_speakers=4, speaker_embedding_size=8), "speaker"),
    (lambda s: s["text"].update(vocab=[1, 2]), "vocab"),
    (lambda s: s.update(context_frames=-1), "context_frames"),
])
def test_tampered_manifest_is_refused(tiny_voices, tmp_path, edit, match) -> None:
    art = tampered(tiny_voices, tmp_path, edit)
    with pytest.raises(ManifestError, match=match):
        edgegen.load(art)


def test_speaking_loads_nothing_heavy(tiny_voices) -> None:
    code = f"""
import edgegen, json, sys
voice = edgegen.load({str(tiny_voices['single'][1])!r})
voice.speak("hello", seed=0)
list(voice.stream("hello", seed=0, chunk_seconds=0.05))
from edgegen.runtimes.audio.wav import write_wav
print(json.dumps(sorted(m for m in ("torch", "transformers", "onnx", "scipy", "pandas") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- edgegen speak ----------------------------------------------------------------------------------------------
def test_cli_speak_writes_the_runtime_samples(tiny_voices, voice, tmp_path) -> None:
    import soundfile

    out = tmp_path / "hello.wav"
    result = CliRunner().invoke(cli, ["speak", str(tiny_voices["single"][1]), TEXT, "-o", str(out), "--seed", "4",
                                      "--spectrogram", "--speaking-rate", "1.3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"] == [str(out), str(out.with_suffix(".png"))] and report["sampling_rate"] == 16000
    samples, _ = voice.speak(TEXT, seed=4, speaking_rate=1.3)
    read, rate = soundfile.read(out, dtype="int16")
    assert rate == 16000
    assert np.array_equal(read, np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16))
    floats = tmp_path / "f.wav"
    result = CliRunner().invoke(cli, ["speak", str(tiny_voices["single"][1]), TEXT, "-o", str(floats), "--seed", "4",
                                      "--speaking-rate", "1.3", "--float"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(soundfile.read(floats, dtype="float32")[0], samples)


def test_cli_speak_text_file(tiny_voices, voice, tmp_path) -> None:
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "t.wav"
    result = CliRunner().invoke(cli, ["speak", str(tiny_voices["single"][1]), "--text-file", str(tmp_path / "t.txt"),
                                      "-o", str(out), "--seed", "2"])
    assert result.exit_code == 0, result.output
    import soundfile

    assert len(soundfile.read(out)[0]) == len(voice.speak(TEXT, seed=2)[0])


@pytest.mark.parametrize("args, match", [
    (["hi", "-o", "{tmp}/x.mp3"], "WAV"),
    (["", "-o", "{tmp}/x.wav"], "empty"),
    (["Grüße", "-o", "{tmp}/x.wav"], "'ü'"),
    (["hi", "-o", "{tmp}/missing/x.wav"], "no such folder"),
    (["hi", "-o", "{tmp}/x.wav", "--speaker", "1"], "one speaker"),
    (["hi", "-o", "{tmp}/x.wav", "--noise-scale", "-2"], "noise_scale"),
    (["-o", "{tmp}/x.wav"], "as an argument or with --text-file"),
])
def test_cli_speak_bad_input(tiny_voices, tmp_path, args, match) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(cli, ["speak", str(tiny_voices["single"][1]), *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.wav").exists()


def test_cli_other_families_are_pointed_elsewhere(tiny_voices, tiny_artifact, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["speak", str(tiny_artifact), "hi", "-o", str(tmp_path / "x.wav")])
    assert result.exit_code == 1 and "tts artifact" in result.output
    result = CliRunner().invoke(cli, ["sample", str(tiny_voices["single"][1]), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "edgegen speak" in result.output
