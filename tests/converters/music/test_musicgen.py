"""MusicGen conversion: the graphs and the runtime's loop against transformers (greedy codes with and without
classifier-free guidance, the delay pattern, EnCodec's waveform), and what the converter refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen.converters.music.musicgen import snr_db
from edgegen.errors import EdgegenError
from edgegen.runtimes.music.delay import apply_delay_pattern_mask, build_delay_pattern_mask
from music_support import PROMPTS, load_reference, reference_codes, reference_logits

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference(tiny_musicgen):
    return load_reference(tiny_musicgen[0])


@pytest.fixture(scope="module")
def music(tiny_musicgen):
    return edgegen.load(tiny_musicgen[1])


def test_validation_is_recorded(tiny_musicgen) -> None:
    figures = json.loads((tiny_musicgen[1] / "edgegen.json").read_text())["validation"]
    assert [(r["guidance"], r["codes_equal"]) for r in figures["greedy"]] == [(3.0, True), (1.0, True)] * 2
    assert figures["min_snr_db"] >= 40 and figures["teacher_forced_max_abs"] <= 1e-3
    assert set(figures["graph_max_abs_error"]) == {"text_encoder", "cross_cache", "decoder", "audio_decoder"}


@pytest.mark.parametrize("guidance", [3.0, 1.0, 1.7])
def test_greedy_codes_equal_transformers(music, reference, guidance) -> None:
    """Other prompts and lengths than the converter's, transformers' own tokenizer."""
    model, tokenizer = reference
    for prompt, seconds in (("jazz guitar, slow", 0.3), (PROMPTS[1] + " and synth", 0.62)):
        ours = music.generate(prompt, seconds=seconds, guidance=guidance, temperature=0)
        codes, wave = reference_codes(model, tokenizer, prompt, round(seconds * 50), do_sample=False,
                                      guidance_scale=guidance, top_k=None)
        assert ours.codes.shape == codes.shape and np.array_equal(ours.codes, codes)
        assert snr_db(wave[0], ours.samples) >= 40


@pytest.mark.parametrize("max_length, channels", [(5, 1), (7, 1), (12, 1), (30, 1), (9, 2), (2, 2), (6, 2), (2, 1)])
def test_delay_pattern_is_transformers(reference, max_length, channels) -> None:
    model = reference[0].decoder
    k = model.num_codebooks
    old = model.config.audio_channels
    model.config.audio_channels = channels
    try:
        prompt = torch.randint(0, 64, (2 * k, 3))
        ids, pattern = model.build_delay_pattern_mask(prompt, 64, max_length=max_length)
    finally:
        model.config.audio_channels = old
    ours_ids, ours_pattern = build_delay_pattern_mask(prompt.numpy(), 64, max_length, k, channels)
    assert np.array_equal(ours_ids, ids.numpy()) and np.array_equal(ours_pattern, pattern.numpy())
    seq = torch.randint(0, 64, (2 * k, max_length))
    assert np.array_equal(apply_delay_pattern_mask(seq.numpy(), ours_pattern),
                          model.apply_delay_pattern_mask(seq, pattern).numpy())


def test_a_run_starts_and_ends_with_the_pattern(music) -> None:
    run = music.generate("piano", seconds=0.4, seed=3)          # 20 steps, 4 codebooks
    start, k = music.sampler.decoder_start_token_id, music.sampler.num_codebooks
    seq = run.sequence                                          # [K, 21]
    for row in range(k):
        assert np.all(seq[row, :row + 1] == start)              # BOS padding: row k delayed by k
        assert np.all(seq[row, seq.shape[1] - (k - 1 - row):] == start)   # EOS padding
        assert np.all(seq[row, row + 1:seq.shape[1] - (k - 1 - row)] < music.sampler.vocab_size)
    assert run.codes.shape == (k, 21 - k)
    assert np.array_equal(run.codes[1], seq[1, 2:2 + 17])


def test_encodec_graph_against_torch(music, reference) -> None:
    codes = np.random.default_rng(0).integers(0, 64, (4, 23))
    with torch.no_grad():
        wave = reference[0].audio_encoder.decode(torch.from_numpy(codes)[None, None], [None]).audio_values[0, 0]
    assert snr_db(wave.numpy(), music.decode(codes)) >= 40


def test_too_short_for_the_encodec_graph_is_refused(music) -> None:
    shortest = music.min_seconds
    music.generate("piano", seconds=shortest)
    with pytest.raises(EdgegenError, match=f"at least {shortest:g}"):
        music.generate("piano", seconds=shortest - 0.02)


def _copy(tiny_musicgen, tmp_path: Path) -> Path:
    out = tmp_path / "hf"
    shutil.copytree(tiny_musicgen[0], out)
    return out


@pytest.mark.parametrize("edit, match", [
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json"),
    (lambda d: [p.unlink() for p in d.glob("*.safetensors")], "safetensors"),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"model_type": "musicgen"', '"model_type": "musicgen_melody"')),
     "musicgen_melody"),
    (lambda d: (d / "generation_config.json").write_text(
        json.dumps({**json.loads((d / "generation_config.json").read_text()), "top_p": 0.9})), "top_p=0.9"),
])
def test_refusals_are_one_line(tiny_musicgen, tmp_path, edit, match) -> None:
    source = _copy(tiny_musicgen, tmp_path)
    edit(source)
    with pytest.raises(EdgegenError, match=match) as info:
        edgegen.convert(str(source), tmp_path / "art")
    assert "\n" not in str(info.value) and not (tmp_path / "art").exists()


@pytest.mark.parametrize("scheme, precision, low", [("int8", "int8-dynamic", 20.0), ("fp16", "fp16", 45.0)])
def test_quantized_decoder_is_measured_against_transformers(tiny_musicgen, reference, tmp_path, scheme, precision,
                                                            low) -> None:
    artifact = edgegen.convert(str(tiny_musicgen[0]), tmp_path / scheme, quantize=scheme)
    manifest = json.loads((artifact / "edgegen.json").read_text())
    graphs = manifest["graphs"]
    assert graphs["decoder"]["precision"] == precision and graphs["decoder"]["file"] == f"decoder.{scheme}.onnx"
    assert {graphs[r]["precision"] for r in ("text_encoder", "cross_cache", "audio_decoder")} == {"fp32"}
    assert not (artifact / "decoder.onnx").exists()
    q = manifest["validation"]["quantization"]
    assert q["scheme"] == scheme and q["min_snr_db"] >= q["gate"]["min_snr_db"] == 20.0
    # measured again here, on a prompt and seed of the test's own: its logits against transformers' float32
    model, tokenizer = reference
    music = edgegen.load(artifact)
    prompt = "ambient pads, slow"
    ours = music.generate_ids(music.encode(prompt), 40, seed=5, keep_scores=True)
    theirs = reference_logits(model, tokenizer, prompt, ours.sequence, music.settings(None, None, None)[0])
    assert low <= snr_db(theirs, ours.scores) < 150          # close to float32, and not float32 itself
    assert np.mean(theirs.argmax(-1) == ours.scores.argmax(-1)) >= 0.9


def test_quantization_gate_refuses(tiny_musicgen, tmp_path, monkeypatch) -> None:
    import edgegen.converters.music.musicgen as musicgen
    from edgegen.errors import ConversionError

    monkeypatch.setattr(musicgen, "MIN_QUANTIZED_SNR_DB", 150.0)
    with pytest.raises(ConversionError, match=r"int8 decoder's logits are .* dB SNR .* \(gate 150 dB\); convert with "
                                              r"--quantize none \(float32\) or fp16"):
        edgegen.convert(str(tiny_musicgen[0]), tmp_path / "int8", quantize="int8")
    assert not (tmp_path / "int8").exists()
    with pytest.raises(EdgegenError, match="--quantize auto, none .* not 'int4'"):
        edgegen.convert(str(tiny_musicgen[0]), tmp_path / "q", quantize="int4")
