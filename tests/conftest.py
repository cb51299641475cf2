"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests_support import write_tiny_artifact


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Path:
    return write_tiny_artifact(tmp_path / "tiny")
