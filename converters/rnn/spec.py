"""The spec that lets a recurrent ``torch.nn.Module`` language model (LSTM, GRU, ...) become
an ``rnn-lm`` artifact.

The module's forward takes the new tokens and the recurrent state, and returns the logits
and the state after those tokens::

    logits, *new_states = module(input_ids, *states)

    input_ids   int64   [B, T]                 the new tokens
    states      float32 [B, *state_shapes[i]]  one tensor per entry of ``state_shapes``,
                                               batch first (zeros start a sequence)
    logits      float32 [B, T, vocab]
    new_states  float32, the same shapes as ``states``: the state after the T tokens

For an LSTM with L layers and hidden size H, ``state_shapes = ((L, H), (L, H))`` (h and c,
each [B, L, H]; transpose to ``nn.LSTM``'s [L, B, H] inside the module); for a GRU,
``((L, H),)``.  Running a sequence in one call or token by token with the states passed on
must give the same logits.  The forward must be traceable by ``torch.onnx.export`` (no
Python branches on tensor values) for any B and T.  ``models/charlstm.py`` is an example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgegen.converters.text.spec import shared_problems, tokenizer_json
from edgegen.errors import InvalidArgumentError


@dataclass(frozen=True)
class RNNLMSpec:
    """A recurrent LM: the module, its tokenizer, and the state layout the loop must know."""

    module: Any                                   # torch.nn.Module following the contract above
    tokenizer: Any                                # tokenizers.Tokenizer, or a path to a tokenizer.json
    #: Per state tensor, its shape without the batch axis (the tensor is [B, *shape]).
    state_shapes: tuple[tuple[int, ...], ...]
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
        shapes = self.state_shapes
        if not isinstance(shapes, (tuple, list)) or not shapes or not all(
                isinstance(s, (tuple, list)) and all(_positive_int(d) for d in s) for s in shapes):
            problems.append("state_shapes must be a non-empty tuple of shapes (tuples of positive integers, "
                            f"without the batch axis), e.g. ((layers, hidden), (layers, hidden)); got {shapes!r}")
        else:
            object.__setattr__(self, "state_shapes", tuple(tuple(int(d) for d in s) for s in shapes))
        if not isinstance(self.eos_token_ids, (tuple, list)) or not all(
                _non_negative_int(i) for i in self.eos_token_ids):
            problems.append(f"eos_token_ids must be non-negative integers, got {self.eos_token_ids!r}")
        else:
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not _non_negative_int(value):
                problems.append(f"{name} must be a non-negative integer or None, got {value!r}")
        problems += shared_problems(self.module, self.tokenizer, self.defaults)
        if problems:
            raise InvalidArgumentError("RNNLMSpec: " + "; ".join(problems))

    def tokenizer_json(self) -> str:
        return tokenizer_json(self.tokenizer)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
