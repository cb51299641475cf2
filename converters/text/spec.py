"""What the text families' specs and converters share: the checks every LM spec makes of its module,
tokenizer and default settings, the tokenizer as JSON, and the special tokens' names for the manifest."""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from edgegen.errors import InvalidArgumentError


def shared_problems(module: Any, tokenizer: Any, defaults: Any) -> list[str]:
    """What every LM spec checks the same way: the module, the tokenizer, the default settings."""
    from edgegen.runtimes.text.settings import GenerationSettings

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


def special_tokens(tokenizer: Any, sampler: dict[str, Any]) -> dict[str, str]:
    """Names of the special token ids, as the tokenizer spells them."""
    out = {}
    for key, ids in (("eos", sampler.get("eos_token_ids") or []), ("bos", [sampler.get("bos_token_id")]),
                     ("pad", [sampler.get("pad_token_id")])):
        names = [tokenizer.id_to_token(i) for i in ids if i is not None]
        if names and all(names):
            out[key] = names[0] if len(names) == 1 else " ".join(names)
    return out
