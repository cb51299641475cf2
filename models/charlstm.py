"""A small LSTM language model following edgegen's ``rnn-lm`` contract (torch only).

Forward (see :mod:`edgegen.converters.rnn.spec`)::

    logits, h, c = model(input_ids, h, c)

    input_ids  int64   [B, T]
    h, c       float32 [B, n_layer, hidden]   (batch first; nn.LSTM's [n_layer, B, hidden] inside)
    logits     float32 [B, T, vocab_size]

Zero states start a sequence.  Running a sequence in one call or token by token (passing
the returned states on) gives the same logits.

Checkpoints are safetensors files (never pickle): the weights, plus the config as JSON in
the file's metadata under ``"config"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_FORMAT = "charlstm/1"


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int
    n_embd: int
    hidden: int
    n_layer: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_embd", "hidden", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LSTMConfig.{name} must be a positive int, got {value!r}")


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place (a stable sha256).

    safetensors writes the metadata in hash-map order; only the key order changes here, so the
    header keeps its length and the tensor offsets stay valid (as models/nanogpt.py does).
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


class CharLSTM(nn.Module):
    """Embedding -> n_layer LSTM -> linear head."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.lstm = nn.LSTM(config.n_embd, config.hidden, num_layers=config.n_layer, batch_first=True)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of (h, c) without the batch axis: ((n_layer, hidden), (n_layer, hidden))."""
        shape = (self.config.n_layer, self.config.hidden)
        return (shape, shape)

    def zero_states(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.config.n_layer, self.config.hidden)               # [B, L, H]
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, input_ids: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed(input_ids)                                              # [B, T, E]
        state = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())  # [L, B, H] each
        out, (h_new, c_new) = self.lstm(x, state)                              # out [B, T, H]
        logits = self.head(out)                                                # [B, T, V]
        return logits, h_new.transpose(0, 1), c_new.transpose(0, 1)            # states [B, L, H]

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` (a reference loop for tests)."""
        h, c = self.zero_states(1)
        logits, h, c = self(torch.tensor([ids], dtype=torch.int64), h, c)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            new.append(token)
            logits, h, c = self(torch.tensor([[token]], dtype=torch.int64), h, c)
        return new

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, metadata: dict[str, str] | None = None,
                        dtype: torch.dtype | None = None) -> None:
        """Write the weights (cast to dtype if given, e.g. torch.float16) and the config; same weights, same bytes."""
        from safetensors.torch import save_file

        tensors = {name: (t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach())
                   .cpu().contiguous() for name, t in self.state_dict().items()}
        meta = dict(metadata or {})
        meta.update(format=CHECKPOINT_FORMAT, config=json.dumps(asdict(self.config), sort_keys=True))
        save_file(tensors, str(path), metadata=meta)
        sort_metadata(Path(path))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> CharLSTM:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path}: no 'config' in the safetensors metadata; this file was not written by "
                             "CharLSTM.save_checkpoint")
        try:
            config = LSTMConfig(**json.loads(meta["config"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: metadata['config'] is not a valid LSTMConfig JSON object: {exc}") from None
        model = cls(config)
        state = load_file(str(path), device="cpu")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return model.eval()
