"""Tiny random-weight encoder-decoders (T5, BART, mBART, Marian) with WordLevel tokenizers, built offline."""

from __future__ import annotations

from pathlib import Path

WORDS = [f"w{i}" for i in range(60)] + ["translate", "English", "to", "German:", "summarize:", "hello", "world",
                                        "the", "a", "cat", "sat", "on", "mat"]
PROMPTS = ["translate English to German: hello world", "summarize: the cat sat on the mat w1 w2 w3 w4",
           "w5 w9 w13 a cat", "hello"]


def _tokenizer(specials: list[str], template: str, special_ids: dict[str, int]):  # noqa: ANN202
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {s: i for i, s in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=list(special_ids.items()))
    return tok, len(vocab)


def write_tiny_seq2seq(root: Path, kind: str) -> Path:
    """Save a tiny ``kind`` ("t5", "bart", "mbart", "marian") model and its fast tokenizer under ``root``."""
    import torch
    import transformers as tf

    torch.manual_seed({"t5": 0, "bart": 1, "mbart": 2, "marian": 3}[kind])
    if kind == "t5":
        tok, n = _tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", {"</s>": 1})
        config = tf.T5Config(vocab_size=n, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                             num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = tf.T5ForConditionalGeneration(config)
        names = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>"] + (["de_DE"] if kind == "mbart" else [])
        tok, n = _tokenizer(specials, "<s> $A </s>" if kind != "marian" else "$A </s>", {"<s>": 0, "</s>": 2})
        common = dict(vocab_size=n, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                      bos_token_id=0, pad_token_id=1, eos_token_id=2)
        if kind == "bart":
            config = tf.BartConfig(**common, decoder_start_token_id=2, forced_eos_token_id=2)
            model = tf.BartForConditionalGeneration(config)
        elif kind == "mbart":
            config = tf.MBartConfig(**common, decoder_start_token_id=2, forced_eos_token_id=2,
                                    forced_bos_token_id=4)
            model = tf.MBartForConditionalGeneration(config)
        else:
            config = tf.MarianConfig(**common, decoder_start_token_id=1, decoder_vocab_size=n)
            model = tf.MarianMTModel(config)
        names = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    with torch.no_grad():   # sharper logits than the default init: fewer near-ties between beams
        for p in model.parameters():
            p.mul_(3.0)
        if kind == "marian":   # end-of-sequence likely mid-sequence: beam search's finished-hypothesis paths run
            model.final_logits_bias[0, 2] = 3.0
    model.eval().save_pretrained(root)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(root)
    return root
