"""``--timeout SECONDS`` on generate / sample / reconstruct / score: a graph that loops forever ends in one line.

The artifacts come from tests/looping_support.py (a ``Loop`` whose condition never turns false).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from looping_support import write_looping_artifact
from tests_support import assert_one_line_error, run_cli as run

BOUND_S = 60.0


@pytest.fixture(scope="module")
def looping(tmp_path_factory: pytest.TempPathFactory):
    made: dict[tuple[str, int | None], Path] = {}

    def get(family: str, trips: int | None = None) -> Path:
        if (family, trips) not in made:
            made[family, trips] = write_looping_artifact(tmp_path_factory.mktemp("cli") / family, family, trips)
        return made[family, trips]
    return get





def test_generate_on_a_graph_that_loops_forever_exits_1_with_one_line(looping) -> None:
    """A real process: its whole stderr (ONNX Runtime's own logging included) is the one line."""
    code = "import sys; from edgegen.cli import main; sys.argv[0] = 'edgegen'; main()"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "generate", str(looping("causal-lm")), "-p", "hi",
                           "--timeout", "0.5"], capture_output=True, text=True, timeout=BOUND_S)
    assert time.perf_counter() - start < BOUND_S
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: graph 'decoder' (decoder.onnx) ran longer than the time limit of 0.5 s")
    assert "raise --timeout" in done.stderr and "re-convert the model if a graph loops forever" in done.stderr


@pytest.mark.parametrize("family, command", [
    ("rnn-lm", ("generate", "{a}", "-p", "hi")),
    ("gan", ("sample", "{a}", "-o", "{tmp}/out.png")),
    ("diffusion", ("sample", "{a}", "-o", "{tmp}/out.png", "--steps", "2")),
    ("vae", ("reconstruct", "{a}", "{tmp}/in.png", "-o", "{tmp}/out.png")),
    ("vq-vae", ("sample", "{a}", "-o", "{tmp}/out.png")),
    ("flow", ("score", "{a}", "{tmp}/in.png")),
])
def test_every_running_command_takes_timeout(looping, tmp_path, family, command) -> None:
    Image.new("L", (2, 2), 128).save(tmp_path / "in.png")
    args = [a.format(a=looping(family), tmp=tmp_path) for a in command]
    start = time.perf_counter()
    result = run(*args, "--timeout", "0.5")
    assert time.perf_counter() - start < BOUND_S
    assert_one_line_error(result, "ran longer than the time limit of 0.5 s", "--timeout")
    assert not (tmp_path / "out.png").exists()                     # nothing half-written


def test_a_run_that_ends_is_unaffected(looping, tmp_path) -> None:
    result = run("generate", looping("causal-lm", trips=3), "-p", "hi", "-n", "2", "--ignore-eos", "--timeout", "30")
    assert result.exit_code == 0, result.output
    result = run("sample", looping("gan", trips=3), "-o", tmp_path / "ok.png", "--timeout", "30")
    assert result.exit_code == 0 and (tmp_path / "ok.png").is_file(), result.output


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_timeout_is_one_line(looping, value) -> None:
    assert_one_line_error(run("generate", looping("causal-lm", trips=3), "-p", "hi", "--timeout", value),
                          "timeout must be a positive number of seconds")


def test_a_timeout_that_is_not_a_number_is_a_usage_error(looping) -> None:
    result = run("generate", looping("causal-lm", trips=3), "-p", "hi", "--timeout", "soon")
    assert result.exit_code == 2 and "'--timeout'" in result.output.strip().splitlines()[-1], result.output
