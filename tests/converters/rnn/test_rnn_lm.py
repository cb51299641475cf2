"""The rnn-lm family: a tiny random CharLSTM converted with convert_rnn_lm and run by RNNLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import open_artifact
from edgegen import GenerationSettings
from edgegen.runtimes.session import SessionConfig
from tests_support import load_models_file, train_tiny_tokenizer

torch = pytest.importorskip("torch")

from edgegen.converters.rnn.convert import convert_rnn_lm  # noqa: E402
from edgegen.converters.rnn.spec import RNNLMSpec  # noqa: E402
from edgegen.runtimes.rnn.rnn_lm import RNNLM  # noqa: E402

PROMPTS = ["def fibonacci(n):", "The quick brown fox", "import os\n"]
#: Plain greedy: the artifact's default repetition penalty is switched off explicitly.
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=32, ignore_eos=True, repetition_penalty=1.0)


def tiny_lstm(seed: int = 0):
    charlstm = load_models_file("charlstm")
    torch.manual_seed(seed)
    model = charlstm.CharLSTM(charlstm.LSTMConfig(vocab_size=320, n_embd=32, hidden=48, n_layer=2)).eval()
    with torch.no_grad():  # decisive logits, and recurrent dynamics that do not settle on one token
        model.embed.weight.mul_(4.0)
        model.head.weight.mul_(5.0)
        for name, p in model.lstm.named_parameters():
            if name.startswith("weight"):
                p.mul_(4.0)
    return model


def spec_for(model, **overrides) -> RNNLMSpec:
    args = dict(module=model, tokenizer=train_tiny_tokenizer(), state_shapes=model.state_shapes,
                eos_token_ids=(0,), pad_token_id=0,
                defaults={"temperature": 0.8, "top_k": 40, "repetition_penalty": 1.5})
    return RNNLMSpec(**{**args, **overrides})


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    model = tiny_lstm()
    path = convert_rnn_lm(spec_for(model), tmp_path_factory.mktemp("rnn") / "artifact", report=lambda _m: None)
    lm = RNNLM.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))
    return model, path, lm


def test_manifest_records_family_sampler_and_validation(converted) -> None:
    model, path, lm = converted
    manifest = json.loads((path / "edgegen.json").read_text())
    assert manifest["family"] == "rnn-lm"
    assert set(manifest["graphs"]) == {"step"} and set(manifest["assets"]) == {"tokenizer"}
    assert manifest["sampler"]["state_shapes"] == [[2, 48], [2, 48]]
    assert manifest["sampler"]["eos_token_ids"] == [0]
    v = manifest["validation"]
    assert v["passed"] and v["greedy_identical"] and v["max_abs_logits_error"] < 1e-4
    assert abs(v["nll_delta"]) < 1e-3
    assert lm.family == "rnn-lm" and lm.sampler.state_shapes == ((2, 48), (2, 48))
    assert not list(path.parent.glob(".*edgegen-tmp*"))


def test_greedy_tokens_equal_a_torch_greedy_loop(converted) -> None:
    model, _path, lm = converted
    for prompt in PROMPTS:
        got = lm.complete([prompt], GREEDY)[0]
        want = model.generate(lm.encode(prompt), 32)
        assert list(got.token_ids) == want
        assert len(set(want)) > 3   # the test model does not just repeat one token
        assert got.finish_reason == "length"


def test_step_by_step_state_path_equals_full_sequence_forward(converted) -> None:
    model, _path, lm = converted
    ids = lm.encode("def fibonacci(n):\n    return n")
    with torch.no_grad():
        want = model(torch.tensor([ids]), *model.zero_states(1))[0][0].numpy()    # [T, V]
    states = lm.graph.zero_states(1)
    got = []
    for token in ids:
        logits, states = lm.graph.step(np.array([[token]], dtype=np.int64), states)
        got.append(logits[0, -1])
    np.testing.assert_allclose(np.stack(got), want, atol=1e-5, rtol=0)
    # Chunks of any length continue the state the same way.
    logits_a, states = lm.graph.step(np.array([ids[:5]], dtype=np.int64), lm.graph.zero_states(1))
    logits_b, _ = lm.graph.step(np.array([ids[5:]], dtype=np.int64), states)
    np.testing.assert_allclose(np.concatenate([logits_a[0], logits_b[0]]), want, atol=1e-5, rtol=0)


def test_batch_equals_each_prompt_alone(converted) -> None:
    _model, _path, lm = converted
    alone = [lm.complete([p], GREEDY)[0] for p in PROMPTS]
    batch = lm.complete(PROMPTS, GREEDY)
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]
    assert [c.text for c in batch] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batch] == [len(lm.encode(p)) for p in PROMPTS]


def test_seed_reproducibility_and_streaming(converted) -> None:
    _model, _path, lm = converted
    settings = GenerationSettings(temperature=1.0, top_k=50, max_new_tokens=24, seed=7)
    first = lm.complete(PROMPTS, settings)
    again = lm.complete(PROMPTS, settings)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    other = lm.complete(PROMPTS, GenerationSettings(temperature=1.0, top_k=50, max_new_tokens=24, seed=8))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]
    one = lm.generate(PROMPTS[0], settings)
    assert "".join(lm.stream(PROMPTS[0], settings)) == one
    assert lm.generate(PROMPTS[0], max_new_tokens=24, temperature=1.0, seed=7) == \
        lm.generate(PROMPTS[0], max_new_tokens=24, temperature=1.0, seed=7)


def test_stop_string_cuts_the_text(converted) -> None:
    _model, _path, lm = converted
    base = GREEDY
    full = lm.complete([PROMPTS[1]], base)[0].text
    stop = next(full[i:i + 2] for i in range(3, len(full) - 2)
                if full[i:i + 2].strip() and "\ufffd" not in full[i:i + 2])
    assert full.find(stop) >= 3   # the cut leaves some text
    cut = lm.complete([PROMPTS[1]], GenerationSettings(stop=(stop,)).over(base))[0]
    assert cut.text == full[:full.find(stop)]
    assert cut.finish_reason == "stop"
    pieces: list[tuple[int, str]] = []
    lm.complete([PROMPTS[1]], GenerationSettings(stop=(stop,)).over(base), on_text=lambda r, p: pieces.append((r, p)))
    assert "".join(p for _r, p in pieces) == cut.text


def test_bad_settings_and_prompts_are_clear_errors(converted) -> None:
    _model, _path, lm = converted
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        lm.generate("hi", max_new_tokens=0)
    with pytest.raises(InvalidArgumentError, match="empty"):
        lm.generate("")


def test_runtime_does_not_import_torch() -> None:
    code = "import edgegen.runtimes.rnn.rnn_lm, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_manifest_without_step_graph_is_a_manifest_error(converted, tmp_path: Path) -> None:
    import shutil

    _model, path, _lm = converted
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    manifest = json.loads((broken / "edgegen.json").read_text())
    manifest["graphs"]["decoder"] = manifest["graphs"].pop("step")
    (broken / "edgegen.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'step' graph"):
        RNNLM.from_artifact(open_artifact(broken), SessionConfig(provider="cpu"))


def test_spec_validation_and_checkpoint_roundtrip(tmp_path: Path) -> None:
    charlstm = load_models_file("charlstm")
    model = tiny_lstm(seed=1)
    with pytest.raises(InvalidArgumentError, match="state_shapes"):
        spec_for(model, state_shapes=())
    with pytest.raises(InvalidArgumentError, match="unknown settings"):
        spec_for(model, defaults={"temperatur": 1.0})
    model.save_checkpoint(tmp_path / "lstm.safetensors")
    loaded = charlstm.CharLSTM.from_checkpoint(tmp_path / "lstm.safetensors")
    assert loaded.config == model.config
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids, *loaded.zero_states(1))[0], model(ids, *model.zero_states(1))[0])


class TinyGRU(torch.nn.Module):
    """A one-state (GRU) module behind the same contract: logits, h = module(input_ids, h [B, L, H])."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(320, 16)
        self.gru = torch.nn.GRU(16, 24, num_layers=1, batch_first=True)
        self.head = torch.nn.Linear(24, 320)

    def forward(self, input_ids, h):
        out, h_new = self.gru(self.embed(input_ids), h.transpose(0, 1).contiguous())
        return self.head(out), h_new.transpose(0, 1)


