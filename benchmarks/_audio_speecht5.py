"""Text to speech with SpeechT5: edgegen's tts runtime against transformers' ``generate_speech(..., vocoder=...)``
in PyTorch eager, on the same random-weight SpeechT5ForTextToSpeech + SpeechT5HifiGan.

``run(quick=False)`` builds microsoft/speecht5_tts's sizes (transformers' default ``SpeechT5Config``: hidden 768,
6 + 6 layers, 80 mel bins, reduction factor 2; default ``SpeechT5HifiGanConfig``: 16 kHz, 256 samples per frame);
``quick=True`` a tiny one to check the script.  A random stop head never stops where a trained one would, so both
sides run a fixed number of decoder steps (minlenratio = maxlenratio, giving STEPS steps for each sentence): the
same frames, the same audio length.  Each repeat speaks the 2 sentences with both, interleaved, batch 1, after a
warm-up, on the CPU with their default threads; conversion is not timed.  edgegen runs three artifacts: the
decoder step in float32, int8 (dynamic) and fp16 (``--quantize``); each quantized one's waveforms are measured
against the float32 artifact's (the same dropout draws and length) as SNR in dB, the lowest of the sentences.
"""

from __future__ import annotations

import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

SENTENCES = ["the quick brown fox jumps over the lazy dog", "a desktop app reads this sentence aloud offline"]
STEPS = {True: 20, False: 60}
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
          "Sphinx of black quartz, judge my vow; 0123456789."]


def make_speecht5(root: Path, quick: bool) -> tuple[Path, Path]:
    import sentencepiece as spm
    import torch
    from transformers import (SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5HifiGanConfig,
                              SpeechT5Tokenizer)

    model_dir, vocoder_dir = root / "speecht5", root / "hifigan"
    model_dir.mkdir(parents=True)
    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_writer=blob, model_type="char",
                                   vocab_size=60, hard_vocab_limit=False, character_coverage=1.0, bos_id=0, pad_id=1,
                                   eos_id=2, unk_id=3, minloglevel=2)
    (model_dir / "spm_char.model").write_bytes(blob.getvalue())
    tokenizer = SpeechT5Tokenizer(str(model_dir / "spm_char.model"))
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    tiny = dict(hidden_size=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, speech_decoder_prenet_units=32,
                speech_decoder_postnet_units=32)
    config = SpeechT5Config(vocab_size=max(tokenizer.vocab_size, 81), **(tiny if quick else {}))
    SpeechT5ForTextToSpeech(config).eval().save_pretrained(model_dir)
    vocoder = SpeechT5HifiGanConfig(upsample_initial_channel=32) if quick else SpeechT5HifiGanConfig()
    SpeechT5HifiGan(vocoder).eval().save_pretrained(vocoder_dir)
    return model_dir, vocoder_dir


def run(quick: bool, repeats: int, schemes: tuple[str, ...] = ("none", "int8", "fp16")) -> list[dict[str, Any]]:
    import numpy as np
    import torch
    from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5Tokenizer

    import edgegen
    from edgegen.converters.api import convert
    from edgegen.converters.tts.vits import snr_db

    warnings.filterwarnings("ignore")
    steps = STEPS[quick]
    with tempfile.TemporaryDirectory(prefix="edgegen-bench-speecht5-") as tmp:
        model_dir, vocoder_dir = make_speecht5(Path(tmp), quick)
        voices, convert_s = {}, {}
        for scheme in schemes:
            started = time.perf_counter()
            artifact = convert(str(model_dir), Path(tmp) / f"artifact-{scheme}", vocoder=str(vocoder_dir),
                               quantize=scheme)
            name = f"edgegen {'fp32' if scheme == 'none' else scheme}"
            convert_s[name] = round(time.perf_counter() - started, 1)
            voices[name] = edgegen.load(artifact, provider="cpu")
        model = SpeechT5ForTextToSpeech.from_pretrained(model_dir).eval()
        vocoder = SpeechT5HifiGan.from_pretrained(vocoder_dir).eval()
        tokenizer = SpeechT5Tokenizer.from_pretrained(model_dir)
        speaker = np.random.default_rng(0).standard_normal(512).astype(np.float32)
        # (ids, ratio): the ratio gives exactly `steps` steps for that sentence (minlen = maxlen = steps)
        jobs = [(tokenizer(s, return_tensors="pt").input_ids, s) for s in SENTENCES]
        jobs = [(ids, s, (steps + 0.5) * model.config.reduction_factor / ids.shape[1]) for ids, s in jobs]

        def eager() -> float:
            samples = 0
            with torch.no_grad():
                for ids, _, ratio in jobs:
                    samples += model.generate_speech(ids, torch.from_numpy(speaker)[None], vocoder=vocoder,
                                                     minlenratio=ratio, maxlenratio=ratio).shape[0]
            return samples

        def speech(voice: Any) -> list[np.ndarray]:
            return [voice.speak(s, seed=0, speaker=speaker, minlenratio=r, maxlenratio=r)[0] for _, s, r in jobs]

        def ours(voice: Any) -> Any:
            return lambda: sum(len(w) for w in speech(voice))

        reference = speech(voices["edgegen fp32"]) if "edgegen fp32" in voices else None
        quality = {name: round(min(snr_db(a, b) for a, b in zip(reference, speech(voice))), 1)
                   for name, voice in voices.items() if reference is not None and name != "edgegen fp32"}
        runs = {"pytorch eager": eager, **{name: ours(voice) for name, voice in voices.items()}}
        counts = {name: fn() for name, fn in runs.items()}              # warm-up; the same frames on all sides
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"the loops gave different numbers of samples: {counts}")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                times[name].append(round(time.perf_counter() - started, 4))
        audio_s = counts["pytorch eager"] / next(iter(voices.values())).sampling_rate
    name = "speecht5-tiny (random)" if quick else "speecht5_tts-sized (random, default SpeechT5Config)"
    return [{"model": name, "times_s": times, "quantized_snr_db": quality, "audio_s": round(audio_s, 4),
             "steps_per_sentence": steps, "sentences": len(SENTENCES), "convert_s": convert_s}]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.repeats), indent=1))
