"""What the causal-LM conversion pipeline needs from a source model, whatever its origin.

Hugging Face directories (:mod:`.hf`) and custom modules (:mod:`.custom`) each build
one :class:`LMSource`; :mod:`.convert` does the rest (reference figures, export,
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
    #: The artifact's chat_template.json document (:mod:`edgegen.converters.text.chat_template`), or None.
    chat_template: dict[str, Any] | None = None
    #: Where long steps (the export of a large model) report progress lines; the pipeline sets it.
    progress: Any = None
    #: The up-front memory estimate line (:mod:`edgegen.converters.lm.memory`), reported first; None: none made.
    memory_estimate: str | None = None

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """PyTorch logits [B, T, V] (float32) of whole sequences [B, T], no cache."""
        raise NotImplementedError

    def greedy(self, input_ids: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
        """``n`` greedy tokens after ``input_ids`` [1, T], with the top-1 minus top-2 logit at each step.

        Full recompute by default (the plainest reference); sources whose library has a
        trusted cache path override this to be fast on large models.
        """
        tokens, margins = [], []
        seq = input_ids
        for _ in range(n):
            last = self.full_logits(seq)[0, -1]                               # [V]
            top2 = torch.topk(last, 2).values
            tokens.append(int(torch.argmax(last)))
            margins.append(float(top2[0] - top2[1]))
            seq = torch.cat([seq, torch.tensor([[tokens[-1]]])], dim=1)       # [1, T+1]
        return tokens, margins

    def export(self, directory: Path) -> Path:
        """Write the decoder graph into ``directory``; returns the .onnx file."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the torch model (after the reference figures and the export)."""
        raise NotImplementedError
