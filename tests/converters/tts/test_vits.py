"""VITS voices against transformers' own VitsModel: the runtime's waveform from its draws, and transformers'
forward fed the same draws (SNR in dB); the export-friendly spline against transformers'; refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgegen  # noqa: E402
from edgegen.converters.tts.vits import context_frames, snr_db, spline  # noqa: E402
from edgegen.errors import InvalidArgumentError, UnsupportedModelError  # noqa: E402
from tts_support import transformers_speech  # noqa: E402

MIN_SNR = 40.0


@pytest.mark.parametrize("reverse", [True, False])
def test_spline_equals_transformers(reverse: bool) -> None:
    from transformers.models.vits.modeling_vits import _unconstrained_rational_quadratic_spline as theirs

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 50), generator=gen) * 4              # some beyond the tail bound of 5
    w, h = torch.randn((2, 1, 50, 10), generator=gen), torch.randn((2, 1, 50, 10), generator=gen)
    d = torch.randn((2, 1, 50, 9), generator=gen)
    assert bool(((x < -5) | (x > 5)).any()) and bool(((x > -5) & (x < 5)).any())
    ours_out, ours_det = spline(x, w, h, d, reverse=reverse, tail_bound=5.0)
    ref_out, ref_det = theirs(x, w, h, d, reverse=reverse, tail_bound=5.0)
    assert torch.equal(ours_out, ref_out)
    assert torch.allclose(ours_det, ref_det, atol=1e-6, rtol=0)


def test_conversion_records_the_check(tiny_voices) -> None:
    for _source, artifact in tiny_voices.values():
        figures = json.loads((artifact / "edgegen.json").read_text())["validation"]
        assert figures["min_snr_db"] >= MIN_SNR and len(figures["snr_db"]) == 3
        assert max(figures["graph_max_abs_error"].values()) <= 1e-4


@pytest.mark.parametrize("text, settings", [
    ("hello there, my dog is cute", {}),
    ("A much LONGER sentence: with 42 words... or so - it's long!", {"speaking_rate": 1.7}),
    ("quiet", {"noise_scale": 0.2, "noise_scale_duration": 0.1}),
    ("slow and wide", {"speaking_rate": 0.6, "noise_scale": 1.0}),
])
def test_speech_matches_transformers(tiny_voices, text: str, settings: dict) -> None:
    source, artifact = tiny_voices["single"]
    voice = edgegen.load(artifact)
    speech = voice.speak_with_draws(text, seed=7, **settings)
    reference = transformers_speech(source, text, speech.draws, **settings)
    assert speech.samples.shape == reference.shape
    assert snr_db(reference, speech.samples) >= MIN_SNR
    assert speech.rate == 16000 and len(speech.samples) % 16 == 0


@pytest.mark.parametrize("speaker", [0, 2])
def test_speakers_match_transformers(tiny_voices, speaker: int) -> None:
    source, artifact = tiny_voices["speakers"]
    voice = edgegen.load(artifact)
    speech = voice.speak_with_draws("each speaker says this", seed=3, speaker=speaker)
    assert len(speech.draws) == 1          # deterministic durations: only the prior's noise
    reference = transformers_speech(source, "each speaker says this", speech.draws, speaker=speaker)
    assert speech.samples.shape == reference.shape
    assert snr_db(reference, speech.samples) >= MIN_SNR


def test_speakers_differ_and_seeds_repeat(tiny_voices) -> None:
    voice = edgegen.load(tiny_voices["speakers"][1])
    a, _ = voice.speak("same words", seed=1, speaker=0)
    b, _ = voice.speak("same words", seed=1, speaker=1)
    assert a.shape != b.shape or not np.allclose(a, b)   # durations follow the speaker too
    again, _ = voice.speak("same words", seed=1, speaker=0)
    assert np.array_equal(a, again)
    other, _ = voice.speak("same words", seed=2, speaker=0)
    assert not np.allclose(a, other)


@pytest.mark.parametrize("chunk_seconds", [0.01, 0.05, 1.0])
def test_stream_equals_speak(tiny_voices, chunk_seconds: float) -> None:
    voice = edgegen.load(tiny_voices["single"][1])
    text = "streaming a sentence long enough to cut into several windows of frames"
    whole, _ = voice.speak(text, seed=5)
    chunks = list(voice.stream(text, seed=5, chunk_seconds=chunk_seconds))
    assert len(chunks) > (1 if chunk_seconds < 1 else 0)
    joined = np.concatenate(chunks)
    assert joined.shape == whole.shape
    assert snr_db(whole, joined) >= 100          # the same samples, to float rounding


def test_stream_context_is_needed(tiny_voices) -> None:
    """Without its context the windows' edges differ: the context is what makes streaming exact."""
    voice = edgegen.load(tiny_voices["single"][1])
    text = "streaming a sentence long enough to cut into several windows of frames"
    whole, _ = voice.speak(text, seed=5)
    import dataclasses

    voice.sampler = dataclasses.replace(voice.sampler, context_frames=0)
    joined = np.concatenate(list(voice.stream(text, seed=5, chunk_seconds=0.01)))
    assert snr_db(whole, joined) < 60