def test_a_gru_with_one_state_converts_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyGRU().eval()
    spec = RNNLMSpec(module=model, tokenizer=train_tiny_tokenizer(), state_shapes=((1, 24),), eos_token_ids=(0,))
    path = convert_rnn_lm(spec, tmp_path / "gru", report=lambda _m: None)
    lm = RNNLM.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))
    assert lm.sampler.state_shapes == ((1, 24),)
    ids = lm.encode(PROMPTS[0])
    with torch.no_grad():
        want = model(torch.tensor([ids]), torch.zeros(1, 1, 24))[0][0].numpy()
    np.testing.assert_allclose(lm.graph.full_logits(np.array([ids]))[0], want, atol=1e-5, rtol=0)


def test_public_api_and_cli_route_rnn_specs_to_the_rnn_lm_family(tmp_path: Path) -> None:
    import edgegen
    from edgegen.errors import InvalidArgumentError as BadArgument

    spec = spec_for(tiny_lstm())
    lm = edgegen.load(edgegen.convert(spec, tmp_path / "a"), provider="cpu")
    assert lm.family == "rnn-lm" and lm.artifact.manifest.validation["greedy_identical"]
    with pytest.raises(BadArgument, match="rnn-lm artifacts are fp32: recurrent step graphs are not quantized yet"):
        edgegen.convert(spec, tmp_path / "b", quantize="int8")
    assert not (tmp_path / "b").exists()
    from click.testing import CliRunner

    from edgegen.cli import cli

    result = CliRunner().invoke(cli, ["generate", str(tmp_path / "a"), "-p", "def f", "-n", "5", "-t", "0", "--json"])
    assert result.exit_code == 0 and '"new_tokens": 5' in result.output, result.output
