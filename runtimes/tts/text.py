"""A VITS voice's character tokenizer as plain data, and its encoder (pure Python, no numpy, no transformers).

:class:`VitsText` carries what ``transformers.VitsTokenizer`` (phonemize=False) reads from a voice's
``vocab.json`` and ``tokenizer_config.json``; :meth:`VitsText.encode` reproduces ``VitsTokenizer(text).input_ids``
step by step:

1. ``prepare_for_tokenization``: with ``normalize``, a greedy left-to-right match of the vocabulary (then the
   added tokens) in their stored order, lowercasing every character no entry matches; the Romanian "ț" -> "ţ"
   replacement for ``language == "ron"``; then (``normalize`` only) every character outside the vocabulary is
   dropped and the ends are stripped.
2. ``PreTrainedTokenizer.tokenize``: the text is cut around the added tokens (pad, unk...) with transformers'
   Trie, longest match first; each added token becomes one id.
3. ``_tokenize``: every other piece is split into characters and, with ``add_blank``, the blank (the token of
   id 0) is put before, between and after them -- per piece, so an added token has no blank on either side.
4. Characters outside the vocabulary (``normalize=False`` only) get the id of ``unk_token`` in the vocabulary.

On top of that, edgegen's policy (``unknown="refuse"``): letters and digits transformers would silently drop (or
turn into the unknown token) are refused with a message naming them; punctuation, symbols and whitespace go the
way transformers sends them.  ``unknown="drop"`` gives transformers' ids exactly.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from functools import cached_property
from typing import Any

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.strict import FieldError, from_json, short, to_json

_UNKNOWN_POLICIES = ("refuse", "drop")
#: Characters named in one error line, at most.
_NAMED = 5


@dataclasses.dataclass(frozen=True)
class VitsText:
    """What a VITS voice's tokenizer needs at run time (the ``text`` section of a tts artifact).

    ``vocab`` keeps ``vocab.json``'s key order: the normalizer's greedy match tries entries in that order.
    ``added_tokens`` are the tokens transformers keeps whole (the special tokens pad/unk and any added ones), in
    id order; one that is in ``vocab`` has its vocab id, the others take ``len(vocab)``, ``len(vocab) + 1``...
    in list order (as transformers numbers them).
    """

    vocab: dict[str, int]
    add_blank: bool
    normalize: bool
    language: str | None
    is_uroman: bool
    pad_token: str | None
    unk_token: str | None
    added_tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        problems = _vocab_problems(self.vocab) + _added_problems(self)
        if problems:
            raise FieldError(*problems)

    # ---- JSON ----

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``vocab`` in its order, ``added_tokens`` as a list)."""
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "edgegen.json.text") -> VitsText:
        """Build from :meth:`to_json`'s form; ManifestError naming every bad field."""
        return from_json(cls, data, where=where, error=ManifestError,
                         fix="re-convert the voice with this edgegen version")

    # ---- lookup tables, built once per instance ----

    @cached_property
    def _added_ids(self) -> dict[str, int]:
        ids, next_id = {}, len(self.vocab)
        for token in self.added_tokens:
            if token in self.vocab:
                ids[token] = self.vocab[token]
            else:
                ids[token], next_id = next_id, next_id + 1
        return ids

    @cached_property
    def _by_first_char(self) -> dict[str, list[str]]:
        """The normalizer's candidates (vocab then added tokens, in order) grouped by first character: the first
        of them that matches is the first in the whole list that matches."""
        groups: dict[str, list[str]] = {}
        for word in [*self.vocab, *self._added_ids]:
            groups.setdefault(word[0], []).append(word)
        return groups

    @cached_property
    def _trie(self) -> dict[str, Any]:
        root: dict[str, Any] = {}
        for token in self.added_tokens:
            node = root
            for char in token:
                node = node.setdefault(char, {})
            node[""] = 1
        return root

    @cached_property
    def _blank_id(self) -> int | None:
        """transformers' blank: the token of id 0, looked up again as a token (it is id 0)."""
        return 0 if self.add_blank else None

    @cached_property
    def alphabet(self) -> str:
        """A short summary of the characters this voice can say, for error messages (``a-z 0-9 ' - space``)."""
        return _summarize(self.vocab)

    # ---- encoding ----

    def encode(self, text: str, *, unknown: str = "refuse") -> list[int]:
        """``VitsTokenizer(text).input_ids`` for this voice; see the module docstring for the steps and policy."""
        if unknown not in _UNKNOWN_POLICIES:
            raise InvalidArgumentError(f"unknown={short(unknown)} is not one of 'refuse', 'drop'")
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a string, got {type(text).__name__}")
        if not text:
            raise InvalidArgumentError("the text is empty: it has no characters this voice can say "
                                       f"(its alphabet has: {self.alphabet})")
        prepared, dropped = self._prepare(text)
        if unknown == "refuse" and dropped:
            self._refuse(dropped, "drops")
        if not prepared.strip():
            raise InvalidArgumentError(f"the text {short(text)} has no characters this voice can say (its "
                                       f"alphabet has: {self.alphabet}); give it words spelled with those")
        ids: list[int] = []
        unsayable: list[str] = []
        for piece in _trie_split(self._trie, prepared):
            if piece in self._added_ids:
                ids.append(self._added_ids[piece])
            else:
                ids.extend(self._piece_ids(piece, unsayable))
        if unknown == "refuse" and unsayable:
            self._refuse(unsayable, "maps to the unknown token")
        return ids

    def _prepare(self, text: str) -> tuple[str, list[str]]:
        """(prepare_for_tokenization's text, the letters/digits it dropped, as the user wrote them)."""
        if not self.normalize:
            prepared = self._ron(text)
            self._check_roman(prepared)
            return prepared, []
        segments = self._normalize_segments(text)   # [(source, normalized)]
        self._check_roman("".join(out for _, out in segments))
        kept: list[str] = []
        dropped: list[str] = []
        for source, out in segments:
            for char in out:
                if char in self.vocab:
                    kept.append(char)
                elif _sayable(char):
                    dropped.append(source if len(source) == 1 else char)
        return "".join(kept).strip(), dropped

    def _normalize_segments(self, text: str) -> list[tuple[str, str]]:
        """normalize_text (greedy first match in vocab order, else lowercase) then the "ron" replacement, kept
        per source span so a dropped character can be named as the user wrote it."""
        segments = []
        i = 0
        while i < len(text):
            for word in self._by_first_char.get(text[i], ()):
                if text.startswith(word, i):
                    segments.append((word, self._ron(word)))
                    i += len(word)
                    break
            else:
                segments.append((text[i], self._ron(text[i].lower())))
                i += 1
        return segments

    def _ron(self, text: str) -> str:
        return text.replace("ț", "ţ") if self.language == "ron" else text

    def _check_roman(self, text: str) -> None:
        if not self.is_uroman:
            return
        foreign = _unique(c for c in text if ord(c) > 0x7F)
        if foreign:
            raise InvalidArgumentError(
                f"this voice reads romanized text but the text has non-ASCII characters {_name(foreign)}: romanize "
                "it first with uroman (pip install uroman; uroman.Uroman().romanize_string(text)); edgegen does "
                "not carry uroman")

    def _piece_ids(self, piece: str, unsayable: list[str]) -> list[int]:
        """_tokenize + convert_tokens_to_ids for a piece holding no added token."""
        ids = []
        for char in piece:
            if self.add_blank:
                ids.append(self._blank_id)
            if char in self._added_ids:
                ids.append(self._added_ids[char])
            elif char in self.vocab:
                ids.append(self.vocab[char])
            else:
                ids.append(self._unknown_id(char))
                if _sayable(char):
                    unsayable.append(char)
        if self.add_blank:
            ids.append(self._blank_id)
        return ids

    def _unknown_id(self, char: str) -> int:
        # transformers looks unk_token up in vocab.json only; outside it, input_ids would hold None
        if self.unk_token is None or self.unk_token not in self.vocab:
            raise InvalidArgumentError(
                f"the text has {short(char)}, which this voice's alphabet lacks, and the voice has no unknown "
                f"token in its vocabulary (transformers would give the id None); spell the text with its "
                f"alphabet: {self.alphabet}")
        return self.vocab[self.unk_token]

    def _refuse(self, chars: list[str], what: str) -> None:
        unique = _unique(chars)
        action = "drop them" if what == "drops" else f"let them become {self.unk_token!r}"
        raise InvalidArgumentError(
            f"the text has letters or digits this voice cannot say, which transformers silently {what}: "
            f"{_name(unique)}; this voice's alphabet has: {self.alphabet}; spell them with those, or pass "
            f"unknown='drop' (edgegen speak --drop-unknown) to {action} as transformers does")


