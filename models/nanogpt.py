"""A single-file nanoGPT-style decoder that follows edgegen's custom-LM cache contract.

Pre-LN transformer blocks, learned position embeddings, GELU MLP, input and output
embeddings tied.  Torch only: this file imports nothing from edgegen, so a model trained
with it can be converted by edgegen without the two knowing about each other.

The forward is the contract edgegen's causal-LM converter exports::

    logits, presents = model(input_ids, attention_mask, position_ids, past_key_values)

    input_ids        [B, T]    int64
    attention_mask   [B, P+T]  int64, 1 = real token, 0 = left padding
    position_ids     [B, T]    int64 (see position_ids_from_mask)
    past_key_values  n_layer pairs (key, value), each [B, n_head, P, head_dim]; P may be 0
    logits           [B, T, vocab_size] float
    presents         n_layer pairs (key, value), each [B, n_head, P+T, head_dim]

Attention is written with plain matmul / masked_fill / softmax, every shape is read from
tensors and no Python branch looks at tensor values, so the graph traced by
``torch.onnx.export(..., dynamo=False, opset_version=17)`` works for every B, T and P
(P = 0 included).  Masked scores get ``torch.finfo(dtype).min`` rather than ``-inf``, so
no softmax row can produce NaN (and each query also attends to itself, so no row is
ever fully masked: see causal_padding_mask).

Checkpoints are safetensors files (never pickle): the weights, plus the config as JSON in
the file's metadata under ``"config"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKPOINT_FORMAT = "nanogpt/1"

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int  # context length: the largest position id is block_size - 1
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids [B, L] for a left-padded mask [B, L]: 0, 1, ... over real tokens, 0 on pads.

    For an incremental step take the last T columns of the positions of the full mask.
    """
    positions = attention_mask.long().cumsum(dim=1) - 1  # [B, L]
    return positions.clamp(min=0)  # [B, L]


