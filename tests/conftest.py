"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests_support import write_tiny_artifact


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Path:
    return write_tiny_artifact(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_lm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight GPT-2 with a trained byte-level BPE tokenizer, converted once per session."""
    pytest.importorskip("torch")
    import edgegen
    from tests_support import write_tiny_hf_lm

    root = tmp_path_factory.mktemp("tiny-lm")
    return edgegen.convert(write_tiny_hf_lm(root / "hf", "gpt2"), root / "artifact", optimize=False)
