"""What a causal-LM artifact declares about its decoder and tokens: its manifest's ``sampler`` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgegen.errors import ManifestError
from edgegen.manifest import MAX_COUNT, count_problem
from edgegen.strict import FieldError, from_json


@dataclass(frozen=True)
class CausalLMSampler:
    """The ``sampler`` section of a causal-lm manifest."""

    #: Longest sequence (prompt + generated) the model can attend to; None = no fixed limit.
    context_length: int | None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    #: "kv": the decoder takes and returns a KV cache; "none": every step recomputes the window.
    cache: Literal["kv", "none"] = "kv"
    #: "left": rows of different lengths run batched, left-padded; "none": the decoder reads each row's
    #: length from its mask and needs unpadded rows (GroupQueryAttention), so such rows run one at a time.
    padding: Literal["left", "none"] = "left"
    #: "grow": each step returns a new present (past + new positions); "shared": the decoder writes the new
    #: positions into its past in place (GroupQueryAttention), so one preallocated buffer
    #: [B, H_kv, capacity, D] is bound as both past and present and the mask says how much of it is used.
    kv_buffer: Literal["grow", "shared"] = "grow"
    #: The special tokens as the tokenizer spells them, e.g. {"eos": "<|endoftext|>"}.
    special_tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Ranges that hold for every model; the ids are checked against the vocabulary at load (check_vocabulary).
        problems = []
        for key, ids in self.token_ids().items():
            problem = next((p for i in ids if (p := count_problem(i, 0, MAX_COUNT - 1))), None)
            if problem:
                problems.append((key, problem))
        if self.context_length is not None and (problem := count_problem(self.context_length, 2)):
            problems.append(("context_length", problem))
        if problems:
            raise FieldError(*problems)

    def token_ids(self) -> dict[str, tuple[int, ...]]:
        """The token ids this section names, by key."""
        return {"eos_token_ids": self.eos_token_ids,
                **{key: (value,) for key, value in (("bos_token_id", self.bos_token_id),
                                                   ("pad_token_id", self.pad_token_id)) if value is not None}}

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> CausalLMSampler:
        return from_json(cls, section, where="edgegen.json.sampler", error=ManifestError, fix="re-convert the model")
