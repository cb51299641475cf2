"""A Llama-family decoder graph written directly with ``onnx.helper``, the way ONNX Runtime
GenAI's model builder writes it: per layer one packed QKV MatMul and one
``com.microsoft.GroupQueryAttention`` (rotary inside from cos/sin caches, KV heads shared,
causal mask, KV append), RMSNorm as ``SimplifiedLayerNormalization`` /
``SkipSimplifiedLayerNormalization``.  Optimum's export of the same model computes attention
in ~900 small nodes that ONNX Runtime's optimizer does not fuse (benchmarks/lm_genai.py).

The I/O is edgegen's decoder contract (runtimes/lm/decoder.py) without ``position_ids``:
``input_ids`` [B, S], ``attention_mask`` [B, T], ``past_key_values.{i}.key|value``
[B, kv_heads, P, head_dim] -> ``logits`` [B, S, V], ``present.{i}.key|value`` [B, kv_heads, T, head_dim].
GroupQueryAttention takes each row's length from the mask (seqlens_k = sum - 1) and places
its tokens from position 0: rows must be unpadded (or right-padded), so the manifest says
``"padding": "none"`` and the runtime runs rows of different lengths one at a time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.errors import UnsupportedModelError

#: HF model types whose decoder layers this graph reproduces (RMSNorm, rotary, SiLU-gated MLP).
GQA_MODEL_TYPES = ("llama", "mistral", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
OPSET = 17


def check_gqa_config(config: Any) -> None:
    """Refuse, with a one-line reason, models whose layers this graph does not reproduce."""
    where = f"attention='gqa' supports model_type {', '.join(GQA_MODEL_TYPES)}"
    if config.model_type not in GQA_MODEL_TYPES:
        raise UnsupportedModelError(f"{where}, not {config.model_type!r}; convert it with --attention standard")
    rope = _rope_type(config)
    if rope not in _ROPE_TYPES:
        raise UnsupportedModelError(f"{where} with rope_type {', '.join(_ROPE_TYPES)}, not {rope!r}; "
                                    "convert it with --attention standard")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 16:  # ONNX Runtime's CPU kernel: "head_size shall be a multiple of 16"
        raise UnsupportedModelError(f"attention='gqa' needs a head size that is a multiple of 16 (ONNX Runtime's "
                                    f"GroupQueryAttention), this model's is {head_dim}; convert it with --attention standard")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"{where} with hidden_act 'silu', not {config.hidden_act!r}; "
                                    "convert it with --attention standard")


def _rope_type(config: Any) -> str:
    scaling = getattr(config, "rope_scaling", None) or {}
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def rotary_caches(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_position_embeddings, rotary_dim / 2] float32, as transformers computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[_rope_type(config)](config, "cpu")      # [D/2], float
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)   # [M]
    freqs = torch.outer(positions, inv_freq.float())                                 # [M, D/2]
    return ((freqs.cos() * scaling).numpy().astype(np.float32), (freqs.sin() * scaling).numpy().astype(np.float32))


class _Graph:
    """Nodes and initializers under construction; with a ``sink`` (:class:`edgegen.converters.writer.ExternalData`)
    each weight goes to the external data file as it is made, so the graph never holds the weights (only the
    torch model does, and one float32 copy of one tensor at a time)."""

    def __init__(self, sink: Any = None) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self.sink = sink

    def const(self, name: str, array: np.ndarray | torch.Tensor) -> str:
        from onnx import numpy_helper

        from edgegen.converters.writer import INLINE_TENSOR_BYTES

        if isinstance(array, torch.Tensor):
            array = array.detach().float().numpy()
        array = np.ascontiguousarray(array)
        if self.sink is not None and array.nbytes >= INLINE_TENSOR_BYTES:
            self.inits.append(self.sink.add_array(name, array))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any) -> list[str]:
        from onnx import helper

        self._n += 1
        name = f"/{op_type}_{self._n}"
        outputs = [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def linear(self, x: str, module: torch.nn.Linear, name: str) -> str:
        """x @ W^T (+ b): [B, S, in] -> [B, S, out]."""
        y = self.op("MatMul", [x, self.const(f"{name}.weight_t", module.weight.detach().float().T)])[0]
        return y if module.bias is None else self.op("Add", [y, self.const(f"{name}.bias", module.bias)])[0]


def build_gqa_decoder(model: Any, sink: Any = None, progress: Any = None) -> Any:
    """The decoder ModelProto of a transformers Llama / Mistral / Qwen2 causal LM (float32); with ``sink``
    (an :class:`~edgegen.converters.writer.ExternalData`) its weights are written there as they are made.
    ``progress(line)``: a line every quarter of the layers on models of 8 layers and more."""
    from onnx import TensorProto, helper

    config = model.config
    check_gqa_config(config)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None) or -1       # attends to itself and the window - 1 before
    kinds = getattr(config, "layer_types", None) or ["sliding_attention" if window > 0 else "full_attention"] * len(
        model.model.layers)                                       # qwen2 names each layer's kind; mistral does not
    eps = float(config.rms_norm_eps)
    g = _Graph(sink)
    cos, sin = rotary_caches(config)
    g.const("cos_cache", cos), g.const("sin_cache", sin)
    one = g.const("one_i64", np.array([1], np.int64))

    # seqlens_k [B] int32 = sum(mask) - 1; total_sequence_length int32 scalar = T (as GenAI's builder)
    row_len = g.op("ReduceSum", ["attention_mask", one], keepdims=0)[0]
    seqlens_k = g.op("Cast", [g.op("Sub", [row_len, one])[0]], to=TensorProto.INT32)[0]
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"])[0],
                                          g.const("idx_1", np.array(1, np.int64))], axis=0)[0]],
                 to=TensorProto.INT32)[0]

    base = model.model
    hidden = g.op("Gather", [g.const("embed_tokens.weight", base.embed_tokens.weight), "input_ids"])[0]  # [B, S, H]
    residual, pending = hidden, None   # pending: the last block's output, still to be added to residual
    past_inputs, present_outputs = [], []
    n_layers = len(base.layers)
    for i, layer in enumerate(base.layers):
        if progress is not None and n_layers >= 8 and i and i % max(1, n_layers // 4) == 0:
            progress(f"export: {i}/{n_layers} layers written")
        attn, p = layer.self_attn, f"layers.{i}"
        ln_in = g.const(f"{p}.input_layernorm.weight", layer.input_layernorm.weight)
        if pending is None:
            x = g.op("SimplifiedLayerNormalization", [residual, ln_in], axis=-1, epsilon=eps)[0]
        else:
            x, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, ln_in], n_out=4,
                                     domain="com.microsoft", epsilon=eps)
        # packed QKV: [B, S, (heads + 2 kv_heads) * head_dim]
        qkv = torch.nn.Linear(1, 1)
        qkv.weight = torch.nn.Parameter(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        qkv.bias = None if attn.q_proj.bias is None else torch.nn.Parameter(
            torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        qkv_out = g.linear(x, qkv, f"{p}.attn.qkv_proj")
        names = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        presents = [f"present.{i}.key", f"present.{i}.value"]
        past_inputs += names
        present_outputs += presents
        g._n += 1
        g.nodes.append(helper.make_node(
            "GroupQueryAttention", [qkv_out, "", "", *names, seqlens_k, total, "cos_cache", "sin_cache"],
            [f"{p}.attn.output", *presents], name=f"/{p}/attn/GroupQueryAttention", domain="com.microsoft",
            num_heads=heads, kv_num_heads=kv_heads, scale=1.0 / math.sqrt(head_dim), do_rotary=1,
            rotary_interleaved=0, local_window_size=int(window) if kinds[i] == "sliding_attention" else -1))
        attn_out = g.linear(f"{p}.attn.output", attn.o_proj, f"{p}.attn.o_proj")            # [B, S, H]
        ln_post = g.const(f"{p}.post_attention_layernorm.weight", layer.post_attention_layernorm.weight)
        x, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [attn_out, residual, ln_post], n_out=4,
                                 domain="com.microsoft", epsilon=eps)
        mlp = layer.mlp
        gate = g.linear(x, mlp.gate_proj, f"{p}.mlp.gate_proj")                             # [B, S, I]
        up = g.linear(x, mlp.up_proj, f"{p}.mlp.up_proj")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0], up])[0]       # silu(gate) * up
        pending = g.linear(act, mlp.down_proj, f"{p}.mlp.down_proj")                        # [B, S, H]
    norm_w = g.const("norm.weight", base.norm.weight)
    if pending is None:
        x = g.op("SimplifiedLayerNormalization", [residual, norm_w], axis=-1, epsilon=eps)[0]
    else:
        x = g.op("SkipSimplifiedLayerNormalization", [pending, residual, norm_w], n_out=4, domain="com.microsoft",
                 epsilon=eps)[0]
    head = model.get_output_embeddings()
    g.nodes.append(helper.make_node("MatMul", [x, g.const("lm_head.weight_t", head.weight.detach().float().T)],
                                    ["logits"], name="/lm_head/MatMul"))
    if getattr(head, "bias", None) is not None:
        raise UnsupportedModelError("attention='gqa' does not support an LM head with a bias; "
                                    "convert it with --attention standard")

    f32, vocab = TensorProto.FLOAT, config.vocab_size
    cache = lambda name, length: helper.make_tensor_value_info(name, f32, ["batch_size", kv_heads, length, head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    inputs += [cache(n, "past_sequence_length") for n in past_inputs]
    # logits_to_keep is added by lm_convert, as for every exported decoder
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    outputs += [cache(n, "total_sequence_length") for n in present_outputs]
    graph = helper.make_graph(g.nodes, "edgegen_gqa_decoder", inputs, outputs, initializer=g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                             producer_name="edgegen", ir_version=8)


def export_gqa_decoder(model: Any, directory: Path, external_bytes: int | None = None, progress: Any = None) -> Path:
    """Write ``model.onnx`` into ``directory``; when the weights (float32) pass ``external_bytes``
    (:data:`edgegen.converters.writer.EXTERNAL_WEIGHTS_BYTES`) they go to ``model.onnx.data`` tensor by tensor
    while the graph is built: no protobuf ever holds them, so models past protobuf's 2 GB limit export."""
    from edgegen.converters import writer

    path = directory / "model.onnx"
    limit = writer.EXTERNAL_WEIGHTS_BYTES if external_bytes is None else external_bytes
    weights = sum(p.numel() for p in model.parameters()) * 4
    sink = writer.ExternalData(directory / "model.onnx.data") if weights > limit else None
    try:
        proto = build_gqa_decoder(model, sink, progress)
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if sink is not None:
        sink.close()
    writer.serialize(proto, path)   # left inside: tensors under INLINE_TENSOR_BYTES (or all, under the limit)
    return path
