"""Tabular artifacts against ctgan itself: ctgan's own ``sample`` with its draws recorded, and the runtime fed
those draws, give the same rows (continuous columns to 1e-5 relative, categories exactly)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ctgan")

import edgegen  # noqa: E402
from tabular_support import DISCRETE, ctgan_noise, recorded, same_rows  # noqa: E402


def _spans(model) -> int:
    """How many Gumbel-softmax calls ctgan makes per block: one per continuous column's components, one per
    discrete column."""
    return len(model.sampler.columns)


@pytest.mark.parametrize("n", [7, 60, 131])
def test_ctgan_sample_equals_ctgan(tiny_tabular, n):
    fitted, path = tiny_tabular["ctgan"]
    model = edgegen.load(path)
    with recorded(fitted) as draws:
        frame = fitted.sample(n)
    assert len(draws["z"]) == n // 60 + 1          # ctgan's own block count: n // batch + 1
    noise = ctgan_noise(draws, _spans(model))
    ours = model.to_table(model.activate(**noise)[:n])
    same_rows(ours, frame, DISCRETE)


def test_ctgan_condition_on_first_discrete_column_equals_ctgan(tiny_tabular):
    fitted, path = tiny_tabular["ctgan"]
    model = edgegen.load(path)
    with recorded(fitted) as draws:
        frame = fitted.sample(90, condition_column="color", condition_value="green")
    assert not draws["cond"]                        # conditioned: no condition vector drawn
    noise = ctgan_noise(draws, _spans(model))
    noise["cond"] = np.tile(model.condition_vector({"color": "green"}), (len(noise["z"]), 1))
    same_rows(model.to_table(model.activate(**noise)[:90]), frame, DISCRETE)


def test_ctgan_condition_on_later_column_is_ctgan_with_its_fix(tiny_tabular):
    """ctgan 0.12 puts the one-hot at the value's index from the first discrete column (sdv-dev/CTGAN#169);
    edgegen conditions on the named column: the same rows as ctgan with _discrete_column_matrix_st filled."""
    fitted, path = tiny_tabular["ctgan"]
    model = edgegen.load(path)
    sampler = fitted._data_sampler
    ours_vec = model.condition_vector({"grade": 3})
    buggy = sampler.generate_cond_from_condition_column_info(
        fitted._transformer.convert_column_name_value_to_id("grade", 3), 1)[0]
    assert np.flatnonzero(buggy)[0] < 3 <= np.flatnonzero(ours_vec)[0]   # ctgan's bit lands in color's range
    saved = sampler._discrete_column_matrix_st.copy()
    sampler._discrete_column_matrix_st = sampler._discrete_column_cond_st.copy()
    try:
        np.testing.assert_array_equal(sampler.generate_cond_from_condition_column_info(
            fitted._transformer.convert_column_name_value_to_id("grade", 3), 1)[0], ours_vec)
        with recorded(fitted) as draws:
            frame = fitted.sample(50, condition_column="grade", condition_value=3)
    finally:
        sampler._discrete_column_matrix_st = saved
    noise = ctgan_noise(draws, _spans(model))
    noise["cond"] = np.tile(ours_vec, (len(noise["z"]), 1))
    same_rows(model.to_table(model.activate(**noise)[:50]), frame, DISCRETE)


@pytest.mark.parametrize("n", [5, 121])
def test_tvae_sample_equals_ctgan(tiny_tabular, n):
    fitted, path = tiny_tabular["tvae"]
    model = edgegen.load(path)
    with recorded(fitted) as draws:
        frame = fitted.sample(n)
    z = np.concatenate(draws["z"])
    eps = np.zeros((len(z), len(draws["eps"])))
    eps[:n] = np.stack(draws["eps"], axis=1)        # ctgan adds noise to the n rows it keeps
    same_rows(model.to_table(model.activate(z, eps=eps)[:n]), frame, DISCRETE)


def test_validation_figures_recorded(tiny_tabular):
    for kind in ("ctgan", "tvae"):
        v = edgegen.load(tiny_tabular[kind][1]).artifact.manifest.validation
        assert v["reference"] == "ctgan DataTransformer.inverse_transform"
        assert v["continuous_max_rel_error"] <= 1e-5 and v["categories_differing"] == 0
        assert all(e <= 1e-4 for e in v["graph_max_abs_error"].values())


def test_checkpoint_round_trip_gives_the_same_artifact_rows(tiny_tabular, tmp_path):
    from edgegen.converters.tabular import TabularSpec, save_checkpoint

    for kind in ("ctgan", "tvae"):
        fitted, path = tiny_tabular[kind]
        save_checkpoint(fitted, tmp_path / kind)
        spec = TabularSpec.from_checkpoint(tmp_path / kind)
        again = edgegen.convert(spec, tmp_path / f"{kind}-art")
        a = edgegen.load(path).sample_rows(150, seed=4)
        b = edgegen.load(again).sample_rows(150, seed=4)
        for name in a.columns:
            assert a[name].tolist() == b[name].tolist()
        manifest = edgegen.load(again).artifact.manifest
        assert manifest.source.checkpoint_sha256 == spec.checkpoint_sha256
        assert manifest.validation["reference"].startswith("PyTorch")


def test_cli_converts_a_checkpoint_directory_and_refuses_pickles(tiny_tabular, tmp_path):
    from click.testing import CliRunner

    from edgegen.cli import cli
    from edgegen.converters.tabular import save_checkpoint

    fitted, path = tiny_tabular["ctgan"]
    save_checkpoint(fitted, tmp_path / "ckpt")
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "ckpt"), "-o", str(tmp_path / "art")])
    assert result.exit_code == 0, result.output
    a, b = edgegen.load(path).sample_rows(50, seed=1), edgegen.load(tmp_path / "art").sample_rows(50, seed=1)
    assert all(a[k].tolist() == b[k].tolist() for k in a.columns)
    fitted.save(str(tmp_path / "model.pkl"))           # ctgan's own save: a torch pickle
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "model.pkl"), "-o", str(tmp_path / "never")])
    assert result.exit_code == 1 and "is a pickle" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "ckpt"), "-o", str(tmp_path / "q"), "-q", "int8"])
    assert result.exit_code == 1 and "kept in fp32" in result.output
