"""Text-to-speech models: transformers' VitsModel directories (MMS-TTS and other VITS voices)."""


def is_tts_config(config: dict) -> bool:
    """Whether a config.json is a voice this family converts (torch-free: decided before torch loads)."""
    return config.get("model_type") == "vits"
