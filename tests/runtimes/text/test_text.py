"""Streaming text: incremental detokenization and stop strings.

The tokenizers are trained here, on a tiny corpus with multi-byte text, so nothing is
downloaded: a GPT-2 style ByteLevel BPE, a SentencePiece-style Metaspace Unigram, a
Llama-style BPE with byte fallback and a ``Strip`` decoder, and a BERT-style WordPiece.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.text.decoding import IncrementalDecoder, StopStringMatcher

SENTENCES = [
    "héllo wörld — 日本語 🙂 naïve café",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "naïve café owners say héllo to the wörld",
    "日本語のテキストと 🙂 絵文字 🎉 mixed with ASCII",
    "  leading spaces and   multiple   gaps ",
    "Numbers 12345 and symbols #$%&*() []{}",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Ελληνικά και русский текст ✓ ∑ ≠ ∞",
]
CORPUS = SENTENCES * 3 + ["the cat sat on the mat and the dog ran to the park", "Hello world"] * 20
# Text the tokenizers never saw: unknown characters, byte fallback, rare emoji.
UNSEEN = [
    "Zürich ☕ 🍣 ñandú — “quoted” 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "mixed: café🙂日本語🎉naïve",
]
TEXTS = SENTENCES + UNSEEN + [SENTENCES[0] + " " + SENTENCES[4], UNSEEN[0] + SENTENCES[1]]
REPLACEMENT = "\ufffd"


def _bytelevel() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _metaspace() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _byte_fallback() -> Tokenizer:
    """Llama style: "▁" for spaces, <0xNN> tokens for characters out of the vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>"], limit_alphabet=60,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def _wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


BUILDERS = {"bytelevel": _bytelevel, "metaspace": _metaspace, "byte_fallback": _byte_fallback,
            "wordpiece": _wordpiece}


@pytest.fixture(scope="module")
def tokenizers_by_name() -> dict[str, Tokenizer]:
    return {name: build() for name, build in BUILDERS.items()}


@pytest.fixture(params=sorted(BUILDERS))
def tok(request, tokenizers_by_name) -> Tokenizer:
    return tokenizers_by_name[request.param]


def expected(tok: Tokenizer, prompt: list[int], gen: list[int], skip: bool = True) -> str:
    """The text ``gen`` adds after ``prompt``.

    A prompt may end inside a character (split by ids, never by encoding text): its last
    U+FFFD stands for the character's first bytes, which ``gen`` completes.
    """
    prompt_text = tok.decode(prompt, skip_special_tokens=skip).rstrip(REPLACEMENT)
    return tok.decode(prompt + gen, skip_special_tokens=skip)[len(prompt_text):]


def stream(tok, prompt: list[int], gen: list[int], chunks: list[int] | None = None, skip: bool = True):
    decoder = IncrementalDecoder(tok, prompt, skip_special_tokens=skip)
    pieces, i = [], 0
    for size in chunks or [1] * len(gen):
        pieces.append(decoder.add(gen[i:i + size]))
        i += size
    assert i == len(gen)
    pieces.append(decoder.flush())
    assert decoder.text == "".join(pieces)
    return pieces


def assert_clean(pieces: list[str], full: str) -> None:
    if REPLACEMENT not in full:
        assert not any(REPLACEMENT in p for p in pieces), pieces
    for p in pieces:
        p.encode("utf-8")  # no lone surrogate


def split_points(tok: Tokenizer, ids: list[int], rng: random.Random) -> list[int]:
    """Random splits, the ends, and every split that falls inside a character."""
    points = {0, 1, len(ids) - 1, len(ids)} | {rng.randint(0, len(ids)) for _ in range(8)}
    points |= {k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith(REPLACEMENT)}
    return sorted(p for p in points if 0 <= p <= len(ids))


# -- IncrementalDecoder ---------------------------------------------------------------------
def test_streaming_one_token_at_a_time_equals_the_full_decode(tok):
    rng = random.Random(0)
    for text in TEXTS:
        ids = tok.encode(text).ids
        full = tok.decode(ids)
        for k in split_points(tok, ids, rng):
            prompt, gen = ids[:k], ids[k:]
            pieces = stream(tok, prompt, gen)
            assert "".join(pieces) == expected(tok, prompt, gen), (text, k)
            assert_clean(pieces, full)


def test_streaming_in_random_chunks_equals_the_full_decode(tok):
    rng = random.Random(1)
    for text in TEXTS:
        ids = tok.encode(text).ids
        for _ in range(5):
            k = rng.randint(0, len(ids))
            prompt, gen = ids[:k], ids[k:]
            chunks = []
            while sum(chunks) < len(gen):
                chunks.append(min(rng.randint(0, 4), len(gen) - sum(chunks)))
            pieces = stream(tok, prompt, gen, chunks)
            assert "".join(pieces) == expected(tok, prompt, gen)
            assert_clean(pieces, tok.decode(ids))


