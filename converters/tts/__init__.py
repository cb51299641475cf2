"""Text-to-speech models: transformers' VitsModel directories (MMS-TTS and other VITS voices)."""
