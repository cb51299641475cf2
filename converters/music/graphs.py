"""The four graphs of a MusicGen artifact, as torch modules over a loaded ``MusicgenForConditionalGeneration``::

    text_encoder   input_ids [B, S] int64, attention_mask [B, S] int64 -> encoder_hidden_states [B, S, H]
                   (T5's last hidden state, ``enc_to_dec_proj`` where the sizes differ, times the mask: exactly
                   what ``MusicgenForConditionalGeneration.forward`` hands the decoder)
    cross_cache    encoder_hidden_states [B, S, H] -> present.{i}.encoder.key / .value [B, heads, S, head_dim]
                   (each layer's cross-attention keys and values: computed once per prompt)
    decoder        input_ids [B * K, 1] int64, encoder_attention_mask [B, S] int64,
                   past_key_values.{i}.decoder.key / .value [B, heads, P, head_dim],
                   past_key_values.{i}.encoder.key / .value [B, heads, S, head_dim]
                   -> logits [B, K, vocab], present.{i}.decoder.key / .value [B, heads, P + 1, head_dim]
    audio_decoder  audio_codes [B, K', T] int64 -> waveform [B, channels, T * hop]   (EnCodec's quantizer + decoder)

The TorchScript exporter keeps EnCodec's padding arithmetic dynamic (transformers writes it for tracing) but
bakes in one branch: ``EncodecConv1d._pad1d``'s extra zeros for inputs no longer than a reflect padding.  So
the EnCodec graph is exported at a long length and :func:`min_audio_frames` finds the fewest frames it decodes
as PyTorch does; the runtime refuses shorter audio.  (torch.export keeps that branch but bakes in the LSTM's
sequence length.)

The decoder step spells out ``MusicgenDecoder.forward`` for one token with its own modules (the sum of the K
codebook embeddings, the sinusoidal position of the past length, per layer self-attention over past + new,
cross-attention with the eager additive mask, the MLP, the final layer norm and the K lm heads): the same
arithmetic, with the cache as plain tensors.  Each graph is checked against PyTorch (the model's own forward)
at two or more shapes by :func:`check_graphs`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.errors import ConversionError

OPSET = 17
#: graph checks against PyTorch (max abs error), fp32
ATOL = 1e-4


class TextEncoder(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder, self.proj = model.text_encoder, _projection(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # [B, S, E]
        if self.proj is not None:
            hidden = self.proj(hidden)                                                               # [B, S, H]
        return hidden * attention_mask[..., None].to(hidden.dtype)


def _projection(model: Any) -> Any:
    """``enc_to_dec_proj`` exactly when MusicGen's forward applies it."""
    text, dec = model.text_encoder.config.hidden_size, model.decoder.config
    return model.enc_to_dec_proj if text != dec.hidden_size and dec.cross_attention_hidden_size is None else None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H] -> [B, heads, T, H / heads] (the head sizes as constants: the graph declares them)."""
    return x.unflatten(-1, (heads, int(x.shape[-1]) // heads)).transpose(1, 2)


class CrossCache(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.layers, self.heads = model.decoder.model.decoder.layers, model.decoder.config.num_attention_heads

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            out += [_heads(attn.k_proj(encoder_hidden_states), self.heads),
                    _heads(attn.v_proj(encoder_hidden_states), self.heads)]
        return tuple(out)


def _attend(attn: Any, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int,
            mask: torch.Tensor | None) -> torch.Tensor:
    """eager_attention_forward + out_proj: query [B, 1, H], keys/values [B, heads, L, D] -> [B, 1, H]."""
    q = _heads(attn.q_proj(query), heads)                                   # [B, heads, 1, D]
    weights = torch.matmul(q, keys.transpose(2, 3)) * attn.scaling          # [B, heads, 1, L]
    if mask is not None:
        weights = weights + mask
    out = torch.matmul(torch.softmax(weights, dim=-1), values)             # [B, heads, 1, D]
    return attn.out_proj(out.transpose(1, 2).flatten(2))


class DecoderStep(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.decoder, self.heads_out = model.decoder.model.decoder, model.decoder.lm_heads
        self.codebooks, self.heads = model.decoder.config.num_codebooks, model.decoder.config.num_attention_heads

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d, n = self.decoder, len(self.decoder.layers)
        past, cross = cache[:2 * n], cache[2 * n:]
        ids = input_ids.reshape(-1, self.codebooks, 1)                                   # [B, K, 1]
        hidden = sum(d.embed_tokens[k](ids[:, k]) for k in range(self.codebooks))       # [B, 1, H]
        position = torch.ones_like(past[0][:1, 0, :, 0]).sum(-1).to(torch.int64)       # [1]: the past length P
        hidden = hidden + d.embed_positions.weights.index_select(0, position)[None]
        inverted = 1.0 - encoder_attention_mask[:, None, None, :].to(hidden.dtype)      # [B, 1, 1, S]
        mask = inverted * torch.finfo(hidden.dtype).min
        present = []
        for i, layer in enumerate(d.layers):
            x = layer.self_attn_layer_norm(hidden)
            keys = torch.cat([past[2 * i], _heads(layer.self_attn.k_proj(x), self.heads)], dim=2)
            values = torch.cat([past[2 * i + 1], _heads(layer.self_attn.v_proj(x), self.heads)], dim=2)
            present += [keys, values]
            hidden = hidden + _attend(layer.self_attn, x, keys, values, self.heads, None)
            x = layer.encoder_attn_layer_norm(hidden)
            hidden = hidden + _attend(layer.encoder_attn, x, cross[2 * i], cross[2 * i + 1], self.heads, mask)
            x = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
        hidden = d.layer_norm(hidden)                                                   # [B, 1, H]
        logits = torch.stack([head(hidden) for head in self.heads_out], dim=1)[:, :, 0]  # [B, K, V]
        return (logits, *present)


class AudioDecoder(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.codec = model.audio_encoder

    def forward(self, audio_codes: torch.Tensor) -> torch.Tensor:
        embeddings = self.codec.quantizer.decode(audio_codes.transpose(0, 1))   # [B, D, T]
        return self.codec.decoder(embeddings)                                   # [B, channels, T * hop]


def cache_names(layers: int, kind: str, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}.{part}" for i in range(layers) for part in ("key", "value")]


def io_names(layers: int) -> dict[str, tuple[list[str], list[str]]]:
    """role -> (inputs, outputs)."""
    return {"text_encoder": (["input_ids", "attention_mask"], ["encoder_hidden_states"]),
            "cross_cache": (["encoder_hidden_states"], cache_names(layers, "encoder", "present")),
            "decoder": (["input_ids", "encoder_attention_mask", *cache_names(layers, "decoder", "past_key_values"),
                         *cache_names(layers, "encoder", "past_key_values")],
                        ["logits", *cache_names(layers, "decoder", "present")]),
            "audio_decoder": (["audio_codes"], ["waveform"])}


def dynamic_axes(role: str, inputs: list[str], outputs: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in (*inputs, *outputs):
        if role == "audio_decoder":
            axes[name] = {0: "batch", 2: "frames" if name == "audio_codes" else "samples"}
        elif name == "input_ids" and role == "decoder":
            axes[name] = {0: "batch_codebooks"}
        elif name == "logits":
            axes[name] = {0: "batch"}
        elif ".decoder." in name:
            axes[name] = {0: "batch", 2: "past" if name.startswith("past") else "past_plus_one"}
        elif ".encoder." in name or name in ("input_ids", "attention_mask", "encoder_attention_mask",
                                             "encoder_hidden_states"):
            axes[name] = {0: "batch", (2 if ".encoder." in name else 1): "text"}
    return axes


def modules(model: Any) -> dict[str, torch.nn.Module]:
    return {"text_encoder": TextEncoder(model).eval(), "cross_cache": CrossCache(model).eval(),
            "decoder": DecoderStep(model).eval(), "audio_decoder": AudioDecoder(model).eval()}


def examples(model: Any, role: str, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Inputs of ``role``'s graph: ``length`` text tokens, past steps or code frames."""
    dec = model.decoder.config
    heads, dim, layers = dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads, dec.num_hidden_layers
    if role == "text_encoder":
        ids = torch.randint(0, model.text_encoder.config.vocab_size, (batch, length), generator=gen)
        mask = torch.ones_like(ids)
        mask[-1, length // 2 + 1:] = 0     # a padded row
        return ids, mask
    if role == "cross_cache":
        return (torch.randn((batch, length, dec.hidden_size), generator=gen),)
    if role == "decoder":
        text = 5
        ids = torch.randint(0, dec.vocab_size + 1, (batch * dec.num_codebooks, 1), generator=gen)
        mask = torch.ones((batch, text), dtype=torch.int64)
        mask[-1] = 0                       # the unconditional half of classifier-free guidance
        past = [torch.randn((batch, heads, length, dim), generator=gen) for _ in range(2 * layers)]
        cross = [torch.randn((batch, heads, text, dim), generator=gen) for _ in range(2 * layers)]
        return (ids, mask, *past, *cross)
    codebooks = dec.num_codebooks // dec.audio_channels
    return (torch.randint(0, dec.vocab_size, (batch, codebooks, length), generator=gen),)


def export(module: torch.nn.Module, role: str, args: tuple[torch.Tensor, ...], path: Path,
           names: tuple[list[str], list[str]]) -> None:
    """torch.onnx.export (TorchScript, opset 17) with the role's dynamic axes."""
    inputs, outputs = names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic_axes(role, inputs, outputs))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConversionError(f"torch.onnx.export could not export this MusicGen's {role} ({first}); edgegen "
                                  "converts MusicgenForConditionalGeneration as transformers 4.57 writes it") from None


