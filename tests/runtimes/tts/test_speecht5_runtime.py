"""The SpeechT5 runtime's contract: its tokenizer equals SpeechT5Tokenizer (sentencepiece) without sentencepiece,
speakers and settings checked, limits refused in one line, no torch on the speaking path; ``edgegen speak``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sentencepiece")

import edgegen  # noqa: E402
from edgegen.cli import cli  # noqa: E402
from edgegen.errors import InvalidArgumentError, ManifestError  # noqa: E402

#: strings for tokenizer parity: NFKC rules (ligatures, full width, compatibility forms), whitespace runs, control
#: characters, runs of unknown characters (sentencepiece merges them into one <unk>), combining marks
PARITY = ["hello there", "  leading and trailing  ", "multiple   spaces\tand\ttabs\nnewlines", "naïve café Grüße",
          "ﬁne ligature", "ＦＵＬＬ width １２３", "emoji 😀 here", "x", "a.b,c;d:e!f?g", "under\u2581score",
          "\u00a0nbsp\u3000ideographic", "Ⅻ roman", "control\x01char\x7f", "½ fraction", "ŉ ǅ", "e\u0301 combining",
          "‘quotes’ “double”", "—dash–", "…", "ﾊﾝｶｸ", "\u200bzero width", "a ü ü b", "üü", "CAPS and Mixed",
          "tab\tend\t", " ", "日本語のテキスト", "Ωmega ≥ 5", "x" * 300]


@pytest.fixture(scope="module")
def voice(tiny_speecht5):
    return edgegen.load(tiny_speecht5[2])


@pytest.fixture(scope="module")
def speaker(tiny_speecht5):
    return np.load(tiny_speecht5[0] / "speaker.npy")


def test_tokenizer_matches_speecht5_tokenizer(tiny_speecht5, voice) -> None:
    from transformers import SpeechT5Tokenizer

    tokenizer = SpeechT5Tokenizer.from_pretrained(tiny_speecht5[0])
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'-\t\nüéß中ﬁ１")
    randoms = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(200)]
    checked = 0
    for text in PARITY + randoms:
        if not text.strip():
            continue
        theirs = tokenizer(text).input_ids
        try:
            ours = voice.text.encode(text, unknown="unk")
        except InvalidArgumentError as exc:   # refused: transformers' ids hold nothing but spaces and <unk>
            assert "no characters" in str(exc)
            assert set(theirs) <= {voice.text.pieces.index("\u2581"), voice.text.unk_id, voice.text.eos_id}
            continue
        assert ours == theirs, repr(text)
        checked += 1
    assert checked > 200


@pytest.mark.parametrize("text, match", [("", "empty"), ("   ", "empty"), ("Grüße", "'G', 'ü', 'ß'"),
                                         ("say </s> now", "special token '</s>'"), (3, "str"), ("😀", "no characters")])
def test_bad_text(voice, speaker, text, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        voice.speak(text, speaker=speaker)
    assert "\n" not in str(info.value)


def test_drop_and_unk(voice, speaker) -> None:
    unk = voice.text.encode("naïve", unknown="unk")
    assert voice.text.unk_id in unk
    assert voice.text.encode("naïve", unknown="drop") == voice.text.encode("nave")


@pytest.mark.parametrize("bad, match", [(None, "needs a speaker"), (3, "x-vector"), (np.zeros((2, 512)), r"\[2, 512\]"),
                                        (np.zeros(256), r"\[256\]"), (np.full(512, np.nan), "NaN"),
                                        (np.array(["a"] * 512), "dtype")])
def test_bad_speakers(voice, bad, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        voice.speak("hello", speaker=bad)


@pytest.mark.parametrize("kwargs, match", [({"threshold": -1}, "threshold"), ({"maxlenratio": float("nan")},
                                                                                "maxlenratio"),
                                           ({"minlenratio": True}, "minlenratio"), ({"seed": -1}, "seed"),
                                           ({"unknown": "keep"}, "unknown")])
def test_bad_settings(voice, speaker, kwargs, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        voice.speak("hello", speaker=speaker, **kwargs)


def test_seeds_repeat_and_speakers_shape(voice, speaker) -> None:
    a, rate = voice.speak("same words", seed=1, speaker=speaker)
    b, _ = voice.speak("same words", seed=1, speaker=speaker[None])
    assert rate == 16000 and np.array_equal(a, b)
    c, _ = voice.speak("same words", seed=2, speaker=speaker, minlenratio=4.0, maxlenratio=4.0)
    d, _ = voice.speak("same words", seed=3, speaker=speaker, minlenratio=4.0, maxlenratio=4.0)
    assert c.shape == d.shape and not np.allclose(c, d)


def test_limits_are_refused_in_one_line(voice, speaker, monkeypatch) -> None:
    import edgegen.runtimes.memory as memory

    with pytest.raises(InvalidArgumentError, match="more than this model's 200 text positions"):
        voice.speak("word " * 60, speaker=speaker)
    short = dataclasses.replace(voice.sampler, max_speech_positions=4)
    monkeypatch.setattr(voice, "sampler", short)
    with pytest.raises(InvalidArgumentError, match="did not stop within its 4 speech positions"):
        voice.speak("hello", speaker=speaker, threshold=5.0)
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 12)
    with pytest.raises(InvalidArgumentError, match="decoder steps\\) needs about"):
        voice.speak("hello", speaker=speaker)


def _tampered(tiny_speecht5, tmp_path, edit):
    art = tmp_path / "art"
    shutil.copytree(tiny_speecht5[2], art)
    manifest = json.loads((art / "edgegen.json").read_text())
    edit(manifest["sampler"])
    (art / "edgegen.json").write_text(json.dumps(manifest))
    return art


@pytest.mark.parametrize("edit, match", [(lambda s: s.update(head_dim=3), "head_dim|past.0.key"),
                                         (lambda s: s.update(prenet_dropout=1.0), "prenet_dropout"),
                                         (lambda s: s.pop("num_mel_bins"), "num_mel_bins"),
                                         (lambda s: s["text"].update(unk_id=999), "unk_id"),
                                         (lambda s: s["text"].update(precompiled_charsmap="AAAA"), "charsmap")])
def test_tampered_manifest_is_refused(tiny_speecht5, tmp_path, edit, match) -> None:
    with pytest.raises(ManifestError, match=match):
        edgegen.load(_tampered(tiny_speecht5, tmp_path, edit))


def test_speaking_loads_nothing_heavy(tiny_speecht5) -> None:
    code = f"""
