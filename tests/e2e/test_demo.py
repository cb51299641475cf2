"""The README's main job: `edgegen demo` converts the bundled models and generates from them, offline,
and a second run reuses the artifacts."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegen.cli import cli
from edgegen.demo import BUNDLED, REPO_MODELS

pytestmark = pytest.mark.slow


def test_demo_converts_generates_and_reuses(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    runner = CliRunner()
    first = runner.invoke(cli, ["demo", "--out", str(tmp_path), "--provider", "cpu", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    for item in BUNDLED:
        entry = report["models"][item.name]
        assert not entry["reused"] and Path(entry["artifact"], "edgegen.json").is_file()
    code = (tmp_path / "pycode.txt").read_text(encoding="utf-8")
    assert code.startswith("# greedy, repetition penalty 1.3\ndef fibonacci(n):\n") and len(code) > 200
    assert report["models"]["pycode"]["decode_tokens_per_s"] > 0
    assert (tmp_path / "charlstm.txt").read_text(encoding="utf-8").count("# temperature 0.8") == 3
    from PIL import Image

    grids = [entry["output"] for entry in report["models"].values() if entry["output"].endswith(".png")]
    assert len(grids) >= 1
    for grid in grids:                  # ten rows of ten 8x8 digits, 2 px padding, upscaled 4x
        with Image.open(grid) as img:
            assert img.size == (4 * (10 * 8 + 11 * 2),) * 2, grid
    speech = report["models"]["speech"]
    assert speech["phrases"] == 3 and speech["audio_s"] > 1.0 and speech["real_time_factor"] > 0
    for i in range(3):                   # the voice's phrases: 16 kHz WAVs with their spectrograms
        with wave.open(str(tmp_path / f"speech_{i}.wav"), "rb") as wav:
            assert wav.getframerate() == 16000 and wav.getnframes() > 1600
        assert (tmp_path / f"speech_{i}.spectrogram.png").is_file()
    second = runner.invoke(cli, ["demo", "--out", str(tmp_path), "--provider", "cpu", "--json"])
    assert second.exit_code == 0, second.output
    assert all(entry["reused"] for entry in json.loads(second.stdout)["models"].values())


def test_demo_without_the_models_folder_says_how_to_fix_it(tmp_path: Path) -> None:
    from edgegen.demo import run_demo
    from edgegen.errors import EdgegenError

    with pytest.raises(EdgegenError, match="models/ folder .* pass --models"):
        run_demo(tmp_path / "out", tmp_path / "no-models", say=lambda _line: None)
    assert REPO_MODELS.name == "models"
