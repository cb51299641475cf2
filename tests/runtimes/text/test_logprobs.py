"""Logprobs: each generated token's log-probability and its top alternatives equal log-softmax of the
transformers model's logits at that position, in OpenAI's ``logprobs.content`` shape."""

from __future__ import annotations

import numpy as np
import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.text.logprobs import openai_logprobs, token_bytes, token_logprobs

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lm(tiny_lm_artifact):
    return edgegen.load(tiny_lm_artifact, provider="cpu")


def test_logprobs_equal_transformers_log_softmax(lm, tiny_lm_artifact) -> None:
    from transformers import AutoModelForCausalLM

    prompt = "def fibonacci(n):"
    settings = GenerationSettings(temperature=0.8, seed=3, max_new_tokens=8, ignore_eos=True, logprobs=True,
                                  top_logprobs=5)
    c = lm.complete([prompt], settings)[0]
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_artifact.parent / "hf").eval()
    ids = lm.encode(prompt) + list(c.token_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()   # [T, V]
    for k, entry in enumerate(c.logprobs):
        row = logp[len(ids) - len(c.token_ids) - 1 + k]                                      # predicts token k
        assert entry.token_id == c.token_ids[k]
        assert entry.logprob == pytest.approx(row[entry.token_id], abs=1e-4)
        assert [i for i, _ in entry.top] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose([lp for _, lp in entry.top], np.sort(row)[::-1][:5], atol=1e-4)


def test_openai_shape_and_bytes(lm) -> None:
    c = lm.complete(["x = "], GenerationSettings(temperature=0, max_new_tokens=6, logprobs=True, top_logprobs=2,
                                                 ignore_eos=True))[0]
    content = openai_logprobs(lm.tokenizer, c.logprobs)
    assert [set(e) for e in content] == [{"token", "logprob", "bytes", "top_logprobs"}] * len(c.token_ids)
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in content)
    # the tokens' bytes put together are the generated text's bytes (byte-level BPE: no partial character lost)
    joined = b"".join(bytes(e["bytes"]) for e in content)
    assert joined.decode("utf-8", errors="replace") == lm.decode(c.token_ids)
    space = lm.encode(" ")[0]
    assert token_bytes(lm.tokenizer, space) == b" "


def test_without_logprobs_none_are_kept(lm) -> None:
    assert lm.complete(["a"], GenerationSettings(max_new_tokens=2))[0].logprobs is None


def test_top_logprobs_bounds() -> None:
    logits = np.array([[0.0, 1.0, 1.0, -2.0]], np.float32)
    (entry,) = token_logprobs(logits, np.array([3]), 3)
    assert [i for i, _ in entry.top] == [1, 2, 0]           # likeliest first, ties by id
    assert entry.logprob == pytest.approx(-2.0 - np.log(np.exp(logits[0].astype(np.float64)).sum()))
    (everything,) = token_logprobs(logits, np.array([0]), 4)
    assert len(everything.top) == 4


@pytest.mark.parametrize("settings, message", [
    (GenerationSettings(logprobs=True, top_logprobs=21), r"top_logprobs must be an integer in \[0, 20\]"),
    (GenerationSettings(top_logprobs=2), "top_logprobs needs logprobs=True"),
    (GenerationSettings(logprobs="yes"), "logprobs must be true or false"),
])
def test_bad_logprob_settings_are_one_line(lm, settings, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        lm.complete(["a"], settings)
