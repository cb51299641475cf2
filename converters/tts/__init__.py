"""Text-to-speech models: transformers' VitsModel directories (MMS-TTS and other VITS voices) and
SpeechT5ForTextToSpeech directories (with a SpeechT5HifiGan vocoder)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

#: config.json model_type -> "module:function" converting it (imported only when used: torch loads there)
CONVERTERS = {"vits": "edgegen.converters.tts.vits:convert_vits",
              "speecht5": "edgegen.converters.tts.speecht5:convert_speecht5"}


def is_tts_config(config: dict) -> bool:
    """Whether a config.json is a voice this family converts (torch-free: decided before torch loads)."""
    return config.get("model_type") in CONVERTERS


def converter_for(config: dict) -> Callable[..., Any]:
    """The converter of a config for which :func:`is_tts_config` holds."""
    module, _, name = CONVERTERS[config["model_type"]].partition(":")
    return getattr(importlib.import_module(module), name)
