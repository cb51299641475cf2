"""Causal LMs past protobuf's 2 GB limit (issue 29), with the limits lowered so that a tiny model takes the
large-model path at every step: the weights go to external data from the export on, and no step sizes or
serializes a ModelProto holding more tensor bytes than the (lowered) limit inside it -- ``ModelProto.ByteSize``
and ``SerializeToString`` fail past it as protobuf's do past 2 GB.  The artifact must then pass the runtime's
external-data and checksum checks and generate what the same conversion without lowered limits generates
(PyTorch's own greedy tokens for fp32)."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

import edgegen
from edgegen import GenerationSettings
from tests_support import torch_greedy, write_tiny_hf_lm

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

#: The lowered protobuf limit on the tensor bytes a ModelProto holds inside: the tiny model's weights are ~7x this.
LIMIT = 64 << 10
LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
PROMPTS = ["def fibonacci(n):", "The quick brown fox jumps"]


@pytest.fixture
def protobuf_limit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every size threshold of the conversion at its large-model setting, and ModelProto failing past LIMIT as
    protobuf fails past 2 GB; returns the list of violations (where each happened), which must stay empty
    (a tool may swallow the exception: the optimizer is best effort)."""
    from google.protobuf.message import EncodeError

    from edgegen.converters import writer
    from edgegen.converters.lm import quantize
    from edgegen.converters.quantization import graphs

    violations: list[str] = []
    size, serialize = onnx.ModelProto.ByteSize, onnx.ModelProto.SerializeToString

    def guarded(what: str, original):
        def call(self, *args, **kwargs):
            held = writer.inline_bytes(self)   # the tensor bytes inside: what takes a real model past 2 GB
            if held > LIMIT:
                violations.append(f"ModelProto.{what} with {held} bytes of tensors inside at\n"
                                  f"{''.join(traceback.format_stack(limit=8))}")
                raise EncodeError("Failed to serialize proto")
            return original(self, *args, **kwargs)
        return call

    monkeypatch.setattr(onnx.ModelProto, "ByteSize", guarded("ByteSize", size))
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", guarded("SerializeToString", serialize))
    monkeypatch.setattr(writer, "EXTERNAL_WEIGHTS_BYTES", 0)
    monkeypatch.setattr(writer, "PROTOBUF_LIMIT_BYTES", LIMIT)
    monkeypatch.setattr(quantize, "EXTERNAL_WEIGHTS_BYTES", None)
    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 0)
    return violations


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_lm(tmp_path_factory.mktemp("large") / "hf", "llama", **LLAMA)


