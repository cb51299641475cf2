"""A conversion killed at any point leaves the destination absent, or the previous complete artifact.

Each kill is a real ``SIGKILL`` of ``edgegen convert`` running in a subprocess, sent when
the filesystem shows the conversion has reached a given point (the test polls the hidden
staging directory every 10 ms; nothing waits a guessed amount of time):

- ``staging``: the staging directory ``.<dest>.edgegen-tmp-<pid>-*`` has appeared;
- ``onnx``: the exporter has written an ``.onnx`` file into it (mid-export / optimization);
- ``manifest``: it holds ``edgegen.json`` (mid-validation of the candidates).

A killed conversion leaves its staging directory behind; the next conversion to the same
destination removes it (its process is dead) and never touches the destination until
its own artifact is complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork-free polling are POSIX")]

TESTS_DIR = Path(__file__).resolve().parents[1]
POLL_S = 0.01
#: A conversion of the tiny model takes ~8 s on a busy 2-core machine; this only bounds a hang.
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests_support import write_tiny_hf_lm

    return write_tiny_hf_lm(tmp_path_factory.mktemp("kill-hf") / "hf", "gpt2")


def stages(dest: Path) -> list[Path]:
    """The staging directories of conversions to ``dest`` (live or dead), by name."""
    return sorted(dest.parent.glob(f".{dest.name}.edgegen-tmp-*"))


def leftovers(dest: Path) -> list[str]:
    return [p.name for p in stages(dest)]


def has_onnx(stage: Path) -> bool:
    try:
        return any(stage.rglob("*.onnx"))
    except OSError:  # the exporter's folder vanished while we looked
        return False


#: kill point -> "the conversion has reached it", given the staging directories seen.
KILL_POINTS: dict[str, Callable[[list[Path]], bool]] = {
    "staging": lambda seen: bool(seen),
    "onnx": lambda seen: any(has_onnx(s) for s in seen),
    "manifest": lambda seen: any((s / "edgegen.json").is_file() for s in seen),
}


def convert_cmd(hf: Path, dest: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgegen", "convert", str(hf), "-o", str(dest), *extra]


def run_convert(hf: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(convert_cmd(hf, dest, *extra), capture_output=True, text=True, timeout=TIMEOUT_S,
                          cwd=dest.parent)


def convert_and_kill(hf: Path, dest: Path, point: str, *extra: str) -> Path:
    """Start ``edgegen convert``, SIGKILL it when it reaches ``point``; return its staging directory."""
    before = set(stages(dest))
    log = dest.parent / f"convert-{point}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(convert_cmd(hf, dest, *extra), stdout=out, stderr=subprocess.STDOUT,
                                cwd=dest.parent)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while True:
                # A stage left by an earlier (killed) run is removed by this run when it starts; only
                # this run's own stage counts.
                own = [s for s in stages(dest) if s not in before and f"-tmp-{proc.pid}-" in s.name]
                if own and KILL_POINTS[point](own):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                if proc.poll() is not None:
                    pytest.fail(f"convert ended (exit {proc.returncode}) before reaching {point!r}:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"convert did not reach {point!r} in {TIMEOUT_S} s:\n{log.read_text()}")
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"convert finished before the kill landed:\n{log.read_text()}"
    return own[0]


def assert_complete_artifact(dest: Path) -> None:
    runtime = edgegen.load(dest, provider="cpu", threads=1)
    assert runtime.artifact.manifest.family == "causal-lm"
    result = CliRunner().invoke(cli, ["info", "--verify", str(dest)])
    assert result.exit_code == 0 and "verified   checksums" in result.output, result.output


def test_killed_conversion_leaves_no_destination(hf_model, tmp_path):
    dest = tmp_path / "art"
    for point in KILL_POINTS:
        stage = convert_and_kill(hf_model, dest, point)
        assert not dest.exists(), f"killed at {point!r}: {dest} exists"
        # The kill left exactly this run's stage: the previous run's was removed when this one started.
        assert leftovers(dest) == [stage.name], point

    result = run_convert(hf_model, dest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_artifact(dest)
    assert leftovers(dest) == [], "the stale stage of the killed conversion was not removed"


def test_killed_overwrite_keeps_the_previous_artifact(hf_model, tmp_path):
    dest = edgegen.convert(hf_model, tmp_path / "art", optimize=False)
    manifest = (dest / "edgegen.json").read_bytes()

    for point in ("onnx", "manifest"):
        convert_and_kill(hf_model, dest, point, "--overwrite")
        assert (dest / "edgegen.json").read_bytes() == manifest, f"killed at {point!r}: the old artifact changed"
        assert_complete_artifact(dest)

    # Without --overwrite an existing artifact is refused with one error line, and left alone.
    stale = leftovers(dest)
    assert len(stale) == 1  # the last killed run's stage
    refused = run_convert(hf_model, dest)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and refused.stderr.strip().splitlines()[-1] == errors[0], refused.stderr
    assert "already exists" in errors[0] and "--overwrite" in errors[0] and str(dest) in errors[0]
    assert (dest / "edgegen.json").read_bytes() == manifest
    assert leftovers(dest) == stale, "a refused conversion must not stage anything"

    # A complete --overwrite run replaces it and cleans the stale stages of the killed runs.
    result = run_convert(hf_model, dest, "--overwrite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dest / "edgegen.json").read_bytes() != manifest
    assert_complete_artifact(dest)
    assert leftovers(dest) == []


def test_refused_conversion_prints_only_the_error(hf_model, tmp_path):
    from tests_support import write_tiny_artifact

    dest = write_tiny_artifact(tmp_path / "art")
    refused = run_convert(hf_model, dest)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {dest} already exists; pass --overwrite (overwrite=True) to replace it"], refused.stderr


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tests_support import tiny_graph
    from edgegen.converters.writer import ArtifactWriter
    from edgegen.manifest import Source

    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if "-old" in os.fspath(dst):  # the old artifact was just moved aside: die before the new one lands
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace

    with ArtifactWriter(Path(sys.argv[1]), overwrite=True) as writer:
        writer.add_graph("generator", tiny_graph(), precision="fp16")
        writer.write(writer.manifest(family="gan", source=Source(model_class="new", converter="tests")))
        writer.commit()
""")


def test_kill_between_the_commit_renames_keeps_an_artifact(tmp_path):
    from tests_support import write_tiny_artifact

    dest = write_tiny_artifact(tmp_path / "art")
    original = (dest / "edgegen.json").read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(dest)], env=env, timeout=TIMEOUT_S,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # The kill came between the two renames: the old artifact waits, complete, under its "-old" name, and
    # the next conversion to the same destination puts it back before doing anything else.
    old_manifest = next(tmp_path.glob(".art.edgegen-tmp-*-old*")) / "edgegen.json"
    assert old_manifest.is_file(), sorted(p.name for p in tmp_path.iterdir())
    from edgegen.converters.writer import ArtifactWriter

    from edgegen.runtimes.artifact import open_artifact, verify_checksums

    with ArtifactWriter(dest, overwrite=True):
        assert (dest / "edgegen.json").read_bytes() == original
    verify_checksums(open_artifact(dest))  # a gan artifact: no runtime yet, so check files, not load
    assert leftovers(dest) == []
