"""Which weight files edgegen loads: safetensors only, checked before torch or diffusers opens a folder (a pickle
runs whatever code it holds).  Torch-free, so a refusal needs no [convert] extra."""

from __future__ import annotations

from pathlib import Path

from edgegen.errors import ConversionError, UnsupportedModelError

__all__ = ["PICKLED", "PICKLED_SUFFIXES", "safetensors_only"]

#: weight files that are Python pickles: loading one runs whatever code it holds
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
#: the suffixes of those, and of other pickles a model may be handed over as (ctgan's save, joblib)
PICKLED_SUFFIXES = (*(pattern[1:] for pattern in PICKLED), ".pickle", ".joblib")


def safetensors_only(component: Path, what: str = "model") -> None:
    """Refuse a diffusers component folder whose weights are missing or only pickled, before diffusers loads it
    (``what``: the component, as the missing-weights message names it)."""
    if not component.is_dir() or any(component.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLED for p in component.glob(pattern))
    if pickled:
        raise UnsupportedModelError(f"{component} holds only pickled weights ({', '.join(pickled)}); edgegen loads "
                                    "safetensors only: save the model again with diffusers' "
                                    "save_pretrained(safe_serialization=True)")
    raise ConversionError(f"{component} has no weights (no *.safetensors file); save the {what} there with "
                          "save_pretrained")
