"""VitsText (runtimes/tts/text.py) and read_vits_tokenizer (converters/tts/tokenizer.py) against transformers'
own VitsTokenizer, saved with save_pretrained and loaded with from_pretrained from generated vocabularies."""

from __future__ import annotations

import json
import string
import unicodedata
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgegen.converters.tts.tokenizer import read_vits_tokenizer  # noqa: E402
from edgegen.errors import (ConversionError, InvalidArgumentError, ManifestError,  # noqa: E402
                            UnsupportedModelError)
from edgegen.runtimes.tts.text import VitsText  # noqa: E402

# MMS-TTS-eng's layout: "k" is id 0 and the pad token (so the blank), then "'", letters, digits, space, - and _.
ENG = ["k", "'", *[c for c in string.ascii_lowercase if c != "k"], *string.digits, " ", "-", "_"]
# Multi-character and uppercase entries in an order where first-match and longest-match differ ("AB" before "A",
# "S" before "SH": "SH" -> "S" + "h", "AB" -> "AB" whose "B" is then dropped), and < > so that
# "<pad>" / "<unk>" (added after the vocabulary) can survive the normalizer's filter.
MULTI = ["_", "ch", "AB", "C", "S", "a", "b", "c", "h", "s", "sh", "A", "Ch", "SH", " ", "<", ">", "p", "d", "u", "n", "k",
         "é", "1"]
RAW = ["_", "<unk>", *"abcdefgh", " ", "H", ".", "<spk>"]
RON = ["_", *"abcdeilmnorstu", "ţ", "ș", "ă", "î", "â", " "]
UROMAN = ["_", *string.ascii_lowercase, " ", "'"]

VOICES = {
    # name: (vocab in file order, VitsTokenizer keyword arguments, extra special tokens)
    "eng": (ENG, dict(pad_token="k", language="eng"), []),
    "multi": (MULTI, dict(language=None), []),
    "multi_noblank": (MULTI, dict(add_blank=False), []),
    "raw": (RAW, dict(normalize=False, add_blank=True), ["<spk>", "[x]"]),
    "raw_nounk": (["_", *"abc", " "], dict(normalize=False, add_blank=False, pad_token="_"), []),
    "ron": (RON, dict(language="ron", add_blank=False), []),
    "uroman": (UROMAN, dict(is_uroman=True, pad_token="_"), []),
}


def _save(root: Path, vocab: list[str], kwargs: dict, extra: list[str]) -> Path:
    source = root / "source"
    source.mkdir(parents=True)
    (source / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}), encoding="utf-8")
    tok = transformers.VitsTokenizer(str(source / "vocab.json"), phonemize=False, **kwargs)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    saved = root / "saved"
    tok.save_pretrained(saved)
    # save_pretrained sorts vocab.json's keys; put back our order, which the greedy match depends on
    (saved / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}, ensure_ascii=False),
                                      encoding="utf-8")
    return saved


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, VitsText]]:
    """name -> (transformers' VitsTokenizer loaded back from the directory, read_vits_tokenizer of it)."""
    out = {}
    for name, (vocab, kwargs, extra) in VOICES.items():
        saved = _save(tmp_path_factory.mktemp(name), vocab, kwargs, extra)
        out[name] = (transformers.VitsTokenizer.from_pretrained(saved), read_vits_tokenizer(saved))
    return out


def reference(tok, text: str) -> list:
    """``reference(tok, text)``; where transformers' own checks choke on a leading None id (no unknown token in
    vocab.json), the ids its tokenize + convert_tokens_to_ids give (what __call__ would have returned)."""
    try:
        return tok(text).input_ids
    except ValueError:
        ids = tok.convert_tokens_to_ids(tok.tokenize(text))
        assert ids and ids[0] is None
        return ids


def _prepared(tok, text: str) -> str:
    return tok.prepare_for_tokenization(text)[0]


