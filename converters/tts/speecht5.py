"""Converting transformers' ``SpeechT5ForTextToSpeech`` (with its ``SpeechT5HifiGan`` vocoder) into a tts artifact.

Four graphs (TorchScript exporter; each checked against PyTorch at two lengths, max abs <= ATOL)::

    encoder  input_ids, attention_mask [B, T] -> cross.N.key / cross.N.value [B, heads, T, head_dim]
             (the text encoder, then each decoder layer's cross-attention projections: computed once)
    decoder  one step: frame [B, 1, mel], dropout_masks [prenet_layers, B, units], speaker_embeddings [B, S],
             encoder_attention_mask [B, T], past.N.key/value [B, heads, P, head_dim], cross.N.key/value
             -> spectrum [B, r, mel], stop_probabilities [B, r], present.N.key/value [B, heads, P + 1, head_dim]
             (the speech prenet on the newest frame at position P with its consistent dropout an input, the
             decoder layers with their self-attention cache, feat_out, and the stop head's sigmoid)
    postnet  spectrogram [B, L, mel] -> spectrogram_post [B, L, mel]
    vocoder  spectrogram_post [B, L, mel] -> waveform [B, L * hop] (SpeechT5HifiGan, normalize_before included)

The loop (runtimes/tts/speecht5.py) is generate_speech's.  Validation: the staged artifact speaks test sentences
with its own draws and generate_speech(..., vocoder=...) runs with its prenet's torch.bernoulli answered by those
draws (:func:`replayed_dropout`); the lengths must agree exactly and the waveforms reach MIN_SNR_DB.

``--quantize fp16|int8`` then rewrites the decoder step (run once per r frames; most of the weights) with ONNX
Runtime's float16 converter or dynamic int8 quantizer; the quantized artifact speaks the test sentences from the
float32 run's seeds (the same dropout draws) at the float32 run's length (minlenratio = maxlenratio), and its
waveform's SNR against the float32 artifact's must reach MIN_QUANTIZED_SNR_DB (whether the stop head still stops
at the same step with the default settings is recorded beside it).  Encoder, postnet and vocoder stay float32.
"""

from __future__ import annotations

import base64
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.tts.vits import hifigan_reach, snr_db
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError
from edgegen.manifest import Source

OPSET = 17
ATOL, MIN_SNR_DB = 1e-4, 40.0
MIN_QUANTIZED_SNR_DB = 20.0
SCHEMES = {"fp16": "fp16", "int8": "int8-dynamic"}
#: (text tokens, past frames) the decoder step is checked at; (tokens) the encoder; (frames) postnet and vocoder
CHECK_STEPS, CHECK_TOKENS, CHECK_FRAMES = ((3, 0), (17, 6)), (3, 17), (2, 23)


def is_speecht5_config(config: dict[str, Any]) -> bool:
    """model_type speecht5 (any head: the converter refuses those that are not text-to-speech)."""
    return config.get("model_type") == "speecht5"


