"""The bundled code-completion model (models/pycode/) and its training script."""

from __future__ import annotations

import math

import pytest
import torch

from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

nanogpt = _load("nanogpt")
pycode = _load("pycode")
train_pycode = _load("train_pycode")


@pytest.fixture(scope="module")
def bundled():
    return pycode.load()


def test_bundled_checkpoint_loads(bundled):
    model, tokenizer = bundled
    assert isinstance(model, nanogpt.GPT) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.get_vocab_size() == model.config.vocab_size
    assert tokenizer.token_to_id(pycode.EOS) == 0
    assert model.num_parameters() < 5_000_000
    folder = MODELS / "pycode"
    assert (folder / "MODEL_CARD.md").is_file()
    # every bundled model together stays small enough to clone: 15 MB, 5.5 MB of it the float32 VITS voice
    assert sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file()) < 16_000_000


def test_heldout_perplexity_far_below_untrained_twin(bundled, heldout_texts):
    model, tokenizer = bundled
    tokens = train_pycode.encode_documents(tokenizer, heldout_texts)  # [N]
    trained = math.exp(train_pycode.heldout_loss(model, tokens, max_windows=8))
    torch.manual_seed(train_pycode.Options().seed)
    twin = nanogpt.GPT(model.config).eval()
    untrained = math.exp(train_pycode.heldout_loss(twin, tokens, max_windows=8))
    assert untrained > 0.5 * model.config.vocab_size  # random init: about uniform
    assert trained < 100 and trained < untrained / 40, (trained, untrained)


def test_greedy_completion_looks_like_python(bundled):
    model, tokenizer = bundled
    text = train_pycode.complete(model, tokenizer, "def fibonacci(n):", max_new_tokens=40)
    assert text.startswith("def fibonacci(n):\n    ")  # a body, indented
    assert text == train_pycode.complete(model, tokenizer, "def fibonacci(n):", max_new_tokens=40)


def test_tokenizer_round_trips_python_source(bundled, heldout_texts):
    _, tokenizer = bundled
    tricky = ('# -*- coding: utf-8 -*-\r\nclass Ünïcode:\n\tx = "tab\\t and emoji 🐍"  \n\n\n'
              "    def f(self, *a, **k) -> None: ...\n" + " " * 17 + "\n\x0c\nλ = lambda: '''\\n'''\n")
    for text in [tricky, *heldout_texts]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    eos = tokenizer.encode(pycode.EOS, add_special_tokens=False).ids
    assert eos == [tokenizer.token_to_id(pycode.EOS)]


def test_split_is_deterministic_and_disjoint():
    files = train_pycode.list_source_files()
    assert files == sorted(files) and files == train_pycode.list_source_files()
    assert not any(part in train_pycode.SKIP_DIRS for f in files for part in f.split("/")[:-1])
    heldout = {f for f in files if train_pycode.is_heldout(f)}
    assert 0 < len(heldout) < 0.15 * len(files)


def test_short_training_run_lowers_the_loss(tmp_path):
    result = train_pycode.main(["--steps", "30", "--out", str(tmp_path), "--max-files", "6", "--vocab-size", "384",
                                "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "64",
                                "--batch-size", "8", "--lr", "1e-2", "--eval-windows", "8", "--log-every", "0"])
    assert len(result.losses) == 30
    assert sum(result.losses[-5:]) / 5 < result.initial_loss - 0.5
    assert result.heldout_loss < result.untrained_heldout_loss
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "model.safetensors", "MODEL_CARD.md"}
    model, tokenizer = pycode.load(tmp_path)
    assert model.config.n_layer == 2 and tokenizer.get_vocab_size() == model.config.vocab_size
    card = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "PSF" in card and "def fibonacci(n):" in card
