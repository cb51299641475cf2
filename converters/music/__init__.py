"""Text-to-music models: transformers' MusicgenForConditionalGeneration directories (MusicGen)."""


def is_music_config(config: dict) -> bool:
    """Whether a config.json is a model this family converts (torch-free: decided before torch loads)."""
    return config.get("model_type") in ("musicgen", "musicgen_melody")
