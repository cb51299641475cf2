"""tokenizer.json as hostile input: what the tokenizers library raises, and the Rust panics it raises as
BaseException (pyo3_runtime.PanicException), become one ManifestError line, at load or on the prompt."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli
from edgegen.errors import ManifestError
from edgegen.runtimes.text.tokenizer import PROBE, is_panic

from tests_support import load_make_corpus  # noqa: E402




def with_tokenizer(root: Path, edit) -> Path:
    """The corpus's valid tiny causal-lm at ``root``, its tokenizer.json edited (checksum fixed up)."""
    make_corpus = load_make_corpus()
    base = make_corpus.write_base(root)
    path = base / "tokenizer.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    make_corpus._fix_asset_checksum(base)
    return base


def split_regex(pattern: str):
    """A pre-tokenizer that first splits on ``pattern`` (Oniguruma), then on whitespace."""
    def edit(tok: dict) -> None:
        tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            tok["pre_tokenizer"]]}
    return edit


def test_a_real_panic_is_a_base_exception_that_is_panic_recognises():
    from tokenizers import Tokenizer

    base = json.loads(load_make_corpus().tiny_tokenizer_json())
    split_regex("(a+)+$")(base)
    tokenizer = Tokenizer.from_str(json.dumps(base))
    with pytest.raises(BaseException) as info:
        tokenizer.encode("a" * 64 + "!")
    assert not isinstance(info.value, Exception) and is_panic(info.value)
    assert not is_panic(KeyboardInterrupt()) and not is_panic(ValueError("x"))


def test_a_panic_at_load_is_one_line_and_fd2_is_left_as_it_was(tmp_path, capfd):
    root = with_tokenizer(tmp_path / "lm", split_regex("(1+)+$"))   # PROBE holds a run of 64 "1"
    assert "1" * 64 + "!" in PROBE
    before = os.fstat(2)
    with pytest.raises(ManifestError, match="tokenizer.json crashes the tokenizers library on a test text") as info:
        edgegen.load(root, provider="cpu")
    assert "retry-limit-in-match" in str(info.value) and "\n" not in str(info.value)
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    os.write(2, b"still here\n")
    err = capfd.readouterr().err
    assert "still here" in err and "panicked" not in err   # Rust's own panic message was kept off stderr


def test_a_panic_on_the_prompt_is_one_line_in_the_cli(tmp_path):
    root = with_tokenizer(tmp_path / "lm", split_regex("(z+)+$"))   # PROBE has no "z": it loads
    edgegen.load(root, provider="cpu")
    result = CliRunner().invoke(cli, ["generate", str(root), "-p", "z" * 64 + "!", "-n", "2"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    assert "crashes the tokenizers library on this text" in result.output and "re-convert" in result.output


@pytest.mark.parametrize("edit, words", [
    (lambda tok: tok.clear(), "is not a tokenizer tokenizers"),
    (lambda tok: tok["model"].update(type="Nonsense"), "is not a tokenizer tokenizers"),
    (split_regex("(("), "Oniguruma error"),                                    # a regex Oniguruma refuses
    (lambda tok: tok["model"]["vocab"].update(far=1_000_000), "has ids up to 1,000,000 but the 'decoder' graph"),
    (lambda tok: tok["added_tokens"].append({"id": 40, "content": "<x>", "single_word": False, "lstrip": False,
                                             "rstrip": False, "normalized": False, "special": True}),
     "has ids up to 8 but the 'decoder' graph's logits have 8 entries"),   # tokenizers renumbers it: 8
])
def test_broken_tokenizers_are_manifest_errors(tmp_path, edit, words):
    root = with_tokenizer(tmp_path / "lm", edit)
    with pytest.raises(ManifestError) as info:
        edgegen.load(root, provider="cpu")
    assert words in str(info.value) and "re-convert the model" in str(info.value), str(info.value)


def test_a_corrupted_tokenizer_is_a_checksum_error_not_a_parse_error(tmp_path):
    """The tokenizer is read before the graphs open, but only after the checksums are verified."""
    from edgegen.errors import IntegrityError

    root = load_make_corpus().write_base(tmp_path / "lm")
    (root / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        edgegen.load(root, provider="cpu")
    assert hashlib.sha256(b"{}").hexdigest() not in (root / "edgegen.json").read_text()
