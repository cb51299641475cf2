"""Read a saved ``VitsTokenizer`` directory into :class:`~edgegen.runtimes.tts.text.VitsText` (plain JSON, no
transformers).

Reads ``vocab.json`` (its key order kept: the normalizer matches entries in that order) and
``tokenizer_config.json``; like ``VitsTokenizer.from_pretrained``, the added tokens come from the config's
``added_tokens_decoder`` or, in older directories, from ``added_tokens.json`` with ``special_tokens_map.json``
overriding the config's special tokens.  Special tokens not yet added are numbered the way
``PreTrainedTokenizer.__init__`` does (their vocab id, else the next free id), and the result is checked against
the numbering :class:`VitsText` assumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgegen.errors import ConversionError, UnsupportedModelError
from edgegen.runtimes.tts.text import VitsText
from edgegen.strict import FieldError, JSONValueError, parse_json, short

#: PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order (the order special tokens are added in).
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
#: VitsTokenizer.__init__'s defaults.
_DEFAULTS = {"pad_token": "<pad>", "unk_token": "<unk>", "language": None, "add_blank": True,
             "normalize": True, "phonemize": True, "is_uroman": False, "split_special_tokens": False}
_SAVE_FIX = "save the voice's tokenizer there with VitsTokenizer.from_pretrained(voice).save_pretrained(dir)"


def read_vits_tokenizer(model_dir: Path) -> VitsText:
    """The tokenizer of the VITS voice saved in ``model_dir``; UnsupportedModelError / ConversionError in one
    line for a directory edgegen cannot reproduce the tokenizer of."""
    model_dir = Path(model_dir)
    if not (model_dir / "vocab.json").is_file():
        raise UnsupportedModelError(f"{model_dir} has no vocab.json: the directory needs the voice's tokenizer "
                                    f"files; {_SAVE_FIX}")
    vocab = _read_vocab(model_dir / "vocab.json")
    if not (model_dir / "tokenizer_config.json").is_file():
        raise UnsupportedModelError(f"{model_dir} has no tokenizer_config.json (without it VitsTokenizer assumes "
                                    f"phonemize=true); {_SAVE_FIX}")
    config = _read_object(model_dir / "tokenizer_config.json")
    _check_class(config, model_dir)
    settings = {key: config.get(key, default) for key, default in _DEFAULTS.items()}
    _check_settings(settings, model_dir)
    if settings["add_blank"] and 0 not in vocab.values():
        raise UnsupportedModelError(f"{model_dir / 'vocab.json'} has no token of id 0, which add_blank=true puts "
                                    "between characters (the blank); the vocabulary is incomplete")
    added = _added_tokens(model_dir, config, vocab)
    special = _special_tokens(model_dir, config, has_decoder="added_tokens_decoder" in config)
    try:
        return VitsText(vocab=vocab, add_blank=settings["add_blank"], normalize=settings["normalize"],
                        language=settings["language"], is_uroman=settings["is_uroman"],
                        pad_token=special.get("pad_token"), unk_token=special.get("unk_token"),
                        added_tokens=tuple(added))
    except FieldError as exc:
        raise ConversionError(f"{model_dir}'s tokenizer files do not describe a VitsTokenizer edgegen can "
                              f"reproduce: {exc}") from None


def _read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, JSONValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); {_SAVE_FIX}") from None


def _read_object(path: Path) -> dict[str, Any]:
    value = _read_json(path)
    if not isinstance(value, dict):
        raise ConversionError(f"{path} must hold a JSON object, not {type(value).__name__}; {_SAVE_FIX}")
    return value


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_object(path)
    for key, value in vocab.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConversionError(f"{path} must map characters to token ids (non-negative integers), but maps "
                                  f"{short(key)} to {short(value)}")
        if not key:
            raise ConversionError(f"{path} has an empty-string entry, on which VitsTokenizer's normalizer loops "
                                  "forever; remove it")
    if not vocab:
        raise ConversionError(f"{path} is empty: a voice's vocabulary lists the characters it says")
    return vocab


def _check_class(config: dict[str, Any], model_dir: Path) -> None:
    cls = config.get("tokenizer_class")
    if cls is not None and cls != "VitsTokenizer":
        raise UnsupportedModelError(f"{model_dir}'s tokenizer is {short(cls)}, not VitsTokenizer: the tts family "
                                    "converts VITS / MMS-TTS voices")


def _check_settings(settings: dict[str, Any], model_dir: Path) -> None:
    for key in ("add_blank", "normalize", "phonemize", "is_uroman", "split_special_tokens"):
        if not isinstance(settings[key], bool):
            raise ConversionError(f"{model_dir / 'tokenizer_config.json'}: {key} must be true or false, not "
                                  f"{short(settings[key])}")
    if settings["language"] is not None and not isinstance(settings["language"], str):
        raise ConversionError(f"{model_dir / 'tokenizer_config.json'}: language must be a string or null, not "
                              f"{short(settings['language'])}")
    if settings["split_special_tokens"]:
        raise UnsupportedModelError(f"{model_dir}'s tokenizer has split_special_tokens=true, which edgegen's VITS "
                                    "tokenizer does not reproduce; save it with split_special_tokens=false")
    if settings["phonemize"]:
        raise UnsupportedModelError(
            f"{model_dir}'s tokenizer has phonemize=true: the voice reads espeak phonemes made by the phonemizer "
            "package (and espeak), which edgegen does not carry; choose a voice whose tokenizer_config.json has "
            "\"phonemize\": false (the MMS-TTS voices)")


def _token_content(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(content, flags) of a token saved as a string or as an AddedToken's dict."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"], value
    raise ConversionError(f"{where}: a token must be a string or an object with a \"content\" string, not "
                          f"{short(value)}")


def _check_flags(content: str, flags: dict[str, Any], where: str) -> None:
    for flag in ("lstrip", "rstrip", "single_word"):
        if flags.get(flag):
            raise UnsupportedModelError(f"{where}: the added token {short(content)} has {flag}=true, which edgegen's "
                                        "VITS tokenizer does not reproduce; save it with that flag off")


def _special_tokens(model_dir: Path, config: dict[str, Any], *, has_decoder: bool) -> dict[str, str]:
    """The special tokens' contents by name (pad_token, unk_token...), as from_pretrained resolves them."""
    values = {key: config.get(key, _DEFAULTS.get(key)) for key in _SPECIAL}
    extra = config.get("additional_special_tokens") or []
    map_path = model_dir / "special_tokens_map.json"
    if not has_decoder and map_path.is_file():   # legacy directories: the map overrides the config
        mapped = _read_object(map_path)
        values.update({k: v for k, v in mapped.items() if k in _SPECIAL})
        extra = list(extra) + [t for t in mapped.get("additional_special_tokens") or [] if t not in extra]
    out = {}
    for key, value in values.items():
        if value is not None:
            out[key], flags = _token_content(value, f"{model_dir}: {key}")
            _check_flags(out[key], flags, f"{model_dir}: {key}")
    if not isinstance(extra, list):
        raise ConversionError(f"{model_dir}: additional_special_tokens must be a list, not {short(extra)}")
    for i, value in enumerate(extra):
        content, flags = _token_content(value, f"{model_dir}: additional_special_tokens[{i}]")
        _check_flags(content, flags, f"{model_dir}: additional_special_tokens[{i}]")
        out[f"additional_special_tokens[{i}]"] = content
    return out


