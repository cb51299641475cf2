"""The wheel the README tells people to build (`pip wheel --no-deps . -w dist`) holds the whole package: every
module of the three folders, the diffusion step graphs the device loop loads, the three py.typed markers, and
the `edgegen` script; and its base requirements are the runtime's (no torch)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: source folder -> where its files go in the wheel (pyproject.toml's package-dir)
ROOTS = {"edgegen": "edgegen", "converters": "edgegen/converters", "runtimes": "edgegen/runtimes"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    if importlib.util.find_spec("setuptools") is None:    # not imported: it would put its vendored packages on sys.path
        pytest.skip("building the wheel needs setuptools (pyproject's build backend)")
    # Built from a copy: an in-tree build would write build/ and *.egg-info into the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ROOTS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", str(src), "-w", str(dist)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = dist.glob("edgegen-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_module_the_graphs_and_the_type_markers(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = {f"{inside}/{path.relative_to(REPO / folder).as_posix()}"
                for folder, inside in ROOTS.items() for path in (REPO / folder).rglob("*.py")
                if "__pycache__" not in path.parts}
    graphs = {f"edgegen/runtimes/diffusion/graphs/{path.name}"
              for path in (REPO / "runtimes" / "diffusion" / "graphs").glob("*.onnx")}
    assert graphs, "the shipped step graphs are missing from the checkout"
    markers = {"edgegen/py.typed", "edgegen/converters/py.typed", "edgegen/runtimes/py.typed"}
    assert sorted((expected | graphs | markers) - names) == []
    assert not [n for n in names if n.split("/")[0] in ("tests", "models", "benchmarks", "converters", "runtimes")]


def test_the_wheel_installs_the_script_and_needs_no_torch(wheel: zipfile.ZipFile) -> None:
    (dist_info,) = {n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info")}
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "edgegen = edgegen.cli:main" in entry_points
    metadata = wheel.read(f"{dist_info}/METADATA").decode().splitlines()
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata if line.startswith("Requires-Dist: ")]
    base = [r for r in requires if "extra ==" not in r]
    assert {r.split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in base} == {
        "onnxruntime", "numpy", "tokenizers", "click", "pillow", "jinja2"}   # jinja2: chat templates
    assert any(r.startswith("torch") and 'extra == "convert"' in r for r in requires)
