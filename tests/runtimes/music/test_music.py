"""The music runtime's contract: seeded sampling, top-k, settings and prompts checked in one line, no torch on
the generating path; and ``edgegen sample`` on a music artifact."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli
from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.music.delay import build_delay_pattern_mask


@pytest.fixture(scope="module")
def music(tiny_musicgen):
    return edgegen.load(tiny_musicgen[1])


def test_seeded_sampling_is_reproducible(music) -> None:
    a, b = music.generate("lo-fi piano", seconds=0.3, seed=1), music.generate("lo-fi piano", seconds=0.3, seed=1)
    c = music.generate("lo-fi piano", seconds=0.3, seed=2)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.codes, c.codes)
    samples, rate = a                                           # unpacks as (samples, rate)
    assert samples.dtype == np.float32 and samples.ndim == 1 and rate == 800


@pytest.mark.parametrize("top_k, guidance, temperature", [(3, None, None), (5, 1.0, 1.5)])
def test_sampled_codes_are_within_top_k_of_torch(music, tiny_musicgen, top_k, guidance, temperature) -> None:
    """Every sampled code is among the top-k of transformers' teacher-forced logits for the same sequence."""
    pytest.importorskip("torch")
    from music_support import load_reference, reference_logits

    model, tokenizer = load_reference(tiny_musicgen[0])
    run = music.generate("90s rock", seconds=0.4, seed=7, top_k=top_k, guidance=guidance, temperature=temperature,
                         keep_scores=True)
    cfg = music.settings(guidance, top_k, temperature)[0]
    theirs = reference_logits(model, tokenizer, "90s rock", run.sequence, cfg)     # [steps, K, V]
    assert np.max(np.abs(theirs - run.scores)) <= 1e-4
    _, pattern = build_delay_pattern_mask(run.sequence[:, :1], 64, run.sequence.shape[1], 4, 1)
    checked = 0
    for step in range(theirs.shape[0]):
        for k in range(4):
            if pattern[k, step + 1] != -1:                     # forced by the pattern, not sampled
                continue
            kth = np.sort(theirs[step, k])[-top_k]
            assert theirs[step, k, run.sequence[k, step + 1]] >= kth - 1e-4
            checked += 1
    assert checked >= 50


def test_greedy_by_temperature_zero_and_by_config(music) -> None:
    greedy = music.generate("piano", seconds=0.3, temperature=0, seed=1)
    again = music.generate("piano", seconds=0.3, temperature=0, seed=99)
    assert np.array_equal(greedy.codes, again.codes)


def test_the_prompt_and_the_guidance_matter(music) -> None:
    """(Else the parity checks with and without guidance would test one thing twice.)"""
    runs = [music.generate(p, seconds=0.3, guidance=g, temperature=0).codes
            for p in ("lo-fi piano", "90s rock") for g in (3.0, 1.0)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(runs) for b in runs[i + 1:])


def test_unknown_characters_are_fine(music) -> None:
    assert music.generate("☃ piano ünïcode", seconds=0.2).samples.size > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": ""}, "prompt is empty"), ({"prompt": "   "}, "prompt is empty"), ({"prompt": 3}, "must be a str"),
    ({"seconds": 0}, "seconds must be at least"), ({"seconds": -1}, "seconds must be"),
    ({"seconds": 6}, r"at most 5\.12 for this model"), ({"seconds": float("nan")}, "seconds must be"),
    ({"guidance": -1}, "guidance must be"), ({"guidance": 0.5}, "guidance must be a number from 1"),
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"temperature": "hot"}, "temperature must be"), ({"seed": -1}, "seed must be"),
])
def test_bad_input_is_one_line(music, kwargs, match) -> None:
    args = {"prompt": "piano", "seconds": 0.2, **kwargs}
    with pytest.raises(InvalidArgumentError, match=match) as info:
        music.generate(args.pop("prompt"), **args)
    assert "\n" not in str(info.value)


def test_tampered_sampler_is_refused(tiny_musicgen, tmp_path) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_musicgen[1], art)
    manifest = json.loads((art / "edgegen.json").read_text())
    manifest["sampler"]["pad_token_id"] = 3
    (art / "edgegen.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="pad_token_id"):
        edgegen.load(art)


def test_generating_loads_nothing_heavy(tiny_musicgen) -> None:
    code = f"""
import edgegen, json, sys
music = edgegen.load({str(tiny_musicgen[1])!r})
music.generate("piano", seconds=0.3, seed=0)
from edgegen.runtimes.audio.wav import write_wav
import edgegen.cli_music
print(json.dumps(sorted(m for m in ("torch", "transformers", "onnx", "scipy", "pandas") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- edgegen sample ----------------------------------------------------------------------------------------------
def test_cli_sample_writes_the_runtime_samples(tiny_musicgen, music, tmp_path) -> None:
    import soundfile

    out, png = tmp_path / "piano.wav", tmp_path / "piano.png"
    result = CliRunner().invoke(cli, ["sample", str(tiny_musicgen[1]), "--prompt", "lo-fi piano", "--seconds", "0.5",
                                      "-o", str(out), "--seed", "4", "--guidance", "2", "--spectrogram",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"] == [str(out), str(png)] and report["sampling_rate"] == 800
    samples, _ = music.generate("lo-fi piano", seconds=0.5, seed=4, guidance=2)
    read, rate = soundfile.read(out, dtype="int16")
    assert rate == 800 and np.array_equal(read, np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    floats = tmp_path / "f.wav"
    result = CliRunner().invoke(cli, ["sample", str(tiny_musicgen[1]), "--prompt", "lo-fi piano", "--seconds", "0.5",
                                      "-o", str(floats), "--seed", "4", "--guidance", "2", "--float"])
    assert result.exit_code == 0, result.output
    read, _ = soundfile.read(floats, dtype="float32")
    assert np.array_equal(read, samples)


@pytest.mark.parametrize("args, match", [
    (["-o", "x.mp3", "--prompt", "p"], "path ending in .wav"),
    (["-o", "x.wav"], "needs --prompt"),
    (["-o", "x.wav", "--prompt", ""], "prompt is empty"),
    (["-o", "x.wav", "--prompt", "p", "--seconds", "0"], "seconds must be at least"),
    (["-o", "x.wav", "--prompt", "p", "--seconds", "60"], "at most 5.12"),
    (["-o", "x.wav", "--prompt", "p", "-n", "3"], "--num applies to image artifacts"),
    (["-o", "x.wav", "--prompt", "p", "--steps", "3"], "--steps applies to image artifacts"),
    (["-o", "x.png", "--prompt", "p", "--spectrogram"], "path ending in .wav"),
])
def test_cli_refusals_are_one_line(tiny_musicgen, tmp_path, monkeypatch, args, match) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["sample", str(tiny_musicgen[1]), *args])
    assert result.exit_code == 1 and match in result.output and len(result.output.strip().splitlines()) == 1, \
        result.output
    assert not (tmp_path / "x.wav").exists()


def test_cli_image_artifact_refuses_seconds(tiny_artifact, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["sample", str(tiny_artifact), "-o", str(tmp_path / "x.png"), "--seconds", "2"])
    assert result.exit_code == 1 and "--seconds applies to music artifacts" in result.output
