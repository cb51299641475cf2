"""edgegen's tabular checkpoint: a fitted CTGAN / TVAE as ``model.safetensors``, no pickle.

The file holds the network's float32 tensors (``residual.{i}.fc.weight``, ... ``output.bias`` for CTGAN;
``linear.{i}.weight``, ``linear.{i}.bias`` for TVAE) and, in the safetensors metadata (strings):

- ``format``: ``edgegen-tabular-1``;
- ``sampler``: the data transform and sampling constants as JSON, exactly the tabular manifest's ``sampler``
  section (:class:`edgegen.runtimes.tabular.transform.TabularSampler`);
- ``bn_eps``: CTGAN's BatchNorm epsilons, a JSON list.

Reading it parses the JSON strictly and checks every tensor's shape against the sampler before anything is
built: a hostile or damaged file is refused with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from edgegen.converters.tabular.extract import Network
from edgegen.converters.tabular.spec import CHECKPOINT_FORMAT
from edgegen.converters.writer import _umask
from edgegen.errors import ConversionError, InvalidArgumentError, ManifestError
from edgegen.strict import from_json, parse_json, to_json


def write_checkpoint(network: Network, file: Path) -> Path:
    from safetensors.torch import save_file

    meta = {"format": CHECKPOINT_FORMAT, "sampler": json.dumps(network.sampler, sort_keys=True, allow_nan=False),
            "bn_eps": json.dumps(network.bn_eps)}
    tmp = file.with_name(f".{file.name}.tmp")
    save_file({k: v.contiguous() for k, v in network.tensors.items()}, str(tmp), metadata=meta)
    os.chmod(tmp, 0o666 & ~_umask())        # the user's umask, like any file (safetensors writes 0600)
    tmp.replace(file)
    return file


def is_checkpoint(file: Path) -> bool:
    """Whether a safetensors file's metadata names edgegen's tabular checkpoint format (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "np") as f:
            return (f.metadata() or {}).get("format") == CHECKPOINT_FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def read_checkpoint(file: Path) -> tuple[str, dict, dict[str, torch.Tensor], list[float]]:
    """(kind, sampler dict, tensors, BatchNorm eps) from an edgegen tabular checkpoint, checked."""
    from safetensors import SafetensorError, safe_open

    from edgegen.runtimes.tabular.transform import TabularSampler

    if not file.is_file():
        raise InvalidArgumentError(f"{file}: no such file; an edgegen tabular checkpoint is a directory holding "
                                   "model.safetensors (written by edgegen.converters.tabular.save_checkpoint)")
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{file}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InvalidArgumentError(f"{file}: not an edgegen tabular checkpoint (its metadata has no format "
                                   f"{CHECKPOINT_FORMAT!r}); write one with edgegen.converters.tabular.save_checkpoint")
    fix = "write it again with edgegen.converters.tabular.save_checkpoint"
    try:
        sampler_json, eps = parse_json(meta.get("sampler", "")), parse_json(meta.get("bn_eps", "[]"))
    except ValueError as exc:
        raise InvalidArgumentError(f"{file}: its metadata is not valid JSON ({exc}); {fix}") from None
    try:
        sampler = from_json(TabularSampler, sampler_json, where=f"{file.name}: sampler", error=ManifestError, fix=fix)
    except ManifestError as exc:
        raise InvalidArgumentError(str(exc)) from None
    if not isinstance(eps, list) or not all(isinstance(e, (int, float)) and 0 < e < 1 for e in eps):
        raise InvalidArgumentError(f"{file}: bn_eps must be a list of numbers in (0, 1); {fix}")
    _check_shapes(file, sampler, tensors, len(eps), fix)
    return sampler.model, to_json(sampler), {k: v.float() for k, v in tensors.items()}, [float(e) for e in eps]


def _check_shapes(file: Path, sampler: object, tensors: dict[str, torch.Tensor], layers: int, fix: str) -> None:
    """Every tensor the network needs, and nothing else, with shapes that chain from z to the matrix."""
    s = sampler
    width = s.embedding_dim + s.condition_dim                       # type: ignore[attr-defined]
    want: dict[str, tuple[int, ...]] = {}
    if s.model == "ctgan":                                          # type: ignore[attr-defined]
        for i in range(layers):
            w = tensors.get(f"residual.{i}.fc.weight")
            out = int(w.shape[0]) if w is not None and w.ndim == 2 else 0
            want |= {f"residual.{i}.fc.weight": (out, width), f"residual.{i}.fc.bias": (out,),
                     f"residual.{i}.bn.weight": (out,), f"residual.{i}.bn.bias": (out,)}
            width += out
        want |= {"output.weight": (s.data_dim, width), "output.bias": (s.data_dim,)}   # type: ignore[attr-defined]
    else:
        i = 0
        while f"linear.{i}.weight" in tensors:
            w = tensors[f"linear.{i}.weight"]
            out = int(w.shape[0]) if w.ndim == 2 else 0
            want |= {f"linear.{i}.weight": (out, width), f"linear.{i}.bias": (out,)}
            width, i = out, i + 1
        if i == 0 or width != s.data_dim:                           # type: ignore[attr-defined]
            raise InvalidArgumentError(f"{file}: the decoder's layers do not end in {s.data_dim} values per row; {fix}")
    bad = [k for k, shape in want.items() if k not in tensors or tuple(tensors[k].shape) != shape]
    extra = sorted(set(tensors) - set(want))
    if bad or extra or any(not tensors[k].dtype.is_floating_point for k in want):
        problem = f"tensor {bad[0]} is missing or not {list(want[bad[0]])}" if bad else \
            f"unexpected tensor {extra[0]}" if extra else "a tensor is not floating point"
        raise InvalidArgumentError(f"{file}: {problem}; {fix}")
    if any(not torch.isfinite(t).all() for t in tensors.values()):
        raise InvalidArgumentError(f"{file}: a tensor holds NaN or infinity; {fix}")


def network_from_checkpoint(loaded: tuple[str, dict, dict[str, torch.Tensor], list[float]]) -> Network:
    kind, sampler, tensors, eps = loaded
    if kind not in ("ctgan", "tvae"):
        raise ConversionError(f"unknown tabular model {kind!r}")
    return Network(kind, sampler, tensors, eps, None)
