"""The bundled class-conditional DDPM on scikit-learn's digits (models/digits_ddpm/) and its training script."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import edgegen
from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

digits = _load("digits")
digits_ddpm = _load("digits_ddpm")
train_digits_ddpm = _load("train_digits_ddpm")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return edgegen.convert(digits_ddpm.spec(), tmp_path_factory.mktemp("digits-ddpm") / "artifact")


def test_checkpoint_loads_and_spec_describes_it():
    model = digits_ddpm.load()
    assert isinstance(model, digits_ddpm.DigitsDenoiser) and not model.training
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_500_000
    assert (MODELS / "digits_ddpm" / "MODEL_CARD.md").is_file()
    assert (MODELS / "digits_ddpm" / "model.safetensors").stat().st_size < 2_000_000
    spec = digits_ddpm.spec()
    digest = hashlib.sha256((MODELS / "digits_ddpm" / "model.safetensors").read_bytes()).hexdigest()
    assert spec.checkpoint_sha256 == digest and spec.num_classes == 10 and spec.null_label == 10


def test_conversion_passes_its_validation(artifact):
    from edgegen.runtimes.artifact import open_artifact

    v = open_artifact(artifact).manifest.validation
    assert v["graphs"]["denoiser"]["max_abs_error"] < 1e-4 and v["sample"]["psnr_db"] >= 40


def test_artifact_draws_the_digits_asked_for_and_the_untrained_twin_does_not(artifact):
    labels = np.repeat(np.arange(10), 5)                                         # 50 samples
    images = edgegen.load(artifact, provider="cpu").sample(len(labels), seed=3, label=[int(k) for k in labels])
    assert images.shape == (50, 8, 8, 1) and images.dtype == np.uint8
    trained = digits.quality(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, labels)
    torch.manual_seed(0)
    twin = digits_ddpm.DigitsDenoiser(digits_ddpm.load().config).eval()
    untrained = digits.quality(np.clip((train_digits_ddpm.sample(twin, labels, seed=3) + 1) / 2, 0, 1), labels)
    assert trained["label_accuracy"] >= 0.7 and trained["confident"] >= 0.5, trained
    assert untrained["label_accuracy"] <= 0.3 and untrained["confident"] <= 0.2, untrained


def test_short_training_run_writes_a_checkpoint_and_card(tmp_path):
    figures = train_digits_ddpm.main(["--steps", "20", "--channels", "8", "--samples", "10", "--out", str(tmp_path)])
    assert (tmp_path / "model.safetensors").is_file() and "untrained twin" in (tmp_path / "MODEL_CARD.md").read_text()
    assert figures["heldout_eps_mse"] < figures["untrained_heldout_eps_mse"]      # 20 steps already help