def _trie_split(trie: dict[str, Any], text: str) -> list[str]:
    """transformers' ``Trie.split`` (tokenization_utils.py), ported as is: cut ``text`` around the added tokens,
    the longest match at the earliest start first."""
    if not trie:
        return [text]
    states: dict[int, dict[str, Any]] = {}
    offsets = [0]
    skip = 0
    for current, current_char in enumerate(text):
        if skip and current < skip:
            continue
        to_remove = set()
        reset = False
        for start, pointer in states.items():
            if "" in pointer:
                for lookstart, lookpointer in states.items():
                    if lookstart > start:
                        break
                    elif lookstart < start:
                        lookahead = end = current + 1
                    else:
                        lookahead = end = current
                    next_char = text[lookahead] if lookahead < len(text) else None
                    if "" in lookpointer:
                        start, end, skip = lookstart, lookahead, lookahead
                    while next_char in lookpointer:
                        lookpointer = lookpointer[next_char]
                        lookahead += 1
                        if "" in lookpointer:
                            start, end, skip = lookstart, lookahead, lookahead
                        if lookahead == len(text):
                            break
                        next_char = text[lookahead]
                offsets += [start, end]
                reset = True
                break
            elif current_char in pointer:
                states[start] = pointer[current_char]
            else:
                to_remove.add(start)
        if reset:
            states = {}
        else:
            for start in to_remove:
                del states[start]
        if current >= skip and current_char in trie:
            states[current] = trie[current_char]
    for start, pointer in states.items():
        if "" in pointer:
            offsets += [start, len(text)]
            break
    offsets.append(len(text))
    pieces, start = [], 0
    for end in offsets:
        if start >= end:   # start > end: transformers logs "a bug in Trie" and skips it too
            continue
        pieces.append(text[start:end])
        start = end
    return pieces


