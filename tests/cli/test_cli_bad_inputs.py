"""Bad command-line input gets a short error, never a traceback.

Errors edgegen raises are one ``Error: ...`` line and exit 1; values click itself refuses
(ranges, choices, missing paths) are click usage errors, exit 2, whose last line is
``Error: ...``.  Each case names the words its message must contain.

Set ``EDGEGEN_ERROR_TABLE=<file.md>`` to append the error lines seen to a markdown table.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegen.cli import cli


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]                  # "{lm}", "{gan}" and "{tmp}" are filled in
    exit_code: int
    words: tuple[str, ...]
    stdin: bytes | None = None
    label: str = ""                        # how the table shows the bad input (default: the args)


def gen(*args: str) -> tuple[str, ...]:
    return ("generate", "{lm}", *args)


CASES: dict[str, Case] = {
    "temperature-negative": Case(gen("-p", "hi", "-t", "-1"), 1, ("temperature must be >= 0", "-1")),
    "top-p-zero": Case(gen("-p", "hi", "--top-p", "0"), 1, ("top_p must be in (0, 1]", "0.0")),
    "top-p-above-one": Case(gen("-p", "hi", "--top-p", "1.5"), 1, ("top_p must be in (0, 1]", "1.5")),
    "top-k-negative": Case(gen("-p", "hi", "--top-k", "-1"), 1, ("top_k must be >= 0",)),
    "min-p-one": Case(gen("-p", "hi", "--min-p", "1"), 1, ("min_p must be in [0, 1)",)),
    "repetition-penalty-zero": Case(gen("-p", "hi", "--repetition-penalty", "0"), 1,
                                    ("repetition_penalty must be > 0",)),
    "empty-prompt": Case(gen("-p", ""), 1, ("prompt is empty",), label='generate {lm} -p ""'),
    "stdin-not-utf8": Case(gen(), 2, ("standard input is not UTF-8", "iconv"), stdin=b"\xff\xfe",
                           label="generate {lm} < (bytes ff fe)"),
    "prompt-over-context": Case(gen("-p", "word " * 400), 1, ("tokens but the model's context is 96", "--truncate"),
                                label='generate {lm} -p "word word ... (400 words)"'),
    "max-new-tokens-zero": Case(gen("-p", "hi", "-n", "0"), 2, ("'-n' / '--max-new-tokens'", "0 is not in the range")),
    "provider-bogus": Case(gen("-p", "hi", "--provider", "bogus"), 2, ("'--provider'", "'bogus' is not one of")),
    "provider-cuda-missing": Case(gen("-p", "hi", "--provider", "cuda"), 1,
                                  ("provider 'cuda' is not available", "onnxruntime-gpu")),
    "artifact-missing": Case(("generate", "{tmp}/no-such-artifact", "-p", "hi"), 2, ("does not exist",)),
    "generate-on-gan": Case(("generate", "{gan}", "-p", "hi"), 1, ("'gan'", "causal-lm")),
    "convert-missing-path": Case(("convert", "{tmp}/no-such-model", "-o", "{tmp}/out"), 1,
                                 ("no-such-model does not exist", "file.py:function")),
    "convert-dir-without-config": Case(("convert", "{tmp}/empty-model", "-o", "{tmp}/out"), 1,
                                       ("is not a model edgegen knows", "config.json")),
    "convert-missing-py-file": Case(("convert", "{tmp}/x.py:fn", "-o", "{tmp}/out"), 1,
                                    ("x.py does not exist", "file.py:function")),
}

ROWS: list[tuple[str, str, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def error_table():
    yield
    target = os.environ.get("EDGEGEN_ERROR_TABLE")
    if target and ROWS:
        with open(target, "a", encoding="utf-8") as out:
            out.write("\n## Bad command-line input\n\n| case | bad input | exit code | error line |\n|---|---|---|---|\n")
            for name, shown, code, line in ROWS:
                out.write(f"| {name} | `{shown}` | {code} | `{line}` |\n")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_short_error(name, tiny_lm_artifact, tiny_artifact, tmp_path):
    case = CASES[name]
    if name == "provider-cuda-missing":
        from edgegen.runtimes.session import available_providers

        if "cuda" in available_providers():
            pytest.skip("this onnxruntime offers CUDA")
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "model.safetensors").write_bytes(b"")
    places = {"lm": str(tiny_lm_artifact), "gan": str(tiny_artifact), "tmp": str(tmp_path)}
    args = [a.format(**places) if "{" in a else a for a in case.args]

    result = CliRunner().invoke(cli, args, input=case.stdin)

    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))
    output = result.output
    for key, value in places.items():
        output = output.replace(value, f"<{key}>")
    lines = output.strip().splitlines()
    line = lines[-1] if lines else ""
    shown = (case.label or " ".join(case.args)).replace("{", "<").replace("}", ">")
    ROWS.append((name, shown, result.exit_code, line))
    print(f"{name}: exit {result.exit_code}: {line}")

    assert result.exit_code == case.exit_code, output
    assert "Traceback" not in output
    assert result.stdout == "", "errors go to standard error"
    assert line.startswith("Error: "), output
    if case.exit_code == 1:  # edgegen's own errors: exactly one line
        assert len(lines) == 1, output
    else:  # click usage errors: usage, hint, blank, error
        assert lines[0].startswith("Usage: "), output
    for word in case.words:
        assert word in line, line
