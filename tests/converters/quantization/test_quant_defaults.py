"""``--quantize auto``: the family defaults, their size thresholds and targets, recorded in the manifest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import edgegen
import edgegen.cli
from edgegen.converters.quantization.defaults import CPU_RULES, graph_params, resolve
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.artifact import open_artifact
from edgegen import GenerationSettings
from tests_support import write_tiny_hf_lm

pytest.importorskip("optimum")


def test_rules_follow_the_measurements():
    assert resolve("causal-lm", "cpu", 124_000_000)[0] == "int8"            # GPT-2 small: 2.30x
    scheme, why = resolve("causal-lm", "cpu", 3_000_000)                      # pycode: int8 ran 0.88x
    assert scheme == "none" and "3.0M parameters < 50M" in why
    assert resolve("diffusion", "cpu", 35_700_000)[0] == "int8-static"     # DDPM-cifar10: 1.91x at 40.7 dB
    assert resolve("diffusion", "cpu", 327_000)[0] == "none"
    assert resolve("gan", "cpu", 10**9)[0] == "none" and "ConvTranspose" in resolve("gan", "cpu", 10**9)[1]
    for family in ("causal-lm", "diffusion", "gan", "vae", "vq-vae"):
        for target in ("cuda", "dml"):
            assert resolve(family, target, 1000)[0] == "fp16", (family, target)
    for family in ("flow", "rnn-lm"):
        assert resolve(family, "cuda", 10**9)[0] == "none"
    assert set(CPU_RULES) == {"causal-lm", "rnn-lm", "diffusion", "gan", "vae", "vq-vae", "flow"}
    with pytest.raises(InvalidArgumentError, match="target must be one of cpu, cuda, dml, got 'tpu'"):
        resolve("gan", "tpu", 1)


def test_graph_params_counts_float_initializers(tmp_path):
    w = onnx.numpy_helper.from_array(np.zeros((3, 5), np.float32), "w")
    i = onnx.numpy_helper.from_array(np.zeros((7,), np.int64), "i")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])], [w, i])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "g.onnx"))
    assert graph_params(tmp_path / "g.onnx") == 15


def test_auto_keeps_a_small_lm_fp32_on_cpu_and_picks_fp16_for_cuda(tmp_path):
    hf = write_tiny_hf_lm(tmp_path / "hf", "gpt2")
    cpu = open_artifact(edgegen.convert(hf, tmp_path / "cpu", optimize=False)).manifest   # quantize defaults to auto
    assert cpu.graphs["decoder"].precision == "fp32" and "quantization" not in cpu.validation
    assert cpu.validation["quantization_default"]["scheme"] == "none"
    assert "< 50M" in cpu.validation["quantization_default"]["reason"]

    result = CliRunner().invoke(edgegen.cli.cli, ["convert", str(hf), "-o", str(tmp_path / "cuda"), "--no-optimize",
                                                  "--target", "cuda"])
    assert result.exit_code == 0, result.output
    assert "quantize auto: fp16" in result.output
    cuda = open_artifact(tmp_path / "cuda").manifest
    assert cuda.graphs["decoder"].precision == "fp16"
    assert cuda.validation["quantization_default"] == {"target": "cuda", "scheme": "fp16",
                                                       "reason": cuda.validation["quantization_default"]["reason"]}
    assert cuda.validation["quantization"]["top1_agreement"] >= 0.98     # measured against fp32 as always
    lm = edgegen.load(tmp_path / "cuda", provider="cpu")                   # fp16 artifacts run on CPU for testing
    done = lm.complete(["def f"], GenerationSettings(max_new_tokens=4))[0]
    assert done.finish_reason in ("length", "stop") and isinstance(done.text, str)


def test_bad_target_is_refused_before_any_work(tmp_path):
    with pytest.raises(InvalidArgumentError, match="target must be one of cpu, cuda, dml"):
        edgegen.convert(tmp_path / "missing", tmp_path / "out", target="gpu")
    result = CliRunner().invoke(edgegen.cli.cli, ["convert", str(tmp_path), "-o", str(tmp_path / "o"),
                                                  "--target", "gpu"])
    assert result.exit_code == 2 and "'gpu' is not one of 'cpu', 'cuda', 'dml'" in result.output


def test_auto_is_recorded_for_image_models_too(tmp_path):
    from image_support import dcgan_spec

    lines: list[str] = []
    cpu = open_artifact(edgegen.convert(dcgan_spec(), tmp_path / "cpu", report=lines.append)).manifest
    assert cpu.validation["quantization_default"]["scheme"] == "none" and "quantization" not in cpu.validation
    assert "ConvTranspose" in cpu.validation["quantization_default"]["reason"]
    assert any(line.startswith("quantize auto: none") for line in lines)
    cuda = open_artifact(edgegen.convert(dcgan_spec(), tmp_path / "cuda", target="cuda")).manifest
    assert cuda.validation["quantization_default"]["scheme"] == "fp16" and cuda.graphs["generator"].precision == "fp16"