@pytest.mark.parametrize("name", ["bytelevel", "byte_fallback"])
def test_characters_split_across_tokens_are_emitted_whole(tokenizers_by_name, name):
    tok = tokenizers_by_name[name]
    seen_split = 0
    for text in TEXTS:
        ids = tok.encode(text).ids
        # Some single token decodes to part of a character: the stream must hold it back.
        split = [i for i in ids if REPLACEMENT in tok.decode([i])]
        seen_split += len(split)
        pieces = stream(tok, ids[:1], ids[1:])
        assert_clean(pieces, tok.decode(ids))
    assert seen_split > 0
    # A single character needs several tokens, each of which decodes to part of it.
    assert any(len([t for t in tok.encode(ch).ids if REPLACEMENT in tok.decode([t])]) > 1 for ch in "—🎉☕")


@pytest.mark.parametrize("name", ["metaspace", "byte_fallback", "wordpiece", "bytelevel"])
def test_first_generated_word_keeps_its_leading_space(tokenizers_by_name, name):
    tok = tokenizers_by_name[name]
    # What a model generates after "Hello": "▁world" (SentencePiece), "Ġworld", "world" (WordPiece).
    prompt, gen = tok.encode("Hello").ids, tok.encode(" world" if name == "bytelevel" else "world").ids
    assert tok.decode(prompt + gen) == "Hello world"
    if name != "bytelevel":
        assert tok.decode(gen) == "world"  # a naive decode of the new tokens loses the space
    decoder = IncrementalDecoder(tok, prompt)
    first = decoder.add(gen[:1])
    assert first.startswith(" ")
    assert first + "".join(decoder.add([i]) for i in gen[1:]) + decoder.flush() == " world"
    # Without a prompt there is nothing to separate from: no leading space.
    assert "".join(stream(tok, [], prompt + gen)) == "Hello world"


@pytest.mark.parametrize("name", ["bytelevel", "byte_fallback"])
def test_a_prompt_ending_inside_a_character_gets_it_whole(tokenizers_by_name, name):
    tok = tokenizers_by_name[name]
    text = "mixed: café☕𝔘🍣naïve 日本語"  # ☕𝔘🍣 are not in the training corpus: split into bytes
    ids = tok.encode(text).ids
    inside = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith(REPLACEMENT)]
    assert len(inside) >= 6
    for k in inside:
        prompt_text = tok.decode(ids[:k]).rstrip(REPLACEMENT)
        pieces = stream(tok, ids[:k], ids[k:])
        assert prompt_text + "".join(pieces) == text
        assert_clean(pieces, "")


