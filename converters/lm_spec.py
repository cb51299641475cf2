"""The spec that lets any ``torch.nn.Module`` language model become a causal-lm artifact.

A module converts with a KV cache (``cache="kv"``, the fast path) when its forward is::

    logits, presents = module(input_ids, attention_mask, position_ids, past_key_values)

    input_ids       int64 [B, T]           the new tokens
    attention_mask  int64 [B, P + T]       1 = real token, 0 = left padding (past and new)
    position_ids    int64 [B, T]           positions of the new tokens (pads excluded)
    past_key_values tuple of num_layers (key, value) pairs, each [B, num_kv_heads, P, head_dim]
                    (P = 0 on the first call: empty tensors)
    logits          float [B, T, vocab]
    presents        the same tuple with the new tokens appended: [B, num_kv_heads, P + T, head_dim]

The forward must be traceable by ``torch.onnx.export`` (no Python branches on tensor
values; read sizes from tensors) and work for P = 0.  ``models/nanogpt.py`` is an example.

A module without a cache (``cache="none"``) only needs ``logits = module(input_ids)``
([B, T] -> [B, T, vocab]).  It costs speed: every new token recomputes the whole
sequence, so generating N tokens after a prompt of length L costs about
N * (L + N/2) token-forwards instead of L + N, and batching runs rows one by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from edgegen.errors import InvalidArgumentError


@dataclass(frozen=True)
class CausalLMSpec:
    """A custom causal LM: the module, its tokenizer, and what the generation loop must know."""

    module: Any                          # torch.nn.Module following the contract above
    tokenizer: Any                       # tokenizers.Tokenizer, or a path to a tokenizer.json
    context_length: int | None           # longest sequence the module handles (None: no limit)
    num_layers: int = 0                  # cache="kv": number of (key, value) pairs
    num_kv_heads: int = 0                # cache="kv": heads of each cached key/value
    head_dim: int = 0                    # cache="kv": size of each head
    cache: Literal["kv", "none"] = "kv"
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    #: Default generation settings stored in the artifact (GenerationSettings field names).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Name recorded in the manifest's source (default: the module's class).
    name: str | None = None
    #: sha256 of the checkpoint the module was loaded from, recorded in the manifest.
    checkpoint_sha256: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.cache not in ("kv", "none"):
            problems.append(f"cache must be 'kv' or 'none', got {self.cache!r}")
        if self.cache == "kv":
            for name in ("num_layers", "num_kv_heads", "head_dim"):
                value = getattr(self, name)
                if not isinstance(value, int) or value < 1:
                    problems.append(f"{name} must be a positive integer with cache='kv', got {value!r}")
        if self.context_length is not None and (not isinstance(self.context_length, int) or self.context_length < 2):
            problems.append(f"context_length must be an integer >= 2 or None, got {self.context_length!r}")
        problems += shared_problems(self.module, self.tokenizer, self.defaults)
        if problems:
            raise InvalidArgumentError("CausalLMSpec: " + "; ".join(problems))

    def tokenizer_json(self) -> str:
        return tokenizer_json(self.tokenizer)


def shared_problems(module: Any, tokenizer: Any, defaults: Any) -> list[str]:
    """What every LM spec checks the same way: the module, the tokenizer, the default settings."""
    from edgegen.runtimes.lm_settings import GenerationSettings

    problems = []
    if not isinstance(tokenizer, (str, os.PathLike)) and not hasattr(tokenizer, "to_str"):
        problems.append("tokenizer must be a tokenizers.Tokenizer or the path of a tokenizer.json, "
                        f"got {type(tokenizer).__name__}")
    if not callable(module):
        problems.append(f"module must be a torch.nn.Module, got {type(module).__name__}")
    known = {f.name for f in fields(GenerationSettings)}
    if not isinstance(defaults, dict):
        problems.append(f"defaults must be a dict, got {type(defaults).__name__}")
    elif unknown := sorted(set(defaults) - known):
        problems.append(f"defaults has unknown settings {unknown}; known: {sorted(known)}")
    return problems


def tokenizer_json(tokenizer: Any) -> str:
    """A spec's tokenizer (a tokenizers.Tokenizer or a tokenizer.json path) as a JSON string."""
    if isinstance(tokenizer, (str, os.PathLike)):
        import tokenizers

        try:
            return tokenizers.Tokenizer.from_file(os.fspath(tokenizer)).to_str()
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise InvalidArgumentError(f"cannot read the tokenizer {os.fspath(tokenizer)!r}: {exc}; "
                                       "give a Hugging Face tokenizers JSON file") from exc
    return str(tokenizer.to_str())
