"""models/nanogpt.py: the cache contract edgegen exports, checkpoints, and a clean ONNX export.

Tiny config, fixed seed: every test here takes well under a second (the export a few).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests_support import load_models_file as _load

nanogpt = _load("nanogpt")
GPT, GPTConfig, position_ids_from_mask = nanogpt.GPT, nanogpt.GPTConfig, nanogpt.position_ids_from_mask

CONFIG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def _run(model, ids, mask, past=None):
    """Logits and presents for ids [B, T] after a past covered by the first columns of mask."""
    positions = position_ids_from_mask(mask)[:, -ids.shape[1]:]  # [B, T]
    with torch.no_grad():
        return model(ids, mask, positions, past)


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


def test_forward_shapes_and_empty_past(model):
    ids = torch.randint(0, CONFIG.vocab_size, (3, 5))  # [B, T]
    logits, presents = _run(model, ids, torch.ones_like(ids), model.empty_cache(3))
    assert logits.shape == (3, 5, CONFIG.vocab_size) and logits.dtype == torch.float32
    assert len(presents) == CONFIG.n_layer
    for key, value in presents:
        assert key.shape == value.shape == (3, CONFIG.n_head, 5, CONFIG.head_dim)
    same, _ = _run(model, ids, torch.ones_like(ids), None)  # no past at all: P = 0 too
    torch.testing.assert_close(same, logits, rtol=0, atol=0)


def test_incremental_decoding_equals_full_recompute(model):
    torch.manual_seed(1)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12))  # [B, L]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # row 0 left-padded
    full, full_presents = _run(model, ids, mask)
    # a prompt of 5, then a chunk of 3, then single tokens
    logits, past = _run(model, ids[:, :5], mask[:, :5])
    pieces = [logits]
    for start, stop in [(5, 8), *[(i, i + 1) for i in range(8, 12)]]:
        logits, past = _run(model, ids[:, start:stop], mask[:, :stop], past)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    for (k, v), (fk, fv) in zip(past, full_presents):
        torch.testing.assert_close(k, fk, rtol=0, atol=1e-5)
        torch.testing.assert_close(v, fv, rtol=0, atol=1e-5)


def test_left_padded_batch_matches_each_prompt_alone(model):
    torch.manual_seed(2)
    prompts = [torch.randint(0, CONFIG.vocab_size, (n,)) for n in (7, 3, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # [B, L], pad id 0
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    batch_logits, past = _run(model, ids, mask)
    assert torch.isfinite(batch_logits).all()  # pad rows included: no NaN from fully-masked rows
    # and one more decoding step for the whole batch
    nxt = torch.randint(0, CONFIG.vocab_size, (len(prompts), 1))
    mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    step_logits, _ = _run(model, nxt, mask2, past)
    for row, prompt in enumerate(prompts):
        alone, _ = _run(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long))
        torch.testing.assert_close(batch_logits[row, -1], alone[0, -1], rtol=0, atol=1e-5)
        alone2, _ = _run(model, torch.cat([prompt, nxt[row]])[None], torch.ones(1, len(prompt) + 1, dtype=torch.long))
        torch.testing.assert_close(step_logits[row, -1], alone2[0, -1], rtol=0, atol=1e-5)


def test_training_path_matches_cache_forward_and_learns(model):
    torch.manual_seed(3)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16))
    with torch.no_grad():
        fused = model.logits_no_cache(ids)
    reference, _ = _run(model, ids, torch.ones_like(ids))
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = ids[:, :-1], ids[:, 1:]
    first = model.loss(x, y).item()
    for _ in range(20):
        loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.loss(x, y).item() < first - 1.0
    with pytest.raises(ValueError, match="block_size"):
        model.loss(torch.zeros(1, CONFIG.block_size + 1, dtype=torch.long), torch.zeros(1, CONFIG.block_size + 1,
                                                                                         dtype=torch.long))


def test_generate_greedy_uses_the_cache_consistently(model):
    prompt = [5, 9, 2]
    new = model.generate(prompt, max_new_tokens=6)
    ids = list(prompt)
    for _ in range(6):  # greedy by full recompute
        logits, _ = _run(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        ids.append(int(logits[0, -1].argmax()))
    assert new == ids[len(prompt):]


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save_checkpoint(path)
    loaded = GPT.from_checkpoint(path)
    assert loaded.config == CONFIG
    header = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    meta = json.loads(header)["__metadata__"]
    assert list(meta) == sorted(meta) and json.loads(meta["config"])["n_embd"] == CONFIG.n_embd  # same bytes each run
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    half = tmp_path / "half.safetensors"
    model.save_checkpoint(half, dtype=torch.float16)
    upcast = GPT.from_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in upcast.parameters())
    assert half.stat().st_size < 0.6 * path.stat().st_size
    ids = torch.randint(0, CONFIG.vocab_size, (1, 8))
    torch.testing.assert_close(_run(upcast, ids, torch.ones_like(ids))[0], _run(model, ids, torch.ones_like(ids))[0],
                               rtol=0, atol=1e-2)


def test_from_checkpoint_refuses_a_file_without_config(tmp_path, model):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="no 'config' in the safetensors metadata"):
        GPT.from_checkpoint(path)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"config": "{not json"})
    with pytest.raises(ValueError, match="not a valid GPTConfig"):
        GPT.from_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        GPT.from_checkpoint(tmp_path / "missing.safetensors")


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_onnx_export_runs_with_and_without_past(model, tmp_path):
    """The traced graph (dynamo=False, opset 17) handles any B, T and P, P = 0 included."""
    ort = pytest.importorskip("onnxruntime")
    n = CONFIG.n_layer
    past_names = [f"past_key_values.{i}.{kind}" for i in range(n) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(n) for kind in ("key", "value")]
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
               "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
               **{name: {0: "batch", 2: "past"} for name in past_names},
               **{name: {0: "batch", 2: "total"} for name in present_names}}
    ids = torch.randint(0, CONFIG.vocab_size, (2, 6))
    mask = torch.ones_like(ids)
    _, past = _run(model, ids[:, :3], mask[:, :3])
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (ids[:, 3:], mask, position_ids_from_mask(mask)[:, 3:], past), str(path),
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=dynamic, opset_version=17,
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(4)
    for batch, p, t in [(2, 0, 7), (3, 4, 2), (1, 6, 1), (1, 0, 1)]:
        ids = torch.randint(0, CONFIG.vocab_size, (batch, p + t))
        mask = torch.ones_like(ids)
        mask[0, :min(2, p + t - 1)] = 0  # row 0 left-padded
        past = _run(model, ids[:, :p], mask[:, :p])[1] if p else model.empty_cache(batch)
        expected, presents = _run(model, ids[:, p:], mask, past)
        feeds = {"input_ids": ids[:, p:].numpy(), "attention_mask": mask.numpy(),
                 "position_ids": position_ids_from_mask(mask)[:, p:].numpy()}
        feeds.update({name: tensor.numpy() for name, tensor in zip(past_names, [x for kv in past for x in kv])})
        outputs = session.run(None, feeds)
        assert not np.isnan(outputs[0]).any()
        np.testing.assert_allclose(outputs[0], expected.numpy(), rtol=0, atol=1e-5)
        assert outputs[1].shape == (batch, CONFIG.n_head, p + t, CONFIG.head_dim)
        np.testing.assert_allclose(outputs[-1], presents[-1][1].numpy(), rtol=0, atol=1e-5)
