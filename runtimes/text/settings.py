"""How a caller asks a text family (causal-lm, rnn-lm) for text.

A frozen dataclass: :class:`GenerationSettings` fields default to ``None``,
meaning "the artifact's default, else the built-in one", so a caller names only what it
wants to change: ``GenerationSettings(temperature=0.7, stop=("\\n\\n",))``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.text.constrained import parse_response_format
from edgegen.runtimes.text.sampling import SamplingSettings, shown
from edgegen.strict import from_json


def _as_tuple(value: Any) -> tuple[Any, ...] | None:
    """A list setting (stop, stop_token_ids) as a tuple, () for None; None when it is no list at all."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    return tuple(value)


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
    #: Record each generated token's log-probability under the model (``Completion.logprobs``).
    logprobs: bool | None = None
    #: With logprobs: the N most likely alternatives at each position too (0..20, as OpenAI's API).
    top_logprobs: int | None = None
    #: Constrained decoding, as OpenAI's ``response_format``: ``{"type": "json_object"}``,
    #: ``{"type": "json_schema", "json_schema": {"schema": {...}}}``, ``{"type": "regex", "regex": "..."}``,
    #: ``{"type": "grammar", "grammar": "<Lark>"}`` (:mod:`edgegen.runtimes.text.constrained`).
    response_format: Any = None
    #: Speculative decoding: "ngram" drafts the next tokens from an earlier occurrence of the last few tokens
    #: (prompt lookup) and verifies them in one decoder run; the output is what plain decoding gives (it is lossless
    #: for every sampler), only faster where text repeats (code edits).  "off": plain decoding.  Runtimes that
    #: cannot speculate (batches, decoders without a KV cache, rnn-lm) decode plainly.
    speculative: str | None = None

    def __post_init__(self) -> None:
        # A str is ONE stop string (iterating "\n\n" would make two one-character stops) and an int ONE
        # token id; lists become tuples.  Anything else is left for resolve() to report with the rest.
        stop, ids = self.stop, self.stop_token_ids
        if isinstance(stop, str):
            object.__setattr__(self, "stop", (stop,))
        elif (items := _as_tuple(stop)) is not None and stop is not None:
            object.__setattr__(self, "stop", items)
        if isinstance(ids, numbers.Integral):
            object.__setattr__(self, "stop_token_ids", (ids,))
        elif (items := _as_tuple(ids)) is not None and ids is not None:
            object.__setattr__(self, "stop_token_ids", items)

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> GenerationSettings:
        settings = from_json(cls, section, where="edgegen.json.defaults", error=ManifestError)
        if settings.response_format is not None:   # a grammar is the caller's choice, never an artifact's
            raise ManifestError("edgegen.json.defaults.response_format: an artifact cannot constrain every run's "
                                "output; remove it (a caller passes response_format per run) or re-convert the model")
        return settings

    def over(self, base: GenerationSettings) -> GenerationSettings:
        """These settings, with every unset field taken from ``base``."""
        changes = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **changes)


BUILTIN = GenerationSettings(
    max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
    repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, stop=(), stop_token_ids=(),
    truncate_prompt=False, ignore_eos=False, logprobs=False, top_logprobs=0, speculative="off")

#: The values of ``speculative``.
SPECULATIVE_MODES = ("off", "ngram")

#: OpenAI's bound on top_logprobs.
MAX_TOP_LOGPROBS = 20

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
    #: None: no logprobs; N >= 0: each token's logprob and its N likeliest alternatives.
    top_logprobs: int | None = None
    response_format: Any = None
    #: "off" or "ngram" (GenerationSettings.speculative)
    speculative: str = "off"


