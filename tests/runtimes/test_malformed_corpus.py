"""The committed corpus of malformed artifacts (tests/malformed/): each gets its own clear error.

For every case directory, ``edgegen.load`` raises exactly the expected EdgegenError
subclass with the expected words, and ``edgegen info --verify`` exits 1 with one
``Error: ...`` line and no traceback.  Each case is copied into tmp_path first (the
symlink case gets its symlink there), so the committed files are never touched.

Set ``EDGEGEN_ERROR_TABLE=<file.md>`` to append the error lines seen to a markdown table.
"""

from __future__ import annotations

import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli
from edgegen.errors import (ArtifactError, EdgegenError, GraphLoadError, GraphMismatchError, IntegrityError,
                            ManifestError, UnsupportedFormatError)

from tests_support import MALFORMED_DIR as CORPUS, load_make_corpus  # noqa: E402
MAX_CORPUS_BYTES = 200_000




make_corpus = load_make_corpus()


@dataclass(frozen=True)
class Expect:
    error: type[EdgegenError]
    words: tuple[str, ...]
    #: Why edgegen.load does not raise ``error`` cleanly yet (the test is a strict xfail until fixed).
    load_bug: str | None = None
    #: Why ``info --verify`` does not fail with one line yet (strict xfail until fixed).
    info_bug: str | None = None



EXPECT: dict[str, Expect] = {
    "manifest-not-json": Expect(ManifestError, ("edgegen.json is not valid JSON (line", "re-convert")),
    "manifest-not-utf8": Expect(ManifestError, ("edgegen.json is not UTF-8 text",)),
    "manifest-json-list": Expect(ManifestError, ("edgegen.json must hold a JSON object, not list",)),
    "unknown-top-level-key": Expect(ManifestError, ("unknown key 'colour'", "known keys:")),
    "wrong-field-type": Expect(ManifestError, ("edgegen.json.source.opset: expected an integer or null, got a string",)),
    "format-newer": Expect(UnsupportedFormatError, ("'edgegen/99' is newer than this edgegen reads",
                                                    "pip install -U edgegen")),
    "format-other": Expect(ManifestError, ("'other/1' is not an edgegen format",)),
    "family-unknown": Expect(ManifestError, ("family 'hologram' is not one of", "causal-lm")),
    "precision-unknown": Expect(ManifestError, ("graphs.decoder: precision 'fp8' is not one of", "fp16")),
    "graph-file-missing": Expect(ArtifactError, ("missing decoder.onnx", "incomplete")),
    "graph-checksum-mismatch": Expect(IntegrityError, ("decoder.onnx does not match the sha256",)),
    "graph-truncated": Expect(GraphLoadError, ("graph 'decoder' (decoder.onnx)", "cannot load it", "corrupt"),
                              ),
    "graph-unknown-op": Expect(GraphLoadError, ("graph 'decoder'", make_corpus.UNKNOWN_OP,
                                                f"opset {make_corpus.OPSET}")),
    "io-mismatch": Expect(GraphMismatchError, (
        "(4 problems)",
        "input 'input_ids' is int64 in the graph, int32 in the manifest",
        "declared input 'attention_mask' is not in the graph",
        "declared output 'scores' is not in the graph",
        "graph output 'logits' is not declared in the manifest")),
    "path-dotdot": Expect(ManifestError, ("'../decoder.onnx' must not contain '..'",)),
    "path-absolute": Expect(ManifestError, ("'/tmp/decoder.onnx' must be a path relative to the artifact directory",)),
    "symlink-outside": Expect(ArtifactError, ("tokenizer.json leads outside the artifact directory",)),
    "tokenizer-missing": Expect(ArtifactError, ("missing tokenizer.json",)),
    "causal-lm-without-decoder": Expect(
        ManifestError, ("lacks a 'decoder' graph", "re-convert")),
    "causal-lm-without-tokenizer": Expect(
        ManifestError, ("lacks a 'tokenizer' asset", "re-convert")),
    "sampler-wrong-type": Expect(ManifestError, ("edgegen.json.sampler.context_length: expected an integer or null",)),
    "manifest-nan": Expect(ManifestError, ("edgegen.json is not an edgegen manifest: it holds NaN", "re-convert")),
    "manifest-number-overflow": Expect(ManifestError, ("holds the number '1e999', too large for a float",
                                                       "re-convert")),
    "manifest-long-integer": Expect(ManifestError, ("an integer of 5000 digits (at most 40", "re-convert")),
    "manifest-deep-nesting": Expect(ManifestError, ("nests lists and objects more than 64 levels deep", "re-convert")),
    "manifest-repeated-key": Expect(ManifestError, ("repeats the key 'family' in one object", "re-convert")),
    "path-nul": Expect(ManifestError, ("edgegen.json.assets.tokenizer: file 'tok\\x00enizer.json' holds a control "
                                       "character", "re-convert")),
    "path-too-long": Expect(ManifestError, ("is too long (5,005 characters): at most 255 bytes per name",
                                            "re-convert")),
    "path-backslash": Expect(ManifestError, ("'sub\\\\tokenizer.json' must not contain '..' or backslashes",)),
    "sampler-eos-beyond-vocab": Expect(ManifestError, ("edgegen.json.sampler.eos_token_ids: 8 is beyond the "
                                                       "'decoder' graph's 8 logits", "re-convert the model")),
    "sampler-pad-beyond-vocab": Expect(ManifestError, ("edgegen.json.sampler.pad_token_id: 99 is beyond",
                                                       "re-convert the model")),
    "sampler-bos-negative": Expect(ManifestError, ("edgegen.json.sampler.bos_token_id: must be an integer from 0",
                                                   "got -1", "re-convert the model")),
    "sampler-context-zero": Expect(ManifestError, ("edgegen.json.sampler.context_length: must be an integer from 2",
                                                   "got 0", "re-convert the model")),
    "sampler-context-absurd": Expect(ManifestError, ("edgegen.json.sampler.context_length:", "got 1000000000000",
                                                     "re-convert the model")),
    "defaults-out-of-range": Expect(ManifestError, ("edgegen.json.defaults: max_new_tokens must be a positive integer",
                                                    "re-convert the model")),
    "tokenizer-empty-object": Expect(ManifestError, ("tokenizer.json is not a tokenizer", "Model missing",
                                                     "re-convert the model")),
    "tokenizer-regex-panics": Expect(ManifestError, ("tokenizer.json crashes the tokenizers library",
                                                     "retry-limit-in-match", "re-convert the model")),
    "tokenizer-larger-than-logits": Expect(ManifestError, ("tokenizer.json has ids up to 8 but the 'decoder' graph's "
                                                           "logits have 8 entries", "re-convert the model")),
}