def min_audio_frames(model: Any, session: Any, gen: torch.Generator, longest: int = 12) -> int:
    """The fewest code frames from which the exported EnCodec graph decodes what PyTorch does (every length from
    there to ``longest`` checked)."""
    fewest = longest + 1
    for length in range(longest, 0, -1):
        args = examples(model, "audio_decoder", 1, length, gen)
        try:   # (onnxruntime logs the refusal of a too-short input: its session is made quiet)
            ours = session.run(None, {"audio_codes": args[0].numpy()})
            max_abs(ours, reference(model, "audio_decoder", args), "audio_decoder", [1, length])
        except Exception:   # onnxruntime refuses the reflect padding, or the graph differs: too short
            break
        fewest = length
    if fewest > longest:
        raise ConversionError(f"the exported audio_decoder does not decode {longest} frames as PyTorch does")
    return fewest


@torch.no_grad()
def reference(model: Any, role: str, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """What the model's own forward computes for ``role``'s inputs (the decoder: a full recompute without cache
    when the past comes from a real prefix, see :func:`decoder_reference`)."""
    if role == "text_encoder":
        return [TextEncoder(model)(*args).numpy()]
    if role == "cross_cache":
        return [t.numpy() for t in CrossCache(model)(*args)]
    if role == "audio_decoder":
        return [model.audio_encoder.decode(args[0][None], [None]).audio_values.numpy()]
    raise ValueError(role)


@torch.no_grad()
def decoder_reference(model: Any, codes: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """transformers' decoder over the whole sequence ``codes`` [B * K, L] (no cache): the last step's logits
    [B, K, V]."""
    out = model.decoder(input_ids=codes, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                        use_cache=False).logits                                   # [B * K, L, V]
    k = model.decoder.config.num_codebooks
    return out[:, -1].reshape(-1, k, out.shape[-1]).numpy()


def max_abs(ours: list[np.ndarray], theirs: list[np.ndarray], role: str, shape: list[int]) -> float:
    worst = 0.0
    for o, t in zip(ours, theirs):
        if o.shape != t.shape:
            raise ConversionError(f"the exported {role} gives shape {list(o.shape)} where PyTorch gives "
                                  f"{list(t.shape)} at input shape {shape}")
        worst = max(worst, float(np.max(np.abs(o - t), initial=0.0)))
    if not math.isfinite(worst) or worst > ATOL:
        raise ConversionError(f"the exported {role} differs from PyTorch by {worst:.3g} (> {ATOL:g}) at input "
                              f"shape {shape}")
    return worst
