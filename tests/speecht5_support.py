"""Tiny SpeechT5 text-to-speech models (transformers' SpeechT5ForTextToSpeech + SpeechT5HifiGan with random weights
and a character sentencepiece tokenizer trained here) saved as the directories users have, for the tts tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: the tokenizer's training text: letters, digits, punctuation (what a user's English text holds)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
          "How vexingly quick daft zebras jump?", "Sphinx of black quartz, judge my vow; 0123456789.",
          "It's a test - isn't it? \"Yes\", (they) said: ok."] * 4
#: a random prenet's output is small beside the positional encoding: without this gain, other dropout draws move
#: the waveform by less than the SNR gate can tell (measured 88 dB at gain 1)
PRENET_GAIN = 30.0


def make_tokenizer(out: Path) -> Any:
    """spm_char.model trained here (model_type=char, SpeechT5's special ids 0-3) saved as a SpeechT5Tokenizer."""
    import io

    import sentencepiece as spm
    from transformers import SpeechT5Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, model_type="char",
                                   vocab_size=60, hard_vocab_limit=False, character_coverage=1.0, bos_id=0,
                                   pad_id=1, eos_id=2, unk_id=3, minloglevel=2)
    (out / "spm_char.model").write_bytes(model.getvalue())
    tokenizer = SpeechT5Tokenizer(str(out / "spm_char.model"))
    tokenizer.save_pretrained(out)
    return tokenizer


def make_speecht5(out: Path, *, seed: int = 0, vocoder_inside: bool = False, reduction_factor: int = 2) -> tuple[Path, Path]:
    """Write a tiny SpeechT5ForTextToSpeech + tokenizer directory at ``out`` (with ``speaker.npy``, the x-vector its
    stop head was calibrated with) and its SpeechT5HifiGan at ``out/vocoder`` (``vocoder_inside``) or beside it
    (``out.parent / (out.name + "-hifigan")``); returns both."""
    import torch
    from transformers import SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5HifiGanConfig

    tokenizer = make_tokenizer(out)
    torch.manual_seed(seed)
    config = SpeechT5Config(vocab_size=tokenizer.vocab_size, hidden_size=32, encoder_layers=2,
                            encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=2, decoder_attention_heads=2,
                            decoder_ffn_dim=64, num_mel_bins=8, speech_decoder_prenet_units=16,
                            speech_decoder_prenet_layers=2, speech_decoder_postnet_units=16,
                            speech_decoder_postnet_layers=3, speech_decoder_postnet_kernel=5,
                            reduction_factor=reduction_factor, max_speech_positions=600, max_text_positions=200,
                            encoder_max_relative_position=16)
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():   # batch norm statistics of a trained postnet, not the identity of a fresh one
        for layer in model.speech_decoder_postnet.layers:
            layer.batch_norm.running_mean.normal_(0, 0.1)
            layer.batch_norm.running_var.uniform_(0.5, 1.5)
        prenet = model.speecht5.decoder.prenet   # the frames (and their dropout) weigh as in a trained model
        for layer in [*prenet.layers, prenet.final_layer]:
            layer.weight.mul_(PRENET_GAIN)
        model.speech_decoder_postnet.prob_out.weight.mul_(20.0)
        speaker = torch.randn(1, 512, generator=torch.Generator().manual_seed(seed))
        calibrate_stop(model, tokenizer, speaker)
    model.save_pretrained(out)
    np.save(out / "speaker.npy", speaker[0].numpy())   # the x-vector the stop head was calibrated with
    vocoder_dir = out / "vocoder" if vocoder_inside else out.parent / f"{out.name}-hifigan"
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=8, upsample_initial_channel=32,
                                                    upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
                                                    resblock_kernel_sizes=[3, 5],
                                                    resblock_dilation_sizes=[[1, 3], [1, 3]])).eval()
    with torch.no_grad():   # normalize_before: a trained vocoder's mel statistics; weights loud enough to hear
        for p in vocoder.parameters():
            p.normal_(0, 0.15)
        vocoder.mean.normal_(0, 0.5)
        vocoder.scale.uniform_(0.5, 2.0)
    vocoder.save_pretrained(vocoder_dir)
    return out, vocoder_dir


def calibrate_stop(model: Any, tokenizer: Any, speaker: Any) -> None:
    """Shift the stop head's bias so that a sample sentence stops after a few dozen steps, with a margin.

    A tiny random decoder's stop logits follow the step's position (the prenet's positional encoding) far more
    than the text or the dropout draws: record them over 80 unstopped steps, find for each step the bias at which
    the sum of its stop probabilities reaches 0.5, and pick the step in 15..60 that leads all earlier ones by the
    widest margin; the bias goes halfway between."""
    import torch

    head = model.speech_decoder_postnet.prob_out
    logits: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, _i, out: logits.append(out.detach().clone()))
    ids = tokenizer("calibrating the stop head", return_tensors="pt").input_ids
    torch.manual_seed(1)
    r = model.config.reduction_factor
    model.generate_speech(ids, speaker, threshold=1e9, maxlenratio=(80 + 0.5) * r / ids.shape[1])
    hook.remove()
    steps = torch.cat(logits).double()                                   # [80, r]

    def needed(row: torch.Tensor) -> float:   # the bias b with sum(sigmoid(row + b)) = 0.5 (bisection)
        lo, hi = -50.0, 50.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if float(torch.sigmoid(row + mid).sum()) >= 0.5 else (mid, hi)
        return hi

    biases = [needed(row) for row in steps]
    best = max(range(15, 60), key=lambda t: min(biases[:t]) - biases[t])
    head.bias.add_((biases[best] + min(biases[:best])) / 2)


def transformers_speech(model_dir: Path, vocoder_dir: Path, text: str, speaker: Any, masks: Any, **settings: Any) -> Any:
    """transformers' generate_speech(..., vocoder=...) on ``text`` (its own tokenizer) with its prenet's
    torch.bernoulli answered by the runtime's dropout ``masks`` (edgegen's replay): the waveform (numpy [n])."""
    import torch
    from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5Tokenizer

    from edgegen.converters.tts.speecht5 import replayed_dropout

    model = SpeechT5ForTextToSpeech.from_pretrained(model_dir).eval()
    vocoder = SpeechT5HifiGan.from_pretrained(vocoder_dir).eval()
    ids = SpeechT5Tokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    with torch.no_grad(), replayed_dropout(masks):
        return model.generate_speech(ids, torch.as_tensor(speaker).reshape(1, -1), vocoder=vocoder,
                                     **settings).numpy()