def resolve(settings: GenerationSettings, defaults: GenerationSettings) -> Resolved:
    """Merge user settings over artifact defaults over built-ins, and check every value at once."""
    s = settings.over(defaults.over(BUILTIN))
    problems: list[str] = []
    if not _is_int(s.max_new_tokens) or s.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be a positive integer, got {shown(s.max_new_tokens)}")
    if s.seed is not None and (not _is_int(s.seed) or s.seed < 0):   # default_rng takes any such integer
        problems.append(f"seed must be a non-negative integer, got {shown(s.seed)}")
    stop = _as_tuple(s.stop)
    if stop is None or any(not isinstance(x, str) or not x for x in stop):
        problems.append(f"stop must be a non-empty string or a list of them, got {shown(s.stop, 80)}")
        stop = ()
    for i, text in enumerate(stop):
        try:
            check_text(text, f"stop string {i}")
        except InvalidArgumentError as exc:
            problems.append(str(exc))
    stop_ids = _as_tuple(s.stop_token_ids)
    if stop_ids is None or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0 for x in stop_ids):
        problems.append(f"stop_token_ids must be non-negative integers, got {shown(s.stop_token_ids, 80)}")
        stop_ids = ()
    if not isinstance(s.logprobs, bool):
        problems.append(f"logprobs must be true or false, got {shown(s.logprobs)}")
    if not _is_int(s.top_logprobs) or not 0 <= s.top_logprobs <= MAX_TOP_LOGPROBS:
        problems.append(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {shown(s.top_logprobs)}")
    elif s.top_logprobs and s.logprobs is not True:
        problems.append("top_logprobs needs logprobs=True (--logprobs)")
    if not isinstance(s.speculative, str) or s.speculative not in SPECULATIVE_MODES:
        problems.append(f"speculative must be one of {', '.join(map(repr, SPECULATIVE_MODES))}, "
                        f"got {shown(s.speculative)}")
    response_format = None
    try:
        if parse_response_format(s.response_format) is not None:   # {"type": "text"} is no constraint
            response_format = s.response_format
    except InvalidArgumentError as exc:
        problems.append(str(exc))
    sampling = None
    try:
        sampling = SamplingSettings(**{name: getattr(s, name) for name in _SAMPLING_FIELDS})
    except InvalidArgumentError as exc:
        problems.append(str(exc))
    if problems:
        raise InvalidArgumentError("; ".join(problems))
    assert sampling is not None
    return Resolved(max_new_tokens=s.max_new_tokens, sampling=sampling, stop=stop,  # type: ignore[arg-type]
                    stop_token_ids=frozenset(int(x) for x in stop_ids), seed=s.seed,
                    truncate_prompt=bool(s.truncate_prompt), ignore_eos=bool(s.ignore_eos),
                    top_logprobs=s.top_logprobs if s.logprobs else None, response_format=response_format,
                    speculative=s.speculative)  # type: ignore[arg-type]


def sources(settings: GenerationSettings, defaults: GenerationSettings) -> dict[str, tuple[Any, str]]:
    """Every setting's value for a run, and where it came from: ``"caller"`` (``settings``), ``"artifact"``
    (``defaults``, its edgegen.json ``defaults``) or ``"built-in"`` (:data:`BUILTIN`), merged as
    :func:`resolve` merges them, so a caller can say which defaults applied (``temperature 0`` from a
    model's generation config makes every run greedy)."""
    out: dict[str, tuple[Any, str]] = {}
    for f in fields(GenerationSettings):
        caller, artifact = getattr(settings, f.name), getattr(defaults, f.name)
        out[f.name] = ((caller, "caller") if caller is not None else (artifact, "artifact") if artifact is not None
                       else (getattr(BUILTIN, f.name), "built-in"))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_text(text: Any, what: str) -> str:
    """``text`` when it is a str that UTF-8 can encode; else one InvalidArgumentError naming ``what``.

    A lone surrogate is what Python makes of bytes that are not UTF-8 in a command-line argument
    (``surrogateescape``: byte 0xff -> U+DCFF), or what an API caller can pass; a tokenizer refuses it
    with a TypeError, so it is refused here, where the message can say what to fix.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:   # surrogateescape: how Python passes on a byte that is not UTF-8
            found, fix = f"the byte 0x{code - 0xDC00:02x}", "convert it to UTF-8 first, e.g. with iconv"
        else:
            found, fix = f"a lone surrogate U+{code:04X}, which UTF-8 cannot encode", "remove it"
        raise InvalidArgumentError(f"{what} is not valid UTF-8 (character {exc.start} is {found}); {fix}") from None
    return text
