"""attention="gqa": Llama-family decoders written with ONNX Runtime's GroupQueryAttention.

The artifact must generate what transformers generates (greedy tokens, logits), its cache
path must equal full recompute, a batch of prompts of different lengths (which the graph
cannot take left-padded) must give each prompt's tokens alone, int4 must convert, and
models the graph does not reproduce are refused with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen.errors import InvalidArgumentError, ManifestError, UnsupportedModelError
from edgegen.runtimes.artifact import open_artifact
from edgegen.runtimes.lm.sampler import CausalLMSampler
from edgegen import GenerationSettings
from tests_support import TINY_LM_CONFIGS, torch_greedy, write_tiny_hf_lm

torch = pytest.importorskip("torch")

#: hidden 64 over 4 heads: head size 16, the smallest ONNX Runtime's CPU GroupQueryAttention takes.
#: mistral's window (16) and qwen2's sliding layer (the second) are shorter than prompt + 32 tokens.
OVERRIDES = {"llama": {}, "mistral": {"sliding_window": 16},
             "qwen2": {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}}
PROMPTS = ["def fibonacci(n):", "The quick brown fox jumps", "x"]


def write_hf(dest: Path, arch: str) -> Path:
    """write_tiny_hf_lm's model with a head size of 16."""
    return write_tiny_hf_lm(dest, arch, hidden_size=64, **OVERRIDES[arch])


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(arch: str, quantize: str = "none") -> tuple[Path, Path]:
        if (arch, quantize) not in cache:
            root = tmp_path_factory.mktemp(f"{arch}-{quantize}")
            hf = write_hf(root / "hf", arch)
            cache[arch, quantize] = (hf, edgegen.convert(hf, root / "artifact", quantize=quantize, attention="gqa"))
        return cache[arch, quantize]

    return get


@pytest.mark.parametrize("arch", sorted(OVERRIDES))
def test_gqa_artifact_generates_what_transformers_generates(converted, arch: str) -> None:
    import onnx

    hf, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    m = lm.artifact.manifest
    assert m.validation["passed"] and m.validation["greedy_identical"], m.validation
    assert m.validation["max_abs_logits_error"] <= 1e-4 * m.validation["logits_scale"]
    assert m.sampler["padding"] == "none" and m.sampler["kv_buffer"] == "shared"
    assert "gqa_decoder" in m.source.converter
    ops = [n.op_type for n in onnx.load_model(str(artifact / "decoder.onnx")).graph.node]
    assert ops.count("GroupQueryAttention") == TINY_LM_CONFIGS[arch]["num_hidden_layers"]
    ids = lm.encode(PROMPTS[0])
    gen = lm.generator(GenerationSettings(temperature=0, max_new_tokens=32, ignore_eos=True))
    gen.append_tokens([ids])
    while not gen.is_done():
        gen.generate_next_token()
    assert len(ids) + 32 > 16  # past the sliding window, where mistral / qwen2 must forget
    assert gen.tokens(0) == torch_greedy(hf, ids, 32)


@pytest.mark.parametrize("arch", sorted(OVERRIDES))
def test_gqa_cache_path_equals_full_recompute(converted, arch: str) -> None:
    _, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    ids = np.random.default_rng(0).integers(1, 300, size=(2, 24))             # [B, L], longer than the window
    mask = np.ones_like(ids)
    assert lm.graph.has_logits_to_keep  # steps ask for the last position's logits only, full_logits for all
    full = lm.graph.full_logits(ids, mask)                                    # [B, L, V]
    # ONNX Runtime's GroupQueryAttention takes several new tokens after a cache only for a batch of 1
    chunks = {1: ((0, 9), (9, 10), (10, 13), (13, 24)), 2: ((0, 9), *((i, i + 1) for i in range(9, 24)))}
    # share: one [B, H_kv, capacity, D] buffer is past and present (capacity 0: grown at every step, contents kept);
    # a run's steps reuse one binding (as the generator does) or each makes its own
    for batch, spans in chunks.items():
        for share, capacity, reuse in ((False, 0, True), (True, 24, True), (True, 0, True), (True, 24, False)):
            past, state, kept = lm.graph.start_cache(batch), lm.graph.new_binding() if reuse else None, []
            for start, end in spans:                                          # prefill, then 1 or more tokens
                if share:
                    past = lm.graph.reserve(past, end, capacity)
                logits, past = lm.graph.step(ids[:batch, start:end], mask[:batch, :end], None, past, share, state)
                kept.append((logits, end))
            for logits, end in kept:  # still right after later steps wrote the preallocated logits buffer
                np.testing.assert_allclose(logits, full[:batch, end - 1], atol=1e-4 * max(1.0, np.abs(full).max()))
            assert past[0].shape()[2] == 24                                    # every position, no more


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("second", [[[11, 12], [13]], [[11, 12], [13, 14]]])
def test_batch_of_different_lengths_equals_each_prompt_alone(converted, arch: str, second) -> None:
    _, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    settings = GenerationSettings(temperature=0, max_new_tokens=12, ignore_eos=True)
    batch = lm.complete(PROMPTS, settings)
    for prompt, got in zip(PROMPTS, batch, strict=True):
        assert got.token_ids == lm.complete([prompt], settings)[0].token_ids, prompt
    # equal lengths stay batched; a second append of several tokens splits the batched cache per row
    gen = lm.generator(settings, batch=2)
    gen.append_tokens([[5, 6, 7], [8, 9, 10]])
    for _ in range(3):
        gen.generate_next_token()
    gen.append_tokens(second)
    for _ in range(3):
        gen.generate_next_token()
    for row, ids in enumerate(([5, 6, 7], [8, 9, 10])):
        alone = lm.generator(settings)
        alone.append_tokens([ids])
        for _ in range(3):
            alone.generate_next_token()
        alone.append_tokens([second[row]])
        for _ in range(3):
            alone.generate_next_token()
        assert alone.tokens(0) == gen.tokens(row)


