"""Text to music: edgegen's music runtime against transformers' ``MusicgenForConditionalGeneration.generate`` in
PyTorch eager, on the same random-weight MusicGen, 2 seconds of audio (100 decoder steps at 50 frames/s).

``run(quick=False)`` builds a MusicGen-small-sized model (decoder hidden 1024, 24 layers, 16 heads, 4 codebooks
of 2048; a T5-base-sized text encoder; EnCodec at 32 kHz with upsampling 8x5x4x4, as facebook/musicgen-small's
config has it); ``quick=True`` a tiny one (hidden 48, 2 layers) to check the script.  Both sides sample with the
model's generation settings (guidance 3, top-k 250, as musicgen-small's generation_config.json), batch 1, on the
CPU with their default threads; each repeat times both, interleaved, after a warm-up.  Random weights make noise
but run the same graphs; conversion (export, graph checks and the validation against transformers) is not timed.
edgegen runs three artifacts of the model: the decoder in float32, int8 (dynamic) and fp16 (``--quantize``), each
with the fidelity its conversion measured (guided logits against transformers' float32, teacher forced).
"""

from __future__ import annotations

import string
import tempfile
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

PROMPT = "lo-fi piano with soft drums"
SCHEMES = ("none", "int8", "fp16")
SECONDS = 2.0


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def make_musicgen(root: Path, quick: bool) -> Path:
    """Save a random MusicGen (small-sized, or tiny) with its generation config and tokenizer at ``root``."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer()
    if quick:
        text = tf.T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        audio = tf.EncodecConfig(target_bandwidths=[2.0], sampling_rate=800, num_filters=4, upsampling_ratios=[4, 4],
                                 codebook_size=64, codebook_dim=16, hidden_size=16, num_lstm_layers=1,
                                 kernel_size=5, last_kernel_size=5, compress=2)
        dec = dict(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96)
    else:   # facebook/musicgen-small's sizes
        text = tf.T5Config(vocab_size=tok.get_vocab_size(), d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                           num_heads=12)
        audio = tf.EncodecConfig(target_bandwidths=[2.2], sampling_rate=32000, audio_channels=1, codebook_size=2048,
                                 upsampling_ratios=[8, 5, 4, 4], num_filters=64, hidden_size=128, num_lstm_layers=2,
                                 use_causal_conv=False, normalize=False, pad_mode="reflect")
        dec = dict(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096)
    cb = dec["vocab_size"]
    decoder = tf.MusicgenDecoderConfig(**dec, num_codebooks=4, max_position_embeddings=2048, pad_token_id=cb,
                                       bos_token_id=cb, decoder_start_token_id=cb)
    model = tf.MusicgenForConditionalGeneration(tf.MusicgenConfig.from_sub_models_config(text, audio, decoder)).eval()
    model.generation_config = tf.GenerationConfig(do_sample=True, guidance_scale=3.0, top_k=250, max_length=1500,
                                                  bos_token_id=cb, pad_token_id=cb, decoder_start_token_id=cb)
    model.save_pretrained(root)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                               unk_token="<unk>").save_pretrained(root)
    return root


def run(quick: bool, repeats: int, schemes: tuple[str, ...] = SCHEMES) -> list[dict[str, Any]]:
    """One row: seconds per run of transformers' generate (torch eager) and of edgegen with the decoder in each of
    ``schemes`` (none = float32, fp16, int8: one conversion each), ``repeats`` each, interleaved."""
    import torch
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    import edgegen

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = make_musicgen(Path(tmp) / "hf", quick)
        variants, convert_s, quality = {}, {}, {}
        for scheme in schemes:
            started = time.perf_counter()
            artifact = edgegen.convert(str(source), Path(tmp) / f"music-{scheme}", quantize=scheme)
            name = f"edgegen {'fp32' if scheme == 'none' else scheme}"
            convert_s[name] = round(time.perf_counter() - started, 1)
            variants[name] = edgegen.load(artifact, provider="cpu")
            q = variants[name].artifact.manifest.validation.get("quantization")
            if q:
                quality[name] = {"min_logits_snr_db": round(q["min_snr_db"], 1),
                                 "min_top1_agreement": round(q["min_top1_agreement"], 3)}
        model = MusicgenForConditionalGeneration.from_pretrained(source).eval()
        ids = AutoTokenizer.from_pretrained(source)(PROMPT, return_tensors="pt")
        steps = next(iter(variants.values())).steps_for(SECONDS)

        def eager() -> None:
            with torch.no_grad():
                model.generate(input_ids=ids.input_ids, attention_mask=ids.attention_mask, max_new_tokens=steps)

        def ours(music: Any) -> Callable[[], float]:
            return lambda: music.generate(PROMPT, seconds=SECONDS, seed=0).seconds

        runs = {"pytorch eager": eager, **{name: ours(music) for name, music in variants.items()}}
        audio_s = [fn() for fn in runs.values()][-1]                         # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(round(time.perf_counter() - t, 4))
    name = "musicgen tiny (random)" if quick else "musicgen-small-sized (random, hidden 1024, 24 layers)"
    return [{"model": name, "times_s": times, "audio_s": round(audio_s, 4), "steps": steps, "convert_s": convert_s,
             "quantized_fidelity": quality, "torch_threads": torch.get_num_threads()}]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.repeats), indent=1))
