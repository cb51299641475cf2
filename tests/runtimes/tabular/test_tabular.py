"""The tabular runtime on its own terms: seeds, blocks, conditions, writers, hostile manifests and checkpoints,
and ``edgegen sample`` on tabular artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("ctgan")

import edgegen  # noqa: E402
from edgegen.cli import cli  # noqa: E402
from edgegen.errors import InvalidArgumentError, ManifestError  # noqa: E402
from tabular_support import table  # noqa: E402


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *parts):
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "Traceback" not in result.output, result.output
    for part in parts:
        assert part in last, last


@pytest.fixture(scope="module")
def ctgan_model(tiny_tabular):
    return edgegen.load(tiny_tabular["ctgan"][1])


@pytest.fixture(scope="module")
def tvae_model(tiny_tabular):
    return edgegen.load(tiny_tabular["tvae"][1])


def _same(a, b):
    return a.columns == b.columns and all(a[k].tolist() == b[k].tolist() for k in a.columns)


@pytest.mark.parametrize("kind", ["ctgan", "tvae"])
def test_same_seed_same_rows_and_prefixes(tiny_tabular, kind):
    model = edgegen.load(tiny_tabular[kind][1])
    a, b = model.sample_rows(200, seed=3), model.sample_rows(200, seed=3)
    assert _same(a, b) and len(a) == 200
    assert _same(model.sample_rows(77, seed=3), a.head(77))       # drawn block by block: a prefix
    assert not _same(model.sample_rows(200, seed=4), a)


def test_columns_come_back_in_the_training_dtypes(ctgan_model, tiny_tabular):
    fitted = tiny_tabular["ctgan"][0]
    frame = ctgan_model.sample_rows(300, seed=0).to_pandas()
    assert list(frame.columns) == list(table().columns)
    assert frame.dtypes.astype(str).tolist() == fitted.sample(5).dtypes.astype(str).tolist()
    assert set(frame["color"]) <= {"red", "green", "blue"} and set(frame["grade"]) <= {1, 2, 3, 4}
    assert set(frame["size"].map(lambda v: None if v is None or v != v else v)) <= {"small", "large", None}


def test_condition_raises_the_value_share(ctgan_model):
    plain = ctgan_model.sample_rows(600, seed=0)
    held = ctgan_model.sample_rows(600, seed=0, condition={"color": "blue"})
    share = lambda t: float(np.mean(t["color"] == "blue"))   # noqa: E731
    assert share(held) > share(plain)
    # the value may be given as text (the command line's), or typed
    assert _same(ctgan_model.sample_rows(60, seed=1, condition={"grade": "3"}),
                 ctgan_model.sample_rows(60, seed=1, condition={"grade": 3}))
    assert _same(ctgan_model.sample_rows(60, seed=1, condition={"flag": "True"}),
                 ctgan_model.sample_rows(60, seed=1, condition={"flag": True}))


@pytest.mark.parametrize("condition, message", [
    ({"nope": "x"}, "no column 'nope'"),
    ({"x": 1.0}, "column 'x' is continuous"),
    ({"color": "pink"}, "has no value 'pink'"),
    ({"color": "red", "grade": 1}, "one discrete column"),
])
def test_bad_conditions_name_the_problem(ctgan_model, condition, message):
    with pytest.raises(InvalidArgumentError, match=message):
        ctgan_model.sample_rows(5, condition=condition)


def test_tvae_takes_no_condition(tvae_model):
    with pytest.raises(InvalidArgumentError, match="takes no condition"):
        tvae_model.sample_rows(5, condition={"color": "red"})


@pytest.mark.parametrize("n", [0, -1, 2.5, True, 1 << 40])
def test_bad_row_counts(ctgan_model, n):
    with pytest.raises(InvalidArgumentError, match="number of rows"):
        ctgan_model.sample_rows(n)


def test_generator_runs_whole_blocks_only(ctgan_model):
    s = ctgan_model.sampler
    with pytest.raises(InvalidArgumentError, match="whole blocks"):
        ctgan_model.logits(np.zeros((s.block_rows + 1, s.embedding_dim), np.float32),
                           np.zeros((s.block_rows + 1, s.condition_dim), np.float32))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_writers_round_trip(ctgan_model, tmp_path, suffix):
    import pandas as pd

    rows = ctgan_model.sample_rows(120, seed=2)
    path = rows.write(tmp_path / f"rows{suffix}")
    back = {".csv": lambda p: pd.read_csv(p, float_precision="round_trip"),      # pandas' exact parsers
            ".jsonl": lambda p: pd.read_json(p, lines=True, precise_float=True),
            ".parquet": pd.read_parquet}[suffix](path)
    assert list(back.columns) == rows.columns and len(back) == 120
    np.testing.assert_array_equal(back["x"].to_numpy(), rows["x"])         # floats written exactly
    assert back["age"].tolist() == rows["age"].tolist() and back["color"].tolist() == rows["color"].tolist()
    assert [None if v != v else v for v in back["size"].tolist()] == rows["size"].tolist()
    assert not list(tmp_path.glob(".*tmp"))


def test_unknown_suffix_refused(ctgan_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match="CSV, JSON lines or Parquet"):
        ctgan_model.sample_rows(3).write(tmp_path / "rows.xlsx")


# -- hostile manifests ------------------------------------------------------------------------------------------
def _tampered(tiny_tabular, tmp_path, change):
    art = tmp_path / "art"
    shutil.copytree(tiny_tabular["ctgan"][1], art)
    manifest = json.loads((art / "edgegen.json").read_text())
    change(manifest["sampler"])
    (art / "edgegen.json").write_text(json.dumps(manifest))
    return art


@pytest.mark.parametrize("change, message", [
    (lambda s: s["columns"][0].update(stds=[-1.0] * len(s["columns"][0]["stds"])), "stds"),
    (lambda s: s["columns"][2].update(categories=[{"a": 1}, "b", "c"]), "categories"),
    (lambda s: s["columns"][1].update(name=s["columns"][0]["name"]), "unique"),
    (lambda s: s["condition_probabilities"][0].__setitem__(0, 5.0), "condition_probabilities"),
    (lambda s: s.update(block_rows=0), "block_rows"),
    (lambda s: s["columns"][0].update(dtype="datetime64[ns]"), "dtype"),
    (lambda s: (s["columns"][2]["categories"].append("extra"), s["condition_probabilities"][0].append(0.0)), "[batch,"),
    (lambda s: s.update(model="gan"), "model"),
])
def test_tampered_sampler_refused_in_one_line(tiny_tabular, tmp_path, change, message):
    art = _tampered(tiny_tabular, tmp_path, change)
    with pytest.raises(ManifestError, match=message.replace("[", r"\[")) as caught:
        edgegen.load(art)
    assert "\n" not in str(caught.value)
    one_line_error(run("sample", art, "-o", tmp_path / "r.csv"))


# -- checkpoints ----------------------------------------------------------------------------------------------------
def test_hostile_checkpoints_refused(tiny_tabular, tmp_path):
    import torch
    from safetensors.torch import save_file

    from edgegen.converters.tabular import TabularSpec, save_checkpoint

    with pytest.raises(InvalidArgumentError, match="no such file"):
        TabularSpec.from_checkpoint(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(InvalidArgumentError, match="not a readable safetensors"):
        TabularSpec.from_checkpoint(tmp_path / "junk")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InvalidArgumentError, match="not an edgegen tabular checkpoint"):
        TabularSpec.from_checkpoint(tmp_path / "other.safetensors")
    good = save_checkpoint(tiny_tabular["ctgan"][0], tmp_path / "good")
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["output.weight"] = tensors["output.weight"][:, :-1].contiguous()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(InvalidArgumentError, match="output.weight"):
        TabularSpec.from_checkpoint(tmp_path / "bad.safetensors")
    save_file({}, str(tmp_path / "meta.safetensors"), metadata={**meta, "sampler": '{"model": "ctgan"'})
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        TabularSpec.from_checkpoint(tmp_path / "meta.safetensors")


def test_spec_refusals():
    from ctgan import CTGAN

    from edgegen.converters.tabular import TabularSpec
    from edgegen.errors import ConversionError, UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="fitted ctgan.CTGAN"):
        TabularSpec(model=object())
    with pytest.raises(InvalidArgumentError, match="model="):
        TabularSpec()
    with pytest.raises(ConversionError, match="has not been fitted"):
        edgegen.convert(TabularSpec(model=CTGAN()), "/tmp/never-written-tabular")


# -- the command line -------------------------------------------------------------------------------------------------
def test_cli_sample_rows(tiny_tabular, tmp_path):
    art = tiny_tabular["ctgan"][1]
    out = tmp_path / "rows.csv"
    result = run("sample", art, "-n", 250, "--seed", 5, "-o", out, "--condition", "color=green")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    expected = edgegen.load(art).sample_rows(250, seed=5, condition={"color": "green"})
    assert out.read_text() == expected.to_csv()
    result = run("sample", art, "-n", 10, "-o", tmp_path / "rows.parquet", "--json")
    assert json.loads(result.output)["rows"] == 10


@pytest.mark.parametrize("args, message", [
    (["-o", "rows.png"], "CSV, JSON lines or Parquet"),
    (["-o", "rows.csv", "--upscale", "2"], "--upscale applies to image artifacts"),
    (["-o", "rows.csv", "--steps", "3"], "--steps applies to image artifacts"),
    (["-o", "rows.csv", "--condition", "color"], "COLUMN=VALUE"),
    (["-o", "rows.csv", "--condition", "color=pink"], "no value 'pink'"),
])
def test_cli_bad_tabular_options(tiny_tabular, tmp_path, args, message):
    args = [a if not a.startswith("rows.") else tmp_path / a for a in args]
    one_line_error(run("sample", tiny_tabular["ctgan"][1], *args), message)


def test_cli_condition_refused_for_images(tmp_path):
    import image_support  # noqa: F401  (only for the fixture-free check below)

    art = tmp_path / "a"
    from tests_support import write_tiny_artifact

    write_tiny_artifact(art)
    one_line_error(run("sample", art, "-o", tmp_path / "x.png", "--condition", "a=b"), "--condition applies to "
                   "tabular artifacts")


def test_info_lists_columns(tiny_tabular):
    result = run("info", tiny_tabular["ctgan"][1])
    assert "columns    ctgan: x (float64" in result.output and "color (object, 3 values)" in result.output


def test_load_and_sample_import_no_torch_or_pandas(tiny_tabular, tmp_path):
    import subprocess
    import sys

    code = f"""