def test_gqa_int4_converts_and_generates(converted) -> None:
    _, artifact = converted("llama", "int4")
    lm = edgegen.load(artifact, provider="cpu")
    m = lm.artifact.manifest
    assert m.graphs["decoder"].precision == "int4-weight"
    q = m.validation["quantization"]
    assert q["quantized_matmuls"] == 2 * 5 + 1 and q["options"]["lm_head"] == "int8", q  # qkv, o, gate, up, down
    fp32 = edgegen.load(converted("llama")[1], provider="cpu")
    ids = np.random.default_rng(1).integers(1, 300, size=(2, 24))             # [B, T]
    ref, got = (x.graph.full_logits(ids, np.ones_like(ids)) for x in (fp32, lm))  # [B, T, V]
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.875   # test_lm_quantize's int4 bound
    out = lm.complete(PROMPTS[:2], GenerationSettings(temperature=0, max_new_tokens=8, ignore_eos=True))
    assert all(len(c.token_ids) == 8 for c in out)


def test_unsupported_models_are_refused_with_one_line(tmp_path: Path) -> None:
    gpt2 = write_tiny_hf_lm(tmp_path / "gpt2", "gpt2")
    with pytest.raises(UnsupportedModelError, match="supports model_type llama, mistral, qwen2, not 'gpt2'") as e:
        edgegen.convert(gpt2, tmp_path / "out", attention="gqa")
    assert "\n" not in str(e.value) and "--attention standard" in str(e.value)
    small_heads = write_tiny_hf_lm(tmp_path / "llama8", "llama")                # head size 8
    with pytest.raises(UnsupportedModelError, match=r"multiple of 16 .*, this model's is 8"):
        edgegen.convert(small_heads, tmp_path / "out", attention="gqa")
    with pytest.raises(InvalidArgumentError, match="attention must be auto, standard or gqa"):
        edgegen.convert(gpt2, tmp_path / "out", attention="flash")
    assert not (tmp_path / "out").exists()


def test_auto_attention_picks_gqa_where_it_applies_on_cpu(converted, tmp_path: Path) -> None:
    hf, _ = converted("llama")                                                     # head size 16
    lines: list[str] = []
    auto = open_artifact(edgegen.convert(hf, tmp_path / "auto", quantize="none", report=lines.append)).manifest
    assert auto.sampler["kv_buffer"] == "shared" and "GroupQueryAttention" in auto.source.converter
    assert any(line.startswith("attention auto: gqa") for line in lines)
    cuda = open_artifact(edgegen.convert(hf, tmp_path / "cuda", quantize="none", target="cuda")).manifest
    assert "kv_buffer" not in cuda.sampler and "GroupQueryAttention" not in cuda.source.converter   # fp32 GQA: no CUDA
    small_heads = write_tiny_hf_lm(tmp_path / "llama8", "llama")                   # head size 8: standard
    assert "padding" not in open_artifact(edgegen.convert(small_heads, tmp_path / "small")).manifest.sampler


def test_cli_attention_option(converted, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgegen.cli import cli

    gpt2 = write_tiny_hf_lm(tmp_path / "gpt2", "gpt2")
    refused = CliRunner().invoke(cli, ["convert", str(gpt2), "-o", str(tmp_path / "out"), "--attention", "gqa"])
    assert refused.exit_code != 0 and "not 'gpt2'" in refused.output and "Traceback" not in refused.output
    hf, _ = converted("llama")
    done = CliRunner().invoke(cli, ["convert", str(hf), "-o", str(tmp_path / "gqa"), "-q", "none", "--attention", "gqa"])
    assert done.exit_code == 0, done.output
    assert edgegen.load(tmp_path / "gqa", provider="cpu").sampler.kv_buffer == "shared"


def test_sampler_padding_and_kv_buffer_are_parsed_strictly_with_old_defaults() -> None:
    old = {"context_length": 96, "eos_token_ids": [0], "cache": "kv"}
    parsed = CausalLMSampler.from_manifest(old)
    assert (parsed.padding, parsed.kv_buffer) == ("left", "grow")
    parsed = CausalLMSampler.from_manifest({**old, "padding": "none", "kv_buffer": "shared"})
    assert (parsed.padding, parsed.kv_buffer) == ("none", "shared")
    for key, bad in (("padding", "right"), ("kv_buffer", "paged")):
        with pytest.raises(ManifestError, match=key):
            CausalLMSampler.from_manifest({**old, key: bad})
