"""Device reporting for `edgegen providers`: the CPU always, GPUs from ORT's discovery and NVML, merged."""

from __future__ import annotations

import ctypes
import json
from types import SimpleNamespace

from click.testing import CliRunner

from edgegen.runtimes import devices as dev


def test_the_cpu_is_reported_with_its_name_and_memory():
    cpu = dev.devices()[0]
    assert cpu.kind == "cpu" and cpu.name and "CPUExecutionProvider" in cpu.providers
    assert cpu.memory_total is None or cpu.memory_total > 2**28
    assert cpu.memory_free is None or 0 < cpu.memory_free <= (cpu.memory_total or cpu.memory_free)


def _hw(kind, vendor, vendor_id, device_id, **metadata):
    return SimpleNamespace(type=f"OrtHardwareDeviceType.{kind}", vendor=vendor, vendor_id=vendor_id,
                           device_id=device_id, metadata=metadata)


def _ort(*rows):
    return SimpleNamespace(get_ep_devices=lambda: [SimpleNamespace(ep_name=p, device=hw, ep_metadata={})
                                                   for p, hw in rows])


def test_one_gpu_listed_by_two_providers_is_one_device_with_its_description(monkeypatch):
    monkeypatch.setattr(dev, "nvidia_gpus", lambda: [])
    amd = _hw("GPU", "AMD", 0x1002, 0x73BF, Description="AMD Radeon RX 6800")
    fake = _ort(("CPUExecutionProvider", _hw("CPU", "AMD", 4130, 0)), ("DmlExecutionProvider", amd),
                ("MIGraphXExecutionProvider", amd), ("OpenVINOExecutionProvider", _hw("NPU", "Intel", 0x8086, 1)))
    found = dev.devices(ort=fake)
    assert [d.kind for d in found] == ["cpu", "gpu", "npu"]
    assert found[1].name == "AMD Radeon RX 6800"
    assert found[1].providers == ("DmlExecutionProvider", "MIGraphXExecutionProvider")
    assert found[2].name == "Intel npu 0x1" and found[2].providers == ("OpenVINOExecutionProvider",)


class FakeNVML:
    """NVML's C API as ctypes calls it: out-parameters through byref()."""

    def __init__(self, gpus):
        self.gpus, self.shut = gpus, False

    def nvmlInit_v2(self):
        return 0

    def nvmlShutdown(self):
        self.shut = True
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        count._obj.value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, i, handle):
        handle._obj.value = i + 1
        return 0

    def nvmlDeviceGetName(self, handle, buf, size):
        ctypes.memmove(buf, self.gpus[handle.value - 1][0].encode() + b"\0", len(self.gpus[handle.value - 1][0]) + 1)
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, mem):
        total, free = self.gpus[handle.value - 1][1:]
        if total is None:
            return 999   # NVML_ERROR_UNKNOWN: the name still shows, memory unknown
        mem._obj.total, mem._obj.free = total, free
        return 0


def test_nvidia_gpus_come_from_nvml_and_own_the_cuda_provider(monkeypatch):
    nvml = FakeNVML([("NVIDIA H100 80GB HBM3", 80 * 2**30, 79 * 2**30), ("NVIDIA L4", None, None)])
    assert [(g.name, g.memory_total) for g in dev.nvidia_gpus(nvml)] == [("NVIDIA H100 80GB HBM3", 80 * 2**30),
                                                                        ("NVIDIA L4", None)]
    assert nvml.shut
    real = dev.nvidia_gpus
    monkeypatch.setattr(dev, "nvidia_gpus", lambda: real(FakeNVML([("NVIDIA H100", 2**36, 2**35)])))
    fake = _ort(("DmlExecutionProvider", _hw("GPU", "NVIDIA", dev.NVIDIA, 0x2330)))
    found = dev.devices(["CUDAExecutionProvider", "CPUExecutionProvider"], ort=fake)
    assert [(d.name, d.providers) for d in found[1:]] == [("NVIDIA H100", ("CUDAExecutionProvider",
                                                                           "DmlExecutionProvider"))]


def test_no_nvml_and_no_discovery_means_just_the_cpu(monkeypatch):
    monkeypatch.setattr(dev, "_load_nvml", lambda: None)
    broken = SimpleNamespace(get_ep_devices=lambda: (_ for _ in ()).throw(RuntimeError("no discovery")))
    assert dev.nvidia_gpus() == [] and [d.kind for d in dev.devices(ort=broken)] == ["cpu"]


def test_providers_command_lists_devices():
    from edgegen.cli import cli

    out = CliRunner().invoke(cli, ["providers"])
    assert out.exit_code == 0 and "  device cpu " in out.output
    report = json.loads(CliRunner().invoke(cli, ["providers", "--json"]).output)
    assert report["devices"][0]["kind"] == "cpu" and "CPUExecutionProvider" in report["devices"][0]["providers"]