def test_context_bound_is_at_least_the_receptive_field(tiny_voices) -> None:
    """Perturb one latent frame in the middle: every sample it moves lies within context_frames of it."""
    from transformers import VitsModel

    source, _ = tiny_voices["single"]
    model = VitsModel.from_pretrained(source).eval()
    frames, mid = 200, 100
    z = torch.randn((1, model.config.flow_size, frames), generator=torch.Generator().manual_seed(0))
    mask = torch.ones((1, 1, frames))
    with torch.no_grad():
        base = model.decoder(model.flow(z, mask, None, reverse=True), None)[0, 0]
        z2 = z.clone()
        z2[:, :, mid] += 1.0
        moved = (model.decoder(model.flow(z2, mask, None, reverse=True), None)[0, 0] - base).abs() > 1e-7
    hop = int(np.prod(model.config.upsample_rates))
    idx = torch.nonzero(moved).flatten()
    reach = max(mid - int(idx.min()) // hop, int(idx.max()) // hop - mid)
    assert 0 < reach <= context_frames(model.config)


def test_fp16_decoder_is_measured_against_fp32(tiny_voices, tmp_path) -> None:
    source, fp32_artifact = tiny_voices["single"]
    artifact = edgegen.convert(str(source), tmp_path / "fp16", quantize="fp16")
    manifest = json.loads((artifact / "edgegen.json").read_text())
    assert manifest["graphs"]["decoder"]["precision"] == "fp16" and manifest["graphs"]["encoder"]["precision"] == "fp32"
    q = manifest["validation"]["quantization"]
    assert q["scheme"] == "fp16" and q["min_snr_db"] >= q["gate"]["min_snr_db"]
    assert not (artifact / "decoder.onnx").exists()
    fp32, half = edgegen.load(fp32_artifact), edgegen.load(artifact)
    a, b = fp32.speak("measured again here", seed=9)[0], half.speak("measured again here", seed=9)[0]
    assert a.shape == b.shape and 30 <= snr_db(a, b) < 200   # close to fp32, and not fp32 itself


def test_quantization_gate_refuses(tiny_voices, tmp_path, monkeypatch) -> None:
    import edgegen.converters.tts.vits as vits
    from edgegen.errors import ConversionError

    monkeypatch.setattr(vits, "MIN_QUANTIZED_SNR_DB", 150.0)
    with pytest.raises(ConversionError, match=r"int8 decoder's speech is .* dB SNR against fp32 \(gate 150 dB\)"):
        edgegen.convert(str(tiny_voices["single"][0]), tmp_path / "int8", quantize="int8")
    assert not (tmp_path / "int8").exists()


def test_refusals(tiny_voices, tmp_path) -> None:
    source, _ = tiny_voices["single"]
    with pytest.raises(InvalidArgumentError, match="int4 does not apply"):
        edgegen.convert(str(source), tmp_path / "q", quantize="int4")
    pickled = tmp_path / "pickled"
    shutil.copytree(source, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(UnsupportedModelError, match="safetensors only"):
        edgegen.convert(str(pickled), tmp_path / "p")
    phonemes = tmp_path / "phonemes"
    shutil.copytree(source, phonemes)
    cfg = json.loads((phonemes / "tokenizer_config.json").read_text())
    cfg["phonemize"] = True
    (phonemes / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="phonemi"):
        edgegen.convert(str(phonemes), tmp_path / "ph")
    assert not (tmp_path / "p").exists() and not (tmp_path / "ph").exists()
