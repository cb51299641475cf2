"""edgegen: trained PyTorch generative models as quantized ONNX artifacts, run anywhere.

Importing this package is cheap: it loads neither torch nor onnxruntime.  The runtime is
imported by :func:`load`, the converters (which need the ``[convert]`` extra) by
:func:`convert`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from edgegen.errors import EdgegenError

__version__ = "0.1.0"
__all__ = ["EdgegenError", "__version__", "load"]

if TYPE_CHECKING:
    from edgegen.runtimes.registry import FamilyRuntime


def load(path: str | os.PathLike[str], provider: str = "auto", *, threads: int | None = None) -> FamilyRuntime:
    """Open the artifact at ``path`` and return its family's runtime object.

    ``provider`` is ``"auto"`` (CUDA, then DirectML, then CPU), ``"cpu"``, ``"cuda"`` or
    ``"dml"``; ``threads`` caps ONNX Runtime's intra-op threads (default: all cores).
    Every graph's checksum and inputs/outputs are verified before this returns.
    """
    from edgegen.runtimes.registry import load_runtime

    return load_runtime(path, provider=provider, threads=threads)
