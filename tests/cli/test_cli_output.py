"""What the commands print for a user's first runs: generate's one format for one and many prompts, the
settings and clamping it reports, info's figures, --help, and conversion lines.

``generate`` runs the session's tiny GPT-2 (its generation config has no ``do_sample``, so its artifact
defaults to temperature 0: greedy, the same text every run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegen.cli import cli
from tests_support import TINY_LM_CONFIGS

REPO = Path(__file__).resolve().parents[2]


def run(*args: object, stdin: bytes | None = None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=stdin)
    assert result.exit_code == 0, result.output
    return result


def completions(lm: Path, *args: object, stdin: bytes | None = None) -> dict:
    return json.loads(run("generate", lm, *args, "--json", stdin=stdin).stdout)


def test_one_prompt_prints_the_prompt_then_its_continuation(tiny_lm_artifact) -> None:
    result = run("generate", tiny_lm_artifact, "-p", "hello", "-n", "6")
    text = completions(tiny_lm_artifact, "-p", "hello", "-n", "6")["completions"][0]["text"]
    assert result.stdout == "hello" + text + ("" if text.endswith("\n") else "\n")   # no leading blank line
    assert "==" not in result.stdout


def test_several_prompts_print_a_headed_block_each_with_its_own_counts(tiny_lm_artifact) -> None:
    prompts = ("hello", "a b c d")
    result = run("generate", tiny_lm_artifact, "-p", prompts[0], "-p", prompts[1], "-n", "5")
    rows = completions(tiny_lm_artifact, "-p", prompts[0], "-p", prompts[1], "-n", "5")["completions"]
    expected = "".join(f"== {i + 1}/2: {r['prompt_tokens']} prompt tokens, {r['new_tokens']} new "
                       f"({r['finish_reason']}) ==\n{(p + r['text']).removesuffix(chr(10))}\n"
                       for i, (p, r) in enumerate(zip(prompts, rows)))
    assert result.stdout == expected
    totals = (f"2 prompts, {sum(r['prompt_tokens'] for r in rows)} prompt tokens and "
              f"{sum(r['new_tokens'] for r in rows)} new in all")
    assert totals in result.stderr and "tokens/s in all" in result.stderr


def test_a_one_prompt_summary_counts_that_prompt(tiny_lm_artifact) -> None:
    row = completions(tiny_lm_artifact, "-p", "hello", "-n", "4")["completions"][0]
    stderr = run("generate", tiny_lm_artifact, "-p", "hello", "-n", "4").stderr
    assert f"[cpu: {row['prompt_tokens']} prompt tokens, {row['new_tokens']} new ({row['finish_reason']}); " in stderr


@pytest.mark.parametrize(("given", "prompt"), [(b"hello\n", "hello"), (b"hello\r\n", "hello"),
                                               (b"hello\n\n", "hello\n"), (b"hello", "hello")])
def test_a_prompt_from_stdin_loses_exactly_one_final_newline(tiny_lm_artifact, given, prompt) -> None:
    assert completions(tiny_lm_artifact, "-n", "2", stdin=given)["completions"][0]["prompt"] == prompt
    assert run("generate", tiny_lm_artifact, "-n", "2", stdin=given).stdout.startswith(prompt)


def test_a_token_count_beyond_the_context_is_clamped_and_said(tiny_lm_artifact) -> None:
    data = completions(tiny_lm_artifact, "-p", "hello", "-n", "100000")
    row, context = data["completions"][0], TINY_LM_CONFIGS["gpt2"]["n_positions"]
    assert row["token_budget"] == context - row["prompt_tokens"] and row["new_tokens"] <= row["token_budget"]
    reason = f"the context is {context} tokens and the prompt takes {row['prompt_tokens']}"
    assert data["clamped"] == [{"setting": "max_new_tokens", "asked": 100000, "used": row["token_budget"],
                                "reason": reason}]
    stderr = run("generate", tiny_lm_artifact, "-p", "hello", "-n", "100000").stderr
    assert f"clamped: max_new_tokens 100000 -> {row['token_budget']}: {reason}" in stderr
    assert completions(tiny_lm_artifact, "-p", "hello", "-n", "3")["clamped"] == []
    assert "clamped" not in run("generate", tiny_lm_artifact, "-p", "hello", "-n", "3").stderr


def test_the_artifact_defaults_that_apply_are_said(tiny_lm_artifact) -> None:
    stderr = run("generate", tiny_lm_artifact, "-p", "hi", "-n", "2").stderr
    assert "settings: temperature 0 = greedy (artifact default; options override it)" in stderr.splitlines()
    assert "settings:" not in run("generate", tiny_lm_artifact, "-p", "hi", "-n", "2", "-t", "0.5").stderr
    data = completions(tiny_lm_artifact, "-p", "hi", "-n", "2", "--top-k", "3")
    assert data["settings"]["temperature"] == 0 and data["settings_from"]["temperature"] == "artifact"
    assert data["settings"]["top_k"] == 3 and data["settings_from"]["top_k"] == "caller"
    assert data["settings"]["top_p"] == 1.0 and data["settings_from"]["top_p"] == "built-in"
    assert data["settings"]["max_new_tokens"] == 2 and data["settings_from"]["max_new_tokens"] == "caller"


def test_the_library_says_where_settings_come_from_and_reports_progress(tiny_lm_artifact) -> None:
    import edgegen
    from edgegen import GenerationSettings

    lm = edgegen.load(tiny_lm_artifact, provider="cpu")
    used = lm.settings_sources(GenerationSettings(seed=3))
    assert used["seed"] == (3, "caller") and used["temperature"] == (0.0, "artifact")
    assert used["max_new_tokens"] == (128, "built-in")
    seen: list[tuple[int, int]] = []
    done = lm.complete(["hi", "a b"], GenerationSettings(max_new_tokens=4, ignore_eos=True),
                       progress=lambda step, budget: seen.append((step, budget)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and all(c.token_budget == 4 for c in done)


def test_info_shows_defaults_and_dimension_names_without_repeats_or_nones(tiny_lm_artifact) -> None:
    out = run("info", tiny_lm_artifact).stdout
    source = next(line for line in out.splitlines() if line.lstrip().startswith("source"))
    assert source.count("opset") == 1, source
    assert ": None" not in out and "=None" not in out
    assert "  defaults   temperature=0  (options override them)" in out.splitlines()
    dims = next(line for line in out.splitlines() if line.lstrip().startswith("free dims"))
    assert "batch_size" in dims and "--free-dim" in dims


@pytest.mark.parametrize(("converter", "shown"), [("tests", "tests, opset 17"),
                                                  ("torch.onnx.export (torch 2.13, opset 17)",
                                                   "torch.onnx.export (torch 2.13, opset 17)")])
def test_the_opset_is_shown_once(tiny_artifact, converter, shown) -> None:
    path = Path(tiny_artifact) / "edgegen.json"   # tests_support writes converter "tests", opset 17
    manifest = json.loads(path.read_text())
    manifest["source"]["converter"] = converter
    path.write_text(json.dumps(manifest))
    source = next(line for line in run("info", tiny_artifact).stdout.splitlines() if line.startswith("  source"))
    assert source.endswith(f", {shown}") and source.count("opset") == 1, source


def test_the_free_dim_example_of_the_help_works_for_a_language_model(tiny_lm_artifact) -> None:
    help_text = " ".join(run("generate", "--help").stdout.split())
    assert "batch_size=1 for a language model" in help_text
    run("generate", tiny_lm_artifact, "-p", "hi", "-n", "2", "--free-dim", "batch_size=1")


def test_the_command_list_is_not_cut_and_every_generate_option_has_help() -> None:
    out = run("--help").stdout
    commands = out[out.index("Commands:"):].splitlines()[1:]
    assert commands and not any("..." in line for line in commands), commands
    generate = cli.commands["generate"]
    bare = [p.name for p in generate.params if getattr(p, "help", "x") is not None and not p.help
            and p.name != "help"]
    assert not bare, f"options without help: {bare}"


def test_quantize_auto_lines_stay_readable() -> None:
    from edgegen.converters.quantization.defaults import CPU_RULES, report_lines, resolve

    for family in CPU_RULES:
        for params in (1, 10**9):
            scheme, reason = resolve(family, "cpu", params)
            lines = report_lines(scheme, reason)
            assert lines[0].startswith(f"quantize auto: {scheme} (") and all(len(x) <= 100 for x in lines), lines
            assert " ".join(" ".join(lines).split()).count(CPU_RULES[family].why) == 1   # nothing lost


def test_a_conversion_prints_no_onnx_runtime_progress_bar(tmp_path) -> None:
    """The unet fusion pass of ONNX Runtime's optimizer draws a tqdm bar (fusion: 0%| ... 18/18) whenever tqdm
    is installed; the bundled DDPM's conversion runs it."""
    pytest.importorskip("torch")
    result = run("convert", f"{REPO / 'models' / 'digits_ddpm.py'}:spec", "-o", tmp_path / "a", "-q", "none")
    assert "optimize: denoiser" in result.output   # the optimizer did run
    assert "fusion:" not in result.output and "%|" not in result.output and "it/s" not in result.output


def test_a_progress_line_left_short_is_ended_once(capsys) -> None:
    """A text batch whose rows all stop before the token budget leaves the bar at steps < budget."""
    from edgegen.cli import _progress_bar

    short, full = _progress_bar(), _progress_bar()
    short(3, 8)
    short.close()
    short.close()
    assert capsys.readouterr().err == "\r[" + "#" * 11 + "." * 19 + "] 3/8\n"
    full(8, 8)
    full.close()
    assert capsys.readouterr().err == "\r[" + "#" * 30 + "] 8/8\n"
