"""The bundled gan, vae, vq-vae and flow models on scikit-learn's digits (models/digits_{gan,vae,vqvae,flow}/)
and their training scripts: the checkpoints load, convert and pass validation, and beat their untrained twins."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import edgegen
from edgegen.runtimes.artifact import open_artifact
from edgegen.runtimes.images import to_uint8
from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

torch.set_num_threads(1)
digits = _load("digits")
NAMES = ("digits_gan", "digits_vae", "digits_vqvae", "digits_flow")
MODULES = {name: _load(name) for name in NAMES}
TRAIN = {name: _load(f"train_{name}") for name in NAMES}
CLASSES = {"digits_gan": "DigitsGenerator", "digits_vae": "DigitsVAE", "digits_vqvae": "DigitsVQVAE",
           "digits_flow": "DigitsFlow"}


@pytest.fixture(scope="module")
def classifier():
    return digits.load_classifier()


@pytest.fixture(scope="module")
def heldout():
    """The held-out digits: float [180, 1, 8, 8] in [0, 1], labels [180], and as uint8 images [180, 8, 8, 1]."""
    x, y = digits.split(*digits.load_data(), heldout=True)
    return x, y, to_uint8(x, (0.0, 1.0))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Each bundled model converted once (a second each), opened with the runtime on one CPU thread."""
    root = tmp_path_factory.mktemp("digits-models")
    return {name: edgegen.load(edgegen.convert(MODULES[name].spec(), root / name, report=lambda _line: None),
                               provider="cpu", threads=1) for name in NAMES}


def _twin(name: str) -> torch.nn.Module:
    """The untrained twin: the bundled model's architecture with the training script's initial weights (seed 0)."""
    module = MODULES[name]
    torch.manual_seed(0)
    return getattr(module, CLASSES[name])(module.load().config).eval()