def check_drop(tok, ours: VitsText, text: str) -> None:
    """encode(unknown='drop') gives transformers' ids, or refuses exactly where edgegen documents it does."""
    expected = reference(tok, text)
    refusable = (not _prepared(tok, text).strip()          # empty / nothing left to say
                 or None in expected                      # no unknown token in vocab.json
                 or (ours.is_uroman and any(ord(c) > 127 for c in tok.normalize_text(text))))
    try:
        got = ours.encode(text, unknown="drop")
    except InvalidArgumentError:
        assert refusable, f"refused {text!r}, transformers gives {expected}"
        return
    assert not refusable, f"accepted {text!r} -> {got}, expected a refusal (transformers: {expected})"
    assert got == expected, f"{text!r}"


def lost_letters(tok, text: str) -> list[str]:
    """The letters/digits transformers drops (normalize) or sends to unk (normalize=False) for ``text``."""
    if tok.normalize:
        pieces = tok._preprocess_char(tok.normalize_text(text))
        return [c for c in pieces if c not in tok.encoder and unicodedata.category(c)[0] in "LN"]
    tokens = tok.tokenize(text)
    return [t for t in tokens if t not in tok.encoder and t not in tok.added_tokens_encoder
            and unicodedata.category(t)[0] in "LN"]


SAMPLES = [
    "hello world", "Hello, World!", "book", "kite", "k", "kk k", "KAYAK", "  leading and trailing  ",
    "tabs\tand\nnewlines", "runs     of   spaces", "digits 0123456789", "it's a well-known_fact",
    "Café naïve façade", "Straße", "İstanbul", "ǅemal", "ΣΊΣΥΦΟΣ", "日本語", "emoji 😀 here 👍🏽", "a\u00a0b\u3000c",
    "<pad>", "<unk>", "a<pad>b<unk>c", "<spk>hi<spk>", "[x]", "ab[x]cd", "<PAD>", "chAB ABC Chsh", "ABch", "shch",
    "ABAB", "CCh", "SHOE SH", "Shh", "a", "_", "__a__", "-", "'", "ț ţ ș ş Ă â", "Ţara ţării", "ﬁne", "½ ² ٣", "\u0301a",
    "Hello.", "H.", "abc", "abcX", "xyz", "!!! a",
]


@pytest.mark.parametrize("name", list(VOICES))
@pytest.mark.parametrize("text", SAMPLES)
def test_drop_matches_transformers(voices, name, text):
    tok, ours = voices[name]
    if ours.is_uroman and any(ord(c) > 127 for c in text):
        with pytest.raises(InvalidArgumentError, match="uroman"):
            ours.encode(text, unknown="drop")
        return
    check_drop(tok, ours, text)


_PIECES = st.sampled_from(
    [*string.ascii_letters, *string.digits, *string.punctuation, " ", "  ", "\t", "\n", "\u00a0", "é", "É", "ß",
     "İ", "ţ", "ț", "ș", "ă", "Î", "😀", "日", "٣", "ch", "Ch", "AB", "sh", "SH", "<pad>", "<unk>", "<spk>", "[x]", "k", "_"])
_TEXTS = st.one_of(st.lists(_PIECES, max_size=12).map("".join), st.text(max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(VOICES)), text=_TEXTS)
def test_random_text_matches_transformers(voices, name, text):
    tok, ours = voices[name]
    if ours.is_uroman:
        text = text.encode("ascii", "ignore").decode()
    check_drop(tok, ours, text)
    # refuse: the same ids, unless transformers loses a letter or digit (then a refusal naming it)
    lost = lost_letters(tok, text)
    try:
        got = ours.encode(text)
    except InvalidArgumentError as exc:
        assert lost or "no characters" in str(exc) or None in reference(tok, text), str(exc)
        if lost and "cannot say" in str(exc):
            assert repr(lost[0]) in str(exc) or any(repr(c) in str(exc) for c in text)
        return
    assert not lost, f"{text!r}: transformers loses {lost}, edgegen did not refuse"
    assert got == reference(tok, text)


