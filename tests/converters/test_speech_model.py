"""The bundled VITS voice (models/speech/, trained by models/train_speech.py): it converts with the tts converter's
own validation against transformers, speaks, and is closer to held-out espeak-ng audio than its untrained twin.

The held-out references are the committed models/speech/heldout/*.wav (CI has no espeak-ng); when espeak-ng is
installed, one of them is also regenerated and compared, so the committed files stay what the script writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import edgegen
from edgegen.runtimes.artifact import open_artifact
from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
speech_eval = _load("speech_eval")
train_speech = _load("train_speech")
VOICE = MODELS / "speech"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The bundled voice converted once (fp32, validated against transformers' VitsModel: ~40 s)."""
    return edgegen.convert(str(VOICE), tmp_path_factory.mktemp("speech") / "voice", report=lambda _line: None)


@pytest.fixture(scope="module")
def voice(artifact):
    return edgegen.load(artifact, provider="cpu", threads=1)


def test_the_checkpoint_is_small_and_a_stochastic_vits_voice():
    config = json.loads((VOICE / "config.json").read_text(encoding="utf-8"))
    assert config["sampling_rate"] == speech_eval.RATE == train_speech.RATE
    assert config["use_stochastic_duration_prediction"] and config["num_speakers"] == 1
    assert (VOICE / "model.safetensors").stat().st_size < 8 * 2 ** 20
    assert not list(VOICE.glob("*.bin"))


def test_it_converts_with_the_converters_validation(artifact):
    manifest = open_artifact(artifact).manifest
    assert manifest.family == "tts"
    validation = manifest.validation
    assert validation["reference"].startswith("transformers VitsModel.forward")
    assert validation["min_snr_db"] >= validation["tolerance"]["min_snr_db"] == 40.0
    assert max(validation["graph_max_abs_error"].values()) <= 1e-4


def test_it_speaks_digit_phrases(voice):
    samples, rate = voice.speak("seven two", seed=0)                                    # [n]
    again, _ = voice.speak("seven two", seed=0)
    assert rate == 16000 and samples.dtype == np.float32 and np.isfinite(samples).all()
    assert 0.3 < len(samples) / rate < 3.0, len(samples) / rate
    assert float(np.sqrt(np.mean(samples ** 2))) > 1e-2                                 # not silence
    np.testing.assert_array_equal(samples, again)
    longer, _ = voice.speak("nine four one three", seed=0)
    assert len(longer) > len(samples)


def test_trained_beats_its_untrained_twin_on_heldout_espeak_audio(voice):
    """The runtime's speech vs transformers' VitsModel at the training script's initial weights (seed 0), both
    scored against the held-out references with speech_eval's distances (log-mel L1, DTW-aligned)."""
    from transformers import VitsModel, VitsTokenizer

    pairs = speech_eval.heldout(VOICE)
    assert len(pairs) >= 3 and all(ref.size > 0.5 * speech_eval.RATE for _, ref in pairs)
    config = VitsModel.from_pretrained(VOICE).config
    twin = train_speech.build_model(config, 0).eval()
    tokenizer = VitsTokenizer.from_pretrained(VOICE)
    speak_twin = speech_eval.transformers_speaker(twin)
    trained = speech_eval.score(lambda text, i: voice.speak(text, seed=i)[0], pairs)
    untrained = speech_eval.score(lambda text, i: speak_twin(tokenizer(text).input_ids, i), pairs)
    for key in ("dtw_log_mel_l1", "stretched_log_mel_l1"):
        assert trained[key] < 0.75 * untrained[key], (key, trained, untrained)


def test_the_distance_tells_the_reference_from_another_text():
    """speech_eval's distance is small for the same audio, larger for a different held-out text."""
    (_, first), (_, second) = speech_eval.heldout(VOICE)[:2]
    assert speech_eval.distances(first, first)["dtw_log_mel_l1"] == 0.0
    assert speech_eval.distances(second, first)["dtw_log_mel_l1"] > 0.3


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_committed_references_are_what_espeak_ng_says(tmp_path):
    listing = json.loads((VOICE / "heldout" / "heldout.json").read_text(encoding="utf-8"))
    text, reference = speech_eval.heldout(VOICE)[0]
    assert text == listing["utterances"][0]["text"] == train_speech.HELDOUT[0]
    fresh = train_speech.espeak(text, *train_speech.SETTINGS[0], tmp_path)
    assert abs(len(fresh) - len(reference)) <= 1
    n = min(len(fresh), len(reference))
    assert np.max(np.abs(fresh[:n] - reference[:n])) < 2e-4                             # 16-bit rounding
