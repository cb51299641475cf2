"""A guard: every family registered with the runtime has its own test module, so a family cannot land untested."""

from __future__ import annotations

from pathlib import Path

from edgegen.runtimes.registry import RUNTIMES

TESTS = Path(__file__).resolve().parent


def test_every_registered_family_has_a_test_module() -> None:
    missing = []
    for family, target in RUNTIMES.items():
        module = target.partition(":")[0].rsplit(".", 1)[-1]          # edgegen.runtimes.lm.causal_lm -> causal_lm
        if not list(TESTS.rglob(f"test_{module}.py")):
            missing.append(f"{family} ({target}): no tests/**/test_{module}.py")
    assert not missing, missing


def test_every_registered_runtime_imports_and_offers_from_artifact() -> None:
    from edgegen.runtimes.registry import runtime_class

    for family in RUNTIMES:
        cls = runtime_class(family)
        assert callable(getattr(cls, "from_artifact", None)) and cls.family == family
