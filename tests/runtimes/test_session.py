"""Provider resolution and the per-provider session settings."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from edgegen.errors import GraphLoadError, InvalidArgumentError, ProviderError
from edgegen.runtimes.session import (AUTO_ORDER, SERIALIZED_PROVIDERS, GuardedSession, SessionConfig,
                                      available_providers, create_session, resolve_provider, session_options)
from tests_support import tiny_graph


@pytest.mark.parametrize("offered, expected", [
    (["cpu"], "cpu"),
    (["dml", "cpu"], "dml"),
    (["cuda", "cpu"], "cuda"),
    (["cuda", "dml", "cpu"], "cuda"),
])
def test_auto_prefers_cuda_then_dml_then_cpu(offered, expected):
    assert resolve_provider("auto", offered) == expected


def test_explicit_provider_present():
    assert resolve_provider("cpu", ["cuda", "cpu"]) == "cpu"
    assert resolve_provider("dml", ["dml", "cpu"]) == "dml"


@pytest.mark.parametrize("provider, package", [("cuda", "onnxruntime-gpu"), ("dml", "onnxruntime-directml")])
def test_missing_provider_names_the_package(provider, package):
    with pytest.raises(ProviderError) as info:
        resolve_provider(provider, ["cpu"])
    message = str(info.value)
    assert f"provider {provider!r} is not available" in message
    assert f"pip install {package}" in message
    assert "pip uninstall -y" in message  # never two onnxruntime builds side by side
    assert "\n" not in message


def test_unknown_provider():
    with pytest.raises(InvalidArgumentError, match="unknown provider 'tpu'; choose one of auto, cpu, cuda, dml"):
        resolve_provider("tpu", ["cpu"])


def test_no_provider_at_all():
    with pytest.raises(ProviderError, match="offers no usable execution provider"):
        resolve_provider("auto", [])


def test_installed_build_offers_cpu():
    offered = available_providers()
    assert "cpu" in offered
    assert offered == [p for p in AUTO_ORDER if p in offered]  # best first


def test_dml_settings():
    opts, providers = session_options(SessionConfig(threads=2), "dml")
    assert opts.enable_mem_pattern is False
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert providers == [("DmlExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def test_directml_sessions_run_one_call_at_a_time(tmp_path):
    import contextlib
    import threading

    import numpy as np
    import onnx

    assert SERIALIZED_PROVIDERS == {"dml"}                     # every family's DirectML sessions, not only LMs'
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_graph(), str(path))
    plain = create_session(path, SessionConfig(), "cpu", label="g")   # guarded (time limit, cancel), not serialized
    assert type(plain) is GuardedSession and isinstance(plain.run_lock, contextlib.nullcontext)
    assert type(create_session(path, SessionConfig(free_dimensions={"batch": 2}), "cpu", label="g")) is GuardedSession
    assert isinstance(GuardedSession(str(path), providers=["CPUExecutionProvider"]).run_lock, contextlib.nullcontext)
    session = GuardedSession(str(path), providers=["CPUExecutionProvider"], serialize=True)
    x = np.ones((2, 4), np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y")
    results = {}                                               # by call: the threads finish in any order
    calls = [lambda: results.__setitem__("run", session.run(["y"], {"x": x})[0]),
             lambda: results.__setitem__("iobinding", session.run_with_iobinding(binding)),
             lambda: results.__setitem__("ort_values", session.run_with_ort_values(
                 ["y"], {"x": ort.OrtValue.ortvalue_from_numpy(x)}))]
    with session.run_lock:                                     # another call is running: each must wait for it
        threads = [threading.Thread(target=call) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(0.3)
        assert all(thread.is_alive() for thread in threads) and results == {}
    for thread in threads:
        thread.join(10)
    assert len(results) == 3 and not any(thread.is_alive() for thread in threads)
    np.testing.assert_array_equal(results["run"], x + np.arange(4))
    np.testing.assert_array_equal(binding.copy_outputs_to_cpu()[0], x + np.arange(4))


def test_cuda_settings():
    opts, providers = session_options(SessionConfig(device_id=1), "cuda")
    name, options = providers[0]
    assert name == "CUDAExecutionProvider" and options["device_id"] == 1
    assert "gpu_mem_limit" not in options
    _, providers = session_options(SessionConfig(gpu_memory_limit=2 ** 30), "cuda")
    assert providers[0][1]["gpu_mem_limit"] == 2 ** 30
    assert providers[-1] == "CPUExecutionProvider"
    assert opts.enable_mem_pattern is True  # only DirectML turns it off


def test_cpu_settings():
    opts, providers = session_options(SessionConfig(threads=3, optimization="basic"), "cpu")
    assert providers == ["CPUExecutionProvider"]
    assert opts.intra_op_num_threads == 3
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.enable_mem_pattern is True


def test_lean_settings_for_pipelines_of_activation_heavy_graphs():
    opts, _ = session_options(SessionConfig(), "cpu", memory_pattern=False, shared_cpu_arena=True)
    assert opts.enable_mem_pattern is False and opts.get_session_config_entry("session.use_env_allocators") == "1"
    again, _ = session_options(SessionConfig(), "cpu", shared_cpu_arena=True)   # the arena is registered once
    assert again.get_session_config_entry("session.use_env_allocators") == "1"


@pytest.mark.parametrize("kwargs, message", [
    ({"threads": 0}, "threads must be a positive integer"),
    ({"optimization": "max"}, "optimization 'max' is not one of"),
    ({"device_id": -1}, "device_id must be an integer >= 0"),
    ({"free_dimensions": ["batch"]}, "free_dimensions must map dimension names to sizes"),
    ({"free_dimensions": {"batch": 0}}, r"free_dimensions\['batch'\] must be a positive integer"),
    ({"free_dimensions": {"a.b.c": 1}}, "must be a dimension name .'batch'. or role.name"),
    ({"gpu_memory_limit": -5}, "gpu_memory_limit must be a positive number of bytes"),
])
def test_bad_session_config(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        SessionConfig(**kwargs)


@pytest.mark.parametrize("kwargs, expected", [
    ({"op": "FancyAdd", "domain": "com.example", "opset": 1}, ["op com.example:FancyAdd (artifact opset 7)"]),
    ({"op": "FancyAdd", "opset": 17}, ["no op FancyAdd at opset 17"]),
    ({"opset": 99}, ["uses opset 99", "supports opsets up to"]),
])
def test_unloadable_graph_names_op_and_opset(tmp_path, kwargs, expected):
    import onnx

    model = tiny_graph(**kwargs)
    if kwargs.get("domain"):
        model.opset_import.append(onnx.helper.make_opsetid("", 17))
    path = tmp_path / "bad.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(GraphLoadError) as info:
        create_session(path, SessionConfig(), "cpu", label="graph 'generator'", opset=7)
    message = str(info.value)
    assert message.startswith("graph 'generator': ") and "\n" not in message
    for part in expected:
        assert part in message
    assert "onnxruntime" in message and ("upgrade" in message or "custom op" in message)


def test_corrupt_graph_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf")
    with pytest.raises(GraphLoadError, match="cannot load it .* re-convert it"):
        create_session(path, SessionConfig(), "cpu", label="graph 'generator'")


def test_free_dimensions_apply_per_role_and_fix_the_sessions_shapes(tiny_artifact):
    import numpy as np

    from edgegen.runtimes.artifact import open_artifact, open_sessions

    def load(**free):   # open every graph and cross-check its I/O with the manifest, as edgegen.load does
        return open_sessions(open_artifact(tiny_artifact), SessionConfig(provider="cpu", free_dimensions=free))[1]

    config = SessionConfig(free_dimensions={"batch": 2, "other.batch": 5, "generator.seq": 7})
    assert config.dimensions_for("generator") == {"batch": 2, "seq": 7}
    assert config.dimensions_for("other") == {"batch": 5} and config.dimensions_for(None) == {"batch": 2}

    session = load(batch=2)["generator"]                                   # the I/O check accepts it
    assert session.get_inputs()[0].shape == [2, 4]
    assert load()["generator"].get_inputs()[0].shape[0] == "batch"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], x + np.arange(4))
    binding = session.io_binding()
    binding.bind_cpu_input("x", np.ones((3, 4), np.float32))
    binding.bind_output("y")
    for call in (lambda: session.run(["y"], {"x": np.ones((3, 4), np.float32)}),
                 lambda: session.run_with_iobinding(binding)):
        with pytest.raises(InvalidArgumentError, match=r"opened with free_dimensions \{'batch': 2\}, and input 'x' "
                                                       r"breaks them \(index: 0 Got: 3 Expected: 2\); call it with"):
            call()
    with pytest.raises(InvalidArgumentError, match="'vae_decoder.batch': this artifact has no graph 'vae_decoder' "
                                                   r"\(it has generator\)"):
        load(**{"vae_decoder.batch": 2})
    with pytest.raises(InvalidArgumentError, match=r"'bacth': this artifact's graphs have no input dimension 'bacth' "
                                                   r"\(known: batch; edgegen info --json"):
        load(bacth=1)                                          # ONNX Runtime would ignore it without a word
    with pytest.raises(InvalidArgumentError, match="graph 'generator' has no input dimension 'seq'"):
        load(**{"generator.seq": 2})