def causal_padding_mask(attention_mask: torch.Tensor, query_len: int | torch.Tensor) -> torch.Tensor:
    """Which keys each query may attend to: bool [B, 1, T, P+T].

    Query t (absolute index P + t) sees key s when s <= P + t (causal) and the key is a
    real token (attention_mask[b, s] == 1).  Every query also sees itself, so a pad query
    (all of whose earlier keys are pads) attends to itself only: its row is never empty,
    and pad positions give the same (meaningless) outputs whether computed in one pass or
    step by step.  Real queries are unaffected, as they are real keys too.
    """
    total = attention_mask.shape[1]  # P+T
    past = total - query_len  # P
    key_pos = torch.arange(total, device=attention_mask.device)  # [P+T]
    query_pos = torch.arange(query_len, device=attention_mask.device) + past  # [T]
    causal = key_pos[None, :] <= query_pos[:, None]  # [T, P+T]
    itself = key_pos[None, :] == query_pos[:, None]  # [T, P+T]
    real = attention_mask[:, None, None, :] != 0  # [B, 1, 1, P+T]
    return causal[None, None, :, :] & (real | itself[None, None, :, :])  # [B, 1, T, P+T]


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    safetensors writes the metadata in hash-map order, which changes from run to run; sorted,
    the same weights always give the same bytes (and the same sha256).  Only the order of
    keys changes, so the header keeps its length and the tensor offsets stay valid.
    """
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        if not meta:
            return
        text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":")).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text + b" " * (size - len(text)))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x [B, T, C]
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        return q, k, v

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past_key: torch.Tensor,
                past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exported path: cache and padding, plain matmul / masked_fill / softmax."""
        B, T, _ = x.shape
        q, k, v = self._heads(x)  # 3 x [B, H, T, D]
        k = torch.cat([past_key, k], dim=2)  # [B, H, P+T, D]
        v = torch.cat([past_value, v], dim=2)  # [B, H, P+T, D]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # [B, H, T, P+T]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # [B, H, T, P+T]
        weights = F.softmax(scores, dim=-1)  # [B, H, T, P+T]
        weights = self.attn_dropout(weights)  # [B, H, T, P+T]
        y = weights @ v  # [B, H, T, D]
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_embd)  # [B, T, C]
        y = self.resid_dropout(self.c_proj(y))  # [B, T, C]
        return y, k, v

    def forward_causal(self, x: torch.Tensor) -> torch.Tensor:
        """The training path: unpadded sequences, no cache; fused causal attention (same function)."""
        B, T, _ = x.shape
        q, k, v = self._heads(x)  # 3 x [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # [B, H, T, D]
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_embd)  # [B, T, C]
        return self.resid_dropout(self.c_proj(y))  # [B, T, C]


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x))  # [B, T, 4C]
        return self.dropout(self.c_proj(h))  # [B, T, C]


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past_key: torch.Tensor,
                past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln_1(x), allowed, past_key, past_value)  # [B, T, C], 2 x [B, H, P+T, D]
        x = x + a  # [B, T, C]
        x = x + self.mlp(self.ln_2(x))  # [B, T, C]
        return x, k, v

    def forward_causal(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn.forward_causal(self.ln_1(x))  # [B, T, C]
        return x + self.mlp(self.ln_2(x))  # [B, T, C]


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # also the output projection (tied)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the exported forward ----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """(logits [B, T, V], presents) for T new tokens after P cached ones; see the module doc."""
        B, T = input_ids.shape
        if past_key_values is None or len(past_key_values) == 0:
            past_key_values = self.empty_cache(B, device=input_ids.device, dtype=self.wte.weight.dtype)
        if len(past_key_values) != self.config.n_layer:
            raise ValueError(f"past_key_values: expected {self.config.n_layer} (key, value) pairs, "
                             f"got {len(past_key_values)}")
        allowed = causal_padding_mask(attention_mask, T)  # [B, 1, T, P+T]
        x = self.wte(input_ids) + self.wpe(position_ids)  # [B, T, C]
        x = self.drop(x)  # [B, T, C]
        presents = []
        for block, (past_key, past_value) in zip(self.blocks, past_key_values):
            x, k, v = block(x, allowed, past_key, past_value)  # [B, T, C], 2 x [B, H, P+T, D]
            presents.append((k, v))
        x = self.ln_f(x)  # [B, T, C]
        logits = F.linear(x, self.wte.weight)  # [B, T, V]
        return logits, tuple(presents)

    def empty_cache(self, batch: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> KVCache:
        """n_layer pairs of zero-length key/value tensors [B, H, 0, D]."""
        shape = (batch, self.config.n_head, 0, self.config.head_dim)  # [B, H, P=0, D]
        dtype = dtype or self.wte.weight.dtype
        return tuple((torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                     for _ in range(self.config.n_layer))

    # -- training ---------------------------------------------------------------------------
    def logits_no_cache(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of unpadded sequences idx [B, T] starting at position 0.

        The same function as forward with an all-ones mask and no past, computed with fused
        causal attention (scaled_dot_product_attention), which trains faster on CPU.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device)  # [T]
        x = self.drop(self.wte(idx) + self.wpe(positions))  # [B, T, C]
        for block in self.blocks:
            x = block.forward_causal(x)  # [B, T, C]
        x = self.ln_f(x)  # [B, T, C]
        return F.linear(x, self.wte.weight)  # [B, T, V]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of idx [B, T] against targets [B, T]; -1 targets are ignored."""
        logits = self.logits_no_cache(idx)  # [B, T, V]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)

    # -- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx: list[int] | torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> list[int]:
        """Continue one prompt with the KV cache; greedy when temperature == 0.  Returns the new ids."""
        ids = torch.as_tensor(idx, dtype=torch.long).reshape(1, -1)  # [1, T]
        if ids.shape[1] == 0:
            raise ValueError("generate: the prompt must have at least one token")
        device = self.wte.weight.device
        ids = ids[:, -self.config.block_size:].to(device)  # [1, T]
        mask = torch.ones_like(ids)  # [1, T]
        past: KVCache | None = None
        pending, new = ids, []
        for _ in range(max_new_tokens):
            if mask.shape[1] > self.config.block_size:
                break  # no sliding window: the context is full
            positions = position_ids_from_mask(mask)[:, -pending.shape[1]:]  # [1, T]
            logits, past = self(pending, mask, positions, past)  # [1, T, V]
            last = logits[:, -1, :].float()  # [1, V]
            if temperature <= 0:
                token = int(last.argmax(dim=-1))
            else:
                last = last / temperature  # [1, V]
                if top_k is not None:
                    kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]  # [1, 1]
                    last = last.masked_fill(last < kth, float("-inf"))  # [1, V]
                token = int(torch.multinomial(F.softmax(last, dim=-1), 1, generator=generator))
            new.append(token)
            if eos_token_id is not None and token == eos_token_id:
                break
            pending = torch.tensor([[token]], device=device)  # [1, 1]
            mask = torch.cat([mask, torch.ones_like(pending)], dim=1)  # [1, P+1]
        return new

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, dtype: torch.dtype | None = None,
                        metadata: dict[str, str] | None = None) -> None:
        """Write weights (cast to dtype if given, e.g. torch.float16) and the config to a safetensors file."""
        from safetensors.torch import save_file

        tensors = {name: (t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach())
                   .cpu().contiguous() for name, t in self.state_dict().items()}
        meta = dict(metadata or {})
        meta.update(format=CHECKPOINT_FORMAT, config=json.dumps(asdict(self.config), sort_keys=True))
        save_file(tensors, str(path), metadata=meta)
        _sort_metadata(Path(path))


    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> GPT:
        """Load a checkpoint written by save_checkpoint; weights come back as float32."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path}: no 'config' in the safetensors metadata; this file was not written by "
                             f"GPT.save_checkpoint (it needs the GPTConfig as JSON under metadata['config'])")
        try:
            config = GPTConfig(**json.loads(meta["config"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: metadata['config'] is not a valid GPTConfig JSON object: {exc}") from None
        model = cls(config)
        state = load_file(str(path), device="cpu")
        state = {name: t.float() if t.is_floating_point() else t for name, t in state.items()}
        model.load_state_dict(state, strict=True)
        return model.to(device)
