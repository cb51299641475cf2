"""The spec that makes a fitted ``ctgan`` model a tabular artifact, and edgegen's safe tabular checkpoint.

A model fitted with the ``ctgan`` package (``ctgan.CTGAN`` or ``ctgan.TVAE``) is handed over in Python::

    from ctgan import CTGAN
    from edgegen.converters.tabular import TabularSpec
    fitted = CTGAN(epochs=300).fit(frame, discrete_columns=["quality"]) or ...
    edgegen.convert(TabularSpec(model=fitted), "wine-ctgan")

edgegen never unpickles anything: ctgan's own ``save``/``load`` are ``torch.save`` pickles that run code when
loaded, so a file somebody hands you is not read.  To keep a fitted model on disk safely, write edgegen's
tabular checkpoint (:func:`save_checkpoint`: ``model.safetensors`` with the network's tensors, and its data
transform as JSON in the file's metadata) and convert it later with ``TabularSpec.from_checkpoint(dir)``,
which needs neither ctgan nor pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import InvalidArgumentError, UnsupportedModelError

#: the checkpoint file inside a checkpoint directory, and the metadata key that marks it as edgegen's
CHECKPOINT_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "edgegen-tabular-1"


@dataclass(frozen=True)
class TabularSpec:
    """A fitted ``ctgan.CTGAN`` / ``ctgan.TVAE`` (``model=``), or a network read from edgegen's checkpoint."""

    model: Any = None
    name: str | None = None
    checkpoint_sha256: str | None = None
    #: set by :meth:`from_checkpoint`: (kind, sampler dict, {tensor name: tensor}, BatchNorm eps)
    loaded: Any = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.loaded is None):
            raise InvalidArgumentError("TabularSpec takes model= (a fitted ctgan.CTGAN or ctgan.TVAE); for a "
                                       "checkpoint on disk use TabularSpec.from_checkpoint(directory)")
        if self.model is not None:
            kind = type(self.model).__name__
            if kind not in ("CTGAN", "TVAE", "CTGANSynthesizer", "TVAESynthesizer"):
                raise UnsupportedModelError(f"TabularSpec takes a fitted ctgan.CTGAN or ctgan.TVAE, got a {kind}")
            if kind.endswith("Synthesizer") and type(self.model).__module__.startswith("sdv"):
                raise UnsupportedModelError(
                    f"an SDV {kind} adds SDV's own preprocessing (metadata, constraints, its HyperTransformer) "
                    "around ctgan's model, which edgegen does not convert; fit ctgan.CTGAN / ctgan.TVAE directly")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, name: str | None = None) -> TabularSpec:
        """Read edgegen's tabular checkpoint (a directory holding ``model.safetensors``, or the file itself)."""
        from edgegen.converters.tabular.checkpoint import read_checkpoint
        from edgegen.runtimes.artifact import sha256_file

        file = Path(path) / CHECKPOINT_FILE if Path(path).is_dir() else Path(path)
        loaded = read_checkpoint(file)
        return cls(loaded=loaded, name=name or f"edgegen tabular checkpoint ({loaded[0]})",
                   checkpoint_sha256=sha256_file(file))


def save_checkpoint(fitted: Any, directory: str | os.PathLike[str]) -> Path:
    """Write a fitted ``ctgan.CTGAN`` / ``ctgan.TVAE`` as edgegen's tabular checkpoint in ``directory``
    (created; ``model.safetensors`` replaced atomically); returns the file's path.  No pickle: tensors and JSON."""
    from edgegen.converters.tabular.checkpoint import write_checkpoint
    from edgegen.converters.tabular.extract import extract

    TabularSpec(model=fitted)   # refuses what is not a ctgan model
    network = extract(fitted)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(network, out / CHECKPOINT_FILE)
