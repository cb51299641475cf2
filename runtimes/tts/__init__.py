"""The tts runtime: text to speech (VITS / MMS-TTS), numpy and ONNX Runtime only."""
