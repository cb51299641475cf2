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

from dataclasses import dataclass, field
from typing import Any, Literal

from edgegen.converters.text.spec import shared_problems, tokenizer_json
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
    #: The chat template the artifact carries: its jinja source (as in a tokenizer_config.json), or "chatml".
    chat_template: str | None = None

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
        if self.chat_template is not None:
            problems += _chat_template_problems(self.chat_template)
        if problems:
            raise InvalidArgumentError("CausalLMSpec: " + "; ".join(problems))

    def tokenizer_json(self) -> str:
        return tokenizer_json(self.tokenizer)


def _chat_template_problems(template: object) -> list[str]:
    if not isinstance(template, str) or not template:
        return [f"chat_template must be a jinja template or 'chatml', got {type(template).__name__}"]
    from edgegen.runtimes.text.chat_template import BUILTIN, template_problems

    return [] if template in BUILTIN else [f"chat_template: {p}" for p in template_problems({"default": template})]
