"""constraints.txt pins every package of the environment the tests run in (CI's: the README's test command), at
the version installed: an unpinned package is one a fresh install may pull at another version tomorrow."""

from __future__ import annotations

import importlib.metadata
import re
import sysconfig
from pathlib import Path

import pytest

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
#: the installer's own packages (a fresh venv brings them; pinning them would fight pip's self-upgrade) and
#: edgegen itself, installed from the checkout
NOT_PINNED = {"pip", "setuptools", "wheel", "edgegen"}


def canonical(name: str) -> str:
    """PEP 503 normalized name: ``typing_extensions`` and ``Typing-Extensions`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """The version without its local label: ``torch==2.13.0`` is what pip matches ``2.13.0+cpu`` against."""
    return version.partition("+")[0]


def read_pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line (comments and blank lines skipped); anything else is an
    error, so that a range or a typo cannot pass for a pin."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match is None:
            raise ValueError(f"constraints.txt line {number} is not name==version: {raw!r}")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"constraints.txt pins {match.group(1)} twice")
        pins[name] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """What pip sees: the distributions in site-packages (not the ones setuptools vendors in a folder it puts on
    sys.path when imported)."""
    found: dict[str, str] = {}
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in importlib.metadata.distributions(path=site_packages):
        name = dist.metadata["Name"]
        if name:   # a half-removed distribution has no metadata left
            found[canonical(name)] = dist.version
    return found


def unpinned(pins: dict[str, str], environment: dict[str, str]) -> list[str]:
    """One line per installed package that constraints.txt does not pin at its installed version."""
    problems = []
    for name, version in sorted(environment.items()):
        if name in NOT_PINNED:
            continue
        if name not in pins:
            problems.append(f"{name}=={public(version)} is installed but not pinned")
        elif public(pins[name]) != public(version):
            problems.append(f"{name} is pinned at {pins[name]} but {version} is installed")
    return problems


def test_every_installed_package_is_pinned_at_its_version() -> None:
    problems = unpinned(read_pins(CONSTRAINTS.read_text(encoding="utf-8")), installed())
    assert not problems, "constraints.txt is out of date (add or fix these lines):\n" + "\n".join(problems)


def test_the_check_catches_a_missing_and_a_stale_pin() -> None:
    pins = read_pins("numpy==2.4.6\ntorch==2.13.0  # the CPU build\n\nTyping_Extensions==4.16.0\n")
    assert unpinned(pins, {"numpy": "2.4.6", "torch": "2.13.0+cpu", "typing-extensions": "4.16.0",
                           "pip": "23.2.1", "edgegen": "0.1.0"}) == []
    assert unpinned(pins, {"numpy": "2.4.7", "narwhals": "2.29.0", "torch": "2.13.0+cpu",
                           "typing-extensions": "4.16.0"}) == [
        "narwhals==2.29.0 is installed but not pinned", "numpy is pinned at 2.4.6 but 2.4.7 is installed"]


@pytest.mark.parametrize("bad", ["numpy>=2", "numpy", "numpy==2.4.6\nnumpy==2.4.6"])
def test_a_line_that_is_not_one_exact_pin_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="constraints.txt"):
        read_pins(bad)


def test_every_dependency_in_pyproject_is_pinned_inside_its_range() -> None:
    """pyproject's dependencies and every extra (bench too, which CI does not install): pinned, and the pin
    lies in the range pyproject states, so the two files cannot drift apart."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((CONSTRAINTS.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = read_pins(CONSTRAINTS.read_text(encoding="utf-8"))
    extras = project["optional-dependencies"].values()
    wanted = [Requirement(spec) for spec in (*project["dependencies"], *(s for extra in extras for s in extra))]
    problems = [f"{req} is not pinned" if canonical(req.name) not in pins
                else f"{req.name}=={pins[canonical(req.name)]} is outside {req}"
                for req in wanted
                if canonical(req.name) not in pins or not req.specifier.contains(pins[canonical(req.name)])]
    assert not problems, "constraints.txt and pyproject.toml disagree:\n" + "\n".join(problems)
