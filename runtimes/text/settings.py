"""How a caller asks a text family (causal-lm, rnn-lm) for text.

A frozen dataclass: :class:`GenerationSettings` fields default to ``None``,
meaning "the artifact's default, else the built-in one", so a caller names only what it
wants to change: ``GenerationSettings(temperature=0.7, stop=("\\n\\n",))``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.text.sampling import SamplingSettings
from edgegen.strict import from_json


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate.  ``None`` = the artifact's default (``edgegen.json`` ``defaults``), else built-in."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: Strings that end generation; the stop string itself is not returned.
    stop: tuple[str, ...] | None = None
    #: Token ids that end generation, in addition to the model's end-of-sequence ids.
    stop_token_ids: tuple[int, ...] | None = None
    #: Same seed, same settings, same prompt: same text.  None: a fresh random seed.
    seed: int | None = None
    #: A prompt longer than the context is an error unless this keeps its last tokens.
    truncate_prompt: bool | None = None
    #: Generate up to max_new_tokens even after an end-of-sequence token.
    ignore_eos: bool | None = None

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> GenerationSettings:
        return from_json(cls, section, where="edgegen.json.defaults", error=ManifestError)

    def over(self, base: GenerationSettings) -> GenerationSettings:
        """These settings, with every unset field taken from ``base``."""
        changes = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **changes)


BUILTIN = GenerationSettings(
    max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
    repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, stop=(), stop_token_ids=(),
    truncate_prompt=False, ignore_eos=False)

_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingSettings))


@dataclass(frozen=True)
class Resolved:
    """Settings with every field decided and checked, ready for one generation run."""

    max_new_tokens: int
    sampling: SamplingSettings
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]
    seed: int | None
    truncate_prompt: bool
    ignore_eos: bool


def resolve(settings: GenerationSettings, defaults: GenerationSettings) -> Resolved:
    """Merge user settings over artifact defaults over built-ins, and check every value at once."""
    s = settings.over(defaults.over(BUILTIN))
    problems: list[str] = []
    if not _is_int(s.max_new_tokens) or s.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be a positive integer, got {s.max_new_tokens!r}")
    if s.seed is not None and (not _is_int(s.seed) or s.seed < 0):
        problems.append(f"seed must be a non-negative integer, got {s.seed!r}")
    stop = tuple(s.stop or ())
    if any(not isinstance(x, str) or not x for x in stop):
        problems.append(f"stop must be non-empty strings, got {list(stop)!r}")
    stop_ids = tuple(s.stop_token_ids or ())
    if any(not _is_int(x) or x < 0 for x in stop_ids):
        problems.append(f"stop_token_ids must be non-negative integers, got {list(stop_ids)!r}")
    sampling = None
    try:
        sampling = SamplingSettings(**{name: getattr(s, name) for name in _SAMPLING_FIELDS})
    except InvalidArgumentError as exc:
        problems.append(str(exc))
    if problems:
        raise InvalidArgumentError("; ".join(problems))
    assert sampling is not None
    return Resolved(max_new_tokens=s.max_new_tokens, sampling=sampling, stop=stop,  # type: ignore[arg-type]
                    stop_token_ids=frozenset(stop_ids), seed=s.seed, truncate_prompt=bool(s.truncate_prompt),
                    ignore_eos=bool(s.ignore_eos))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