def _saved_added_tokens(model_dir: Path, config: dict[str, Any]) -> dict[str, int]:
    """The added tokens the directory records, content -> id."""
    where = model_dir / "tokenizer_config.json"
    if "added_tokens_decoder" in config:
        decoder = config["added_tokens_decoder"]
        if not isinstance(decoder, dict):
            raise ConversionError(f"{where}: added_tokens_decoder must be an object, not {short(decoder)}")
        saved = {}
        for index, value in decoder.items():
            if not index.isdigit():
                raise ConversionError(f"{where}: added_tokens_decoder has the id {short(index)}, not an integer")
            content, flags = _token_content(value, f"{where}: added_tokens_decoder.{index}")
            _check_flags(content, flags, f"{where}: added_tokens_decoder.{index}")
            saved[content] = int(index)
        return saved
    path = model_dir / "added_tokens.json"
    if not path.is_file():
        return {}
    saved = _read_object(path)
    for content, index in saved.items():
        if not isinstance(index, int) or isinstance(index, bool) or not content:
            raise ConversionError(f"{path} must map tokens to integer ids, but maps {short(content)} to "
                                  f"{short(index)}")
    return saved


def _added_tokens(model_dir: Path, config: dict[str, Any], vocab: dict[str, int]) -> list[str]:
    """The added tokens in id order, checked against the numbering VitsText assumes (vocab id, else the next
    id after the vocabulary)."""
    added = dict(_saved_added_tokens(model_dir, config))
    special = _special_tokens(model_dir, config, has_decoder="added_tokens_decoder" in config)
    base = {token for token, index in vocab.items() if 0 <= index < len(vocab)}
    for content in special.values():   # PreTrainedTokenizer.__init__: _add_tokens(special tokens not yet added)
        if content and content not in added:
            known = base | set(added)
            added[content] = vocab[content] if content in vocab else len(known)
    ordered = sorted(added, key=lambda token: added[token])
    expected, next_id = {}, len(vocab)
    for token in ordered:
        if token in vocab:
            expected[token] = vocab[token]
        else:
            expected[token], next_id = next_id, next_id + 1
    for token in ordered:
        if added[token] != expected[token]:
            raise UnsupportedModelError(f"{model_dir}: the added token {short(token)} has id {added[token]}, not "
                                        f"{expected[token]} (its vocab id or the next id after the vocabulary); "
                                        f"edgegen reproduces only that numbering; {_SAVE_FIX}")
    return ordered
