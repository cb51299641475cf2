"""Fixtures of the batch tests: one real local Ray for the session (2 CPUs), and tiny artifacts built once.

Every job in these tests runs on that Ray (``run_batch`` and ``edgegen batch`` use a Ray already initialized
in the process), so a test pays for its actors' start, not for a cluster's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from batch_prompts import PROMPTS  # noqa: E402,F401  (the fixtures use them)


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def image_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DCGAN (tests/image_support.py), converted once: 8x8 RGB images."""
    pytest.importorskip("torch")
    import image_support

    return image_support.convert(image_support.dcgan_spec(), tmp_path_factory.mktemp("batch-dcgan") / "artifact")


@pytest.fixture(scope="session")
def tabular_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CTGAN fitted for a few epochs (tests/tabular_support.py), converted once."""
    pytest.importorskip("ctgan")
    pytest.importorskip("edgegen.runtimes.tabular")
    import edgegen
    from edgegen.converters.tabular import TabularSpec
    from tabular_support import fit

    return edgegen.convert(TabularSpec(model=fit("ctgan")), tmp_path_factory.mktemp("batch-ctgan") / "artifact")


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    """PROMPTS as a JSON-lines file, in the three forms a line may take."""
    import json

    lines = [json.dumps(p) if i % 2 else json.dumps({"prompt": p}) for i, p in enumerate(PROMPTS)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chat_lm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 with ChatML tokens and template (tests/tests_support.py), converted once."""
    pytest.importorskip("torch")
    import edgegen
    from tests_support import write_chat_lm

    root = tmp_path_factory.mktemp("batch-chat-lm")
    return edgegen.convert(write_chat_lm(root / "hf", "gpt2"), root / "artifact", optimize=False)