@pytest.fixture(scope="module", params=["none", "int4", "int8", "fp16"])
def plain(request: pytest.FixtureRequest, hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(scheme, the conversion with the real limits: the tiny model's weights stay inside its graph); module
    scope, so it is made before the function-scoped lowered limits apply."""
    scheme = request.param
    return scheme, edgegen.convert(hf_llama, tmp_path_factory.mktemp(f"plain-{scheme}") / "artifact", quantize=scheme)


def _greedy(artifact: Path, n: int = 16) -> list[list[int]]:
    lm = edgegen.load(artifact, provider="cpu")
    out = []
    for prompt in PROMPTS:
        gen = lm.generator(GenerationSettings(temperature=0, max_new_tokens=n, ignore_eos=True))
        gen.append_tokens([lm.encode(prompt)])
        while not gen.is_done():
            gen.generate_next_token()
        out.append(gen.tokens(0))
    return out


def _check_external(artifact: Path) -> None:
    """The decoder's weights sit in decoder.onnx.data, which the runtime's own checks accept."""
    from edgegen.runtimes.artifact import check_external_data_references, open_artifact, verify_checksums
    from edgegen.runtimes.onnx_refs import external_references

    opened = open_artifact(artifact)
    verify_checksums(opened)
    check_external_data_references(opened)
    graph = opened.manifest.graphs["decoder"]
    data = f"{graph.file}.data"   # decoder.onnx.data, decoder_int4.onnx.data, ...
    assert [ref.file for ref in graph.external_data] == [data]
    assert {ref.location for ref in external_references(artifact / graph.file)} == {data}
    model = onnx.load_model(str(artifact / graph.file), load_external_data=False)
    inline = [t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
              and len(t.raw_data) >= 1024]
    assert not inline, f"weights left inside decoder.onnx: {inline}"
    assert not [p.name for p in artifact.iterdir() if p.name.endswith((".partial", ".tmp"))]


def test_conversion_past_the_limit_generates_what_the_plain_one_does(hf_llama: Path, plain: tuple[str, Path],
                                                                     tmp_path: Path, protobuf_limit: list[str]) -> None:
    scheme, reference = plain
    lines: list[str] = []
    artifact = edgegen.convert(hf_llama, tmp_path / "artifact", quantize=scheme, report=lines.append)
    assert not protobuf_limit, protobuf_limit[0]
    _check_external(artifact)
    tokens = _greedy(artifact)
    assert tokens == _greedy(reference)
    if scheme == "none":   # and fp32 is PyTorch's own greedy decoding
        lm = edgegen.load(artifact, provider="cpu")
        assert tokens == [torch_greedy(hf_llama, lm.encode(p), 16) for p in PROMPTS]
    assert any(line.startswith("memory:") for line in lines), lines


def test_optimum_export_and_optimizer_past_the_limit(hf_llama: Path, tmp_path: Path, protobuf_limit: list[str]) -> None:
    """attention='standard': Optimum's export (weights inside its graph at this size), then ONNX Runtime's
    transformer optimizer, under the same lowered limits."""
    pytest.importorskip("optimum")
    artifact = edgegen.convert(hf_llama, tmp_path / "artifact", attention="standard")
    assert not protobuf_limit, protobuf_limit[0]
    _check_external(artifact)
    lm = edgegen.load(artifact, provider="cpu")
    assert _greedy(artifact) == [torch_greedy(hf_llama, lm.encode(p), 16) for p in PROMPTS]
    assert lm.artifact.manifest.validation["optimizer"]["passed"]   # the optimizer ran, not skipped on an error


def test_memory_estimate_reads_safetensors_headers_and_refuses_when_clearly_short(hf_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgegen.converters.lm.memory import check_memory, float32_weight_bytes
    from edgegen.errors import ConversionError

    model = AutoModelForCausalLM.from_pretrained(hf_llama)
    params = sum(p.numel() for p in model.state_dict().values() if p.dtype == torch.float32)
    assert float32_weight_bytes(hf_llama) == 4 * params          # counted from the headers, weights not read
    line = check_memory(hf_llama, available=64 * 10**9)
    assert line is not None and line.startswith("memory: about ") and line.endswith("; 64.0 GB available"), line
    with pytest.raises(ConversionError, match=r"needs about .* of memory .* and 1\.0 MB is available; .*more RAM"):
        check_memory(hf_llama, available=1 << 20)


def test_conversion_refuses_before_loading_weights_when_memory_is_clearly_short(
        hf_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.converters.lm import memory
    from edgegen.errors import ConversionError

    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    with pytest.raises(ConversionError, match="is available"):
        edgegen.convert(hf_llama, tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


@pytest.mark.parametrize("scheme", ["fp16", "int4"])
def test_quality_gate_exclusions_past_the_limit(hf_llama: Path, tmp_path: Path, protobuf_limit: list[str],
                                                scheme: str) -> None:
    """The gate's later attempts keep named MatMuls in float (fp16: with symbolic shape inference, which would
    serialize the whole model): the same external-data rules hold, and the graph runs."""
    import numpy as np
    import onnxruntime as ort

    from edgegen.converters.lm.quantize import quantize_decoder, weight_matmuls

    fp32 = edgegen.convert(hf_llama, tmp_path / "fp32") / "decoder.onnx"
    head, body = weight_matmuls(fp32, scheme)
    report = quantize_decoder(fp32, tmp_path / "q" / "decoder.onnx", scheme, exclude=body[:2])
    assert not protobuf_limit, protobuf_limit[0]
    assert report["files"] == ["decoder.onnx", "decoder.onnx.data"]
    assert set(body[:2]) <= set(report["float_matmuls"])
    session = ort.InferenceSession(str(tmp_path / "q" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    feed = {i.name: (np.array([[3, 5, 7]], np.int64) if i.name == "input_ids" else np.ones((1, 3), np.int64)
                     if i.name == "attention_mask" else np.array([0], np.int64) if i.name == "logits_to_keep"
                     else np.zeros((1, 2, 0, 16), np.float32)) for i in session.get_inputs()}
    ours, theirs = session.run(["logits"], feed)[0], reference.run(["logits"], feed)[0]
    assert np.abs(ours - theirs).max() < 0.1 * np.abs(theirs).max()


def test_gate_sensitivity_ranking_reads_external_data_graphs(hf_llama: Path, tmp_path: Path,
                                                             protobuf_limit: list[str]) -> None:
    """The gate's ranking (attempt 3 on) adds outputs to the fp32 and the quantized graph and runs both: with
    their weights external it must not serialize them, and it ranks every body MatMul."""
    from edgegen.converters.lm.quant_gate import ranked
    from edgegen.converters.lm.quantize import quantize_decoder, weight_matmuls

    fp32 = edgegen.convert(hf_llama, tmp_path / "fp32") / "decoder.onnx"
    quantized = tmp_path / "q" / "decoder_int4.onnx"
    quantize_decoder(fp32, quantized, "int4")
    _, body = weight_matmuls(fp32, "int4")
    (tmp_path / "scratch").mkdir()
    order = ranked(fp32, quantized, body, list(range(3, 40)), tmp_path / "scratch")
    assert not protobuf_limit, protobuf_limit[0]
    assert sorted(order) == sorted(body)
    assert sorted(p.name for p in fp32.parent.iterdir()) == sorted(
        ["decoder.onnx", "decoder.onnx.data", "edgegen.json", "tokenizer.json"])   # no augmented graph left
