"""``edgegen serve`` from the shell: without the [serve] extra, bad model arguments, the exposure warning, and
that nothing imports the web stack until the command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgegen.cli import cli
from edgegen.cli_serve import exposure_warning
from import_blocker import run_main

SERVE_EXTRA = ("fastapi", "uvicorn", "sse_starlette")


def test_without_the_extra_help_works_and_serve_says_what_to_install(tmp_path):
    help_ = run_main(["--help"], blocked=SERVE_EXTRA, cwd=tmp_path)
    assert help_.returncode == 0 and "serve" in help_.stdout
    result = run_main(["serve", str(tmp_path)], blocked=SERVE_EXTRA, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "pip install 'edgegen[serve]'" in lines[0], result.stderr


def test_importing_edgegen_and_its_cli_loads_no_web_stack():
    code = ("import sys, edgegen, edgegen.cli, edgegen.runtimes.text.chat\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'sse_starlette', "
            "'starlette', 'pydantic') or m.startswith('edgegen.serve')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args, words", [
    (["a=DIR", "a=DIR"], ["two models are named 'a'", "NAME=PATH"]),
    (["b@d=DIR"], ["cannot name a model"]),
    (["x=DIR/missing"], ["is not an artifact directory"]),
])
def test_bad_model_arguments_are_one_line(tmp_path, args, words):
    pytest.importorskip("fastapi")
    result = CliRunner().invoke(cli, ["serve", *[a.replace("DIR", str(tmp_path)) for a in args]])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and all(w in lines[0] for w in words), result.output


def test_listening_beyond_loopback_without_a_key_warns():
    for quiet in [("127.0.0.1", None), ("localhost", None), ("::1", None), ("127.0.0.5", None), ("0.0.0.0", "k")]:
        assert exposure_warning(quiet[0], 8000, quiet[1]) is None
    for loud in ["0.0.0.0", "192.168.1.4", "::", "myhost.lan"]:
        warning = exposure_warning(loud, 8000, None)
        assert warning and loud in warning and "--api-key" in warning and "anyone" in warning
