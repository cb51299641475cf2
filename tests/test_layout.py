"""The tree shows the architecture, and imports point one way (read from the source, not by importing it).

- ``edgegen.errors``, ``edgegen.manifest``, ``edgegen.strict``: the standard library and each other only.
- ``edgegen.runtimes``: never the converters, the CLI or the demo.
- One sub-package per family in each half (``FAMILIES``); everything else in a half is its shared core,
  in modules and packages named for what they do (``SHARED``).  A family imports the shared core of its
  half and itself, never another family; converters may also import the runtime's shared core and the
  runtime of their own family.  The shared core imports no family.  ``edgegen.converters.api`` is the
  dispatcher above the converter families and may import any of them.

The subprocess checks that the runtime never loads torch are in tests/test_imports.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import edgegen
import edgegen.converters
import edgegen.runtimes

FAMILIES = {"lm", "rnn", "diffusion", "image", "flow", "seq2seq", "tabular", "tts", "music"}
#: sub-packages of each half that are shared core (named for what they do)
SHARED = {"converters": {"export", "quantization", "text"}, "runtimes": {"text", "audio"}}
CORE = {"edgegen.errors", "edgegen.manifest", "edgegen.strict"}
DISPATCHERS = {"edgegen.converters.api"}

HALVES = {"converters": Path(edgegen.converters.__file__).parent,
          "runtimes": Path(edgegen.runtimes.__file__).parent,
          "edgegen": Path(edgegen.__file__).parent}


def modules() -> dict[str, Path]:
    """Every module of the three import roots: dotted name -> file."""
    out = {}
    for half, root in HALVES.items():
        prefix = "edgegen" if half == "edgegen" else f"edgegen.{half}"
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((prefix, *parts))] = path
    return out


MODULES = modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The edgegen modules ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in found if m == "edgegen" or m.startswith("edgegen.")}


def place(module: str) -> tuple[str, str | None]:
    """(half, family or None for shared core) of a module: ("runtimes", "lm"), ("converters", None), ..."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in ("converters", "runtimes"):
        return "edgegen", None
    family = parts[2] if len(parts) > 2 and parts[2] in FAMILIES and f"{'.'.join(parts[:3])}" in MODULES else None
    return parts[1], family


def problem(importer: str, imported: str) -> str | None:
    if importer in CORE:
        return None if imported in CORE else "the manifest core imports the standard library and itself only"
    half, family = place(importer)
    if half == "edgegen":
        return None                                   # edgegen/__init__, cli, demo: the public face, above both halves
    to_half, to_family = place(imported)
    if to_half == "edgegen":
        return None if imported in CORE else f"{half} may import edgegen's core ({', '.join(sorted(CORE))}) only"
    if half == "runtimes" and to_half == "converters":
        return "the runtime never imports the converters"
    if importer in DISPATCHERS:
        return None
    if to_family is None:
        return None                                   # the shared core of either half (runtime's: converters only)
    if family is None:
        return f"shared core imports the {to_half} family {to_family!r}"
    if to_family != family:
        return f"the {family!r} family imports the {to_half} family {to_family!r}"
    return None


def test_imports_point_one_way() -> None:
    bad = [f"{importer} imports {imported}: {why}"
           for importer, path in MODULES.items() for imported in sorted(imports_of(importer, path))
           if imported != importer and (why := problem(importer, imported))]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_what_it_must_refuse() -> None:
    """The rules above refuse each kind of edge (so the test above cannot pass by reading nothing)."""
    assert len(imports_of("edgegen.converters.lm.convert", MODULES["edgegen.converters.lm.convert"])) > 3
    assert problem("edgegen.runtimes.lm.causal_lm", "edgegen.converters.lm.spec")
    assert problem("edgegen.runtimes.image.gan", "edgegen.runtimes.flow.flow")
    assert problem("edgegen.converters.rnn.convert", "edgegen.converters.lm.convert")
    assert problem("edgegen.converters.diffusion.convert", "edgegen.runtimes.flow.flow")
    assert problem("edgegen.converters.writer", "edgegen.converters.lm.spec")
    assert problem("edgegen.runtimes.session", "edgegen.runtimes.diffusion.schedulers")
    assert problem("edgegen.manifest", "edgegen.runtimes.artifact")
    assert problem("edgegen.runtimes.artifact", "edgegen.cli")
    assert problem("edgegen.converters.api", "edgegen.runtimes.lm.decoder") is None   # converters -> runtimes
    assert problem("edgegen.converters.api", "edgegen.converters.lm.convert") is None
    assert problem("edgegen.converters.flow.spec", "edgegen.runtimes.flow.flow") is None
    assert problem("edgegen.converters.lm.convert", "edgegen.converters.text.validation") is None


@pytest.mark.parametrize("half", ["converters", "runtimes"])
def test_every_sub_package_is_a_family_or_named_shared_core(half: str) -> None:
    packages = {p.parent.name for p in HALVES[half].glob("*/__init__.py")}
    unknown = packages - FAMILIES - SHARED[half]
    assert not unknown, f"{half}/ has sub-packages {sorted(unknown)} this test does not place: add them to " \
                        "FAMILIES (a family's room) or SHARED (code several families use)"
    assert packages >= FAMILIES, f"{half}/ lacks the family packages {sorted(FAMILIES - packages)}"


def test_no_flat_family_files() -> None:
    """Family code lives in its family's package: no ``lm_*.py`` / ``image_*.py`` prefixes standing in for folders."""
    flat = [p.name for half in ("converters", "runtimes") for p in HALVES[half].glob("*.py")
            if p.stem.split("_")[0] in FAMILIES | {"diffusion", "gan", "vae", "causal", "rnn"}]
    assert not flat, flat


def test_every_package_is_in_the_wheel() -> None:
    """pyproject.toml lists packages one by one (the halves map to folders): a new sub-package must be listed."""
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.skip("needs tomllib")
    root = Path(edgegen.__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert listed == packages, {"missing": sorted(packages - listed), "stale": sorted(listed - packages)}