def case_dirs() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir() and p.name != "__pycache__")


def prepare(case: str, tmp_path: Path) -> Path:
    """A private copy of the case (with its symlink made, for the symlink case)."""
    root = tmp_path / case
    shutil.copytree(CORPUS / case, root)
    if case == "symlink-outside":
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copyfile(root / "outside-tokenizer.json", outside / "tokenizer.json")
        try:
            (root / "tokenizer.json").symlink_to(outside / "tokenizer.json")
        except OSError as exc:  # Windows without the symlink privilege
            pytest.skip(f"cannot create a symlink here: {exc}")
    return root


def _params(kind: str) -> list:
    params = []
    for case, expect in EXPECT.items():
        bug = expect.load_bug if kind == "load" else expect.info_bug
        # A load bug surfaces as its raw exception; only that exception is the expected failure.
        marks = [pytest.mark.xfail(strict=True, reason=bug, raises=KeyError if kind == "load" else AssertionError)] \
            if bug else []
        params.append(pytest.param(case, marks=marks, id=case))
    return params


# -- the corpus itself ---------------------------------------------------------------------------

def test_every_case_dir_has_an_expectation():
    dirs = {p.name for p in case_dirs()}
    assert sorted(dirs - EXPECT.keys()) == [], "corpus cases without an expectation in EXPECT: add one"
    assert sorted(EXPECT.keys() - dirs) == [], "expectations without a corpus directory: run make_corpus.py"
    assert dirs == set(make_corpus.CASES), "the corpus and make_corpus.CASES differ: run make_corpus.py"


