"""Tiny VITS voices (transformers' VitsModel with random weights and a VitsTokenizer) saved as the directories
users have, for the tts tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: an MMS-eng-like alphabet: the pad / blank token first (MMS uses a letter for it), then the rest
SYMBOLS = ["k", "'", " ", "-", *"abcdefghijlmnopqrstuvwxyz0123456789"]


def make_voice(out: Path, *, speakers: int = 1, stochastic: bool = True, seed: int = 0) -> Path:
    """Write a tiny VitsModel + VitsTokenizer directory at ``out`` (save_pretrained, as users have them)."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.json"
    vocab.write_text(json.dumps({s: i for i, s in enumerate(SYMBOLS)}), encoding="utf-8")
    VitsTokenizer(str(vocab), pad_token="k", unk_token="<unk>", phonemize=False, normalize=True, add_blank=True,
                  language="eng").save_pretrained(out)
    torch.manual_seed(seed)
    config = VitsConfig(vocab_size=len(SYMBOLS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        ffn_dim=64, flow_size=32, spectrogram_bins=33, upsample_initial_channel=32,
                        upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 5],
                        resblock_dilation_sizes=[[1, 3], [1, 3]], duration_predictor_filter_channels=32,
                        prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
                        depth_separable_num_layers=2, num_speakers=speakers,
                        speaker_embedding_size=8 if speakers > 1 else 0,
                        use_stochastic_duration_prediction=stochastic)
    model = VitsModel(config).eval()
    with torch.no_grad():   # random init leaves the duration flows near identity: give them some shape
        for p in model.duration_predictor.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    return out


def transformers_speech(model_dir: Path, text: str, draws: Any, *, speaker: int | None = None,
                        noise_scale: float | None = None, noise_scale_duration: float | None = None,
                        speaking_rate: float | None = None) -> Any:
    """transformers' VitsModel speaking ``text`` (its own tokenizer) with its torch.randn / randn_like answered by
    ``draws`` in order: the reference waveform (numpy [n])."""
    import torch
    from transformers import VitsModel, VitsTokenizer

    from edgegen.converters.tts.vits import _replayed

    model = VitsModel.from_pretrained(model_dir).eval()
    for name, value in (("noise_scale", noise_scale), ("noise_scale_duration", noise_scale_duration),
                        ("speaking_rate", speaking_rate)):
        if value is not None:
            setattr(model, name, value)
    ids = VitsTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    with torch.no_grad(), _replayed([torch.from_numpy(d) for d in draws]):
        return model(ids, speaker_id=speaker).waveform[0].numpy()