def _floats(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0                      # [N, 1, 8, 8] in [0, 1]


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_loads_and_spec_describes_it(name):
    model = MODULES[name].load()
    assert isinstance(model, getattr(MODULES[name], CLASSES[name])) and not model.training
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    folder = MODELS / name
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in card and "untrained twin" in card
    assert (folder / "model.safetensors").stat().st_size < 1_500_000
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert MODULES[name].spec().checkpoint_sha256 == digest


@pytest.mark.parametrize("name", NAMES)
def test_cli_route_file_py_spec_builds_the_spec(name):
    from edgegen.converters.api import load_spec   # what `edgegen convert models/<name>.py:spec` calls

    spec = load_spec(f"{MODELS / name}.py:spec")
    assert spec.checkpoint_sha256 == MODULES[name].spec().checkpoint_sha256


def test_the_four_checkpoints_are_small():
    assert sum((MODELS / name / "model.safetensors").stat().st_size for name in NAMES) < 5_000_000


@pytest.mark.parametrize("name", NAMES)
def test_conversion_passes_its_validation_and_samples_have_the_right_shape(artifacts, name):
    model = artifacts[name]
    v = open_artifact(model.artifact.root).manifest.validation
    if name == "digits_flow":
        assert v["passed"] and v["max_abs_error_x"] <= 1e-4 and v["max_rel_error_bits_per_dim"] <= 1e-4, v
    else:
        assert v["max_abs_error"] <= 1e-4 and v["samples_uint8_max_diff"] <= 1, v
    images = model.sample(3, seed=0)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(images, model.sample(3, seed=0))


def test_gan_draws_the_digits_asked_for_and_its_untrained_twin_does_not(artifacts, classifier):
    labels = np.repeat(np.arange(10), 5)                                                  # 50 samples
    images = np.concatenate([artifacts["digits_gan"].sample(5, seed=d, label=d) for d in range(10)])
    trained = digits.quality(_floats(images), labels, classifier)
    twin = TRAIN["digits_gan"].sample(_twin("digits_gan"), labels, seed=0)                # [-1, 1]
    untrained = digits.quality((twin + 1) / 2, labels, classifier)
    assert trained["confident"] >= 0.8 and trained["label_accuracy"] >= 0.8, trained
    assert untrained["confident"] <= 0.1 and untrained["label_accuracy"] <= 0.3, untrained


def test_vae_samples_digits_and_reconstructs_held_out_ones(artifacts, classifier, heldout):
    vae, (x, _, images) = artifacts["digits_vae"], heldout
    samples = digits.quality(_floats(vae.sample(50, seed=0)), classifier=classifier)
    recon_mse = float(np.mean((_floats(vae.reconstruct(images)) - x) ** 2))
    twin = _twin("digits_vae")
    untrained = digits.quality(TRAIN["digits_vae"].prior_samples(twin, 50, seed=0), classifier=classifier)
    untrained_mse = float(np.mean((TRAIN["digits_vae"].reconstruct(twin, x) - x) ** 2))
    assert samples["confident"] >= 0.5 and untrained["confident"] <= 0.1, (samples, untrained)
    assert recon_mse <= 0.03 and recon_mse < untrained_mse / 5, (recon_mse, untrained_mse)


def test_vqvae_reconstructs_held_out_digits(artifacts, classifier, heldout):
    vq, (x, y, images) = artifacts["digits_vqvae"], heldout
    recon = _floats(vq.reconstruct(images))
    mse, accuracy = float(np.mean((recon - x) ** 2)), digits.quality(recon, y, classifier)["label_accuracy"]
    untrained = TRAIN["digits_vqvae"].score(_twin("digits_vqvae"), x, y, samples=10, seed=0)
    assert mse <= 0.01 and accuracy >= 0.9, (mse, accuracy)
    assert untrained["heldout_recon_mse"] > 10 * mse and untrained["heldout_recon_accuracy"] <= 0.3, untrained


def test_flow_bits_per_dim_are_the_training_scripts_and_far_below_the_twins(artifacts, heldout):
    flow, (x, _, images) = artifacts["digits_flow"], heldout
    bits = flow.bits_per_dim(images)                                          # [180]: what edgegen score prints
    levels = torch.from_numpy(np.round(x * 16))                                           # [180, 1, 8, 8] in 0..16
    train = TRAIN["digits_flow"]
    with torch.no_grad():
        reference = train.bits_per_dim(MODULES["digits_flow"].load(), levels, 0.5).double().numpy()
    assert np.allclose(bits, reference, rtol=0, atol=1e-4), float(np.abs(bits - reference).max())
    untrained = train.heldout_bits(_twin("digits_flow"), levels)["bin_centre"]
    assert bits.mean() <= 2.2 and untrained >= 4.5, (bits.mean(), untrained)


def test_flow_samples_look_like_digits_and_score_at_their_own_levels(artifacts, classifier):
    flow = artifacts["digits_flow"]
    images = flow.sample(50, seed=0, temperature=0.8)
    levels = np.floor(images.astype(np.float64) * 17 / 256)                                # the runtime's pixel levels
    assert np.array_equal(flow.data_to_pixels(flow.pixels_to_data(images)[0]), images)    # each sample is a bin's pixel
    trained = digits.quality((levels / 16).transpose(0, 3, 1, 2).astype(np.float32), classifier=classifier)
    twin = TRAIN["digits_flow"].sample_levels(_twin("digits_flow"), 50, seed=0)
    untrained = digits.quality((twin / 16).astype(np.float32), classifier=classifier)
    assert trained["confident"] >= 0.3 and untrained["confident"] <= 0.1, (trained, untrained)


SMOKE = {"digits_gan": ["--steps", "20", "--channels", "8", "--samples", "10"],
         "digits_vae": ["--steps", "30", "--hidden", "16", "--samples", "10"],
         "digits_vqvae": ["--steps", "30", "--channels", "8", "--codes", "8", "--samples", "10"],
         "digits_flow": ["--steps", "20", "--hidden", "8", "--samples", "10"]}


@pytest.mark.parametrize("name", NAMES)
def test_short_training_run_writes_a_checkpoint_and_card(tmp_path, name):
    figures = TRAIN[name].main([*SMOKE[name], "--threads", "1", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "MODEL_CARD.md"}
    assert "untrained twin" in (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not MODULES[name].load(tmp_path).training
    t, u = figures["trained"], figures["untrained"]
    if name == "digits_flow":       # 20 steps already lower the held-out bits/dim
        assert t["heldout_bits_per_dim"]["bin_centre"] < u["heldout_bits_per_dim"]["bin_centre"]
    elif name in ("digits_vae", "digits_vqvae"):
        assert t["heldout_recon_mse"] < u["heldout_recon_mse"]
