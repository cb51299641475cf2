"""Run edgegen in a subprocess where some modules cannot be imported, as in an install without them.

Importable as ``import_blocker`` (pytest puts tests/ on sys.path).  A meta-path finder refuses the
blocked top-level modules with the ModuleNotFoundError a missing package gives, so the code under test
cannot tell the difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: the top-level modules of the [convert] extra (pyproject.toml)
CONVERT_EXTRA = ("torch", "onnx", "onnxscript", "optimum", "transformers", "diffusers", "safetensors")
#: what loads in seconds (torch, transformers) or minutes (a model): blocking them shows a check ran before
HEAVY = ("torch", "transformers", "optimum", "diffusers")

_BLOCKER = '''
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
'''

_MAIN = '''
from edgegen.cli import main
sys.argv[0] = "edgegen"
main()
'''

_MANY = '''
import json
from click.testing import CliRunner
from edgegen.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    results.append({"exit_code": result.exit_code, "output": result.output,
                    "exception": None if result.exception is None or isinstance(result.exception, SystemExit)
                    else repr(result.exception)})
print(json.dumps(results))
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def run_main(args: list[str], blocked: tuple[str, ...], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``edgegen ARGS`` through the real entry point (edgegen.cli:main), with ``blocked`` modules missing."""
    code = f"BLOCKED = {sorted(blocked)!r}\n{_BLOCKER}{_MAIN}"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_many(commands: list[list[str]], blocked: tuple[str, ...], cwd: Path, timeout: float = 300) -> list[dict]:
    """Each command through click's CliRunner, all in one subprocess with ``blocked`` modules missing:
    [{"exit_code", "output", "exception"}]."""
    code = f"BLOCKED = {sorted(blocked)!r}\n{_BLOCKER}{_MANY}"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
