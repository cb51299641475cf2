"""What the causal-LM conversion pipeline needs from a source model, whatever its origin.

Hugging Face directories (:mod:`hf_lm`) and custom modules (:mod:`custom_lm`) each build
one :class:`LMSource`; :mod:`lm_convert` does the rest (reference figures, export,
optimization, validation, writing) once for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LMSource:
    tokenizer_json: str
    #: The manifest's sampler section (context length, special token ids, cache kind).
    sampler: dict[str, Any]
    #: The manifest's defaults section (GenerationSettings field names).
    defaults: dict[str, Any]
    model_class: str
    checkpoint_sha256: str | None
    #: ONNX Runtime transformer-optimizer model type, or None when it does not apply.
    optimizer_model_type: str | None
    num_heads: int
    hidden_size: int
    converter: str
    opset: int | None

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """PyTorch logits [B, T, V] (float32) of whole sequences [B, T], no cache."""
        raise NotImplementedError

    def export(self, directory: Path) -> Path:
        """Write the decoder graph into ``directory``; returns the .onnx file."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the torch model (after the reference figures and the export)."""
        raise NotImplementedError