class Encoder(torch.nn.Module):
    """Text encoder + every decoder layer's cross-attention keys and values."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder, self.layers = model.speecht5.encoder, model.speecht5.decoder.wrapped_decoder.layers
        self.heads = model.config.decoder_attention_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.encoder(input_values=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        b, t, h = hidden.shape
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            for proj in (attn.k_proj, attn.v_proj):
                out.append(proj(hidden).view(b, t, self.heads, h // self.heads).transpose(1, 2))  # [B, h, T, hd]
        return tuple(out)


class DecoderStep(torch.nn.Module):
    """One step of generate_speech's loop for the newest frame: prenet (dropout masks given), decoder layers with
    the self-attention cache, feat_out and the stop head.  The attention is SpeechT5Attention's arithmetic (q scaled
    before the product, the 4D mask added, softmax, out_proj) on cached keys/values."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.prenet, self.post = model.speecht5.decoder.prenet, model.speech_decoder_postnet
        self.layers = model.speecht5.decoder.wrapped_decoder.layers
        self.config = model.config

    def _attend(self, attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        b, heads = q.shape[0], self.config.decoder_attention_heads
        q = (attn.q_proj(q) * attn.scaling).view(b, 1, heads, -1).transpose(1, 2)      # [B, h, 1, hd]
        weights = torch.matmul(q, k.transpose(2, 3))                                   # [B, h, 1, S]
        if bias is not None:
            weights = weights + bias
        out = torch.matmul(torch.softmax(weights, dim=-1), v)                          # [B, h, 1, hd]
        return attn.out_proj(out.transpose(1, 2).reshape(b, 1, -1))                    # [B, 1, H]

    def forward(self, frame: torch.Tensor, dropout_masks: torch.Tensor, speaker_embeddings: torch.Tensor,
                encoder_attention_mask: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, cfg, p = len(self.layers), self.config, self.config.speech_decoder_prenet_dropout
        past, cross = cache[:2 * n], cache[2 * n:]
        x = frame                                                                       # [B, 1, mel]
        for i, layer in enumerate(self.prenet.layers):   # _consistent_dropout, the mask given
            x = torch.nn.functional.relu(layer(x))
            x = torch.where(dropout_masks[i].unsqueeze(1) == 1, x, 0) * 1 / (1 - p)
        x = self.prenet.final_layer(x)                                                  # [B, 1, H]
        position = past[0].shape[2]
        x = x + self.prenet.encode_positions.alpha * self.prenet.encode_positions.pe[:, position:position + 1]
        g = torch.nn.functional.normalize(speaker_embeddings).unsqueeze(1)             # [B, 1, S]
        h = torch.nn.functional.relu(self.prenet.speaker_embeds_layer(torch.cat([x, g], dim=-1)))
        bias = (1.0 - encoder_attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min  # [B,1,1,T]
        presents = []
        b, heads = h.shape[0], cfg.decoder_attention_heads
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            k = torch.cat([past[2 * i], sa.k_proj(h).view(b, 1, heads, -1).transpose(1, 2)], dim=2)  # [B, h, P+1, hd]
            v = torch.cat([past[2 * i + 1], sa.v_proj(h).view(b, 1, heads, -1).transpose(1, 2)], dim=2)
            presents += [k, v]
            h = layer.self_attn_layer_norm(h + self._attend(sa, h, k, v, None))
            h = layer.encoder_attn_layer_norm(h + self._attend(layer.encoder_attn, h, cross[2 * i], cross[2 * i + 1],
                                                               bias))
            h = layer.final_layer_norm(h + layer.feed_forward(h))
        last = h[:, 0]                                                                  # [B, H]
        spectrum = self.post.feat_out(last).view(b, cfg.reduction_factor, cfg.num_mel_bins)
        return (spectrum, torch.sigmoid(self.post.prob_out(last)), *presents)


class Postnet(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.post = model.speech_decoder_postnet

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.post.postnet(spectrogram)


def read_text(model_dir: Path) -> dict[str, Any]:
    """SpeechT5Tokenizer's spm_char.model as the runtime's SpeechT5Text (JSON form), refusing what it cannot do."""
    from transformers import SpeechT5Tokenizer
    from transformers.utils import sentencepiece_model_pb2_new as pb

    kind = f"{model_dir} holds a SpeechT5 model"
    if not (model_dir / "spm_char.model").is_file():
        raise UnsupportedModelError(f"{kind} without its tokenizer (spm_char.model); save the SpeechT5Processor's "
                                    "or SpeechT5Tokenizer's save_pretrained into the same directory")
    tokenizer = SpeechT5Tokenizer.from_pretrained(model_dir)
    if tokenizer.normalize:
        raise UnsupportedModelError(f"{kind} whose tokenizer spells out numbers (normalize=True, transformers' "
                                    "EnglishNumberNormalizer), which edgegen does not carry; save it with "
                                    "normalize=False and spell numbers in the text")
    proto = pb.ModelProto()
    proto.ParseFromString((model_dir / "spm_char.model").read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.CHAR or proto.trainer_spec.byte_fallback:
        raise UnsupportedModelError(f"{kind} whose spm_char.model is not a plain character model; edgegen reads "
                                    "SpeechT5's character tokenizer")
    odd = [p.piece for p in proto.pieces if p.type not in (pb.ModelProto.SentencePiece.NORMAL,
                                                           pb.ModelProto.SentencePiece.CONTROL,
                                                           pb.ModelProto.SentencePiece.UNKNOWN)]
    norm = proto.normalizer_spec
    if odd or proto.trainer_spec.treat_whitespace_as_suffix or norm.normalization_rule_tsv:
        raise UnsupportedModelError(f"{kind} whose spm_char.model has user-defined or byte pieces or custom rules "
                                    f"({odd[:3]}); edgegen reads SpeechT5's character tokenizer")
    special = sorted({*tokenizer.all_special_tokens, *(str(t) for t in tokenizer.added_tokens_decoder.values())})
    return {"pieces": [p.piece for p in proto.pieces], "unk_id": tokenizer.unk_token_id,
            "eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id, "special_tokens": special,
            "precompiled_charsmap": base64.b64encode(norm.precompiled_charsmap).decode("ascii"),
            "add_dummy_prefix": bool(norm.add_dummy_prefix),
            "remove_extra_whitespaces": bool(norm.remove_extra_whitespaces),
            "escape_whitespaces": bool(norm.escape_whitespaces)}


def find_vocoder(model_dir: Path, vocoder: str | Path | None) -> Path:
    """--vocoder DIR, else model_dir/vocoder; refused in one line when neither holds a SpeechT5HifiGan."""
    path = Path(vocoder) if vocoder is not None else model_dir / "vocoder"
    if vocoder is None and not path.is_dir():
        raise InvalidArgumentError(f"{model_dir} is a SpeechT5 text-to-speech model, which needs its vocoder: pass "
                                   "--vocoder DIR (a SpeechT5HifiGan save_pretrained directory, e.g. "
                                   "microsoft/speecht5_hifigan)")
    config = path / "config.json"
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        kind = None
    if kind != "hifigan":
        raise InvalidArgumentError(f"--vocoder {path} is not a SpeechT5HifiGan directory (config.json with "
                                   f"model_type 'hifigan'); give the save_pretrained directory of SpeechT5HifiGan")
    if not any(path.glob("*.safetensors")):
        raise UnsupportedModelError(f"the vocoder at {path} has no safetensors weights; save it again with "
                                    "vocoder.save_pretrained(dir)")
    return path


def check_directory(model_dir: Path, config: dict[str, Any]) -> None:
    """Before torch loads: a text-to-speech head, safetensors weights."""
    heads = config.get("architectures") or []
    if heads and "SpeechT5ForTextToSpeech" not in heads:
        raise UnsupportedModelError(f"{model_dir} holds a SpeechT5 {', '.join(heads)}; edgegen converts "
                                    "SpeechT5ForTextToSpeech (text to speech) only")
    if not any(model_dir.glob("*.safetensors")):
        raise UnsupportedModelError(f"{model_dir} holds a SpeechT5 model without safetensors weights; edgegen loads "
                                    "safetensors only: save it again with model.save_pretrained(dir)")


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)


@torch.no_grad()
def _check_graph(path: Path, module: torch.nn.Module, examples: list[tuple[torch.Tensor, ...]],
                 inputs: list[str]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for args in examples:
        ours = session.run(None, {n: t.numpy() for n, t in zip(inputs, args)})
        theirs = module(*args)
        for o, t in zip(ours, theirs if isinstance(theirs, tuple) else (theirs,)):
            if o.shape != tuple(t.shape):
                raise ConversionError(f"the exported {path.stem} gives shape {list(o.shape)} where PyTorch gives "
                                      f"{list(t.shape)}")
            worst = max(worst, float(np.max(np.abs(o - t.numpy()), initial=0.0)))
    if not worst <= ATOL:
        raise ConversionError(f"the exported {path.stem} differs from PyTorch by {worst:.3g} (> {ATOL:g})")
    return worst


def _graphs(model: Any, vocoder: Any) -> list[tuple[str, torch.nn.Module, list[str], list[str], dict, Callable]]:
    """(role, module, inputs, outputs, dynamic axes, example(size, second, generator)) per graph."""
    cfg, gen_ids = model.config, lambda n, g: torch.randint(4, cfg.vocab_size, (1, n), generator=g)
    n, heads, hd = cfg.decoder_layers, cfg.decoder_attention_heads, cfg.hidden_size // cfg.decoder_attention_heads
    kv = [f"{k}.{i}.{w}" for k in ("past", "cross") for i in range(n) for w in ("key", "value")]
    present = [f"present.{i}.{w}" for i in range(n) for w in ("key", "value")]
    cross = [f"cross.{i}.{w}" for i in range(n) for w in ("key", "value")]

    def encoder_example(t: int, _p: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        ids = gen_ids(t, g)
        return ids, torch.ones_like(ids)

    def step_example(t: int, p: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        masks = (torch.rand((cfg.speech_decoder_prenet_layers, 1, cfg.speech_decoder_prenet_units), generator=g)
                 < cfg.speech_decoder_prenet_dropout).float()
        attention = torch.ones((1, t), dtype=torch.int64)
        cache = [torch.randn((1, heads, p, hd), generator=g) for _ in range(2 * n)]
        cache += [torch.randn((1, heads, t, hd), generator=g) for _ in range(2 * n)]
        return (torch.randn((1, 1, cfg.num_mel_bins), generator=g), masks,
                torch.randn((1, cfg.speaker_embedding_dim), generator=g), attention, *cache)

    def frames_example(f: int, _p: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn((1, f, cfg.num_mel_bins), generator=g),)

    batch = {0: "batch"}
    step_axes = {"frame": batch, "dropout_masks": {1: "batch"}, "speaker_embeddings": batch,
                 "encoder_attention_mask": {0: "batch", 1: "tokens"}, "spectrum": batch, "stop_probabilities": batch}
    step_axes |= {name: {0: "batch", 2: "past" if name.startswith("past") else "tokens"} for name in kv}
    step_axes |= {name: {0: "batch", 2: "total"} for name in present}
    frames = {0: "batch", 1: "frames"}
    return [("encoder", Encoder(model), ["input_ids", "attention_mask"], cross,
             {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
             | {c: {0: "batch", 2: "tokens"} for c in cross}, encoder_example),
            ("decoder", DecoderStep(model), ["frame", "dropout_masks", "speaker_embeddings",
                                             "encoder_attention_mask", *kv],
             ["spectrum", "stop_probabilities", *present], step_axes, step_example),
            ("postnet", Postnet(model), ["spectrogram"], ["spectrogram_post"],
             {"spectrogram": frames, "spectrogram_post": frames}, frames_example),
            ("vocoder", vocoder, ["spectrogram_post"], ["waveform"],
             {"spectrogram_post": frames, "waveform": {0: "batch", 1: "samples"}}, frames_example)]


def context_frames(config: Any, vocoder_config: Any) -> int:
    """Spectrogram frames on each side that reach one output sample of postnet + vocoder (an upper bound,
    doubled, as the VITS decoder's): the postnet's convolutions, then HiFi-GAN's reach."""
    postnet = config.speech_decoder_postnet_layers * ((config.speech_decoder_postnet_kernel - 1) // 2)
    return 2 * (postnet + math.ceil(hifigan_reach(vocoder_config))) + 2


def bytes_per_frame(config: Any) -> int:
    """Memory of one spectrogram frame through the vocoder: its widest stage (channels x samples per frame),
    float32, a few buffers live at once, and the waveform."""
    widest, channels, scale = config.upsample_initial_channel, config.upsample_initial_channel, 1
    for up in config.upsample_rates:
        channels, scale = channels // 2, scale * up
        widest = max(widest, channels * scale)
    return int(4 * widest * 4 + 4 * int(np.prod(config.upsample_rates)))


def convert_speecht5(model_dir: Path, output: str | Path, *, vocoder: str | Path | None = None,
                     quantize: str = "auto", overwrite: bool = False,
                     report: Callable[[str], None] = lambda _line: None, **_ignored: Any) -> Path:
    """Convert the SpeechT5ForTextToSpeech directory ``model_dir`` (with its SpeechT5Tokenizer) and its
    SpeechT5HifiGan (``vocoder``, else ``model_dir/vocoder``) into a tts artifact at ``output``: float32, or with
    the decoder step in ``quantize`` (fp16, int8; auto and none keep float32)."""
    from edgegen.converters.versions import library_versions
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.session import SessionConfig
    from edgegen.runtimes.tts.tts import TTS

    if quantize not in ("auto", "none", *SCHEMES):
        raise InvalidArgumentError(f"a SpeechT5 model converts with --quantize auto, none (both float32), fp16 or int8 "
                                   f"(the decoder step), not {quantize!r}")
    check_directory(model_dir, json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    vocoder_dir = find_vocoder(model_dir, vocoder)
    text = read_text(model_dir)
    started = time.perf_counter()
    from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan

    model = SpeechT5ForTextToSpeech.from_pretrained(model_dir, use_safetensors=True).float().eval()
    voc = SpeechT5HifiGan.from_pretrained(vocoder_dir, use_safetensors=True).float().eval()
    cfg, vcfg = model.config, voc.config
    if vcfg.model_in_dim != cfg.num_mel_bins:
        raise ConversionError(f"the vocoder takes {vcfg.model_in_dim} mel bins, the model makes {cfg.num_mel_bins}; "
                              "--vocoder is not this model's")
    if len(text["pieces"]) > cfg.vocab_size:
        raise ConversionError(f"{model_dir}: the tokenizer has {len(text['pieces'])} pieces, the model's embedding "
                              f"{cfg.vocab_size}; the directory's tokenizer is not this model's")
    if not 0 <= cfg.speech_decoder_prenet_dropout < 1:
        raise ConversionError(f"speech_decoder_prenet_dropout {cfg.speech_decoder_prenet_dropout} is not in [0, 1)")
    sampler = {"model": "speecht5", "sampling_rate": int(vcfg.sampling_rate),
               "hop_length": int(np.prod(vcfg.upsample_rates)), "num_mel_bins": int(cfg.num_mel_bins),
               "reduction_factor": int(cfg.reduction_factor), "decoder_layers": int(cfg.decoder_layers),
               "decoder_heads": int(cfg.decoder_attention_heads),
               "head_dim": int(cfg.hidden_size // cfg.decoder_attention_heads),
               "prenet_layers": int(cfg.speech_decoder_prenet_layers),
               "prenet_units": int(cfg.speech_decoder_prenet_units),
               "prenet_dropout": float(cfg.speech_decoder_prenet_dropout),
               "speaker_embedding_dim": int(cfg.speaker_embedding_dim),
               "max_text_positions": int(cfg.max_text_positions), "max_speech_positions": int(cfg.max_speech_positions),
               "vocab_size": int(cfg.vocab_size), "bytes_per_frame": bytes_per_frame(vcfg),
               "context_frames": context_frames(cfg, vcfg), "text": text}
    weights = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in voc.parameters())
    report(f"read: SpeechT5 + HiFi-GAN, {weights:,} weights, {vcfg.sampling_rate} Hz, {len(text['pieces'])} "
           f"pieces ({time.perf_counter() - started:.1f} s)")
    source = Source(model_class="transformers.SpeechT5ForTextToSpeech+SpeechT5HifiGan",
                    converter=f"torch.onnx.export (TorchScript, torch {torch.__version__}, opset {OPSET})",
                    opset=OPSET, libraries=library_versions())
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        errors = {}
        for role, module, inputs, outputs, axes, example in _graphs(model, voc):
            started = time.perf_counter()
            module.eval()   # a wrapper left in training mode would put the model back in it after export
            path, gen = writer.path(f"{role}.onnx"), torch.Generator().manual_seed(0)
            sizes = {"decoder": CHECK_STEPS}.get(role, [(t, 0) for t in (CHECK_TOKENS if role == "encoder"
                                                                            else CHECK_FRAMES)])
            _export(module, example(9, 4, gen), path, inputs, outputs, axes)
            writer.add_graph_file(role, f"{role}.onnx", precision="fp32")
            errors[role] = _check_graph(path, module, [example(t, p, gen) for t, p in sizes], inputs)
            report(f"export: graph {role}, max abs error vs PyTorch {errors[role]:.1e} "
                   f"({time.perf_counter() - started:.1f} s)")
        writer.write(writer.manifest(family="tts", source=source, sampler=sampler))
        voice = TTS.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
        figures = validate(voice, model, voc)
        figures["graph_max_abs_error"] = errors
        report(f"validate: {len(figures['sentences'])} sentences through the runtime vs transformers' generate_speech "
               f"on the same dropout draws: SNR {figures['min_snr_db']:.1f} dB at worst (gate {MIN_SNR_DB:g} dB)")
        if quantize in SCHEMES:
            figures["quantization"] = _quantize(writer, voice, quantize, report)
        writer.write(writer.manifest(family="tts", source=source, sampler=sampler, validation=figures))
        return writer.commit()


def _quantize(writer: ArtifactWriter, fp32: Any, scheme: str, report: Callable[[str], None]) -> dict[str, Any]:
    """The staged decoder step in ``scheme``, measured against the float32 voice ``fp32`` (the module docstring's
    gate); replaces the float32 decoder when it meets the gate."""
    from edgegen.converters.quantization.graphs import quantize_staged, remove_graph, tool
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.session import SessionConfig
    from edgegen.runtimes.tts.tts import TTS

    started, manifest = time.perf_counter(), fp32.artifact.manifest
    size = quantize_staged(writer, "decoder", scheme, SCHEMES[scheme])
    writer.write(writer.manifest(family="tts", source=manifest.source, sampler=manifest.sampler))
    quantized = TTS.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
    speaker, runs = test_speaker(fp32.sampler.speaker_embedding_dim), []
    fix = "convert with --quantize none (float32)" + (" or fp16" if scheme == "int8" else "")
    for i, sentence in enumerate(test_sentences(fp32)):
        reference = fp32.speak_with_draws(sentence, seed=i, speaker=speaker)
        steps = int(reference.draws[0].shape[0])
        ratio = (steps + 0.5) * fp32.sampler.reduction_factor / len(fp32.text.encode(sentence))
        try:
            ours = quantized.speak(sentence, seed=i, speaker=speaker, minlenratio=ratio, maxlenratio=ratio)[0]
            free = quantized.speak(sentence, seed=i, speaker=speaker)[0]
        except InvalidArgumentError as exc:   # non-finite samples, or a stop head that never stops
            raise ConversionError(f"the {scheme} decoder fails on a test sentence ({exc}); {fix}") from None
        runs.append({"sentence": sentence, "seed": i, "steps": steps, "snr_db": snr_db(reference.samples, ours),
                     "stops_at_the_same_step": free.shape == reference.samples.shape})
    worst = min(r["snr_db"] for r in runs)
    if not worst >= MIN_QUANTIZED_SNR_DB:
        raise ConversionError(f"the {scheme} decoder's speech is {worst:.1f} dB SNR against float32 (gate "
                              f"{MIN_QUANTIZED_SNR_DB:g} dB); {fix}")
    remove_graph(writer.path("decoder.onnx"))
    same = sum(r["stops_at_the_same_step"] for r in runs)
    report(f"quantize: decoder {scheme}, SNR {worst:.1f} dB against float32 at worst (gate {MIN_QUANTIZED_SNR_DB:g} "
           f"dB), stopping where float32 stops in {same} of {len(runs)} sentences, {size / 2**20:.1f} MiB "
           f"({time.perf_counter() - started:.1f} s)")
    return {"scheme": scheme, "graphs": ["decoder"], "reference": "the float32 artifact, the same dropout draws and "
            "length", "runs": runs, "min_snr_db": worst, "gate": {"min_snr_db": MIN_QUANTIZED_SNR_DB},
            "fp32_decoder_sha256": manifest.graphs["decoder"].sha256, "tool": tool(scheme)}


def test_sentences(voice: Any) -> list[str]:
    """Three sentences of 1, ~12 and ~30 characters from the tokenizer's own letters."""
    letters = [p for p in voice.text.pieces if len(p) == 1 and p.isalpha()]
    if not letters:
        raise ConversionError("the model's tokenizer has no letter it can say")
    rng = np.random.default_rng(0)
    words = lambda n: " ".join("".join(rng.choice(letters, size=int(rng.integers(2, 6)))) for _ in range(n))  # noqa
    return [letters[0], words(3)[:12].strip() or letters[0], words(8)[:30].strip() or letters[0]]


def test_speaker(dim: int) -> np.ndarray:
    """A fixed x-vector for validation ([dim] float32, seeded)."""
    return np.random.default_rng(0).standard_normal(dim, dtype=np.float32) * 0.05


@torch.no_grad()
def validate(voice: Any, model: Any, vocoder: Any) -> dict[str, Any]:
    """Each test sentence by the runtime and by generate_speech fed the runtime's dropout draws: same length
    (the loop stopped at the same step), SNR of transformers' waveform over the difference."""
    sentences, snrs, steps = test_sentences(voice), [], []
    speaker = test_speaker(voice.sampler.speaker_embedding_dim)
    for i, sentence in enumerate(sentences):
        result = voice.speak_with_draws(sentence, seed=i, speaker=speaker)
        ids = torch.tensor([voice.text.encode(sentence)])
        with replayed_dropout(result.draws[0]):
            reference = model.generate_speech(ids, torch.from_numpy(speaker)[None], vocoder=vocoder).numpy()
        if reference.shape != result.samples.shape:
            raise ConversionError(f"the converted model gives {result.samples.shape[0]} samples for {sentence!r} where "
                                  f"transformers gives {reference.shape[0]} (the loops stopped at different steps)")
        snrs.append(snr_db(reference, result.samples))
        steps.append(int(result.draws[0].shape[0]))
    worst = min(snrs)
    if not worst >= MIN_SNR_DB:
        raise ConversionError(f"the converted model does not match transformers' generate_speech on the same draws: "
                              f"SNR {worst:.1f} dB (< {MIN_SNR_DB:g} dB)")
    return {"reference": "transformers SpeechT5ForTextToSpeech.generate_speech(vocoder=SpeechT5HifiGan), the same "
                         "dropout draws", "sentences": sentences, "steps": steps, "snr_db": snrs, "min_snr_db": worst,
            "tolerance": {"min_snr_db": MIN_SNR_DB}}


@contextmanager
def replayed_dropout(masks: Any) -> Iterator[None]:
    """torch.bernoulli answered by the runtime's draws ``masks`` [steps, prenet_layers, units]: at step s the
    prenet draws [s, units] per layer; the last row is the runtime's (the rows before touch only older frames,
    which generate_speech discards: they get the earlier steps' draws)."""
    masks = torch.as_tensor(np.asarray(masks))
    steps, layers = masks.shape[0], masks.shape[1]
    calls = iter([(s, layer) for s in range(steps) for layer in range(layers)])
    real = torch.bernoulli

    def bernoulli(inputs: torch.Tensor, p: Any = None, **_kw: Any) -> torch.Tensor:
        try:
            s, layer = next(calls)
        except StopIteration:
            raise ConversionError("transformers ran more decoder steps than the runtime did") from None
        if tuple(inputs.shape) != (s + 1, masks.shape[2]):
            raise ConversionError(f"transformers drew a dropout mask of shape {list(inputs.shape)} where the runtime "
                                  f"drew [{s + 1}, {masks.shape[2]}]")
        return masks[:s + 1, layer].to(inputs.dtype)

    torch.bernoulli = bernoulli   # type: ignore[assignment]
    try:
        yield
    finally:
        torch.bernoulli = real
    if next(calls, None) is not None:
        raise ConversionError("the runtime ran more decoder steps than transformers did")
