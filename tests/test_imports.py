"""Heavy imports stay at the edges: the runtime and the CLI shell never load torch.

Each check runs in a fresh interpreter, because this test process has loaded torch
already (the converter tests import it).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgegen.runtimes

HEAVY = ("torch", "transformers", "diffusers", "optimum", "onnx", "tensorflow", "pandas", "pyarrow", "ray", "ctgan")


def loaded_after(code: str) -> dict:
    probe = code + f"""
import json, sys
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def runtime_modules() -> list[str]:
    """Every module of the runtime, family sub-packages included."""
    path = Path(edgegen.runtimes.__file__).parent
    return sorted(m.name for m in pkgutil.walk_packages([str(path)], "edgegen.runtimes."))


def test_runtime_modules_reach_the_family_packages():
    assert {"edgegen.runtimes.lm.causal_lm", "edgegen.runtimes.diffusion.schedulers.ddim"} <= set(runtime_modules())


@pytest.mark.parametrize("module", ["edgegen", "edgegen.manifest", "edgegen.cli", *runtime_modules()])
def test_module_loads_nothing_heavy(module):
    assert loaded_after(f"import {module}") == []


def test_load_path_loads_nothing_heavy(tiny_artifact):
    code = f"""
import edgegen
from edgegen.runtimes.artifact import open_artifact, open_sessions
from edgegen.runtimes.session import SessionConfig
open_sessions(open_artifact({str(tiny_artifact)!r}), SessionConfig(provider="cpu"))
"""
    assert loaded_after(code) == []


def test_cli_help_loads_nothing_heavy():
    code = """
import sys
from edgegen.cli import cli
try:
    cli(["--help"], prog_name="edgegen")
except SystemExit:
    pass
"""
    assert loaded_after(code) == []


def test_public_names_load_lazily():
    """The types a user writes come from ``edgegen`` itself; GenerationSettings and the specs load no torch."""
    code = """
import edgegen
from edgegen import GenerationSettings, CausalLMSpec, RNNLMSpec, DiffusionSpec, GANSpec, VAESpec, VQVAESpec, FlowSpec
from edgegen import EdgegenError, InvalidArgumentError, ConversionError
"""
    assert loaded_after(code) == []
    import edgegen

    assert set(edgegen.__all__) <= set(dir(edgegen))
    for name in edgegen.__all__:
        assert getattr(edgegen, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        edgegen.Nope  # noqa: B018


def test_import_edgegen_is_cheap():
    """`import edgegen` must not even load onnxruntime or numpy."""
    probe = "import edgegen, sys; print(int('onnxruntime' in sys.modules), int('numpy' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]
