"""SpeechT5 text-to-speech against transformers' own generate_speech: the runtime's waveform from its dropout draws
and generate_speech(..., vocoder=...) fed the same draws (same length, SNR in dB); the stop and length rules;
conversion refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

import edgegen  # noqa: E402
from edgegen.converters.tts.vits import snr_db  # noqa: E402
from edgegen.errors import InvalidArgumentError, UnsupportedModelError  # noqa: E402
from speecht5_support import transformers_speech  # noqa: E402

#: the conversion gate; fp32 graphs against PyTorch land near 120 dB (the validation records it)
MIN_SNR = 40.0


@pytest.fixture(scope="module")
def voice(tiny_speecht5):
    return edgegen.load(tiny_speecht5[2])


@pytest.fixture(scope="module")
def speaker(tiny_speecht5):
    return np.load(tiny_speecht5[0] / "speaker.npy")


def test_conversion_records_the_check(tiny_speecht5) -> None:
    manifest = json.loads((tiny_speecht5[2] / "edgegen.json").read_text())
    figures = manifest["validation"]
    assert figures["min_snr_db"] >= MIN_SNR and len(figures["snr_db"]) == 3
    assert max(figures["graph_max_abs_error"].values()) <= 1e-4
    assert sorted(manifest["graphs"]) == ["decoder", "encoder", "postnet", "vocoder"]
    assert manifest["sampler"]["model"] == "speecht5"


@pytest.mark.parametrize("text, seed, settings", [
    ("hello there", 0, {}),
    ("the quick brown fox jumps over the lazy dog, it's true!", 3, {}),
    ("quiet words", 5, {"threshold": 0.3}),
    ("xylophone", 1, {"minlenratio": 2.0}),
])
def test_speech_matches_transformers(tiny_speecht5, voice, speaker, text, seed, settings) -> None:
    source, vocoder, _ = tiny_speecht5
    speech = voice.speak_with_draws(text, seed=seed, speaker=speaker, **settings)
    reference = transformers_speech(source, vocoder, text, speaker, speech.draws[0], **settings)
    assert speech.samples.shape == reference.shape          # the loops stopped at the same step
    tokens = len(voice.text.encode(text))
    steps = speech.draws[0].shape[0]
    assert steps < int(tokens * 20.0 / 2)                   # the stop head stopped it, not maxlenratio
    assert steps >= int(tokens * settings.get("minlenratio", 0.0) / 2)
    assert len(speech.samples) == steps * 2 * voice.sampler.hop_length
    assert snr_db(reference, speech.samples) >= MIN_SNR


def test_the_draws_matter(tiny_speecht5, voice, speaker) -> None:
    """transformers fed another seed's masks misses the gate: the SNR threshold checks the replay, not a constant."""
    source, vocoder, _ = tiny_speecht5
    a = voice.speak_with_draws("hello there", seed=0, speaker=speaker)
    b = voice.speak_with_draws("hello there", seed=1, speaker=speaker)
    steps = min(a.draws[0].shape[0], b.draws[0].shape[0])
    reference = transformers_speech(source, vocoder, "hello there", speaker, b.draws[0][:steps],
                                    minlenratio=steps * 2 / 13 + 0.01, maxlenratio=steps * 2 / 13 + 0.01)
    ours = voice.speak("hello there", seed=0, speaker=speaker, minlenratio=steps * 2 / 13 + 0.01,
                       maxlenratio=steps * 2 / 13 + 0.01)[0]
    assert len(voice.text.encode("hello there")) == 13 and ours.shape == reference.shape
    assert snr_db(reference, ours) < MIN_SNR


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_maxlenratio_bounds_the_loop(tiny_speecht5, voice, speaker, ratio) -> None:
    source, vocoder, _ = tiny_speecht5
    text = "a long enough sentence to count steps"
    tokens = len(voice.text.encode(text))
    speech = voice.speak_with_draws(text, seed=2, speaker=speaker, maxlenratio=ratio, threshold=2.5)
    assert speech.draws[0].shape[0] == max(int(tokens * ratio / 2), 1)   # threshold above any sum: maxlen stops it
    reference = transformers_speech(source, vocoder, text, speaker, speech.draws[0], maxlenratio=ratio, threshold=2.5)
    assert reference.shape == speech.samples.shape and snr_db(reference, speech.samples) >= MIN_SNR


def test_vocoder_is_found_or_asked_for(tiny_speecht5, tmp_path) -> None:
    from edgegen.converters.tts.speecht5 import find_vocoder

    source, vocoder, _ = tiny_speecht5
    inside = tmp_path / "inside"
    shutil.copytree(source, inside)
    with pytest.raises(InvalidArgumentError, match="--vocoder DIR") as info:
        find_vocoder(inside, None)
    assert "\n" not in str(info.value)
    shutil.copytree(vocoder, inside / "vocoder")
    assert find_vocoder(inside, None) == inside / "vocoder"
    with pytest.raises(InvalidArgumentError, match="not a SpeechT5HifiGan"):
        find_vocoder(inside, source)


