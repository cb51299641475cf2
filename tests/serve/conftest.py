"""Fixtures of the server's tests: a tiny chat model (a ChatML template), converted once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chat_lm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_chat_lm's tiny random GPT-2 with <|im_start|>/<|im_end|> and a ChatML template (256 positions: room for a
    conversation and a reply), converted."""
    pytest.importorskip("torch")
    import edgegen
    from tests_support import write_chat_lm

    root = tmp_path_factory.mktemp("serve-chat-lm")
    return edgegen.convert(write_chat_lm(root / "hf", "gpt2", n_positions=256), root / "artifact", optimize=False)
