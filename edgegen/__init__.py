"""edgegen: trained PyTorch generative models as quantized ONNX artifacts, run anywhere.

Importing this package is cheap: it loads neither torch nor onnxruntime.  The runtime is
imported by :func:`load`, the converters (which need the ``[convert]`` extra) by
:func:`convert`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.errors import (ArtifactError, CancelledError, ContextOverflowError, ConversionError, EdgegenError,
                            GraphLoadError, GraphMismatchError, IntegrityError, InvalidArgumentError, ManifestError,
                            ProviderError, RunTimeoutError, UnknownFamilyError, UnsupportedFormatError,
                            UnsupportedModelError)

__version__ = "0.1.0"

#: The types a user writes, importable from ``edgegen`` directly but loaded on first use (PEP 562), so that
#: ``import edgegen`` stays cheap: name -> the module that defines it.  Specs need no torch to import
#: (their converters do), and GenerationSettings needs only numpy.
_LAZY = {
    "GenerationSettings": "edgegen.runtimes.text.settings",
    "ChatSession": "edgegen.runtimes.text.chat",
    "ChatReply": "edgegen.runtimes.text.chat",
    "cancel_on": "edgegen.runtimes.run_control",      # a function, not a type: it loads onnxruntime
    "CausalLMSpec": "edgegen.converters.lm.spec",
    "RNNLMSpec": "edgegen.converters.rnn.spec",
    "DiffusionSpec": "edgegen.converters.diffusion.spec",
    "GANSpec": "edgegen.converters.image.spec",
    "VAESpec": "edgegen.converters.image.spec",
    "VQVAESpec": "edgegen.converters.image.spec",
    "FlowSpec": "edgegen.converters.flow.spec",
    "TabularSpec": "edgegen.converters.tabular.spec",
}

__all__ = ["ArtifactError", "CancelledError", "ContextOverflowError", "ConversionError", "EdgegenError",
           "GraphLoadError", "GraphMismatchError", "IntegrityError", "InvalidArgumentError", "ManifestError",
           "ProviderError", "RunTimeoutError", "UnknownFamilyError", "UnsupportedFormatError", "UnsupportedModelError",
           "__version__", "convert", "load", *_LAZY]

if TYPE_CHECKING:
    from edgegen.converters.diffusion.spec import DiffusionSpec
    from edgegen.converters.flow.spec import FlowSpec
    from edgegen.converters.image.spec import GANSpec, VAESpec, VQVAESpec
    from edgegen.converters.lm.spec import CausalLMSpec
    from edgegen.converters.rnn.spec import RNNLMSpec
    from edgegen.converters.tabular.spec import TabularSpec
    from edgegen.runtimes.registry import FamilyRuntime
    from edgegen.runtimes.text.settings import GenerationSettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgegen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value    # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load(path: str | os.PathLike[str], provider: str = "auto", *, threads: int | None = None, device_id: int = 0,
         free_dimensions: Mapping[str, int] | None = None, gpu_memory_limit: int | None = None,
         timeout: float | None = None) -> FamilyRuntime:
    """Open the artifact at ``path`` and return its family's runtime object.

    ``provider`` is ``"auto"`` (CUDA, then DirectML, then CPU), ``"cpu"``, ``"cuda"`` or
    ``"dml"``; ``threads`` caps ONNX Runtime's intra-op threads (default: all cores);
    ``device_id`` picks the GPU (CUDA, DirectML); ``free_dimensions`` fixes symbolic input
    dimensions for apps that always call with the same sizes (``{"batch": 1}``, or per graph
    ``{"denoiser.batch": 2}``: DirectML plans static shapes faster); ``gpu_memory_limit`` caps
    the CUDA arena (bytes); ``timeout`` is the most seconds one graph run may take (a run past it is
    stopped and raises :class:`RunTimeoutError`; default: no limit).  Every graph's checksum and
    inputs/outputs are verified before this returns.  To cancel a call from another thread, also in the
    middle of a graph run: ``with edgegen.cancel_on(event): model.sample(4)``, then ``event.set()``.
    """
    from edgegen.runtimes.registry import load_runtime

    return load_runtime(path, provider=provider, threads=threads, device_id=device_id,
                        free_dimensions=free_dimensions or {}, gpu_memory_limit=gpu_memory_limit, timeout=timeout)


def convert(source: Any, output: str | os.PathLike[str], *, overwrite: bool = False, optimize: bool = True,
            quantize: str = "auto", target: str = "cpu", min_psnr: float | None = None,
            max_ppl_increase: float | None = None, lm_head: str = "auto",
            report: Callable[[str], None] | None = None, attention: str = "auto",
            scheduler: str | None = None, vocoder: str | os.PathLike[str] | None = None,
            lora: Any = None) -> Path:
    """Convert a model (a Hugging Face directory, a spec such as ``CausalLMSpec``, or
    ``"file.py:function"``) into a validated artifact at ``output``; ``quantize``: auto (the
    family's measured default for ``target`` cpu, cuda or dml), none, fp16, int8, int4 (LMs)
    or int8-static (image models); ``min_psnr``: the image models' quality gate (dB of
    quantized samples vs fp32, default 30); ``max_ppl_increase``: the causal LMs' (% perplexity over
    fp32; default int8 2, int4 5, fp16 1); ``lm_head``: int8/int4's LM head, float, int8 or int4 (auto: int8);
    ``attention``: auto (gqa where it applies and the
    target is cpu), standard, or gqa (Hugging Face llama, mistral, qwen2 with a head size that is a
    multiple of 16: ONNX Runtime GroupQueryAttention layers); ``scheduler``: a diffusion artifact's default
    scheduler instead of the pipeline's own (an edgegen name or a diffusers class; other models refuse it);
    ``vocoder``: a SpeechT5 text-to-speech model's SpeechT5HifiGan directory (default: ``source/vocoder``);
    ``lora``: LoRAs to fuse into a Stable Diffusion / SDXL pipeline (``"FILE[:SCALE]"``, ``(file, scale)``, or a
    list of those).  Needs the ``[convert]`` extra."""
    with _needs_convert_extra():   # the converters import torch & co. as they go, not all up front
        from edgegen.converters.api import convert as _convert

        return _convert(source, output, overwrite=overwrite, optimize=optimize, quantize=quantize, target=target,
                        min_psnr=min_psnr, max_ppl_increase=max_ppl_increase, lm_head=lm_head, report=report,
                        attention=attention, scheduler=scheduler, vocoder=vocoder, lora=lora)


#: the top-level modules of the ``[convert]`` extra (pyproject.toml)
_CONVERT_EXTRA = ("torch", "onnx", "onnxscript", "optimum", "transformers", "diffusers", "safetensors")


@contextlib.contextmanager
def _needs_convert_extra() -> Iterator[None]:
    """Turn the import error of a runtime-only install (``pip install edgegen``, no ``[convert]``) into one
    line naming the extra to install; any other import error stays what it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        name = (exc.name or "").partition(".")[0]
        if name not in _CONVERT_EXTRA:
            raise
        raise EdgegenError(f"converting needs the [convert] extra ({name} is not installed): "
                           "pip install -c constraints.txt -e '.[convert]' in the edgegen checkout (or its wheel with "
                           "the [convert] extra)") from exc
