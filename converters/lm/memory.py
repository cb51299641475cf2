"""How much memory converting a Hugging Face causal LM takes, estimated before its weights load, and a refusal
when the machine clearly has too little.

The conversion holds the weights in PyTorch as float32 while it computes the reference figures and exports
(the export writes each tensor to external data as it goes); then the PyTorch model is released, and ONNX
Runtime runs the exported graph for validation (its weights memory-mapped, and its MatMul kernels' packed
copies).  Measured with benchmarks/convert_memory.py on TinyLlama-shaped random-weight checkpoints (4.4 GB
float32, gqa attention): PEAK_PER_WEIGHT_BYTE.  bf16/fp16 checkpoints are loaded as float32, so their peak is
about 2.5x their own bytes.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from edgegen.errors import ConversionError

#: Peak RSS per byte of float32 weights, rounded up; the estimate reported before the weights load.  Measured
#: (benchmarks/convert_memory.py, TinyLlama-shaped 1.1B fp32, 4.4 GB): 5.27 GB default flags, 5.29 GB -q int4
#: (the PyTorch model during the reference run and the export, then ONNX Runtime's validation session).
PEAK_PER_WEIGHT_BYTE = 1.25
#: Refused only when even the PyTorch model (float32, plus this share for activations and libraries) cannot fit:
#: the estimate above is reported, not enforced (a page cache shrinks, memory-mapped weights can be re-read).
MINIMUM_PER_WEIGHT_BYTE = 1.1
_BASE_BYTES = 600 << 20   # Python, torch, transformers, ONNX Runtime loaded
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPE_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def float32_weight_bytes(model_dir: Path) -> int | None:
    """Bytes of the checkpoint's float weights once loaded as float32: safetensors headers read (no weights),
    or ``.bin`` file sizes scaled by config.json's ``torch_dtype``; None when there are no weight files."""
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        total = 0
        for path in files:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    count = math.prod(entry["shape"])
                    total += count * (4 if entry["dtype"].startswith(("F", "BF")) else _ITEMSIZE.get(entry["dtype"], 4))
        return total
    bins = sorted(model_dir.glob("*.bin"))
    if not bins:
        return None
    try:
        dtype = json.loads((model_dir / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        dtype = "float32"
    return sum(p.stat().st_size for p in bins) * 4 // _TORCH_DTYPE_SIZE.get(str(dtype), 4)


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_memory(model_dir: Path, available: int | None = None) -> str | None:
    """The one-line estimate to report ("memory: ..."), or None without weight files; raises ConversionError
    naming the figures when the float32 model alone cannot fit in ``available`` (default: MemAvailable)."""
    weights = float32_weight_bytes(model_dir)
    if weights is None:
        return None
    available = available_bytes() if available is None else available
    estimate = _BASE_BYTES + PEAK_PER_WEIGHT_BYTE * weights
    minimum = _BASE_BYTES + MINIMUM_PER_WEIGHT_BYTE * weights
    if available is not None and minimum > available:
        raise ConversionError(
            f"converting {model_dir} needs about {_gb(estimate)} of memory (at least {_gb(minimum)}: its "
            f"{_gb(weights)} of weights as float32 in PyTorch) and {_gb(available)} is available; close other "
            "programs or convert on a machine with more RAM (-q int4 shrinks the artifact, not the conversion)")
    line = f"memory: about {_gb(estimate)} at peak for {_gb(weights)} of float32 weights"
    return line + (f"; {_gb(available)} available" if available is not None else "")
