"""What every converter records and quiets: the versions of the libraries that made an artifact (the
manifest's ``source.libraries``), and the chatter of those libraries during a conversion."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    for name in ("transformers", "optimum", "torch.onnx", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "onnx", "onnxruntime", "optimum", "optimum-onnx", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out