def test_mms_pad_token_k_has_no_blank_beside_it(voices):
    """MMS-eng's pad "k" is an added token: transformers cuts it out before interspersing, so "book" ends in
    ..., 0, k(=0) with no blank after it, unlike the docstring's "blank between every character"."""
    tok, ours = voices["eng"]
    ids = ours.encode("book")
    assert ids == tok("book").input_ids
    assert ids == [0, ours.vocab["b"], 0, ours.vocab["o"], 0, ours.vocab["o"], 0, 0]


def test_refuse_names_the_letters(voices):
    _, ours = voices["eng"]
    with pytest.raises(InvalidArgumentError) as exc:
        ours.encode("Café naïve")
    message = str(exc.value)
    assert "'é'" in message and "'ï'" in message and "unknown='drop'" in message and "a-z" in message
    assert "\n" not in message
    with pytest.raises(InvalidArgumentError, match=r"\(and 2 more\)"):
        ours.encode("日本語のテキス")   # 7 distinct letters: 5 named


def test_refuse_names_what_the_user_wrote(voices):
    _, ours = voices["eng"]
    with pytest.raises(InvalidArgumentError, match="'É'"):
        ours.encode("École")


def test_punctuation_and_symbols_are_dropped_silently(voices):
    tok, ours = voices["eng"]
    for text in ("Hello, world!!", "a — b… (c) «d» 😀", "  spaced\tout  "):
        assert ours.encode(text) == reference(tok, text)


def test_normalize_false_refuses_letters_sent_to_unk(voices):
    tok, ours = voices["raw"]
    with pytest.raises(InvalidArgumentError, match="'z'.*'<unk>'"):
        ours.encode("haz")
    assert ours.encode("haz", unknown="drop") == tok("haz").input_ids
    assert ours.vocab["<unk>"] in ours.encode("haz", unknown="drop")
    assert ours.encode("ha!", unknown="refuse") == tok("ha!").input_ids   # punctuation: unk, silently


def test_no_unk_in_vocab_refused_where_transformers_gives_none(voices):
    tok, ours = voices["raw_nounk"]
    assert None in reference(tok, "abz")
    for unknown in ("refuse", "drop"):
        with pytest.raises(InvalidArgumentError, match="no unknown token"):
            ours.encode("abz", unknown=unknown)


@pytest.mark.parametrize("text", ["", "!!!", "   ", "😀", "\t\n"])
def test_nothing_to_say(voices, text):
    _, ours = voices["eng"]
    with pytest.raises(InvalidArgumentError, match="no characters this voice can say"):
        ours.encode(text, unknown="drop")


def test_bad_arguments(voices):
    _, ours = voices["eng"]
    with pytest.raises(InvalidArgumentError, match="unknown="):
        ours.encode("hi", unknown="ignore")
    for bad in (None, b"hi", 3, ["hi"]):
        with pytest.raises(InvalidArgumentError, match="string"):
            ours.encode(bad)


def test_uroman_voice_refuses_non_ascii(voices):
    tok, ours = voices["uroman"]
    with pytest.raises(InvalidArgumentError, match=r"'ж'.*pip install uroman.*romanize_string"):
        ours.encode("Жук ж")
    assert ours.encode("Privet!") == tok("Privet!").input_ids


def test_ron_replacement(voices):
    tok, ours = voices["ron"]
    assert ours.encode("ța") == tok("ța").input_ids == [ours.vocab["ţ"], ours.vocab["a"]]


def test_added_token_ids(voices):
    _, ours = voices["multi"]
    assert ours.added_tokens == ("<unk>", "<pad>")   # unk_token is added before pad_token
    _, raw = voices["raw"]
    assert raw.added_tokens == ("<unk>", "<spk>", "<pad>", "[x]")


