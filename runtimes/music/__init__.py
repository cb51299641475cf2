"""MusicGen: text-to-music."""
