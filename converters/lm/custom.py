"""Custom ``torch.nn.Module`` language models (see :mod:`edgegen.converters.lm.spec`) as LM sources."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from edgegen.converters.lm.source import LMSource
from edgegen.converters.lm.spec import CausalLMSpec
from edgegen.converters.text.chat_template import spec_chat_template
from edgegen.errors import ConversionError

OPSET = 17


class _FlatCache(torch.nn.Module):
    """The spec's forward with the cache as flat arguments, as the ONNX exporter needs."""

    def __init__(self, module: torch.nn.Module, num_layers: int) -> None:
        super().__init__()
        self.module, self.num_layers = module, num_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        past = tuple((past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.num_layers))
        logits, presents = self.module(input_ids, attention_mask, position_ids, past)
        return (logits, *[t for pair in presents for t in pair])


def empty_past(spec: CausalLMSpec, batch: int, length: int = 0,
               dtype: torch.dtype = torch.float32) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    shape = (batch, spec.num_kv_heads, length, spec.head_dim)  # [B, H_kv, P, D]
    return tuple((torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(spec.num_layers))


class CustomLMSource(LMSource):
    def __init__(self, spec: CausalLMSpec) -> None:
        module = spec.module
        if not isinstance(module, torch.nn.Module):
            raise ConversionError(f"CausalLMSpec.module must be a torch.nn.Module, got {type(module).__name__}")
        module.eval()
        self.spec = spec
        self._module: torch.nn.Module | None = module
        tokenizer = spec.tokenizer_json()
        chat = None if spec.chat_template is None else spec_chat_template(
            spec.chat_template, tokenizer, spec.eos_token_ids, spec.bos_token_id, spec.pad_token_id)
        super().__init__(
            tokenizer_json=tokenizer,
            sampler={"context_length": spec.context_length, "eos_token_ids": list(spec.eos_token_ids),
                     "bos_token_id": spec.bos_token_id, "pad_token_id": spec.pad_token_id, "cache": spec.cache},
            defaults=dict(spec.defaults),
            model_class=spec.name or f"{type(module).__module__}.{type(module).__qualname__}",
            checkpoint_sha256=spec.checkpoint_sha256,
            optimizer_model_type=None, num_heads=0, hidden_size=0,
            converter=f"torch.onnx.export (torch {torch.__version__}, opset {OPSET})", opset=OPSET,
            chat_template=chat)

    @property
    def module(self) -> torch.nn.Module:
        if self._module is None:
            raise RuntimeError("the torch module was released")
        return self._module

    @torch.no_grad()
    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        if self.spec.cache == "none":
            return self.module(input_ids).float()
        mask = torch.ones((b, t), dtype=torch.int64)                            # [B, T]
        positions = torch.arange(t, dtype=torch.int64).expand(b, t)            # [B, T]
        logits, _ = self.module(input_ids, mask, positions, empty_past(self.spec, b))
        return logits.float()                                                  # [B, T, V]

    def export(self, directory: Path) -> Path:
        path = directory / "model.onnx"
        if self.spec.cache == "none":
            self._export_plain(path)
        else:
            self._export_kv(path)
        return path

    def _export_plain(self, path: Path) -> None:
        ids = torch.randint(0, 2, (2, 5), dtype=torch.int64)                   # [B, T]
        try:
            torch.onnx.export(self.module, (ids,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                                            "logits": {0: "batch_size", 1: "sequence_length"}})
        except Exception as exc:
            raise ConversionError(f"torch.onnx.export failed for {type(self.module).__name__}: {exc}; the module must "
                                  "follow the cache='none' contract: logits = module(input_ids)") from exc

    def _export_kv(self, path: Path) -> None:
        spec = self.spec
        b, p, t = 2, 3, 4  # distinct sizes so no axis is specialised to another's value
        ids = torch.randint(0, 2, (b, t), dtype=torch.int64)                   # [B, T]
        mask = torch.ones((b, p + t), dtype=torch.int64)                       # [B, P+T]
        positions = torch.arange(p, p + t, dtype=torch.int64).expand(b, t)     # [B, T]
        past = [x for pair in empty_past(spec, b, p) for x in pair]
        past_names = [f"past_key_values.{i}.{k}" for i in range(spec.num_layers) for k in ("key", "value")]
        present_names = [f"present.{i}.{k}" for i in range(spec.num_layers) for k in ("key", "value")]
        axes: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"},
            **{n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names},
            **{n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names},
        }
        try:
            torch.onnx.export(_FlatCache(self.module, spec.num_layers), (ids, mask, positions, *past), str(path),
                              dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                              output_names=["logits", *present_names], dynamic_axes=axes)
        except Exception as exc:
            raise ConversionError(
                f"torch.onnx.export failed for {type(self.module).__name__}: {exc}; the module must follow the "
                "cache='kv' contract (logits, presents = module(input_ids, attention_mask, position_ids, "
                "past_key_values)), see edgegen.converters.lm.spec") from exc

    def release(self) -> None:
        self._module = None
        gc.collect()