@pytest.mark.parametrize("name", list(VOICES))
def test_json_round_trip(voices, name):
    _, ours = voices[name]
    data = json.loads(json.dumps(ours.to_json(), ensure_ascii=False))
    back = VitsText.from_json(data)
    assert back == ours and list(back.vocab) == list(ours.vocab)
    assert back.encode("ab c", unknown="drop") == ours.encode("ab c", unknown="drop")


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("add_blank"), "add_blank"),
    (lambda d: d.update(add_blank="yes"), "add_blank"),
    (lambda d: d.update(vocab={"a": "0"}), "vocab"),
    (lambda d: d.update(vocab={"a": True}), "vocab"),
    (lambda d: d.update(vocab=["a"]), "vocab"),
    (lambda d: d.update(vocab={"a": 0, "b": 2}), "vocab"),
    (lambda d: d.update(vocab={"": 0}), "vocab"),
    (lambda d: d.update(added_tokens="k"), "added_tokens"),
    (lambda d: d.update(added_tokens=[]), "pad_token"),
    (lambda d: d.update(language=3), "language"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_malformed_json(voices, change, field):
    data = voices["eng"][1].to_json()
    change(data)
    with pytest.raises(ManifestError, match=field):
        VitsText.from_json(data)


# ---- converter refusals ----

@pytest.fixture
def eng_dir(tmp_path: Path) -> Path:
    return _save(tmp_path, ENG, dict(pad_token="k"), [])


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_converter_keeps_vocab_order(eng_dir):
    assert list(read_vits_tokenizer(eng_dir).vocab) == ENG


def test_refuses_missing_vocab(eng_dir):
    (eng_dir / "vocab.json").unlink()
    with pytest.raises(UnsupportedModelError, match="vocab.json.*save_pretrained"):
        read_vits_tokenizer(eng_dir)


def test_refuses_missing_config(eng_dir):
    (eng_dir / "tokenizer_config.json").unlink()
    with pytest.raises(UnsupportedModelError, match="tokenizer_config.json"):
        read_vits_tokenizer(eng_dir)


def test_refuses_other_tokenizer_class(eng_dir):
    _edit(eng_dir / "tokenizer_config.json", tokenizer_class="BertTokenizer")
    with pytest.raises(UnsupportedModelError, match="BertTokenizer"):
        read_vits_tokenizer(eng_dir)


def test_refuses_phonemize(eng_dir):
    _edit(eng_dir / "tokenizer_config.json", phonemize=True)
    with pytest.raises(UnsupportedModelError, match="phonemize=true.*phonemizer"):
        read_vits_tokenizer(eng_dir)


@pytest.mark.parametrize("name", ["vocab.json", "tokenizer_config.json"])
def test_refuses_malformed_json(eng_dir, name):
    (eng_dir / name).write_text("{\"a\": 0,", encoding="utf-8")
    with pytest.raises(ConversionError, match="not valid JSON"):
        read_vits_tokenizer(eng_dir)


@pytest.mark.parametrize("vocab", [["a"], {"a": "0"}, {"a": 0.5}, {"a": -1}, {"": 0, "a": 1}, {}])
def test_refuses_bad_vocab(eng_dir, vocab):
    (eng_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ConversionError, match="vocab.json"):
        read_vits_tokenizer(eng_dir)


def test_refuses_missing_blank(eng_dir):
    (eng_dir / "vocab.json").write_text(json.dumps({"a": 1, "k": 2}), encoding="utf-8")
    with pytest.raises(UnsupportedModelError, match="id 0.*blank"):
        read_vits_tokenizer(eng_dir)


def test_refuses_stripping_added_token(eng_dir):
    config = json.loads((eng_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"]["0"]["rstrip"] = True
    (eng_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UnsupportedModelError, match="rstrip"):
        read_vits_tokenizer(eng_dir)


def test_legacy_directory_without_added_tokens_decoder(tmp_path, voices):
    """Older hub directories: no added_tokens_decoder; added_tokens.json and special_tokens_map.json instead."""
    saved = _save(tmp_path, ENG, dict(pad_token="k"), [])
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["added_tokens_decoder"]
    (saved / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = transformers.VitsTokenizer.from_pretrained(saved)
    ours = read_vits_tokenizer(saved)
    for text in SAMPLES:
        check_drop(tok, ours, text)
