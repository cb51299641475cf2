"""The README stays true: its commands exist in the CLI with the options it gives them, its first screen is what
CI runs, the figures it quotes from the demo come from benchmarks/readme_demo.py, and its desktop-app example
runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import threading
from pathlib import Path
from types import ModuleType

import click
import pytest

from edgegen.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FIRST_SCREEN = README.split("\n## ", 1)[0]
DEMO_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[convert]" ' \
               "&& edgegen demo"
TEST_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[convert,test]" ' \
               "&& pytest"


def _script() -> ModuleType:
    """benchmarks/readme_demo.py, loaded by path (benchmarks/ is no package and is never put on sys.path)."""
    spec = importlib.util.spec_from_file_location("readme_demo", REPO / "benchmarks" / "readme_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_demo = _script()


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse ``edgegen ARGV`` as click would, without running the command: an unknown command or option, a
    missing argument or a value out of its choices raises click's UsageError.  Paths need not exist."""
    root = click.Context(cli, info_name="edgegen")
    if not argv or argv[0].startswith("-"):      # `edgegen --version` / `--help` exit from the parser
        with pytest.raises(click.exceptions.Exit):
            cli.make_context("edgegen", list(argv))
        return
    command = cli.get_command(root, argv[0])
    if command is None:
        raise click.UsageError(f"no such command {argv[0]!r}")
    for param in command.params:                 # the README's paths are examples, not files on this machine
        if isinstance(param.type, click.Path):
            monkeypatch.setattr(param.type, "exists", False)
    command.make_context(argv[0], list(argv[1:]), parent=root)


def test_the_readme_has_edgegen_commands_in_bash_blocks() -> None:
    commands = readme_demo.readme_commands(README)
    used = {argv[0] for _, argv in commands}
    assert {"demo", "convert", "generate", "sample", "reconstruct", "score", "info"} <= used


@pytest.mark.parametrize(("line", "argv"), readme_demo.readme_commands(README),
                         ids=[f"README.md:{n}" for n, _ in readme_demo.readme_commands(README)])
def test_every_readme_command_parses_against_the_cli(line: int, argv: list[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)        # relative paths of the README resolve to nothing here
    try:
        parse(argv, monkeypatch)
    except click.UsageError as exc:
        pytest.fail(f"README.md:{line}: edgegen {shlex.join(argv)}: {exc.format_message()}")


@pytest.mark.parametrize("argv", [["sample", "a", "-o", "x.png", "--truncationz", "1"], ["samples", "a"],
                                  ["convert", "src", "-q", "int3"], ["sample", "a"]])
def test_the_parse_check_refuses_what_the_cli_refuses(argv: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(click.UsageError):
        parse(argv, monkeypatch)


def test_commands_are_found_in_chains_pipes_and_continued_lines() -> None:
    text = "```bash\npip install x && edgegen demo --json\necho hi | edgegen generate a \\\n  -n 3   # note\n```\n" \
           "```text\nedgegen not-in-bash\n```\n"
    assert readme_demo.readme_commands(text) == [(2, ["demo", "--json"]), (3, ["generate", "a", "-n", "3"])]


def test_the_first_screen_says_what_it_is_and_gives_the_two_commands_ci_runs() -> None:
    assert DEMO_COMMAND in FIRST_SCREEN and TEST_COMMAND in FIRST_SCREEN
    assert len(FIRST_SCREEN.splitlines()) < 40
    # .ci/run runs the README's test command step by step
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r'^"\$PY" -m venv "\$VENV"$', ci, re.M)
    assert re.search(r'^pip install -q -c constraints\.txt -e "\.\[convert,test\]"$', ci, re.M)
    assert re.search(r"^pytest \|\| status=\$\?$", ci, re.M)


def test_the_readme_installs_from_the_checkout_not_from_pypi() -> None:
    assert not re.search(r"pip install [\"']?edgegen\b", README)


def test_the_generated_blocks_are_there_and_hold_no_machine_path() -> None:
    from edgegen.demo import BUNDLED

    for name in ("demo", "pycode-sample", "timings"):
        readme_demo.replace_block(README, name, "")   # exactly one pair of markers each
    demo = re.search(r"<!-- readme_demo\.py: demo -->\n(.*?)<!-- /readme_demo\.py: demo -->", README, re.S)
    assert demo is not None
    transcript = demo.group(1)
    assert transcript.startswith("```text\n$ edgegen demo\n")
    for item in BUNDLED:
        assert f"{item.name}: converting" in transcript, f"the transcript misses {item.name}: regenerate it"
    assert "done in " in transcript
    for path in {str(REPO), str(Path.home()), "/tmp/", "/work/", "/home/", "/root/"}:
        assert path not in README, f"a machine path in README.md: {path}"


def test_the_pycode_parameter_count_is_the_checkpoints() -> None:
    safetensors = pytest.importorskip("safetensors.numpy")
    weights = safetensors.load_file(REPO / "models" / "pycode" / "model.safetensors")
    count = sum(w.size for w in weights.values())
    assert f"{count / 1e6:.2f}M-parameter nanoGPT (`models/nanogpt.py`; {count:,} parameters" in README


def _embedding_example() -> str:
    section = README.split("## Embedding edgegen in a desktop app\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_desktop_app_example_runs_streams_draws_and_cancels(tiny_lm_artifact: Path, tiny_ddpm: tuple[Path, Path],
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_lm_artifact, artifacts / "pycode")       # the demo's names, tiny models
    shutil.copytree(tiny_ddpm[1], artifacts / "digits_ddpm")
    code = _embedding_example()
    line = 'ARTIFACTS = Path("edgegen-demo/artifacts")\n'
    assert code.count(line) == 1
    namespace: dict[str, object] = {"__name__": "example"}
    exec(compile(code.replace(line, f"ARTIFACTS = Path({str(artifacts)!r})\n"), "README.md", "exec"), namespace)

    images = namespace["images"]
    assert images.shape[0] == 4 and images.dtype.name == "uint8"          # type: ignore[attr-defined]
    printed = capsys.readouterr().out
    assert "step 1/" in printed and len(printed.splitlines()) > 2

    write_code, draw = namespace["write_code"], namespace["draw"]
    whole = write_code("def f(x):", threading.Event(), show=lambda piece: None)    # type: ignore[operator]
    cancel, shown = threading.Event(), []

    def show(piece: str) -> None:      # the user presses Cancel as the first piece appears
        shown.append(piece)
        cancel.set()

    assert write_code("def f(x):", cancel, show=show) == shown[0] != whole     # type: ignore[operator]
    assert len(shown) == 1
    pressed = threading.Event()
    pressed.set()
    assert draw(2, pressed) is None                                            # type: ignore[operator]
    assert draw(2, threading.Event(), progress=lambda done, total: done < 3) is None   # type: ignore[operator]
