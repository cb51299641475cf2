"""Which runtime class runs which model family.

The table maps a family to ``"module:Class"`` and imports the module only when an
artifact of that family is loaded, so registering a family costs nothing at import time.
A runtime class provides ``from_artifact(artifact, config) -> instance``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Protocol

from edgegen.errors import UnknownFamilyError
from edgegen.runtimes.artifact import Artifact, open_artifact
from edgegen.runtimes.session import SessionConfig


class FamilyRuntime(Protocol):
    """What every family runtime offers to ``edgegen.load``."""

    artifact: Artifact

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> FamilyRuntime: ...


#: family -> "module:Class"; families land here as their runtimes do.
RUNTIMES: dict[str, str] = {
    "causal-lm": "edgegen.runtimes.lm.causal_lm:CausalLM",
    "rnn-lm": "edgegen.runtimes.rnn.rnn_lm:RNNLM",
    "diffusion": "edgegen.runtimes.diffusion.diffusion:Diffusion",
    "flow": "edgegen.runtimes.flow.flow:Flow",
    "seq2seq": "edgegen.runtimes.seq2seq.seq2seq:Seq2Seq",
    "gan": "edgegen.runtimes.image.gan:GAN",
    "vae": "edgegen.runtimes.image.vae:VAE",
    "vq-vae": "edgegen.runtimes.image.vae:VQVAE",
    "tabular": "edgegen.runtimes.tabular.tabular:Tabular",
    "tts": "edgegen.runtimes.tts.tts:TTS",
    "music": "edgegen.runtimes.music.music:MusicGen",
}


def runtime_class(family: str) -> type[FamilyRuntime]:
    target = RUNTIMES.get(family)
    if target is None:
        known = ", ".join(sorted(RUNTIMES)) or "none yet"
        raise UnknownFamilyError(f"this edgegen has no runtime for {family!r} artifacts yet (it runs: {known}); "
                                 "a newer edgegen may: pip install -U edgegen")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_runtime(path: str | os.PathLike[str], provider: str = "auto", threads: int | None = None,
                 **settings: Any) -> FamilyRuntime:
    """Open ``path`` and hand it to its family's runtime (checksums and I/O verified there); ``settings``
    are :class:`SessionConfig`'s other fields (device_id, free_dimensions, gpu_memory_limit)."""
    config = SessionConfig(provider=provider, threads=threads, **settings)
    artifact = open_artifact(path)
    return runtime_class(artifact.manifest.family).from_artifact(artifact, config)
