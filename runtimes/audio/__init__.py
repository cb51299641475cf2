"""Audio output shared by the audio families: WAV files (16-bit PCM or float32) and spectrogram PNGs."""
