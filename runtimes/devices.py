"""The devices behind the execution providers: names and memory where something exposes them.

Sources, each optional (a missing one is skipped, never an error):

- ONNX Runtime's own device discovery (``onnxruntime.get_ep_devices()``, 1.22+): which provider
  runs on which hardware (type, vendor, PCI ids, and the metadata the provider adds: DirectML
  puts the adapter's description and LUID there on Windows);
- NVIDIA's management library (NVML, ``libnvidia-ml.so.1`` / ``nvml.dll``, shipped with the
  driver) through ctypes: each GPU's name and total/free memory, without torch or CUDA toolkits;
- the CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``) and the memory this
  process may use (:func:`edgegen.runtimes.memory.available_bytes`).
"""

from __future__ import annotations

import ctypes
import platform
import sys
from dataclasses import dataclass, field
from typing import Any


NVIDIA = 0x10DE   # PCI vendor id


@dataclass(frozen=True)
class Device:
    kind: str                                   # "cpu" | "gpu" | "npu"
    name: str
    providers: tuple[str, ...] = ()             # onnxruntime provider names that run on it
    memory_total: int | None = None             # bytes
    memory_free: int | None = None              # bytes
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "providers": list(self.providers),
                "memory_total": self.memory_total, "memory_free": self.memory_free, "details": self.details}


def ep_devices(ort: Any = None) -> list[dict[str, Any]]:
    """ONNX Runtime's device discovery, as plain dicts (empty where the build has none)."""
    if ort is None:
        import onnxruntime as ort
    try:
        found = ort.get_ep_devices()
    except Exception:  # noqa: BLE001  (older builds lack it; a provider may fail to enumerate)
        return []
    rows = []
    for d in found:
        hw = d.device
        rows.append({"provider": d.ep_name, "type": str(hw.type).rsplit(".", 1)[-1].lower(), "vendor": hw.vendor,
                     "vendor_id": hw.vendor_id, "device_id": hw.device_id, "metadata": dict(hw.metadata or {}),
                     "provider_metadata": dict(d.ep_metadata or {})})
    return rows


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load_nvml() -> Any:
    names = ("nvml.dll",) if sys.platform == "win32" else ("libnvidia-ml.so.1", "libnvidia-ml.so")
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def nvidia_gpus(nvml: Any = None) -> list[Device]:
    """Each NVIDIA GPU's name and memory through NVML; empty without the driver's library."""
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None or nvml.nvmlInit_v2() != 0:
        return []
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        gpus = []
        for i in range(count.value):
            handle, name, mem = ctypes.c_void_p(), ctypes.create_string_buffer(96), _NvmlMemory()
            if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                continue
            got_name = nvml.nvmlDeviceGetName(handle, name, len(name)) == 0
            got_mem = nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == 0
            gpus.append(Device("gpu", name.value.decode(errors="replace") if got_name else f"NVIDIA GPU {i}",
                               memory_total=mem.total if got_mem else None,
                               memory_free=mem.free if got_mem else None, details={"cuda_device_id": i}))
        return gpus
    finally:
        nvml.nvmlShutdown()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def devices(available: list[str] | None = None, ort: Any = None) -> list[Device]:
    """The CPU, then each GPU/NPU that ONNX Runtime or NVML reports, with the providers that use it.
    ``available``: the onnxruntime provider names this build offers (for the CUDA mapping)."""
    from edgegen.runtimes.memory import available_bytes, total_bytes

    found = ep_devices(ort)
    cpu_providers = tuple(r["provider"] for r in found if r["type"] == "cpu") or ("CPUExecutionProvider",)
    out = [Device("cpu", cpu_name(), cpu_providers, memory_total=total_bytes(), memory_free=available_bytes())]
    nvidia = nvidia_gpus()
    cuda = ("CUDAExecutionProvider",) if available and "CUDAExecutionProvider" in available else ()
    # ORT lists a device once per provider: merge by hardware; NVIDIA GPUs take their names from NVML
    merged: dict[tuple, dict[str, Any]] = {}
    for row in found:
        if row["type"] != "cpu":
            key = (row["type"], row["vendor_id"], row["device_id"])
            entry = merged.setdefault(key, {**row, "providers": []})
            entry["providers"].append(row["provider"])
    on_nvidia = tuple(p for (_, vendor, _), e in merged.items() if vendor == NVIDIA and nvidia for p in e["providers"])
    out += [Device(g.kind, g.name, tuple(dict.fromkeys(cuda + on_nvidia)), g.memory_total, g.memory_free, g.details)
            for g in nvidia]
    for (kind, vendor, device_id), e in merged.items():
        if vendor == NVIDIA and nvidia:
            continue
        meta = e["metadata"]
        name = meta.get("Description") or meta.get("DeviceName") or f"{e['vendor']} {kind} {device_id:#x}"
        out.append(Device(kind, name, tuple(e["providers"]), details={"vendor": e["vendor"], **meta}))
    return out
