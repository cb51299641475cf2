"""A tiny random MusicGen (transformers' MusicgenForConditionalGeneration: a T5 text encoder, a 2-layer decoder over
4 codebooks, a small EnCodec) with a T5-style Unigram tokenizer, saved as the directories users have."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

PROMPTS = ["lo-fi piano with soft drums", "90s rock song"]
#: the tokenizer's pieces after the specials: "▁"-prefixed words, then single characters (so any ASCII text encodes)
WORDS = ["piano", "drums", "rock", "song", "soft", "with", "lo", "fi", "jazz", "guitar"]


def tokenizer() -> Any:
    """A T5-like tokenizer (Unigram, Metaspace, ``$A </s>``): <pad> 0, </s> 1, <unk> 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -2.0) for w in WORDS]
    pieces += [("\u2581", -3.0)] + [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def build_model(*, hidden: int = 32, layers: int = 2, heads: int = 2, codebooks: int = 4, codebook_size: int = 64,
                t5_layers: int = 2, seed: int = 0, max_positions: int = 256) -> Any:
    """A random MusicgenForConditionalGeneration (eval mode); sizes as given (tiny by default)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    vocab = tokenizer().get_vocab_size()
    text = tf.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=t5_layers, num_heads=4,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    audio = tf.EncodecConfig(target_bandwidths=[2.0], sampling_rate=800, audio_channels=1, num_filters=4,
                             upsampling_ratios=[4, 4], codebook_size=codebook_size, codebook_dim=16,
                             hidden_size=16, num_lstm_layers=1, num_residual_layers=1, kernel_size=5,
                             last_kernel_size=5, residual_kernel_size=3, compress=2)
    decoder = tf.MusicgenDecoderConfig(vocab_size=codebook_size, hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=heads, ffn_dim=2 * hidden, num_codebooks=codebooks,
                                       max_position_embeddings=max_positions, pad_token_id=codebook_size,
                                       bos_token_id=codebook_size, decoder_start_token_id=codebook_size)
    config = tf.MusicgenConfig.from_sub_models_config(text, audio, decoder)
    model = tf.MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        # The default init (std 0.02) leaves the sinusoidal positions dominating every hidden state: the codes
        # would not depend on the prompt or the guidance.  Unit-scale embeddings and x10 layer weights make them
        # do; x8 lm heads give sharper logits (fewer near-ties for the greedy parity checks).
        decoder = model.decoder.model.decoder
        for embedding in decoder.embed_tokens:
            embedding.weight.mul_(50.0)
        for layer in decoder.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                    proj.weight.mul_(10.0)
            layer.fc1.weight.mul_(10.0)
            layer.fc2.weight.mul_(10.0)
        for head in model.decoder.lm_heads:
            head.weight.mul_(8.0)
        for vq in model.audio_encoder.quantizer.layers:   # EnCodec's codebooks start as zeros: every code alike
            vq.codebook.embed.normal_()
    return model


def make_musicgen(out: Path, *, guidance_scale: float = 3.0, top_k: int = 20, **sizes: Any) -> Path:
    """Write a tiny MusicGen directory at ``out``: save_pretrained, its generation_config.json (do_sample, top_k,
    guidance_scale as MusicGen's checkpoints have them) and the tokenizer (tokenizer.json)."""
    import transformers as tf

    model = build_model(**sizes)
    cb = model.config.decoder.vocab_size
    model.generation_config = tf.GenerationConfig(do_sample=True, guidance_scale=guidance_scale, top_k=top_k,
                                                  max_length=100, bos_token_id=cb, pad_token_id=cb,
                                                  decoder_start_token_id=cb)
    model.save_pretrained(out)
    tf.PreTrainedTokenizerFast(tokenizer_object=tokenizer(), pad_token="<pad>", eos_token="</s>",
                               unk_token="<unk>").save_pretrained(out)
    return out


def load_reference(model_dir: Path) -> tuple[Any, Any]:
    """(transformers' model, its tokenizer) loaded from ``model_dir`` as a user would."""
    import transformers as tf

    return (tf.MusicgenForConditionalGeneration.from_pretrained(model_dir).eval(),
            tf.AutoTokenizer.from_pretrained(model_dir))


def reference_codes(model: Any, tokenizer: Any, prompt: str, steps: int, **settings: Any) -> Any:
    """transformers' generate for ``prompt`` (its own tokenizer): (codes [K, frames], waveform [channels, n])."""
    from edgegen.converters.music.musicgen import transformers_codes

    return transformers_codes(model, tokenizer(prompt).input_ids, steps, **settings)


def reference_logits(model: Any, tokenizer: Any, prompt: str, sequence: Any, guidance: float | None) -> Any:
    """transformers' forward over a run's fed tokens (``sequence[:, :-1]``): guided logits [steps, K, V]."""
    import torch

    ids = torch.tensor([tokenizer(prompt).input_ids])
    fed = torch.from_numpy(sequence[:, :-1])
    with torch.no_grad():
        cond = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=fed).logits
        if guidance is not None:
            null = torch.zeros((1, ids.shape[1], model.config.text_encoder.hidden_size))
            uncond = model(encoder_outputs=(null,), attention_mask=torch.zeros_like(ids), decoder_input_ids=fed).logits
            cond = uncond + (cond - uncond) * guidance
    return cond.transpose(0, 1).numpy()
