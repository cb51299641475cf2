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
    """Raise InvalidArgumentError if ``need`` bytes exceed the usable share of available memory."""
    available = available_bytes() if available is None else available
    if available is not None and need > HEADROOM * available:
        raise InvalidArgumentError(f"{what} needs about {_human(need)} but only {_human(available)} of memory is "
                                   f"available; {fix}")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