@pytest.mark.parametrize("name", ["bytelevel", "byte_fallback"])
def test_text_held_back_past_the_pending_limit_is_cut_at_a_whole_character(tokenizers_by_name, name):
    """Chunks that always end inside a 4-byte character force the decoder to emit at MAX_PENDING tokens: it
    emits up to the last whole character (ByteFallback turns every byte of a run that ends inside a character
    into U+FFFD, so emitting the window as it decodes there would lose the whole run)."""
    from edgegen.runtimes.text.decoding import MAX_PENDING

    tok = tokenizers_by_name[name]
    text = "ok " + "𝔘" * (MAX_PENDING // 2)             # not in the training corpus: 4 byte tokens each
    ids = tok.encode(text).ids
    first = next(k for k in range(len(ids)) if tok.decode(ids[:k]) == "ok")
    gen = ids[first:]
    assert len([t for t in gen if REPLACEMENT in tok.decode([t])]) >= 4 * (MAX_PENDING // 2) - 1   # bytes, split
    whole = {k for k in range(len(gen) + 1) if not tok.decode(ids[:first + k]).endswith(REPLACEMENT)}
    chunks, at = [], 0
    while at < len(gen):                                      # every chunk but the last ends inside a character
        size = next((n for n in (4, 3, 2, 1) if at + n < len(gen) and at + n not in whole), len(gen) - at)
        chunks.append(size)
        at += size
    assert sum(chunks[:-1]) >= MAX_PENDING
    pieces = stream(tok, ids[:first], gen, chunks)
    assert "".join(pieces) == text[len("ok"):]
    assert_clean(pieces, text)
    assert sum(1 for p in pieces if p) >= 2                    # the limit did force text out before the end


def test_metaspace_leading_space_after_a_space_token(tokenizers_by_name):
    tok = tokenizers_by_name["metaspace"]
    text = "日本語のテキストと 🙂 絵文字"
    ids = tok.encode(text).ids
    for k in range(len(ids) + 1):
        assert "".join(stream(tok, ids[:k], ids[k:])) == expected(tok, ids[:k], ids[k:])
    k = next(k for k in range(len(ids)) if tok.decode(ids[:k]) == "日本語のテキストと")
    assert "".join(stream(tok, ids[:k], ids[k:])) == " 🙂 絵文字"


def test_special_tokens_skipped_or_kept(tokenizers_by_name):
    tok = tokenizers_by_name["bytelevel"]
    eot = tok.token_to_id("<|endoftext|>")
    prompt = tok.encode("Hello").ids
    gen = tok.encode(" world").ids + [eot, eot] + tok.encode(" café 🙂").ids
    assert "".join(stream(tok, prompt, gen)) == " world café 🙂"
    assert "".join(stream(tok, prompt, gen, skip=False)) == " world<|endoftext|><|endoftext|> café 🙂"
    # A prompt ending with special tokens: the context reaches back to real text.
    prompt = tok.encode("Hello").ids + [eot] * 7
    assert "".join(stream(tok, prompt, tok.encode(" world").ids)) == " world"


def test_add_nothing_and_flush_twice(tok):
    ids = tok.encode("Hello, world!").ids
    decoder = IncrementalDecoder(tok, ids[:2])
    assert decoder.add([]) == ""
    out = "".join(decoder.add([i]) for i in ids[2:]) + decoder.flush()
    assert decoder.flush() == "" and decoder.add([]) == ""
    assert out == decoder.text == expected(tok, ids[:2], ids[2:])


def test_flush_releases_a_truly_broken_byte_sequence(tokenizers_by_name):
    tok = tokenizers_by_name["bytelevel"]
    ids = tok.encode("ok ☕").ids  # not in the training corpus: one token per byte or so
    assert REPLACEMENT in tok.decode(ids[-1:])
    gen = ids[:-1]  # the emoji's last byte never comes
    decoder = IncrementalDecoder(tok, [])
    pieces = [decoder.add([i]) for i in gen]
    assert not any(REPLACEMENT in p for p in pieces)
    tail = decoder.flush()
    assert tail.endswith(REPLACEMENT)
    assert decoder.text == tok.decode(gen)


def test_numpy_like_ids_are_accepted(tokenizers_by_name):
    tok = tokenizers_by_name["metaspace"]
    ids = np.asarray(tok.encode("Hello world").ids, dtype=np.int64)
    decoder = IncrementalDecoder(tok, ids[:1])
    out = "".join(decoder.add(ids[i:i + 1]) for i in range(1, len(ids))) + decoder.flush()
    assert out == expected(tok, ids[:1].tolist(), ids[1:].tolist())


@pytest.mark.parametrize("name", ["bytelevel", "metaspace", "wordpiece"])
def test_random_ids_match_the_full_decode(tokenizers_by_name, name):
    """Arbitrary ids (broken UTF-8 and special tokens included) still add up to the full decode."""
    tok = tokenizers_by_name[name]
    rng = random.Random(2)
    vocab = tok.get_vocab_size()
    for _ in range(60):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(0, 40))]
        # A prompt that ends in a truly broken byte sequence would have its U+FFFD taken
        # for the start of a character (see expected()): split elsewhere.
        k = rng.choice([k for k in range(len(ids) + 1) if not tok.decode(ids[:k]).endswith(REPLACEMENT)])
        for skip in (True, False):
            pieces = stream(tok, ids[:k], ids[k:], skip=skip)
            assert "".join(pieces) == expected(tok, ids[:k], ids[k:], skip=skip)


