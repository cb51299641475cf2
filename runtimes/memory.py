"""Fail fast, with the estimate, when a request would not fit in memory.

A generation's working memory is dominated by what grows with batch and length (the KV
cache, the logits of the prompt); the weights are already loaded.  Requests are checked
against the memory available now (Linux ``MemAvailable``, Windows
``GlobalMemoryStatusEx``, else ``sysconf``), with headroom, before anything is allocated.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from edgegen.errors import InvalidArgumentError

#: Use at most this share of the memory available when the request starts.
HEADROOM = 0.8
#: What a graph run holds besides its inputs and outputs, as float32 values per value of its output, in
#: the image families' estimates.  ONNX Runtime does not say what a run will take: the bundled 8x8 digit
#: models measure about 10 (vae), 100 (gan, vq-vae) and 600 (the ddpm UNet, per step's batch) such values.
#: Near the low end on purpose: the estimates refuse what cannot fit and seldom what could, and a request
#: they allow may still run out near their limit (an estimate close to a lower bound, not a promise).
GRAPH_WORKING_VALUES = 8


def available_bytes() -> int | None:
    """Memory available to a new allocation now, or None if this platform does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        status = _windows_memory()
        return None if status is None else int(status.ullAvailPhys)
    return _sysconf_bytes("SC_AVPHYS_PAGES")


def total_bytes() -> int | None:
    """Physical memory of this machine, or None if this platform does not say."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        status = _windows_memory()
        return None if status is None else int(status.ullTotalPhys)
    return _sysconf_bytes("SC_PHYS_PAGES")


def _sysconf_bytes(pages: str) -> int | None:
    try:
        return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _windows_memory() -> Any:  # pragma: no cover - exercised on Windows only
    """GlobalMemoryStatusEx's MEMORYSTATUSEX, or None."""
    import ctypes

    class _Status(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = _Status()
    status.dwLength = ctypes.sizeof(_Status)
    return status if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None


def check_fits(need: int, what: str, fix: str, available: int | None = None) -> None:
    """Raise InvalidArgumentError if ``need`` bytes exceed the usable share of available memory (or,
    where the platform does not say what is available, what a 64-bit address space can hold)."""
    available = available_bytes() if available is None else available
    if available is not None and need > HEADROOM * available:
        raise InvalidArgumentError(f"{what} needs about {_human(need)} but only {_human(available)} of memory is "
                                   f"available; {fix}")
    if need > sys.maxsize:
        raise InvalidArgumentError(f"{what} needs about {_human(need)}, more than any machine can address; {fix}")


def check_count_fits(count: int, per_item: int, action: str, noun: str = "images",
                     available: int | None = None) -> None:
    """Refuse ``action`` on ``count`` items of about ``per_item`` bytes each (all held at once) when they
    cannot fit; the message says how many would.  Integers throughout: 10**20 images is an estimate, not an
    overflow."""
    what = f"{action} {count_text(count)} {noun}"
    available = available_bytes() if available is None else available
    most = None if available is None else int(HEADROOM * available) // max(per_item, 1)
    if most is None:
        fix = f"ask for fewer {noun}"
    elif most < 1:
        fix = f"even one of these {noun} does not fit: free memory, or use a machine with more"
    else:
        fix = f"ask for at most {most} {noun} at a time (several runs with different seeds draw more)"
    check_fits(count * per_item, what, fix, available)


def count_text(count: int) -> str:
    """A count for a message: the number, or its order of magnitude when huge (10**400 stays short)."""
    return str(count) if count < 10**12 else f"about 10^{_digits(count) - 1}"


def _digits(n: int) -> int:
    """Decimal digits of n > 0, without str() (which refuses integers of more than 4300 digits)."""
    digits = max(1, int(n.bit_length() * 0.30103))
    return digits + (n >= 10**digits)


def _human(size: float) -> str:
    if size >= 1024**6:   # no float for a count of 10**400 images, say
        return f"10^{_digits(int(size)) - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"