def test_cli_convert_refusals(tiny_speecht5, tmp_path) -> None:
    from edgegen.cli import cli

    source, vocoder, _ = tiny_speecht5
    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    cases = [(["convert", str(bare), "-o", str(tmp_path / "a")], "--vocoder"),
             (["convert", str(vocoder), "-o", str(tmp_path / "b")], "--vocoder " + str(vocoder)),
             (["convert", str(source), "-o", str(tmp_path / "c"), "--vocoder", str(vocoder), "-q", "int4"],
              "not 'int4'")]
    vits = tmp_path / "vits"
    vits.mkdir()
    (vits / "config.json").write_text(json.dumps({"model_type": "vits"}))
    cases.append((["convert", str(vits), "-o", str(tmp_path / "d"), "--vocoder", str(vocoder)], "SpeechT5"))
    for args, match in cases:
        result = CliRunner().invoke(cli, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and match in lines[0], result.output
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_other_heads_and_pickles_are_refused(tiny_speecht5, tmp_path) -> None:
    source, vocoder, _ = tiny_speecht5
    asr = tmp_path / "asr"
    shutil.copytree(source, asr)
    config = json.loads((asr / "config.json").read_text())
    (asr / "config.json").write_text(json.dumps(config | {"architectures": ["SpeechT5ForSpeechToText"]}))
    with pytest.raises(UnsupportedModelError, match="SpeechT5ForTextToSpeech"):
        edgegen.convert(str(asr), tmp_path / "o1")
    pickled = tmp_path / "pickled"
    shutil.copytree(source, pickled)
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        edgegen.convert(str(pickled), tmp_path / "o2")


@pytest.mark.parametrize("scheme, precision, low", [("int8", "int8-dynamic", 20.0), ("fp16", "fp16", 40.0)])
def test_quantized_decoder_is_measured_against_fp32(tiny_speecht5, voice, speaker, tmp_path, scheme, precision,
                                                    low) -> None:
    source, vocoder, _ = tiny_speecht5
    artifact = edgegen.convert(str(source), tmp_path / scheme, vocoder=str(vocoder), quantize=scheme)
    manifest = json.loads((artifact / "edgegen.json").read_text())
    graphs = manifest["graphs"]
    assert graphs["decoder"]["precision"] == precision and graphs["decoder"]["file"] == f"decoder.{scheme}.onnx"
    assert {graphs[r]["precision"] for r in ("encoder", "postnet", "vocoder")} == {"fp32"}
    assert not (artifact / "decoder.onnx").exists()
    q = manifest["validation"]["quantization"]
    assert q["scheme"] == scheme and q["min_snr_db"] >= q["gate"]["min_snr_db"] == 20.0 and len(q["runs"]) == 3
    # measured again here on a sentence, speaker and seed of the test's own, at float32's length
    text = "measured again here"
    reference = voice.speak_with_draws(text, seed=7, speaker=speaker)
    ratio = (reference.draws[0].shape[0] + 0.5) * voice.sampler.reduction_factor / len(voice.text.encode(text))
    ours = edgegen.load(artifact).speak(text, seed=7, speaker=speaker, minlenratio=ratio, maxlenratio=ratio)[0]
    assert ours.shape == reference.samples.shape and low <= snr_db(reference.samples, ours) < 150


def test_quantization_gate_refuses(tiny_speecht5, tmp_path, monkeypatch) -> None:
    import edgegen.converters.tts.speecht5 as speecht5
    from edgegen.errors import ConversionError

    monkeypatch.setattr(speecht5, "MIN_QUANTIZED_SNR_DB", 150.0)
    with pytest.raises(ConversionError, match=r"int8 decoder's speech is .* dB SNR against float32 \(gate 150 dB\); "
                                              r"convert with --quantize none \(float32\) or fp16"):
        edgegen.convert(str(tiny_speecht5[0]), tmp_path / "int8", vocoder=str(tiny_speecht5[1]), quantize="int8")
    assert not (tmp_path / "int8").exists()


@pytest.mark.parametrize("chunk_seconds", [0.05, 0.3, 100.0])
def test_stream_equals_speak_and_starts_before_the_loop_ends(voice, speaker, chunk_seconds) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    whole = voice.speak(text, seed=4, speaker=speaker, minlenratio=4.0)[0]
    steps, run = [], voice.decoder.run

    def counted(*args, **kwargs):
        steps.append(1)
        return run(*args, **kwargs)

    voice.decoder.run = counted
    try:
        chunks = voice.stream(text, seed=4, speaker=speaker, minlenratio=4.0, chunk_seconds=chunk_seconds)
        first = next(chunks)
        steps_at_first = len(steps)
        rest = list(chunks)
    finally:
        del voice.decoder.run
    joined = np.concatenate([first, *rest])
    assert joined.shape == whole.shape and joined.dtype == np.float32
    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
    window = round(chunk_seconds * voice.sampling_rate / voice.sampler.hop_length)
    if window + voice.sampler.context_frames < len(whole) // voice.sampler.hop_length:
        assert len(rest) >= 1 and steps_at_first < len(steps)      # the first chunk came while the loop ran
    assert all(len(c) == window * voice.sampler.hop_length for c in [first, *rest][:-1])


def test_stream_refusals(voice, speaker) -> None:
    import dataclasses

    with pytest.raises(InvalidArgumentError, match="chunk_seconds must be a number"):
        voice.stream("hi", speaker=speaker, chunk_seconds=0)
    old = dataclasses.replace(voice.sampler, context_frames=0)
    voice.sampler, kept = old, voice.sampler
    try:
        with pytest.raises(InvalidArgumentError, match="re-convert the model, or call speak"):
            voice.stream("hi", speaker=speaker)
    finally:
        voice.sampler = kept
