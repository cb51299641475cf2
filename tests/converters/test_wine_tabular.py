"""The bundled tabular model (models/wine_tabular/: a CTGAN on scikit-learn's wine table): its checkpoint converts,
the artifact's rows are edgegen's float path on PyTorch's network, and its model card is not stale (every figure
recomputes from the artifact, and the trained model beats its untrained twin on them)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

import edgegen
from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

torch.set_num_threads(1)
wine = _load("wine_tabular")
train_script = _load("train_wine_tabular")
CARD = (MODELS / "wine_tabular" / "MODEL_CARD.md").read_text(encoding="utf-8")
#: the card's figures are printed with 4 decimals
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """{"trained": the bundled checkpoint's artifact, "untrained": its untrained twin's}, on one CPU thread."""
    root = tmp_path_factory.mktemp("wine-tabular")
    twin = wine.untrained_checkpoint(wine.DEFAULT_DIR, root / "twin-checkpoint").parent
    return {name: edgegen.load(edgegen.convert(wine.spec(folder), root / name, report=lambda _line: None),
                               provider="cpu", threads=1)
            for name, folder in (("trained", wine.DEFAULT_DIR), ("untrained", twin))}


@pytest.fixture(scope="module")
def data():
    return wine.split(wine.load_data())


def _card_samples() -> int:
    return int(re.search(r"sample_rows\((\d+), seed=0\)", CARD).group(1))


def _card_row(label: str) -> list[float]:
    """The numbers of the card's table row whose first cell is ``label`` ('-' cells skipped)."""
    (line,) = [ln for ln in CARD.splitlines() if ln.startswith(f"| {label} |")]
    return [float(cell) for cell in line.strip("|").split("|")[1:] if cell.strip() != "-"]


def test_split_is_fixed_and_stratified(data):
    train, heldout = data
    assert (len(train), len(heldout)) == (133, 45)
    assert sorted(heldout[wine.TARGET].value_counts()) == [12, 15, 18]
    assert train.columns.tolist()[-2:] == wine.DISCRETE and len(wine.continuous_columns(train)) == 13


def test_manifest_records_the_checkpoint_sha(artifacts):
    file = wine.DEFAULT_DIR / "model.safetensors"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert artifacts["trained"].artifact.manifest.source.checkpoint_sha256 == digest
    assert wine.spec().checkpoint_sha256 == digest
    assert file.stat().st_size < 2_000_000


def test_rows_for_seed_0_are_edgegens_float_path_on_the_pytorch_network(artifacts):
    """sample_rows(n, seed=0) twice gives the same rows; they are the seed's documented block draws through the
    runtime's activate/to_table, and through the PyTorch network rebuilt from the checkpoint."""
    from edgegen.converters.tabular.checkpoint import network_from_checkpoint, read_checkpoint
    from edgegen.converters.tabular.convert import CTGANGenerator, _reference_activation
    from edgegen.runtimes.tabular.tabular import block_rng

    model = artifacts["trained"]
    bs = model.sampler.block_rows
    n = 3 * bs + 7
    rows = model.sample_rows(n, seed=0)
    again = model.sample_rows(n, seed=0)
    entropy = np.random.SeedSequence(0).entropy
    draws = [model.draw_block(block_rng(entropy, k)) for k in range(4)]
    noise = {k: None if draws[0][k] is None else np.concatenate([d[k] for d in draws]) for k in draws[0]}
    ours = model.to_table(model.activate(**noise)[:n])
    network = CTGANGenerator(network_from_checkpoint(read_checkpoint(wine.DEFAULT_DIR / "model.safetensors")))
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(noise["z"]), torch.from_numpy(noise["cond"])).numpy()
    torch_rows = model.to_table(_reference_activation(model, logits, noise)[:n])
    for name in model.columns:
        assert rows[name].tolist() == again[name].tolist() == ours[name].tolist(), name
        if name in wine.DISCRETE:
            assert rows[name].tolist() == torch_rows[name].tolist(), name
        else:
            np.testing.assert_allclose(rows[name], torch_rows[name], rtol=1e-5, atol=1e-5 * np.ptp(rows[name]))
    assert set(rows[wine.TARGET].tolist()) == {"class_0", "class_1", "class_2"}


def test_untrained_twin_has_the_architecture_and_not_the_weights(tmp_path):
    from safetensors.torch import load_file

    trained = load_file(wine.DEFAULT_DIR / "model.safetensors")
    twin = load_file(wine.untrained_checkpoint(wine.DEFAULT_DIR, tmp_path))
    assert {k: v.shape for k, v in twin.items()} == {k: v.shape for k, v in trained.items()}
    assert all(not torch.equal(twin[k], trained[k]) for k in trained if k.endswith("fc.weight"))


def test_card_figures_recompute_from_the_artifacts(artifacts, data):
    train, heldout = data
    n = _card_samples()
    figures = {}
    for name, model in artifacts.items():
        rows = model.sample_rows(n, seed=0)
        figures[name] = wine.quality(rows, heldout)
        figures[name]["class_1_share"] = wine.class_share(rows)
        figures[name]["class_1_share_conditioned"] = wine.class_share(
            model.sample_rows(n, seed=0, condition=train_script.CONDITION))
    figures["real"] = wine.quality(train, heldout)
    figures["real"]["class_1_share"] = wine.class_share(train)
    for label, key in train_script.MAIN_ROWS:
        expected = [figures[k][key] for k in ("trained", "untrained", "real")]
        np.testing.assert_allclose(_card_row(label), expected, atol=TOLERANCE, err_msg=label)
    for column in heldout.columns:
        expected = [figures[k]["column_similarity"][column] for k in ("trained", "untrained", "real")]
        np.testing.assert_allclose(_card_row(f"`{column}`"), expected, atol=TOLERANCE, err_msg=column)
    np.testing.assert_allclose(_card_row("share of rows with cultivar class_1, unconditioned"),
                               [figures[k]["class_1_share"] for k in ("trained", "untrained", "real")], atol=TOLERANCE)
    np.testing.assert_allclose(_card_row("share of rows with cultivar class_1, conditioned on it"),
                               [figures[k]["class_1_share_conditioned"] for k in ("trained", "untrained")],
                               atol=TOLERANCE)


def test_card_shows_trained_beats_untrained_and_conditioning_works():
    similarity, continuous, _, correlation, accuracy = (_card_row(label) for label, _ in train_script.MAIN_ROWS)
    assert similarity[0] > similarity[1] and continuous[0] > continuous[1], (similarity, continuous)
    assert correlation[0] < correlation[1], correlation
    assert accuracy[0] > accuracy[1] + 0.2, accuracy
    unconditioned = _card_row("share of rows with cultivar class_1, unconditioned")[0]
    conditioned = _card_row("share of rows with cultivar class_1, conditioned on it")[0]
    assert conditioned > unconditioned, (conditioned, unconditioned)


def test_card_says_how_it_was_made():
    assert "python models/train_wine_tabular.py" in CARD and "CC BY 4.0" in CARD and "toy" in CARD
    assert re.search(r"\d+ s\s+including the data transform's fit", CARD)


def test_metrics_against_scipy_and_by_hand(data):
    from scipy.stats import ks_2samp

    train, heldout = data
    for column in wine.continuous_columns(heldout)[:4]:
        assert wine.ks_statistic(train[column], heldout[column]) == pytest.approx(
            ks_2samp(train[column], heldout[column]).statistic, abs=1e-12)
    assert wine.total_variation(["a", "a", "b", "c"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert wine.correlation_distance(heldout, heldout) == 0.0
