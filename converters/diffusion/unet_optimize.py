"""ONNX Runtime's transformer optimizer on an exported UNet denoiser, kept only when it is exact and faster.

``onnxruntime.transformers.optimizer`` (model type ``unet``) fuses a diffusers UNet's attention
blocks into ``MultiHeadAttention`` / ``Attention`` and its LayerNorm/GELU chains into
``SkipLayerNormalization`` / ``BiasGelu``.  Two things stand in the way as shipped (onnxruntime
1.32), both handled here:

- its ``get_num_heads`` calls ``int()`` on a shape-[1] array, which numpy 2 refuses ("only
  0-dimensional arrays can be converted"), so the fusion of a torch 2 export dies with a
  TypeError; :func:`_num_heads_fix` retries that one call with the array's single element;
- its unet defaults also emit CUDA-only contrib ops (``GroupNorm``, ``SkipGroupNorm``,
  ``NhwcConv``, ``BiasSplitGelu``, ``BiasAdd``) that the CPU provider cannot run; those fusions
  are switched off (:data:`CPU_ONLY_OFF`).

The fused graph replaces the exported one only when it matches it (max abs error relative to
the output's scale <= :data:`MAX_ERROR`) and is not clearly slower (median of interleaved runs at the
sampling loop's batch); the figures go into the manifest either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.converters.timing import interleaved_ms

log = logging.getLogger(__name__)

#: fusions whose ops only the CUDA provider implements
CPU_ONLY_OFF = ("enable_group_norm", "enable_skip_group_norm", "enable_nhwc_conv", "enable_bias_splitgelu",
                "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")
MAX_ERROR = 1e-4
#: the fused graph is kept unless it is clearly slower (over 10%: beyond this machine's timing noise, so the
#: choice does not flip between runs; quietly measured it is 1.1x faster on the bench SD UNet)
KEEP_IF_WITHIN = 1.1
ROUNDS = 5


@contextlib.contextmanager
def _patching(targets: list[tuple[Any, str]], wrap: Callable[[Any], Any]) -> Iterator[None]:
    """Each ``(owner, attribute)`` replaced by ``wrap(original)`` while the block runs, then restored."""
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, original in originals:
        setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _num_heads_fix() -> contextlib.AbstractContextManager[None]:
    """Make FusionAttentionUnet.get_num_heads accept the shape-[1] constants torch 2 exports."""
    classes = [m.FusionAttentionUnet for name, m in list(sys.modules.items())
               if name.endswith("fusion_attention_unet") and hasattr(m, "FusionAttentionUnet")]

    def patched(original: Any) -> Any:
        def get_num_heads(self: Any, reshape_q: Any, is_torch2: bool = False) -> int:
            try:
                return original(self, reshape_q, is_torch2)
            except TypeError:   # int(array of shape [1]) under numpy 2: read the element instead
                parent = self.model.get_parent(reshape_q, 1)
                value = self.model.get_constant_value(parent.input[2]) if parent is not None else None
                heads = int(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) == 1 else 0
                return max(heads, 0)
        return get_num_heads

    return _patching([(cls, "get_num_heads") for cls in classes if "get_num_heads" in cls.__dict__], patched)


def _no_progress_bar() -> contextlib.AbstractContextManager[None]:
    """Keep the unet optimizer's tqdm bar ("fusion: 0%| ... 18/18") off the conversion's output: it draws one
    whenever tqdm is installed (onnx_model_unet asks ``is_installed("tqdm")``), terminal or not, between the
    report's own lines.  That one question is answered "no" while the optimizer runs."""
    modules = [m for name, m in list(sys.modules.items())
               if name.endswith("onnx_model_unet") and callable(getattr(m, "is_installed", None))]
    return _patching([(m, "is_installed") for m in modules],
                     lambda original: lambda package: package != "tqdm" and original(package))


def fuse(path: Path, out: Path) -> dict[str, int]:
    """Write the CPU-runnable fused graph of ``path`` to ``out``; returns the fusion counts (empty: none)."""
    import importlib

    importlib.import_module("onnxruntime.transformers.fusion_attention_unet")   # loaded, so the fix can patch it
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    for flag in CPU_ONLY_OFF:
        setattr(options, flag, False)
    with _num_heads_fix(), _no_progress_bar():
        model = optimize_model(str(path), model_type="unet", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options, use_gpu=False)
    fusions = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    if fusions:
        model.save_model_to_file(str(out))
    return fusions


def optimize_denoiser(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Replace the graph at ``path`` by its fused form when that is exact and no slower; the figures."""
    import onnx
    import onnxruntime as ort

    from edgegen.converters.writer import external_data_files

    if external_data_files(onnx.load_model(str(path), load_external_data=False)):
        return {"used": False, "reason": "weights in external data (over 2 GB): not fused"}
    out = path.with_name(path.stem + ".fused.onnx")
    try:
        fusions = fuse(path, out)
    except Exception as exc:  # noqa: BLE001  (best effort: the exported graph stays)
        log.warning("transformer optimizer skipped on %s: %s", path.name, exc)
        return {"used": False, "reason": f"optimizer failed: {type(exc).__name__}: {exc}"[:300]}
    if not fusions:
        return {"used": False, "reason": "no fusion found"}
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (path, out)]
        ref, got = (s.run(None, feeds)[0] for s in sessions)
        error = float(np.abs(ref - got).max()) / max(1.0, float(np.abs(ref).max()))
        ms = interleaved_ms([functools.partial(s.run, None, feeds) for s in sessions], min_runs=ROUNDS,
                            max_runs=ROUNDS)
        used = error <= MAX_ERROR and ms[1] <= KEEP_IF_WITHIN * ms[0]
        del sessions
        if used:
            os.replace(out, path)
        return {"used": used, "model_type": "unet", "fusions": fusions, "max_abs_error": error,
                "ms_per_run": {"exported": ms[0], "optimized": ms[1]}, "batch": int(next(iter(feeds.values())).shape[0])}
    finally:
        out.unlink(missing_ok=True)
