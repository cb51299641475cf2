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

from edgegen.converters.lm.failures import cause_line
from edgegen.converters.lm.moe_export import exportable_experts
from edgegen.errors import ConversionError

OPSET = 18
#: What a user can do when torch.export cannot follow a model's code.
EXPORT_FIX = ("edgegen's export cannot follow this architecture's code yet; please report it with the model's "
              "config.json (models of a supported architecture such as llama, qwen2 or qwen3_moe convert)")


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


@torch.no_grad()
def probed_cache_shapes(model: Any) -> list[tuple[int, int]]:
    """(heads, head size) of each past tensor (layer 0 key, layer 0 value, ...), as one forward writes them:
    keys and values may differ (multi-head latent attention: DeepSeek-V2/V3 keys hold nope + rope dims, values
    v_head_dim), so the config's head_dim alone does not say."""
    from transformers import DynamicCache

    out = model(input_ids=torch.zeros((1, 2), dtype=torch.int64), past_key_values=DynamicCache(), use_cache=True)
    layers = getattr(out.past_key_values, "layers", None)
    if not layers:
        raise ConversionError(f"{model.config.model_type} returned no KV cache from a forward with use_cache=True; "
                              "edgegen's causal-lm artifacts carry a KV cache (past_key_values.N.key/value)")
    shapes = []
    for layer in layers:
        for tensor in (layer.keys, layer.values):                              # [B, H_kv, P, D]
            if tensor is None or tensor.dim() != 4:
                raise ConversionError(f"{model.config.model_type}'s cache is not [batch, heads, positions, head "
                                      f"size] per layer (got {None if tensor is None else tuple(tensor.shape)})")
            shapes.append((int(tensor.shape[1]), int(tensor.shape[3])))
    return shapes


def export_hf_with_cache(model: Any, directory: Path) -> Path:
    shapes = probed_cache_shapes(model)
    layers = len(shapes) // 2
    b, p, t = 2, 3, 4
    ids = torch.randint(0, 2, (b, t), dtype=torch.int64)                     # [B, T]
    mask = torch.ones((b, p + t), dtype=torch.int64)                         # [B, P+T]
    positions = torch.arange(p, p + t, dtype=torch.int64).expand(b, t)       # [B, T]
    past = tuple(torch.zeros((b, heads, p, dim)) for heads, dim in shapes)  # [B, H_kv, P, D_key or D_value]
    batch = torch.export.Dim("batch_size", min=1, max=4096)
    seq = torch.export.Dim("sequence_length", min=1, max=1 << 20)
    total = torch.export.Dim("total_sequence_length", min=1, max=1 << 20)
    past_len = torch.export.Dim("past_sequence_length", min=0, max=1 << 20)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in range(2 * layers)))
    names = [f"{i}.{k}" for i in range(layers) for k in ("key", "value")]
    path = directory / "model.onnx"
    try:
        with exportable_experts(model):
            torch.onnx.export(_FlatHFCache(model, layers), (ids, mask, positions, past), str(path), dynamo=True,
                              opset_version=OPSET, dynamic_shapes=shapes, external_data=True, verbose=False,
                              input_names=["input_ids", "attention_mask", "position_ids",
                                           *[f"past_key_values.{n}" for n in names]],
                              output_names=["logits", *[f"present.{n}" for n in names]])
    except Exception as exc:  # noqa: BLE001  (torch.export raises many kinds)
        raise ConversionError(f"exporting {model.config.model_type} (not covered by Optimum) with torch.export "
                              f"failed: {cause_line(exc)}; {EXPORT_FIX}") from exc
    return path
