"""Our own export of Hugging Face causal LMs that Optimum's exporter does not cover.

The model is wrapped so that its cache is flat tensors named as Optimum names them
(``past_key_values.N.key/value`` -> ``present.N.key/value``), and exported with
``torch.onnx.export(dynamo=True)``: torch.export follows transformers' ``DynamicCache``
correctly, where the TorchScript tracer bakes the trace-time cache length into the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgegen.errors import ConversionError

OPSET = 18


class _FlatHFCache(torch.nn.Module):
    def __init__(self, model: Any, num_layers: int) -> None:
        super().__init__()
        self.model, self.num_layers = model, num_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)                  # [B, H_kv, P, D] each
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]                           # [B, H_kv, P+T, D] each
        return (out.logits, *presents)


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head size) of a transformers config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        raise ConversionError(f"cannot tell the cache shape of a {config.model_type} model from its config "
                              "(num_hidden_layers, num_attention_heads, hidden_size)")
    return int(layers), int(kv_heads), int(head_dim)


def export_hf_with_cache(model: Any, directory: Path) -> Path:
    layers, kv_heads, head_dim = cache_shape(model.config)
    b, p, t = 2, 3, 4
    ids = torch.randint(0, 2, (b, t), dtype=torch.int64)                     # [B, T]
    mask = torch.ones((b, p + t), dtype=torch.int64)                         # [B, P+T]
    positions = torch.arange(p, p + t, dtype=torch.int64).expand(b, t)       # [B, T]
    past = tuple(torch.zeros((b, kv_heads, p, head_dim)) for _ in range(2 * layers))
    batch = torch.export.Dim("batch_size", min=1, max=4096)
    seq = torch.export.Dim("sequence_length", min=1, max=1 << 20)
    total = torch.export.Dim("total_sequence_length", min=1, max=1 << 20)
    past_len = torch.export.Dim("past_sequence_length", min=0, max=1 << 20)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in range(2 * layers)))
    names = [f"{i}.{k}" for i in range(layers) for k in ("key", "value")]
    path = directory / "model.onnx"
    try:
        torch.onnx.export(_FlatHFCache(model, layers), (ids, mask, positions, past), str(path), dynamo=True,
                          opset_version=OPSET, dynamic_shapes=shapes, external_data=True, verbose=False,
                          input_names=["input_ids", "attention_mask", "position_ids",
                                       *[f"past_key_values.{n}" for n in names]],
                          output_names=["logits", *[f"present.{n}" for n in names]])
    except Exception as exc:  # noqa: BLE001  (torch.export raises many kinds)
        raise ConversionError(f"exporting {model.config.model_type} (not covered by Optimum) failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return path
