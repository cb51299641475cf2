"""LoRA fusing for diffusers pipeline directories: ``--lora FILE[:SCALE]`` (repeatable).

Each file is loaded by diffusers' own loader (``load_lora_weights``: diffusers' and PEFT's key layouts, kohya's
and others converted; it runs on PEFT) as an adapter of a pipeline built from the components edgegen loaded;
the adapters are weighted by their scales (``set_adapters``), fused into the weights (``fuse_lora``) and
unloaded, so the exported graphs are the plain architecture with the fused weights.  A file whose LoRA layers
do not all land on a module of this pipeline is refused (a LoRA for another base model is not fused in part).
What was fused (file name, sha256, scale, layers per component) goes into the manifest's ``validation.lora``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError

__all__ = ["fuse_loras", "parse_loras"]

#: the down (A) matrix of one LoRA layer, in the key layouts diffusers reads
_DOWN = re.compile(r"(lora_down|lora\.down|lora_A|lora_linear_layer\.down)(\.[^.]+)?\.weight$")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def parse_loras(value: Any) -> list[tuple[Path, float]]:
    """``"FILE"``, ``"FILE:SCALE"``, ``(file, scale)`` or a list of those -> [(file, scale)], each file checked."""
    items = value if isinstance(value, (list, tuple)) and not _is_pair(value) else [value]
    loras = []
    for item in items:
        if _is_pair(item):
            file, scale = Path(item[0]), item[1]
        elif isinstance(item, (str, os.PathLike)):
            file, scale = _split(os.fspath(item))
        else:
            raise InvalidArgumentError(f"a LoRA is FILE, FILE:SCALE or (file, scale), not {type(item).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -100 <= float(scale) <= 100:
            raise InvalidArgumentError(f"the scale of LoRA {file} must be a number from -100 to 100, got {scale!r}")
        if not file.is_file():
            raise InvalidArgumentError(f"LoRA file {file} does not exist; give a .safetensors file "
                                       "(e.g. pytorch_lora_weights.safetensors)")
        if file.suffix.lower() in _PICKLES:
            raise UnsupportedModelError(f"{file} is a pickle: loading one runs whatever code it holds, so edgegen does "
                                        "not open it; convert the LoRA to .safetensors")
        if file.suffix.lower() != ".safetensors":
            raise InvalidArgumentError(f"LoRA file {file} is not a .safetensors file")
        loras.append((file, float(scale)))
    return loras


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, os.PathLike)) \
        and not isinstance(value[1], (str, os.PathLike))


def _split(text: str) -> tuple[Path, float]:
    """FILE[:SCALE]; a colon that a number does not follow is the path's (C:\\loras\\x.safetensors)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def _pairs(file: Path) -> int:
    """How many LoRA layers ``file`` holds (its down matrices)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return sum(1 for key in f.keys() if _DOWN.search(key))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise ConversionError(f"LoRA file {file} is not a readable safetensors file "
                              f"({str(exc).splitlines()[0][:200]})") from None


def fuse_loras(pipeline: str, components: dict[str, Any], loras: list[tuple[Path, float]]) -> list[dict[str, Any]]:
    """Fuse ``loras`` into the loaded ``components`` (modified in place) of a ``pipeline`` ("sd" or "sdxl")."""
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading runs on PEFT)
    except ImportError:
        raise InvalidArgumentError("fusing a LoRA needs peft: pip install 'edgegen[convert]'") from None
    import diffusers

    from edgegen.runtimes.artifact import sha256_file

    cls = diffusers.StableDiffusionXLPipeline if pipeline == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if pipeline == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                           "requires_safety_checker": False}
    pipe = cls(**components, scheduler=diffusers.DDIMScheduler(), **extra)
    names, records = [], []
    for i, (file, scale) in enumerate(loras):
        name, pairs = f"edgegen_{i}", _pairs(file)
        if pairs == 0:
            raise ConversionError(f"LoRA file {file} holds no LoRA layer (no lora_A / lora_down / lora.down weights)")
        level = diffusers.utils.logging.get_verbosity()
        diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)   # it logs the error it raises
        try:
            pipe.load_lora_weights(str(file), adapter_name=name)
        except Exception as exc:  # noqa: BLE001  (diffusers / PEFT raise ValueError, KeyError, RuntimeError...)
            text = " ".join(str(exc).split())
            if "not found in the base model" in text:
                raise ConversionError(f"LoRA {file} targets modules this pipeline does not have; it was trained for "
                                      "another base model") from None
            raise ConversionError(f"diffusers could not load LoRA {file} into this pipeline: "
                                  f"{text[:300] or type(exc).__name__}") from None
        finally:
            diffusers.utils.logging.set_verbosity(level)
        layers = {part: sum(1 for m in module.modules() if name in getattr(m, "lora_A", {}))
                  for part, module in components.items() if hasattr(module, "modules")}
        layers = {part: n for part, n in layers.items() if n}
        if sum(layers.values()) != pairs:
            raise ConversionError(f"LoRA {file} has {pairs} layers, {sum(layers.values())} of which diffusers loaded into "
                                  "this pipeline's modules: it was trained for another base model, or holds layers "
                                  "diffusers does not load; edgegen fuses a LoRA whole or not at all")
        names.append(name)
        records.append({"file": file.name, "sha256": sha256_file(file), "scale": scale, "layers": layers})
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return records
