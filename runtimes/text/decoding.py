"""Streaming text: incremental detokenization and stop strings.

:class:`IncrementalDecoder` turns generated token ids into text pieces as soon as they are
final, using the prefix-offset / read-offset technique of text-generation-inference and
vLLM (``detokenize_incrementally``): each step decodes a small window of tokens (a few
already-emitted ones for context, then the new ones) and emits only what the new tokens
added after the window's earlier text.  Decoding the context with the new tokens gets
right what a token-by-token decode gets wrong: the leading space that Metaspace
(SentencePiece "▁word"), ``Strip`` and WordPiece decoders drop or add at the start of a
decoded string, and characters whose UTF-8 bytes are spread over several byte-level
tokens (held back while the window's text ends with U+FFFD, so no piece ever holds half a
character).

:class:`StopStringMatcher` cuts streamed text at stop strings that may span several
pieces, holding back only the text that could still turn into one.

Only ``tokenizers`` (the Rust Hugging Face tokenizers) and the standard library are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import tokenizers

from edgegen.errors import InvalidArgumentError

__all__ = ["IncrementalDecoder", "StopStringMatcher"]

#: What a tokenizer's decoder writes for an incomplete (or invalid) UTF-8 sequence.
REPLACEMENT = "\ufffd"

#: How many prompt tokens are decoded as context before the first generated token.
PROMPT_CONTEXT = 5
#: How far back the prompt context may reach to start on text that is neither empty nor
#: the middle of a character (tokens of a skipped special token, a split emoji...).
MAX_PROMPT_CONTEXT = 64
#: How far back (in tokens) the context of the next step may reach past the tokens just
#: emitted, when these start inside a character or decode to nothing on their own.
MAX_REACH = 8
#: After this many held tokens a piece is emitted even if it still ends with U+FFFD: the
#: byte sequence is broken (or the text really ends with U+FFFD), and holding longer
#: would make each step's decode grow with the sequence.
MAX_PENDING = 32
#: A context longer than this many tokens (a long run of tokens that decode to nothing)
#: is cut back to its last :data:`PROMPT_CONTEXT` (up to :data:`MAX_PROMPT_CONTEXT`) tokens.
MAX_WINDOW = 256


class IncrementalDecoder:
    """Turns generated token ids into text pieces as they become final, for streaming.

    The concatenation of every :meth:`add` and the final :meth:`flush` equals the text
    the generated ids add after the prompt, ``decode(prompt + generated)[len(decode(prompt)):]``,
    for the usual decoders (ByteLevel, Metaspace, ByteFallback + Strip, WordPiece).  The
    one exception is a prompt whose ids end inside a character (which no encoded text
    does): the U+FFFD that stands for its first bytes at the end of ``decode(prompt)`` is
    not counted as prompt text, so the character is emitted whole once the generated ids
    complete it, i.e. ``decode(prompt + generated)[len(decode(prompt).rstrip("\ufffd")):]``.

    Each step decodes only a window of tokens: the ones emitted by the previous step plus
    those not yet emitted, so the cost per token does not grow with the sequence.

    Known limit, shared by every incremental detokenizer: a decoder that rewrites text
    across token boundaries after the fact (none of the above does) can make the stream
    differ from a full decode, since emitted text is never taken back.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, prompt_ids: Sequence[int],
                 skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = bool(skip_special_tokens)
        added = getattr(tokenizer, "get_added_tokens_decoder", None)
        self._special = frozenset(i for i, t in added().items() if t.special) if added else frozenset()
        prompt = [int(i) for i in prompt_ids]
        n = len(prompt)
        start, context_text = self._context(prompt, max(n - PROMPT_CONTEXT, 0), max(n - MAX_PROMPT_CONTEXT, 0))
        # _window = context tokens (already emitted, or the prompt's tail) + pending tokens.
        self._window: list[int] = prompt[start:]
        self._read = len(self._window)          # where the pending tokens begin in _window
        # decode(_window[:_read]), less a U+FFFD at its end: a prompt that ends inside a
        # character (its first bytes) has that character emitted whole with the new text.
        self._prefix_text = context_text.rstrip(REPLACEMENT)
        self._pieces: list[str] = []

    # -- public -------------------------------------------------------------------------
    def add(self, ids: Sequence[int]) -> str:
        """Append generated ids; return the text that became final ('' if none yet)."""
        if len(ids) == 0:
            return ""
        self._window.extend(int(i) for i in ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is held back, at the end of generation.

        This may include U+FFFD where the generated bytes really are a broken UTF-8
        sequence.  The decoder can be used further afterwards.
        """
        if self._read == len(self._window):
            return ""
        return self._advance(final=True)

    @property
    def text(self) -> str:
        """All the text emitted so far (by :meth:`add` and :meth:`flush`)."""
        return "".join(self._pieces)

    # -- internals ----------------------------------------------------------------------
    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=self._skip)

    def _context(self, ids: list[int], start: int, floor: int) -> tuple[int, str]:
        """Where the context ``ids[start:]`` should start, reaching back to ``floor``, and its text.

        The context reaches back while its text is empty or starts inside a character
        (the window then begins with U+FFFD, and a ByteFallback decoder would also turn
        the following valid bytes into U+FFFD), so the next tokens are decoded as they
        follow real text.
        """
        text = self._decode(ids[start:])
        while start > floor and (not text or text[0] == REPLACEMENT):
            start -= 1
            text = self._decode(ids[start:])
        return start, text

    def _settle_empty(self) -> None:
        """The pending tokens add no text: make them context, or drop skipped special tokens.

        They cannot simply be dropped: a token may add nothing only because it starts the
        window (Metaspace and ``Strip`` remove the first space), and still matter to the
        next one.  Skipped special tokens never reach the decoder, so a run of them (which
        would otherwise grow the window) is dropped.
        """
        pending = self._window[self._read:]
        if self._skip and all(i in self._special for i in pending):
            del self._window[self._read:]
            return
        self._read = len(self._window)
        n = len(self._window)
        if n > MAX_WINDOW:
            # A long run of tokens that decode to nothing: keep a bounded context.
            start, self._prefix_text = self._context(self._window, n - PROMPT_CONTEXT, n - MAX_PROMPT_CONTEXT)
            self._window = self._window[start:]
            self._read = len(self._window)

    def _advance(self, final: bool) -> str:
        new_text = self._decode(self._window)
        prefix_text = self._prefix_text
        pending = len(self._window) - self._read
        end = len(self._window)                  # the tokens read this step: _window[_read:end]
        if not final and (new_text.endswith(REPLACEMENT) or len(new_text) <= len(prefix_text)):
            if pending < MAX_PENDING:
                if new_text == prefix_text:
                    self._settle_empty()
                return ""
            if new_text.endswith(REPLACEMENT):   # held back too long: emit up to the last whole character
                end, new_text = self._last_whole_character(new_text)
        piece = new_text[len(prefix_text):]
        # The tokens just read become the next step's context (reaching back if they
        # start inside a character or decode to nothing on their own); the rest stay pending.
        start, self._prefix_text = self._context(self._window[:end], self._read, max(self._read - MAX_REACH, 0))
        self._window = self._window[start:]
        self._read = end - start
        if piece:
            self._pieces.append(piece)
        return piece

    def _last_whole_character(self, text: str) -> tuple[int, str]:
        """The longest window, ending at most :data:`MAX_REACH` tokens back, whose text ends in a whole character.

        A character's bytes span up to 4 tokens; a ByteFallback decoder turns *every* byte of a run that ends
        inside a character into U+FFFD, so cutting the run there would lose the whole characters before it too.
        Where no such cut exists the bytes really are broken, and the whole window is emitted as it decodes.
        """
        n = len(self._window)
        for end in range(n - 1, max(self._read, n - MAX_REACH), -1):
            cut = self._decode(self._window[:end])
            if not cut.endswith(REPLACEMENT) and len(cut) > len(self._prefix_text):
                return end, cut
        return n, text


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back only what could still become a stop string.

    :meth:`push` returns the text that is safe to emit, and whether a stop string was
    found.  The stop string itself and everything after it are dropped.

    When several stop strings occur, the one that *starts* earliest in the text wins
    (whichever list order or length), so the output is the text cut at its first stop
    occurrence, however it was chunked.  Thus a stop string that is complete but begins
    after the start of a longer, still-possible one is not acted on until that one is
    decided: with stops ``("abcd", "bc")``, pushing ``"abc"`` emits nothing and reports no
    stop yet; a following ``"d"`` stops with ``""``, an ``"x"`` stops with ``"a"``, and
    :meth:`flush` at that point returns ``"a"`` (and sets :attr:`stopped`).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise InvalidArgumentError(f"stop strings must be a list of strings, got the string {stops!r}")
        unique: list[str] = []
        for s in stops:
            if not isinstance(s, str) or not s:
                raise InvalidArgumentError(f"stop strings must be non-empty strings, got {list(stops)!r}")
            if s not in unique:
                unique.append(s)
        self._stops = tuple(unique)
        self._longest = max((len(s) for s in unique), default=0)
        self._prefixes = frozenset(s[:k] for s in unique for k in range(1, len(s)))
        self._buffer = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """Whether a stop string was found (by :meth:`push` or :meth:`flush`)."""
        return self._stopped

    def push(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return ``(text safe to emit now, stopped)``.

        Once stopped, every further push returns ``("", True)``.
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._buffer + text
        cut = self._first_match(buffer)
        hold = self._open_start(buffer)
        if cut is not None and cut <= hold:
            self._buffer, self._stopped = "", True
            return buffer[:cut], True
        self._buffer = buffer[hold:]
        return buffer[:hold], False

    def flush(self) -> str:
        """The held-back text at the end of generation (when no push reported a stop).

        A stop string that was already complete but waited on a longer, earlier-starting
        candidate is applied here: the text before it is returned and :attr:`stopped` set.
        """
        if self._stopped:
            return ""
        buffer, self._buffer = self._buffer, ""
        cut = self._first_match(buffer)
        if cut is not None:
            self._stopped = True
            return buffer[:cut]
        return buffer

    def _first_match(self, buffer: str) -> int | None:
        """Start of the earliest complete stop string in ``buffer``."""
        found = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _open_start(self, buffer: str) -> int:
        """Start of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        for start in range(max(len(buffer) - self._longest + 1, 0), len(buffer)):
            if buffer[start:] in self._prefixes:
                return start
        return len(buffer)