import edgegen, json, sys, numpy as np
voice = edgegen.load({str(tiny_speecht5[2])!r})
voice.speak("hello", seed=0, speaker=np.load({str(tiny_speecht5[0] / 'speaker.npy')!r}))
print(json.dumps(sorted(m for m in ("torch", "transformers", "onnx", "sentencepiece", "google.protobuf")
                        if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_speak_writes_the_runtime_samples(tiny_speecht5, voice, speaker, tmp_path) -> None:
    import soundfile

    out = tmp_path / "hello.wav"
    result = CliRunner().invoke(cli, ["speak", str(tiny_speecht5[2]), "hello there", "-o", str(out), "--seed", "4",
                                      "--speaker", str(tiny_speecht5[0] / "speaker.npy"), "--float"])
    assert result.exit_code == 0, result.output
    samples, _ = voice.speak("hello there", seed=4, speaker=speaker)
    read, rate = soundfile.read(out, dtype="float32")
    assert rate == 16000 and np.array_equal(read, samples)


@pytest.mark.parametrize("args, match", [
    (["hi", "-o", "{tmp}/x.wav"], "--speaker FILE.npy"),
    (["hi", "-o", "{tmp}/x.wav", "--speaker", "2"], ".npy file"),
    (["hi", "-o", "{tmp}/x.wav", "--speaker", "{tmp}/wrong.npy"], "[2, 512]"),
    (["hi", "-o", "{tmp}/x.wav", "--speaker", "{tmp}/broken.npy"], "cannot read"),
    (["hi", "-o", "{tmp}/x.mp3", "--speaker", "{spk}"], "WAV"),
    (["hi", "-o", "{tmp}/x.wav", "--speaker", "{spk}", "--noise-scale", "0.5"], "VITS"),
    (["Grüße", "-o", "{tmp}/x.wav", "--speaker", "{spk}"], "'ü'"),
])
def test_cli_speak_bad_input(tiny_speecht5, tmp_path, args, match) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 512), dtype=np.float32))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{spk}", str(tiny_speecht5[0] / "speaker.npy")) for a in args]
    result = CliRunner().invoke(cli, ["speak", str(tiny_speecht5[2]), *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], \
        result.output
    assert not (tmp_path / "x.wav").exists()
