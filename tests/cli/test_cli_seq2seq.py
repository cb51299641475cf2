"""``edgegen generate`` on seq2seq artifacts: the beam flags give transformers' ``generate(num_beams=...)`` text;
causal-LM artifacts refuse them in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegen.cli import cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")

from seq2seq_support import PROMPTS, write_tiny_seq2seq  # noqa: E402

#: CLI flags -> transformers' generate keywords (marian's tiny model ends beams mid-sequence, t5's runs long)
CASES = [(["--num-beams", "3"], dict(num_beams=3)),
         (["--num-beams", "4", "--length-penalty", "2.0", "--early-stopping"],
          dict(num_beams=4, length_penalty=2.0, early_stopping=True)),
         (["--num-beams", "4", "--length-penalty", "-1", "--no-early-stopping", "--no-repeat-ngram-size", "2"],
          dict(num_beams=4, length_penalty=-1.0, early_stopping=False, no_repeat_ngram_size=2))]


@pytest.fixture(scope="module", params=("t5", "marian"))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    import edgegen

    root = tmp_path_factory.mktemp(f"cli-s2s-{request.param}")
    hf = write_tiny_seq2seq(root / "hf", request.param)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(hf).eval()
    return edgegen.convert(hf, root / "artifact"), model, transformers.AutoTokenizer.from_pretrained(hf)


def _reference(model, tok, prompt: str, max_new_tokens: int, **kw) -> str:  # noqa: ANN001
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=max_new_tokens, do_sample=False, **kw)
    return tok.decode(out[0], skip_special_tokens=True)


@pytest.mark.parametrize(("flags", "kw"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else "")
def test_beam_flags_match_transformers(pair, flags: list[str], kw: dict) -> None:  # noqa: ANN001
    artifact, model, tok = pair
    runner = CliRunner()
    for prompt in PROMPTS[:3]:
        got = runner.invoke(cli, ["generate", str(artifact), "-p", prompt, "-n", "10", "-t", "0", *flags])
        assert got.exit_code == 0, got.output
        assert got.output == _reference(model, tok, prompt, 10, **kw) + "\n", (prompt, flags)
    greedy = runner.invoke(cli, ["generate", str(artifact), "-p", PROMPTS[1], "-n", "10", "--num-beams", "1"])
    assert greedy.output == _reference(model, tok, PROMPTS[1], 10, num_beams=1) + "\n"


def test_bad_beam_settings_are_one_line(pair) -> None:  # noqa: ANN001
    artifact, _, _ = pair
    runner = CliRunner()
    zero = runner.invoke(cli, ["generate", str(artifact), "-p", "hello", "--num-beams", "0"])
    assert zero.exit_code == 2 and "--num-beams" in zero.output
    sampled = runner.invoke(cli, ["generate", str(artifact), "-p", "hello", "--num-beams", "2", "-t", "0.8"])
    assert sampled.exit_code == 1 and "beam search is deterministic" in sampled.output
    assert "Traceback" not in sampled.output and len(sampled.output.strip().splitlines()) == 1


def test_causal_lm_refuses_beam_flags(tiny_lm_artifact: Path) -> None:
    got = CliRunner().invoke(cli, ["generate", str(tiny_lm_artifact), "-p", "hi", "--num-beams", "2",
                                   "--no-repeat-ngram-size", "3"])
    assert got.exit_code == 1, got.output
    assert "--num-beams, --no-repeat-ngram-size (beam search) apply to seq2seq artifacts" in got.output
    assert "'causal-lm'" in got.output and len(got.output.strip().splitlines()) == 1
