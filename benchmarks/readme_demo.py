"""Regenerate what the README quotes from `edgegen demo`, from a real run, and check the README's commands on it.

    python benchmarks/readme_demo.py            # print the generated blocks
    python benchmarks/readme_demo.py --write    # and put them into README.md between their markers

It runs `edgegen demo` twice in a fresh temporary folder (the first run converts the bundled models, the second
reuses them), replaces this machine's paths by placeholders, then runs every `edgegen ...` line of the README's
```bash blocks that works on the demo's artifacts (`edgegen-demo/...`) and fails if one does.  The blocks are:

- ``demo``: the first run's terminal output (stdout and stderr, as a terminal shows them);
- ``pycode-sample``: one sampled completion from ``edgegen-demo/pycode.txt`` with the settings line above it;
- ``timings``: the two runs' wall times.

Standard library only: tests/test_readme.py loads this file for :func:`readme_commands`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: the demo's output folder when run as `edgegen demo` (its default), which the README's commands refer to
DEMO_OUT = "edgegen-demo"
#: a shell's command separators: a README line may chain commands (`... && edgegen demo`, `echo x | edgegen ...`)
SEPARATORS = {"&&", "||", "|", ";", "&"}


def bash_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a ```bash block, backslash continuations joined."""
    out: list[tuple[int, str]] = []
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() in ("```bash", "```sh", "```shell")
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) of every `edgegen ...` command in the README's ```bash blocks."""
    commands = []
    for number, line in bash_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                if argv and argv[0] == "edgegen":
                    commands.append((number, argv[1:]))
                argv = []
            else:
                argv.append(token)
    return commands


def _terminal(text: str) -> str:
    """What a terminal shows: of a line a progress bar rewrote with carriage returns, its last state."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.splitlines())


def _placeholders(text: str, cwd: Path) -> str:
    """This machine's paths out: the folder the demo ran in, the checkout, the home folder."""
    for path, name in ((cwd.resolve(), "<cwd>"), (cwd, "<cwd>"), (REPO, "<repo>"), (Path.home(), "~")):
        text = text.replace(str(path), name)
    return text


def _bundled() -> tuple:
    from edgegen.demo import BUNDLED

    return BUNDLED


def run_demo(cwd: Path) -> tuple[str, float]:
    """`edgegen demo` in ``cwd`` (through this interpreter): its terminal output and wall time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}   # stdout and stderr interleave as on a terminal
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgegen", "demo"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    output = _placeholders(_terminal(done.stdout), cwd)
    if done.returncode != 0:
        raise SystemExit(f"edgegen demo failed (exit {done.returncode}):\n{output}")
    return output, seconds


def pycode_sample(path: Path, marker: str = "class Stack:") -> str:
    """The section of pycode.txt (sections are separated by blank-line-then-'#' headers) that starts with
    ``marker``, with its settings header."""
    sections = re.split(r"\n(?=# )", path.read_text(encoding="utf-8"))
    for section in sections:
        header, _, body = section.partition("\n")
        if body.startswith(marker):
            return f"{header}\n{body.rstrip()}"
    raise SystemExit(f"{path} has no completion starting with {marker!r}")


def check_commands(cwd: Path) -> tuple[int, list[str]]:
    """Run the README's commands that use the demo's artifacts, in ``cwd``; (how many ran, failures)."""
    failures, ran = [], 0
    for number, argv in readme_commands(README.read_text(encoding="utf-8")):
        if not any(arg.startswith(f"{DEMO_OUT}/") for arg in argv):
            continue
        ran += 1
        done = subprocess.run([sys.executable, "-m", "edgegen", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            failures.append(f"README.md:{number}: edgegen {shlex.join(argv)} -> exit {done.returncode}: "
                            f"{done.stderr.strip()[-500:]}")
    return ran, failures


def blocks(cwd: Path) -> dict[str, str]:
    first, first_s = run_demo(cwd)
    second, second_s = run_demo(cwd)
    if "reusing" not in second:
        raise SystemExit(f"the second edgegen demo converted again instead of reusing:\n{second}")
    cores = os.cpu_count()
    day = datetime.date.today().isoformat()
    return {
        "demo": f"```text\n$ edgegen demo\n{first}\n```",
        "pycode-sample": f"```python\n{pycode_sample(cwd / DEMO_OUT / 'pycode.txt')}\n```",
        "timings": textwrap.fill(f"On this machine ({cores} CPU cores, {day}) the first `edgegen demo` took "
                                 f"{first_s:.0f} s (converting and validating all {len(_bundled())} models, importing torch), "
                                 f"the second {second_s:.0f} s (reusing the artifacts).", width=115),
    }


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- readme_demo.py: NAME -->`` and ``<!-- /readme_demo.py: NAME -->``
    replaced by ``body``."""
    pattern = re.compile(rf"(<!-- readme_demo\.py: {re.escape(name)} -->\n).*?(<!-- /readme_demo\.py: "
                         rf"{re.escape(name)} -->)", re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"README.md needs exactly one pair of readme_demo.py markers for {name!r}")
    return pattern.sub(lambda m: m.group(1) + (body + "\n" if body else "") + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the blocks into README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegen-readme-") as tmp:
        cwd = Path(tmp)
        (cwd / "models").symlink_to(REPO / "models")   # the README's commands run in a clone: models/ is there
        generated = blocks(cwd)
        ran, failures = check_commands(cwd)
    for name, body in generated.items():
        print(f"<!-- readme_demo.py: {name} -->\n{body}\n<!-- /readme_demo.py: {name} -->\n")
    print(f"ran {ran} README commands on the demo's artifacts: {len(failures)} failed")
    if failures:
        raise SystemExit("\n".join(failures))
    if args.write:
        text = README.read_text(encoding="utf-8")   # read just now: others may be editing other sections
        for name, body in generated.items():
            text = replace_block(text, name, body)
        README.write_text(text, encoding="utf-8")
        print(f"wrote {', '.join(generated)} into {README}")


if __name__ == "__main__":
    main()