def test_corpus_is_small():
    total = sum(f.stat().st_size for d in case_dirs() for f in d.rglob("*") if f.is_file())
    assert 0 < total < MAX_CORPUS_BYTES


def test_corpus_is_what_the_script_writes(tmp_path):
    make_corpus.main(tmp_path)
    committed = {str(f.relative_to(CORPUS)): f.read_bytes() for d in case_dirs() for f in d.rglob("*") if f.is_file()}
    fresh = {str(f.relative_to(tmp_path)): f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
    assert sorted(committed) == sorted(fresh), "run: python tests/malformed/make_corpus.py"
    stale = sorted(name for name in committed if committed[name] != fresh[name])
    assert stale == [], f"{stale} differ from what make_corpus.py writes: run python tests/malformed/make_corpus.py"


def test_the_unbroken_base_loads_and_generates(tmp_path):
    """The control: every case is this artifact with one defect, and this one works."""
    base = make_corpus.write_base(tmp_path / "base")
    lm = edgegen.load(base, provider="cpu", threads=1)
    assert lm.generate("hello world", max_new_tokens=3, temperature=0)
    result = CliRunner().invoke(cli, ["info", "--verify", str(base)])
    assert result.exit_code == 0 and "verified   checksums" in result.output, result.output


# -- each case -------------------------------------------------------------------------------------

ROWS: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def error_table():
    yield
    target = os.environ.get("EDGEGEN_ERROR_TABLE")
    if target and ROWS:
        with open(target, "a", encoding="utf-8") as out:
            out.write("\n## Malformed artifacts: `edgegen info --verify <dir>`\n\n"
                      "| malformed artifact (tests/malformed/) | exit code | error line |\n|---|---|---|\n")
            for case, code, line in sorted(ROWS):
                out.write(f"| {case} | {code} | `{line}` |\n")


@pytest.mark.parametrize("case", _params("load"))
def test_load_raises_the_specific_error(case, tmp_path):
    expect = EXPECT[case]
    root = prepare(case, tmp_path)
    with pytest.raises(EdgegenError) as info:
        edgegen.load(root, provider="cpu", threads=1)
    message = str(info.value)
    assert type(info.value) is expect.error, f"{type(info.value).__name__}: {message}"
    assert "\n" not in message
    for word in expect.words:
        assert word in message, message


@pytest.mark.parametrize("case", _params("info"))
def test_info_verify_fails_with_one_line(case, tmp_path):
    expect = EXPECT[case]
    root = prepare(case, tmp_path)
    result = CliRunner().invoke(cli, ["info", "--verify", str(root)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))
    output = result.output.replace(str(tmp_path), "<tmp>")
    line = output.strip().splitlines()[-1] if output.strip() else ""
    ROWS.append((case, result.exit_code, line))
    print(f"{case}: exit {result.exit_code}: {line}")
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1 and line.startswith("Error: "), output
    for word in expect.words:
        assert word in line, line


#: every command that opens an artifact, with the arguments it needs besides the artifact
COMMANDS = {
    "info": ["info", "{art}", "--verify"],
    "generate": ["generate", "{art}", "-p", "hi", "-n", "2"],
    "sample": ["sample", "{art}", "-o", "{tmp}/out.png"],
    "reconstruct": ["reconstruct", "{art}", "{tmp}/in.png", "-o", "{tmp}/rec.png"],
    "score": ["score", "{art}", "{tmp}/in.png"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(EXPECT))
def test_every_command_refuses_every_malformed_artifact_in_one_line(case, command, tmp_path):
    """Each malformed artifact through each command: exit 1, one ``Error:`` line, no traceback, nothing written
    (whether the command runs that family at all or not)."""
    from PIL import Image

    root = prepare(case, tmp_path)
    Image.new("L", (8, 8)).save(tmp_path / "in.png")
    args = [a.format(art=root, tmp=tmp_path) for a in COMMANDS[command]]
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "rec.png").exists()
