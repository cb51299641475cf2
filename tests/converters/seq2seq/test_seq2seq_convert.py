"""HF encoder-decoder directories convert with no flags; int8 stays close to fp32; bad options are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.text.settings import GenerationSettings

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from seq2seq_support import PROMPTS, write_tiny_seq2seq  # noqa: E402


@pytest.fixture(scope="module")
def bart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("s2s-convert")
    hf = write_tiny_seq2seq(root / "hf", "bart")
    return hf, edgegen.convert(hf, root / "fp32")


def test_manifest_graphs_and_token_ids(bart: tuple[Path, Path]) -> None:
    from edgegen.runtimes.artifact import open_artifact

    m = open_artifact(bart[1]).manifest
    assert m.family == "seq2seq"
    assert set(m.graphs) == {"encoder", "decoder", "decoder_with_past"}
    assert {t.name for t in m.graphs["decoder_with_past"].inputs} >= {"input_ids", "encoder_attention_mask",
                                                                       "past_key_values.0.decoder.key",
                                                                       "past_key_values.1.encoder.value"}
    assert not any(".encoder." in t.name for t in m.graphs["decoder_with_past"].outputs)   # cross KV: once
    assert m.sampler == {"decoder_start_token_id": 2, "eos_token_ids": [2], "pad_token_id": 1,
                         "forced_eos_token_id": 2, "context_length": 64}
    assert "tokenizer" in m.assets and m.defaults["temperature"] == 0.0


def test_int8_fidelity(bart: tuple[Path, Path], tmp_path: Path) -> None:
    """int8 (dynamic MatMul weights): next-token logits stay within 5% of their range of fp32's (measured:
    see the report), and the artifacts' graphs are smaller."""
    q = edgegen.convert(bart[0], tmp_path / "int8", quantize="int8")
    fp, i8 = edgegen.load(bart[1], provider="cpu"), edgegen.load(q, provider="cpu")
    assert i8.artifact.manifest.graphs["decoder"].precision == "int8-dynamic"
    for prompt in PROMPTS:
        ids = fp.encode(prompt)
        a = _first_logits(fp, ids)
        b = _first_logits(i8, ids)
        assert np.abs(a - b).max() < 0.05 * (a.max() - a.min()), prompt
    assert i8.generate_ids(fp.encode(PROMPTS[0]), GenerationSettings(max_new_tokens=4, temperature=0))


def _first_logits(model, ids: list[int]) -> np.ndarray:  # noqa: ANN001
    from edgegen.runtimes.seq2seq.seq2seq import _Stepper

    hidden, mask = model._encode(np.asarray([ids], dtype=np.int64))
    step = _Stepper(model, hidden, mask)
    step(np.array([[model.sampler.decoder_start_token_id]]), None)
    return step(np.array([[5]]), None)[0]


def test_bad_quantize_is_refused(bart: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="seq2seq artifacts take --quantize none or int8"):
        edgegen.convert(bart[0], tmp_path / "x", quantize="int4")
    with pytest.raises(InvalidArgumentError, match="attention"):
        edgegen.convert(bart[0], tmp_path / "x", attention="gqa")


def test_cli_generate(bart: tuple[Path, Path]) -> None:
    from edgegen.cli import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["generate", str(bart[1]), "-p", PROMPTS[0], "--max-new-tokens", "5"])
    assert ok.exit_code == 0, ok.output
    expected = edgegen.load(bart[1], provider="cpu").generate(PROMPTS[0], GenerationSettings(max_new_tokens=5))
    assert ok.output.strip() == expected.strip()
    bad = runner.invoke(cli, ["generate", str(bart[1]), "-p", "  "])
    assert bad.exit_code == 1 and "prompt is empty" in bad.output and "Traceback" not in bad.output