class CountingTokenizer:
    """Counts how many ids are decoded in all."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.decoded = tok, 0
        self.get_added_tokens_decoder = tok.get_added_tokens_decoder

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_work_per_token_does_not_grow_with_the_sequence(tok):
    ids = tok.encode(" ".join(TEXTS * 6)).ids
    counting = CountingTokenizer(tok)
    prompt, gen = ids[: len(ids) // 3], ids[len(ids) // 3:]
    assert len(gen) > 300
    pieces = stream(counting, prompt, gen)
    assert "".join(pieces) == expected(tok, prompt, gen)
    assert counting.decoded < 20 * len(gen)  # a full re-decode per step would be ~ len(ids) per token


def test_a_long_broken_byte_sequence_is_released_and_stays_cheap(tokenizers_by_name):
    tok = tokenizers_by_name["bytelevel"]
    lead = tok.token_to_id("ð")  # the byte 0xF0 alone: starts a 4-byte character
    assert tok.decode([lead]) == REPLACEMENT
    cost = {}
    for n in (200, 800):
        counting = CountingTokenizer(tok)
        prompt, gen = tok.encode("Hello").ids, [lead] * n + tok.encode(" world").ids
        pieces = stream(counting, prompt, gen)
        assert "".join(pieces) == expected(tok, prompt, gen) == REPLACEMENT * n + " world"
        assert sum(1 for p in pieces if p) > 5  # released along the way, not all at the end
        cost[n] = counting.decoded / len(gen)
    assert cost[800] < 1.5 * cost[200]  # per token, not growing with the sequence


# -- StopStringMatcher ----------------------------------------------------------------------
def run_matcher(stops, chunks):
    matcher = StopStringMatcher(stops)
    out = []
    for chunk in chunks:
        safe, stopped = matcher.push(chunk)
        out.append(safe)
        if stopped:
            return out, True, matcher
    out.append(matcher.flush())
    return out, False, matcher


def test_no_stops_passes_text_through_at_once():
    matcher = StopStringMatcher([])
    assert matcher.push("abc") == ("abc", False)
    assert matcher.push("") == ("", False)
    assert matcher.flush() == ""


def test_stop_within_one_push_drops_what_follows():
    matcher = StopStringMatcher(["\n\n"])
    assert matcher.push("Hello\n\nworld") == ("Hello", True)
    assert matcher.stopped
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_stop_spanning_pushes():
    matcher = StopStringMatcher(["<|end|>"])
    assert matcher.push("answer <|") == ("answer ", False)
    assert matcher.push("en") == ("", False)
    assert matcher.push("d|> trailing") == ("", True)


def test_partial_match_that_fails_is_released():
    matcher = StopStringMatcher(["<|end|>"])
    assert matcher.push("a <|e") == ("a ", False)
    assert matcher.push("xit") == ("<|exit", False)


def test_stop_at_the_very_start():
    assert run_matcher(["Q:"], ["Q:", " next"])[:2] == ([""], True)
    assert run_matcher(["Q:"], ["Q", ": next"])[:2] == (["", ""], True)


def test_hold_back_released_by_flush():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("the end ST") == ("the end ", False)
    assert matcher.flush() == "ST"
    assert not matcher.stopped


def test_overlapping_candidates():
    # "ab" is complete; "abc" starts at the same place: the cut is the same either way.
    assert run_matcher(["abc", "ab"], ["xa", "b", "cd"])[:2] == (["x", ""], True)
    assert run_matcher(["ab", "abc"], ["xabcd"])[:2] == (["x"], True)
    # Hold back the longest suffix that may still become a stop string.
    matcher = StopStringMatcher(["aab", "ab"])
    assert matcher.push("xaa") == ("x", False)
    assert matcher.push("a") == ("a", False)  # "aaa": only "aa" can still start "aab"
    assert matcher.push("b") == ("", True)


def test_earliest_starting_stop_wins():
    # "bc" completes first, but "abcd" starts earlier and may still complete.
    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.push("abc") == ("", False)
    assert matcher.push("d!") == ("", True)
    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.push("abc") == ("", False)
    assert matcher.push("x") == ("a", True)
    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.push("zabc") == ("z", False)
    assert matcher.flush() == "a" and matcher.stopped


@pytest.mark.parametrize("stops", ["stop", [""], ["ok", None]])
def test_bad_stop_strings_are_rejected(stops):
    with pytest.raises(InvalidArgumentError):
        StopStringMatcher(stops)


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    return max((n for n in range(1, len(text) + 1) for s in stops if len(s) > n and s.startswith(text[-n:])),
               default=0)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc\u00e9🙂", max_size=30),
       stops=st.lists(st.text(alphabet="abc\u00e9🙂", min_size=1, max_size=4), max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8))
def test_output_is_the_text_cut_at_the_first_stop(text, stops, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    matcher = StopStringMatcher(stops)
    out, pushed, stopped = "", "", False
    for chunk in chunks:
        safe, stopped = matcher.push(chunk)
        out += safe
        pushed += chunk
        if stopped:
            assert first_stop(pushed, stops) is not None
            break
        # Only what could still become a stop string is held back.
        assert pushed.startswith(out)
        assert len(pushed) - len(out) == held_back(pushed, stops)
    if not stopped:
        out += matcher.flush()
    cut = first_stop(text, stops)
    assert out == (text if cut is None else text[:cut])
    assert matcher.stopped == (cut is not None)
