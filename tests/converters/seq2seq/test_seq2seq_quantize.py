"""int8 seq2seq artifacts record their fidelity against fp32, measured on the graphs they ship; the gate refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen
from edgegen.errors import UnsupportedModelError

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from seq2seq_support import write_tiny_seq2seq  # noqa: E402


@pytest.fixture(scope="module", params=("t5", "bart"))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp(f"s2s-q-{request.param}")
    hf = write_tiny_seq2seq(root / "hf", request.param)
    lines: list[str] = []
    int8 = edgegen.convert(hf, root / "int8", quantize="int8", report=lines.append)
    return request.param, hf, edgegen.convert(hf, root / "fp32"), int8, lines


def test_int8_records_fidelity_of_the_graphs_it_ships(converted) -> None:  # noqa: ANN001
    from edgegen.converters.seq2seq.quantize import MAX_LOGITS_ERROR_PCT, fidelity

    kind, _, fp32, int8, lines = converted
    m = edgegen.load(int8, provider="cpu")
    assert {g.precision for g in m.artifact.manifest.graphs.values()} == {"int8-dynamic"}
    q = m.artifact.manifest.validation["quantization"]
    assert q["max_logits_error_pct"] == MAX_LOGITS_ERROR_PCT
    assert q["logits_error_pct"] <= MAX_LOGITS_ERROR_PCT and q["attempts"][-1]["logits_error_pct"] == \
        q["logits_error_pct"]
    assert q["positions"] == q["greedy_tokens"] > 0 and 0 <= q["greedy_agreement"] <= 1
    # the record is what the shipped graphs give against a separately converted fp32 artifact (same export)
    again = fidelity(edgegen.load(fp32, provider="cpu"), m)
    for name in ("logits_error_pct", "logits_error_pct_max", "top1_agreement", "greedy_agreement"):
        assert again[name] == pytest.approx(q[name], abs=1e-3), name
    assert any("quantize int8 (attempt 1)" in line for line in lines)
    if kind == "t5":   # the fp32-sensitive feed-forward output and the head stay float at every attempt
        kept = q["excluded_nodes"]["decoder"]
        assert any("DenseReluDense/wo" in n for n in kept) and any("lm_head" in n for n in kept)
        assert any("DenseReluDense/wo" in n for n in q["excluded_nodes"]["encoder"])


def test_gate_refuses_and_writes_nothing(converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import edgegen.converters.seq2seq.quantize as quantize

    kind, hf, _, _, _ = converted
    monkeypatch.setattr(quantize, "MAX_LOGITS_ERROR_PCT", 1e-6)   # below any int8 error: both attempts miss
    with pytest.raises(UnsupportedModelError, match=r"int8 misses the seq2seq quality gate: next-token logits off "
                                                    r"by [0-9.]+% .*gate 1e-06%.*after 2 attempts.*-q none") as err:
        edgegen.convert(hf, tmp_path / "int8", quantize="int8")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "int8").exists()
