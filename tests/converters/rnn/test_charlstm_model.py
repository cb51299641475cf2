"""The bundled character-level LSTM (models/charlstm/) and its training script."""

from __future__ import annotations

import hashlib
import math
import time

import pytest
import torch

from tests_support import MODELS_DIR as MODELS
from tests_support import load_models_file as _load

charlstm = _load("charlstm")
bundled_module = _load("charlstm_bundled")
train_charlstm = _load("train_charlstm")
train_pycode = _load("train_pycode")


@pytest.fixture(scope="module")
def bundled():
    return bundled_module.load()


def test_bundled_checkpoint_loads(bundled):
    model, tokenizer = bundled
    assert isinstance(model, charlstm.CharLSTM) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.get_vocab_size() == model.config.vocab_size == 257
    assert tokenizer.token_to_id(bundled_module.EOS) == 0
    assert 300_000 < model.num_parameters() < 1_500_000
    folder = MODELS / "charlstm"
    assert (folder / "MODEL_CARD.md").is_file()
    assert (folder / "model.safetensors").stat().st_size < 3_000_000


def test_spec_describes_the_checkpoint():
    spec = bundled_module.spec()
    model = spec.module
    assert spec.state_shapes == ((model.config.n_layer, model.config.hidden),) * 2
    assert spec.eos_token_ids == (0,) and spec.defaults["temperature"] == 0.8
    digest = hashlib.sha256((MODELS / "charlstm" / "model.safetensors").read_bytes()).hexdigest()
    assert spec.checkpoint_sha256 == digest


def test_heldout_loss_far_below_untrained_twin(bundled, heldout_texts):
    model, tokenizer = bundled
    tokens = train_charlstm.encode_documents(tokenizer, heldout_texts)  # [N]
    trained = train_charlstm.heldout_loss(model, tokens, max_chars=20_000, lanes=8)
    torch.manual_seed(train_charlstm.Options().seed)
    twin = charlstm.CharLSTM(model.config).eval()
    untrained = train_charlstm.heldout_loss(twin, tokens, max_chars=20_000, lanes=8)
    assert untrained > 0.9 * math.log(model.config.vocab_size)  # random init: about uniform (8 bits/char)
    assert trained / math.log(2) < 3.0 and trained < untrained / 2.5, (trained, untrained)


def test_greedy_completion_is_deterministic_and_python_ish(bundled):
    model, tokenizer = bundled
    text = train_charlstm.complete(model, tokenizer, "def ", max_new_tokens=60)
    assert text == train_charlstm.complete(model, tokenizer, "def ", max_new_tokens=60)
    assert "(" in text and ":" in text


def test_tokenizer_round_trips_python_source(bundled, heldout_texts):
    _, tokenizer = bundled
    tricky = ('# -*- coding: utf-8 -*-\r\nclass Ünïcode:\n\tx = "tab\\t and emoji 🐍"  \n\n\n'
              "    def f(self, *a, **k) -> None: ...\n" + " " * 17 + "\n\x0c\nλ = lambda: '''\\n'''\n\x00\x7f")
    for text in [tricky, *heldout_texts]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte
        assert tokenizer.decode(ids) == text
    eos = tokenizer.encode(bundled_module.EOS, add_special_tokens=False).ids
    assert eos == [tokenizer.token_to_id(bundled_module.EOS)]
    assert tokenizer.to_str() == train_charlstm.build_tokenizer().to_str()


def test_short_training_run_lowers_the_loss(tmp_path):
    started = time.perf_counter()
    result = train_charlstm.main(["--steps", "20", "--out", str(tmp_path), "--max-files", "6", "--n-layer", "1",
                                  "--hidden", "64", "--n-embd", "16", "--seq-len", "64", "--batch-size", "8",
                                  "--lr", "1e-2", "--eval-chars", "4000", "--log-every", "0"])
    assert time.perf_counter() - started < 20
    assert len(result.losses) == 20
    assert sum(result.losses[-5:]) / 5 < result.initial_loss - 1.0
    assert result.heldout_loss < result.untrained_heldout_loss
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "model.safetensors", "MODEL_CARD.md"}
    model, tokenizer = bundled_module.load(tmp_path)
    assert model.config.n_layer == 1 and tokenizer.get_vocab_size() == model.config.vocab_size
    card = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "PSF" in card and "bits/char" in card and "def " in card
    first = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    model.save_checkpoint(tmp_path / "again.safetensors", dtype=torch.float16,
                          metadata={"eos_token": train_charlstm.EOS, "eos_token_id": "0"})
    assert hashlib.sha256((tmp_path / "again.safetensors").read_bytes()).hexdigest() == first