def _sayable(char: str) -> bool:
    """Whether dropping ``char`` loses words (a letter or a digit) rather than punctuation or spacing."""
    return unicodedata.category(char)[0] in "LN"


def _unique(chars: Any) -> list[str]:
    return list(dict.fromkeys(chars))


def _name(chars: list[str]) -> str:
    shown = ", ".join(repr(c) for c in chars[:_NAMED])
    return shown + (f" (and {len(chars) - _NAMED} more)" if len(chars) > _NAMED else "")


def _summarize(vocab: dict[str, int], limit: int = 24) -> str:
    """Single characters as ranges of consecutive letters/digits (``a-z``), others one by one, then a count of
    longer entries; at most ``limit`` items."""
    chars = sorted({k for k in vocab if len(k) == 1}, key=lambda c: (not c.isalnum(), ord(c)))
    items: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) >= 3:
            items.append(f"{run[0]}-{run[-1]}")
        else:
            items.extend(run)
        run.clear()

    for char in chars:
        if char.isalnum() and run and ord(char) == ord(run[-1]) + 1 and run[-1].isalnum():
            run.append(char)
            continue
        flush()
        if char.isalnum():
            run.append(char)
        else:
            items.append("space" if char == " " else repr(char) if char.isspace() else char)
    flush()
    longer = sum(1 for k in vocab if len(k) > 1)
    text = " ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
    return text + (f" (and {longer} multi-character entries)" if longer else "")


def _vocab_problems(vocab: dict[str, int]) -> list[tuple[str, str]]:
    if not vocab:
        return [("vocab", "is empty")]
    for key, value in vocab.items():
        if not isinstance(key, str) or not key:
            return [("vocab", f"has the key {short(key)}: keys must be non-empty strings")]
        if not isinstance(value, int) or isinstance(value, bool):
            return [("vocab", f"maps {short(key)} to {short(value)}: ids must be integers")]
    if sorted(vocab.values()) != list(range(len(vocab))):
        return [("vocab", f"ids must be 0..{len(vocab) - 1}, each once")]
    return []


def _added_problems(text: VitsText) -> list[tuple[str, str]]:
    tokens = text.added_tokens
    if not isinstance(tokens, tuple) or not all(isinstance(t, str) and t for t in tokens):
        return [("added_tokens", "must be a list of non-empty strings")]
    if len(set(tokens)) != len(tokens):
        return [("added_tokens", "repeats a token")]
    missing = [name for name in ("pad_token", "unk_token")
               if getattr(text, name) is not None and getattr(text, name) not in tokens]
    return [(name, f"{short(getattr(text, name))} is not in added_tokens (transformers adds it)") for name in missing]