import sys, edgegen
m = edgegen.load({str(tiny_tabular['ctgan'][1])!r})
m.sample_rows(50, seed=0).write({str(tmp_path / 'r.csv')!r})
print(sorted(x for x in ("torch", "pandas", "ctgan", "rdt", "pyarrow") if x in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("kind", ["ctgan", "tvae"])
def test_parts_drawn_from_first_row_make_the_whole(tiny_tabular, kind):
    """Each block has its own stream: rows drawn in parts (as batch jobs do) equal one call's rows, bit for bit
    where parts start at multiples of part_rows (the rows of one ONNX Runtime run), else to float rounding (ctgan's
    BatchNorm means are reduced over however many blocks a run holds)."""
    from edgegen.runtimes.tabular.table import Table

    model = edgegen.load(tiny_tabular[kind][1])
    bs, run_rows = model.sampler.block_rows, model.part_rows
    assert run_rows % bs == 0
    whole = model.sample_rows(2 * run_rows + bs, seed=9)
    parts = [model.sample_rows(run_rows, seed=9), model.sample_rows(run_rows + bs, seed=9, first_row=run_rows)]
    assert _same(Table.concat(parts), whole)
    odd = Table.concat([model.sample_rows(2 * bs, seed=9), model.sample_rows(bs, seed=9, first_row=2 * bs)])
    for name in odd.columns:
        if name in ("x", "age"):
            np.testing.assert_allclose(odd[name], whole[name][:3 * bs], rtol=1e-5, atol=1)
        else:
            assert odd[name].tolist() == whole[name][:3 * bs].tolist()
    with pytest.raises(InvalidArgumentError, match="multiple of the model's block"):
        model.sample_rows(3, first_row=bs + 1)


def test_seedless_sampling_differs(ctgan_model):
    assert not _same(ctgan_model.sample_rows(30), ctgan_model.sample_rows(30))


def test_missing_output_folder_named(ctgan_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"no-such: no such folder"):
        ctgan_model.sample_rows(3).write(tmp_path / "no-such" / "rows.csv")
    assert not (tmp_path / "no-such").exists()
