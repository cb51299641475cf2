"""Custom torch.nn.Module LMs through CausalLMSpec: the nanoGPT model with its KV cache, the same
model without a cache, and the CLI's file.py:function route."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen
from edgegen import CausalLMSpec
from edgegen.errors import InvalidArgumentError
from edgegen import GenerationSettings
from tests_support import load_models_file, train_tiny_tokenizer

torch = pytest.importorskip("torch")


def tiny_gpt(seed: int = 0):
    nanogpt = load_models_file("nanogpt")
    torch.manual_seed(seed)
    config = nanogpt.GPTConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = nanogpt.GPT(config).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10.0)  # decisive logits for greedy comparisons
    return model, config


def kv_spec(model, config, **overrides) -> CausalLMSpec:
    args = dict(module=model, tokenizer=train_tiny_tokenizer(), context_length=config.block_size,
                num_layers=config.n_layer, num_kv_heads=config.n_head, head_dim=config.n_embd // config.n_head,
                eos_token_ids=(0,), pad_token_id=0,
                # a repetition penalty in the defaults must not leak into validation's plain greedy
                defaults={"temperature": 0.8, "top_k": 40, "repetition_penalty": 1.5})
    return CausalLMSpec(**{**args, **overrides})


class NoCache(torch.nn.Module):
    """The same model behind the cache='none' contract: logits = module(input_ids)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.logits_no_cache(input_ids)


def greedy_torch(model, ids: list[int], n: int) -> list[int]:
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model.logits_no_cache(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(ids):].tolist()


@pytest.mark.parametrize("cache", ["kv", "none"])
def test_nanogpt_converts_and_generates_what_pytorch_generates(tmp_path: Path, cache: str) -> None:
    model, config = tiny_gpt()
    spec = kv_spec(model, config) if cache == "kv" else kv_spec(NoCache(model), config, cache="none")
    lm = edgegen.load(edgegen.convert(spec, tmp_path / "a"), provider="cpu")
    m = lm.artifact.manifest
    assert m.validation["greedy_identical"] and m.sampler["cache"] == cache
    assert m.defaults == {"temperature": 0.8, "top_k": 40, "repetition_penalty": 1.5} and m.sampler["special_tokens"] == {
        "eos": "<|endoftext|>", "pad": "<|endoftext|>"}
    settings = GenerationSettings(temperature=0, max_new_tokens=20, ignore_eos=True, repetition_penalty=1.0)
    prompts = ["def fibonacci(n):", "The quick brown fox"]
    batch = lm.complete(prompts, settings)
    for prompt, done in zip(prompts, batch, strict=True):
        assert list(done.token_ids) == greedy_torch(model, lm.encode(prompt), 20)


def test_cli_converts_a_spec_from_a_file_the_user_names(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgegen.cli import cli

    model, config = tiny_gpt()
    ckpt = tmp_path / "tiny.safetensors"
    model.save_checkpoint(ckpt)
    train_tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "make_spec.py").write_text(f'''
import importlib.util, sys
from edgegen import CausalLMSpec
spec = importlib.util.spec_from_file_location("nanogpt_user", {str(load_models_file("nanogpt").__file__)!r})
nanogpt = importlib.util.module_from_spec(spec); sys.modules["nanogpt_user"] = nanogpt; spec.loader.exec_module(nanogpt)

def build():
    model = nanogpt.GPT.from_checkpoint({str(ckpt)!r})
    c = model.config
    return CausalLMSpec(module=model, tokenizer={str(tmp_path / "tokenizer.json")!r}, context_length=c.block_size,
                        num_layers=c.n_layer, num_kv_heads=c.n_head, head_dim=c.n_embd // c.n_head, eos_token_ids=(0,))
''')
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", f"{tmp_path / 'make_spec.py'}:build", "-o", str(tmp_path / "art")])
    assert result.exit_code == 0, result.output
    assert "greedy 96/96 identical" in result.output
    result = runner.invoke(cli, ["generate", str(tmp_path / "art"), "-p", "def f", "-n", "5", "-t", "0", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", f"{tmp_path / 'make_spec.py'}:nope", "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "has no function 'nope' (it has: build)" in result.output


@pytest.mark.parametrize(("overrides", "match"), [
    ({"num_layers": 0}, "num_layers"), ({"cache": "maybe"}, "cache"), ({"context_length": 1}, "context_length"),
    ({"defaults": {"temprature": 1.0}}, "temprature"),
])
def test_bad_specs_are_clear_errors(overrides: dict, match: str) -> None:
    model, config = tiny_gpt()
    with pytest.raises(InvalidArgumentError, match=match):
        kv_spec(model, config, **overrides)
