"""Hugging Face causal LMs of every listed architecture: convert, then prove the artifact generates
what PyTorch generates (greedy tokens), that the KV-cache path equals full recompute, and that
a left-padded batch equals each prompt alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen.errors import ArtifactError, ConversionError, UnsupportedModelError
from edgegen import GenerationSettings
from tests_support import TINY_LM_CONFIGS, torch_greedy, write_tiny_hf_lm

torch = pytest.importorskip("torch")
pytest.importorskip("optimum")

ARCHS = sorted(TINY_LM_CONFIGS)
PROMPTS = ["def fibonacci(n):", "The quick brown fox jumps", "x"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    cache: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            hf = write_tiny_hf_lm(root / "hf", arch)
            cache[arch] = (hf, edgegen.convert(hf, root / "artifact"))
        return cache[arch]

    return get  # type: ignore[return-value]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_equal_pytorch(converted, arch: str) -> None:
    hf, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    figures = lm.artifact.manifest.validation
    assert figures["passed"] and figures["greedy_identical"], figures
    for prompt in PROMPTS[:2]:
        ids = lm.encode(prompt)
        gen = lm.generator(GenerationSettings(temperature=0, max_new_tokens=32, ignore_eos=True))
        gen.append_tokens([ids])
        while not gen.is_done():
            gen.generate_next_token()
        assert gen.tokens(0) == torch_greedy(hf, ids, 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_path_equals_full_recompute(converted, arch: str) -> None:
    _, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 300, size=(2, 12))                                  # [B, L]
    mask = np.ones_like(ids)
    full = lm.graph.full_logits(ids, mask)                                    # [B, L, V]: logits_to_keep 0
    # the exported graph got logits_to_keep before its LM head: steps compute the last position's logits only
    assert lm.graph.has_logits_to_keep and full.shape[:2] == (2, 12)
    past = lm.graph.start_cache(2)
    steps = []
    for start, end in ((0, 5), (5, 6), (6, 9), (9, 12)):                      # prefill, then 1..3 tokens at a time
        positions = np.broadcast_to(np.arange(start, end), (2, end - start))
        logits, past = lm.graph.step(ids[:, start:end], mask[:, :end], positions, past)
        steps.append((end - 1, logits))
    for pos, logits in steps:
        np.testing.assert_allclose(logits, full[:, pos], atol=1e-4 * max(1.0, np.abs(full).max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_equals_each_prompt_alone(converted, arch: str) -> None:
    _, artifact = converted(arch)
    lm = edgegen.load(artifact, provider="cpu")
    settings = GenerationSettings(temperature=0, max_new_tokens=12, ignore_eos=True)
    batch = lm.complete(PROMPTS, settings)
    for prompt, got in zip(PROMPTS, batch, strict=True):
        alone = lm.complete([prompt], settings)[0]
        assert got.token_ids == alone.token_ids, prompt


def test_manifest_carries_tokenizer_special_tokens_and_sources(converted) -> None:
    _, artifact = converted("gpt2")
    lm = edgegen.load(artifact, provider="cpu")
    m = lm.artifact.manifest
    assert m.sampler["eos_token_ids"] == [0] and m.sampler["special_tokens"]["eos"] == "<|endoftext|>"
    assert m.sampler["context_length"] == 96
    assert "tokenizer" in m.assets and m.source.converter.startswith("optimum")
    assert m.validation["nll_tokens"] > 20 and abs(m.validation["nll_delta"]) < 1e-3
    assert m.defaults == {"temperature": 0.0}


def test_architecture_optimum_lacks_uses_our_export(converted) -> None:
    _, artifact = converted("biogpt")
    m = edgegen.load(artifact, provider="cpu").artifact.manifest
    assert "hf_fallback" in m.source.converter and m.validation["greedy_identical"]


def test_encoder_model_is_refused_naming_what_it_is(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="holds a BERT model, an encoder-only .*edgegen converts causal"):
        edgegen.convert(tmp_path / "bert", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_without_tokenizer_is_refused_with_the_fix(tmp_path: Path) -> None:
    hf = write_tiny_hf_lm(tmp_path / "hf", "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / name).unlink(missing_ok=True)
    with pytest.raises(ConversionError, match="save_pretrained"):
        edgegen.convert(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.edgegen-tmp-*"))


def test_existing_output_needs_overwrite(converted, tmp_path: Path) -> None:
    hf, _ = converted("gpt2")
    out = edgegen.convert(hf, tmp_path / "a", optimize=False)
    with pytest.raises(ArtifactError, match="overwrite"):
        edgegen.convert(hf, out)
    assert edgegen.convert(hf, out, overwrite=True, optimize=False) == out


@pytest.mark.parametrize(("arch", "optimize", "scheme", "precision"), [
    ("llama", False, "int8", "int8-weight"), ("llama", False, "int4", "int4-weight"), ("llama", False, "fp16", "fp16"),
    # the transformer optimizer's fused com.microsoft ops must not break ORT's quantizers
    ("gpt2", True, "int8", "int8-weight"), ("gpt2", True, "int4", "int4-weight"),
])
def test_quantized_conversion_records_its_cost_against_fp32(converted, tmp_path: Path, arch: str, optimize: bool,
                                                             scheme: str, precision: str) -> None:
    hf, _ = converted(arch)
    lm = edgegen.load(edgegen.convert(hf, tmp_path / scheme, optimize=optimize, quantize=scheme), provider="cpu")
    m = lm.artifact.manifest
    assert m.graphs["decoder"].precision == precision
    q = m.validation["quantization"]
    # fp32 vs torch still recorded; the quantized graph's figures are against the fp32 graph
    assert m.validation["greedy_identical"]
    assert 0.0 <= q["greedy_agreement"] <= 1.0 and q["top1_agreement"] >= 0.5
    assert q["size_ratio"] < 1.01 and q["size_bytes"] > 0  # tiny: embeddings dominate, little to shrink
    if scheme == "int4":   # the head goes to 8 bits, the body to 4
        import onnx

        graph = onnx.load_model(str(lm.artifact.path(m.graphs["decoder"].file)), load_external_data=False).graph
        head = next(n for n in graph.node if "logits" in n.output)
        bits = {a.name: a.i for a in head.attribute}.get("bits")
        assert head.op_type == "MatMulNBits" and bits == 8 and q["options"]["lm_head"] == "int8", q
    assert len(lm.complete(["def f"], GenerationSettings(temperature=0, max_new_tokens=4, ignore_eos=True))[0]
               .token_ids) == 4
    from click.testing import CliRunner

    from edgegen.cli import cli

    shown = CliRunner().invoke(cli, ["info", str(lm.artifact.root)])
    assert f"validation quantization: scheme={scheme}, greedy_agreement=" in shown.output, shown.output


def test_unknown_quantization_scheme_is_refused_before_any_work(tmp_path: Path) -> None:
    from edgegen.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="quantize must be one of auto, none, fp16, int8, int4"):
        edgegen.convert(tmp_path / "whatever", tmp_path / "out", quantize="int3")


def test_logits_to_keep_is_added_only_where_certainly_right(tmp_path: Path) -> None:
    """A MatMul head writing a [batch, sequence, vocab] ``logits`` gets the Slice (same logits for k = 0, the last
    position's for k = 1); a 2-D ``logits`` (sequence folded into rows) is left alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgegen.converters.lm.convert import _add_logits_to_keep

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "W")
    for rank, expected in ((3, True), (2, False)):
        shape = ["b", "t", 8][3 - rank:]
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"], name="head")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*shape[:-1], 5])], [w])
        path = tmp_path / f"rank{rank}.onnx"
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
        assert _add_logits_to_keep(path) is expected
    session = ort.InferenceSession(str(tmp_path / "rank3.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)           # [B, T, H]
    ref = x @ numpy_helper.to_array(w)                                                    # [B, T, V]
    for keep, want in ((0, ref), (1, ref[:, -1:]), (3, ref[:, -3:])):
        got = session.run(None, {"x": x, "logits_to_keep": np.array([keep], np.int64)})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not _add_logits_to_keep(tmp_path / "rank3.onnx")                               # already there
