"""Converting a transformers ``MusicgenForConditionalGeneration`` directory (MusicGen) into a music artifact.

The four graphs are :mod:`edgegen.converters.music.graphs`'s, each checked against PyTorch at two or more shapes.
Then the staged artifact runs through the runtime and is measured against transformers (figures in
``validation``; a miss fails the conversion):

(a) greedy codes (``generate(do_sample=False)``) of the runtime equal transformers' for two prompts, with
    classifier-free guidance (the model's scale, or 3 where it has none) and without (scale 1);
(b) the EnCodec graph's waveform from transformers' codes against ``EncodecModel.decode``: SNR >= 40 dB;
(c) a sampled run of the runtime (the model's own settings), teacher forced through transformers' forward with
    the same codes: the guided logits of every step, max abs difference <= 1e-3.

``--quantize fp16|int8`` then rewrites the decoder (the graph run once per step, and nearly all the weights: on
a CPU each step reads them all, so the step is bound by memory bandwidth) with ONNX Runtime's float16 converter
or its dynamic int8 quantizer, and measures the quantized artifact the same way as (c): a sampled run of its own,
teacher forced through transformers' float32 forward; the SNR of transformers' guided logits over the difference
must reach MIN_QUANTIZED_SNR_DB (the share of steps whose most likely code agrees is recorded beside it).  The
text encoder, cross-attention and EnCodec graphs stay float32 (run once per prompt / per clip).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.music import graphs as g
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError
from edgegen.manifest import Source

#: test prompts (unknown characters are fine: T5 has <unk>)
PROMPTS = ("lo-fi piano with soft drums", "90s rock song with loud guitars")
MIN_SNR_DB = 40.0
#: guided logits of a sampled run, teacher forced, against transformers: float32 through up to ~50 layers, times
#: the guidance scale
LOGITS_ATOL = 1e-3
#: a quantized decoder's guided logits over its own sampled run against transformers' float32 (teacher forced)
MIN_QUANTIZED_SNR_DB = 20.0
SCHEMES = {"fp16": "fp16", "int8": "int8-dynamic"}
#: generation_config fields edgegen's loop does not run -> the value that means "off"
UNSUPPORTED = {"top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
               "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "num_beams": 1,
               "eos_token_id": None, "min_new_tokens": None, "suppress_tokens": None, "begin_suppress_tokens": None}


def check_directory(model_dir: Path, config: dict[str, Any]) -> None:
    """Before torch loads: the architecture, safetensors weights and tokenizer.json."""
    kind = f"{model_dir} holds a MusicGen model"
    if config.get("model_type") != "musicgen":
        raise UnsupportedModelError(f"{model_dir} holds a {config.get('model_type')} model; edgegen converts "
                                    "MusicgenForConditionalGeneration (model_type musicgen), the closest supported")
    if not any(model_dir.glob("*.safetensors")):
        raise UnsupportedModelError(f"{kind} without safetensors weights; save it with model.save_pretrained(dir)")
    if not (model_dir / "tokenizer.json").is_file():
        raise UnsupportedModelError(f"{kind} without tokenizer.json; save its T5 tokenizer beside it with "
                                    "AutoProcessor.from_pretrained(...).save_pretrained(dir)")


def generation_settings(model: Any, model_dir: Path) -> dict[str, Any]:
    """guidance_scale, do_sample, top_k and temperature from generation_config.json (transformers' defaults
    where it says nothing); settings edgegen's loop does not run are refused, named."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = model.generation_config
    on = [f"{name}={getattr(gen, name)!r}" for name, off in UNSUPPORTED.items()
          if getattr(gen, name, off) not in (off, None)]
    if on:
        raise UnsupportedModelError(f"{model_dir}/generation_config.json sets {', '.join(on)}, which edgegen's "
                                    "MusicGen loop does not run (it runs guidance, temperature and top-k); remove it")
    if gen.guidance_scale is not None and gen.guidance_scale < 1:   # transformers runs its unbatched CFG then
        raise UnsupportedModelError(f"{model_dir}/generation_config.json sets guidance_scale={gen.guidance_scale}; "
                                    "edgegen runs MusicGen's guidance (scale >= 1, 1 for none): set it so")
    return {"guidance_scale": None if gen.guidance_scale is None else float(gen.guidance_scale),
            "do_sample": bool(gen.do_sample), "top_k": int(gen.top_k or 0),
            "temperature": float(gen.temperature if gen.temperature is not None else 1.0),
            "start": gen.decoder_start_token_id, "pad": gen.pad_token_id}


def sampler_section(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    dec, codec = model.decoder.config, model.config.audio_encoder
    start = settings.pop("start")
    start, pad = (dec.decoder_start_token_id if start is None else start), settings.pop("pad")
    pad = dec.pad_token_id if pad is None else pad
    if start != pad or pad < dec.vocab_size:
        raise UnsupportedModelError(f"this MusicGen's start id {start} and pad id {pad} differ or fall inside the "
                                    f"{dec.vocab_size} codes; transformers' generate needs them equal and beyond")
    if getattr(codec, "chunk_length_s", None):
        raise UnsupportedModelError("this MusicGen's EnCodec decodes in chunks (chunk_length_s); edgegen converts "
                                    "the unchunked EnCodec MusicGen ships with")
    hop = int(np.prod(codec.upsampling_ratios))
    return {"model": "musicgen", "num_codebooks": int(dec.num_codebooks), "vocab_size": int(dec.vocab_size),
            "audio_channels": int(dec.audio_channels), "hidden_size": int(dec.hidden_size),
            "num_layers": int(dec.num_hidden_layers), "num_heads": int(dec.num_attention_heads),
            "pad_token_id": int(pad), "decoder_start_token_id": int(start),
            "max_position_embeddings": int(dec.max_position_embeddings),
            "frame_rate": int(codec.frame_rate), "sampling_rate": int(codec.sampling_rate), "hop_length": hop,
            **settings}


def _export_all(model: Any, writer: ArtifactWriter, report: Callable[[str], None]) -> tuple[dict[str, float], int]:
    """Export and check the four graphs: (max abs error per role, the fewest frames the EnCodec graph decodes)."""
    import onnxruntime as ort

    names, errors = g.io_names(model.decoder.config.num_hidden_layers), {}
    gen = torch.Generator().manual_seed(0)
    for role, module in g.modules(model).items():
        started = time.perf_counter()
        path = writer.path(f"{role}.onnx")
        batch, length = (1, 16) if role == "audio_decoder" else (2, 4)
        g.export(module, role, g.examples(model, role, batch, length, gen), path, names[role])
        writer.add_graph_file(role, f"{role}.onnx", precision="fp32")
        options = ort.SessionOptions()
        options.log_severity_level = 4   # min_audio_frames probes lengths onnxruntime refuses
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if role == "decoder":
            errors[role] = _check_decoder(model, session, names[role][0], gen)
        else:
            errors[role] = 0.0
            checks = ((1, 2), (2, 11)) if role != "audio_decoder" else ((1, 40), (2, 11))
            for batch, length in checks:
                args = g.examples(model, role, batch, length, gen)
                ours = session.run(None, {n: a.numpy() for n, a in zip(names[role][0], args)})
                errors[role] = max(errors[role], g.max_abs(ours, g.reference(model, role, args), role,
                                                           list(args[0].shape)))
        if role == "audio_decoder":
            fewest = g.min_audio_frames(model, session, gen)
        report(f"export: graph {role}, max abs error vs PyTorch {errors[role]:.1e} "
               f"({time.perf_counter() - started:.1f} s)")
    return errors, fewest


@torch.no_grad()
def _check_decoder(model: Any, session: Any, inputs: list[str], gen: torch.Generator, steps: int = 6) -> float:
    """The graph stepped over random codes from an empty cache (batch 1, and 2 with an unconditional row) against
    transformers' decoder recomputing each prefix."""
    dec, worst = model.decoder.config, 0.0
    layers, k = dec.num_hidden_layers, dec.num_codebooks
    for batch in (1, 2):
        hidden = torch.randn((batch, 5, dec.hidden_size), generator=gen)
        mask = torch.ones((batch, 5), dtype=torch.int64)
        if batch == 2:
            mask[1], hidden[1] = 0, 0.0
        cross = [t.numpy() for t in g.CrossCache(model)(hidden)]
        codes = torch.randint(0, dec.vocab_size + 1, (batch * k, steps), generator=gen)
        heads, dim = dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
        past = [np.zeros((batch, heads, 0, dim), dtype=np.float32) for _ in range(2 * layers)]
        for t in range(steps):
            feed = dict(zip(inputs, [codes[:, t:t + 1].numpy(), mask.numpy(), *past, *cross]))
            logits, *past = session.run(None, feed)
            theirs = g.decoder_reference(model, codes[:, :t + 1], hidden, mask)
            worst = max(worst, g.max_abs([logits], [theirs], "decoder", [batch * k, 1, t]))
    return worst


def convert_musicgen(model_dir: Path, output: str | Path, *, quantize: str = "auto", overwrite: bool = False,
                     report: Callable[[str], None] = lambda _line: None, **_ignored: Any) -> Path:
    """Convert the MusicGen directory ``model_dir`` (weights, config, generation_config.json, tokenizer.json)
    into a music artifact at ``output``: float32, or with the decoder in ``quantize`` (fp16, int8; auto and none
    keep float32)."""
    from edgegen.converters.versions import library_versions
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.music.music import MusicGen
    from edgegen.runtimes.session import SessionConfig

    if quantize not in ("auto", "none", *SCHEMES):
        raise InvalidArgumentError(f"a MusicGen model converts with --quantize auto, none (both float32), fp16 or int8 "
                                   f"(the decoder), not {quantize!r}")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_directory(model_dir, config)
    started = time.perf_counter()
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(model_dir, use_safetensors=True).float().eval()
    sampler = sampler_section(model, generation_settings(model, model_dir))
    tokenizer = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    report(f"read: MusicGen, {sum(p.numel() for p in model.parameters()):,} weights, {sampler['num_codebooks']} "
           f"codebooks of {sampler['vocab_size']}, {sampler['frame_rate']} frames/s, {sampler['sampling_rate']} Hz "
           f"({time.perf_counter() - started:.1f} s)")
    source = Source(model_class="transformers.MusicgenForConditionalGeneration",
                    converter=f"torch.onnx.export (torch {torch.__version__}, opset {g.OPSET})", opset=g.OPSET,
                    libraries=library_versions())
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        errors, sampler["min_audio_frames"] = _export_all(model, writer, report)
        writer.add_asset("tokenizer", "tokenizer.json", tokenizer)
        writer.write(writer.manifest(family="music", source=source, sampler=sampler))
        music = MusicGen.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
        if music.tokenizer.get_vocab_size() > model.text_encoder.config.vocab_size:
            raise ConversionError(f"{model_dir}: tokenizer.json has {music.tokenizer.get_vocab_size()} tokens, the "
                                  f"T5 encoder {model.text_encoder.config.vocab_size}; it is not this model's")
        started = time.perf_counter()
        figures = validate(music, model)
        figures["graph_max_abs_error"] = errors
        report(f"validate: greedy codes equal transformers' ({len(figures['greedy'])} runs), EnCodec SNR "
               f"{figures['min_snr_db']:.1f} dB (gate {MIN_SNR_DB:g}), sampled run teacher forced: guided logits max "
               f"abs {figures['teacher_forced_max_abs']:.1e} (gate {LOGITS_ATOL:g}) "
               f"({time.perf_counter() - started:.1f} s)")
        if quantize in SCHEMES:
            figures["quantization"] = _quantize(writer, music, model, quantize, report)
        writer.write(writer.manifest(family="music", source=source, sampler=sampler, validation=figures))
        return writer.commit()


def _quantize(writer: ArtifactWriter, fp32: Any, model: Any, scheme: str,
              report: Callable[[str], None]) -> dict[str, Any]:
    """The staged decoder in ``scheme``, its artifact's sampled runs teacher forced through transformers (the
    module docstring's gate); replaces the float32 decoder when it meets the gate."""
    from edgegen.converters.quantization.graphs import quantize_staged, remove_graph, tool
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.music.music import MusicGen
    from edgegen.runtimes.session import SessionConfig

    started, manifest = time.perf_counter(), fp32.artifact.manifest
    size = quantize_staged(writer, "decoder", scheme, SCHEMES[scheme])
    writer.write(writer.manifest(family="music", source=manifest.source, sampler=manifest.sampler))
    quantized = MusicGen.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
    steps, runs = validation_steps(quantized), []
    temperature = None if quantized.sampler.do_sample else 1.0
    fix = "convert with --quantize none (float32)" + (" or fp16" if scheme == "int8" else "")
    for seed, prompt in enumerate(PROMPTS):
        ids = quantized.encode(prompt)
        ours = quantized.generate_ids(ids, steps, seed=seed, temperature=temperature, keep_scores=True)
        if not np.all(np.isfinite(ours.scores)):
            raise ConversionError(f"the {scheme} decoder gives non-finite logits; {fix}")
        theirs = teacher_forced(model, ids, ours.sequence, quantized.settings(None, None, temperature)[0])
        runs.append({"prompt": prompt, "seed": seed, "snr_db": snr_db(theirs, ours.scores),
                     "top1_agreement": float(np.mean(theirs.argmax(-1) == ours.scores.argmax(-1)))})
    worst = min(r["snr_db"] for r in runs)
    if not worst >= MIN_QUANTIZED_SNR_DB:
        raise ConversionError(f"the {scheme} decoder's logits are {worst:.1f} dB SNR against transformers' float32 "
                              f"(gate {MIN_QUANTIZED_SNR_DB:g} dB); {fix}")
    remove_graph(writer.path("decoder.onnx"))
    agreement = min(r["top1_agreement"] for r in runs)
    report(f"quantize: decoder {scheme}, guided logits {worst:.1f} dB SNR against transformers' float32 at worst "
           f"(gate {MIN_QUANTIZED_SNR_DB:g} dB), most likely code agreeing at {agreement:.1%} of steps, "
           f"{size / 2**20:.0f} MiB ({time.perf_counter() - started:.1f} s)")
    return {"scheme": scheme, "graphs": ["decoder"], "reference": "transformers' float32 forward, teacher forced "
            "on the quantized artifact's own sampled runs", "steps": steps, "runs": runs, "min_snr_db": worst,
            "min_top1_agreement": agreement, "gate": {"min_snr_db": MIN_QUANTIZED_SNR_DB},
            "fp32_decoder_sha256": manifest.graphs["decoder"].sha256, "tool": tool(scheme)}


def validation_steps(music: Any) -> int:
    """Enough steps for the delay pattern's start and end to be in play (2K + 6), within the positions."""
    return min(2 * music.sampler.num_codebooks + 6, music.sampler.max_position_embeddings)


@torch.no_grad()
def transformers_codes(model: Any, ids: list[int], steps: int, **settings: Any) -> tuple[np.ndarray, np.ndarray]:
    """transformers' generate for the prompt ids: (codes [K, frames], its waveform [channels, n]); the codes are
    caught on their way into EnCodec's decode."""
    caught = []
    decode = model.audio_encoder.decode

    def catch(codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        caught.append(codes.clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = catch
    try:
        tensor = torch.tensor([ids])
        wave = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=steps,
                              **settings)
    finally:
        del model.audio_encoder.decode
    codes = torch.cat([c[0, 0] for c in caught], dim=0) if len(caught) > 1 else caught[0][0, 0]
    return codes.numpy(), wave[0].numpy()


@torch.no_grad()
def teacher_forced(model: Any, ids: list[int], sequence: np.ndarray, guidance: float | None) -> np.ndarray:
    """transformers' forward over the fed tokens ``sequence[:, :-1]`` [K, steps]: guided logits [steps, K, V]."""
    tensor, fed = torch.tensor([ids]), torch.from_numpy(sequence[:, :-1])
    cond = model(input_ids=tensor, attention_mask=torch.ones_like(tensor), decoder_input_ids=fed).logits
    if guidance is not None:
        null = torch.zeros((1, len(ids), model.config.text_encoder.hidden_size))
        uncond = model(encoder_outputs=(null,), attention_mask=torch.zeros_like(tensor), decoder_input_ids=fed).logits
        cond = uncond + (cond - uncond) * guidance
    return cond.transpose(0, 1).numpy()                                                     # [steps, K, V]


def snr_db(reference: np.ndarray, ours: np.ndarray) -> float:
    """10 log10(|reference|^2 / |reference - ours|^2), capped at 200 dB (equal arrays)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - ours.astype(np.float64)) ** 2))
    return 200.0 if noise == 0.0 else min(200.0, 10.0 * math.log10(max(float(np.sum(ref * ref)), 1e-300) / noise))


def validate(music: Any, model: Any) -> dict[str, Any]:
    steps, greedy, snrs = validation_steps(music), [], []
    scale = music.sampler.guidance_scale if (music.sampler.guidance_scale or 0) > 1 else 3.0
    for prompt in PROMPTS:
        ids = music.encode(prompt)
        for guidance in (scale, 1.0):
            ours = music.generate_ids(ids, steps, guidance=guidance, temperature=0)
            codes, wave = transformers_codes(model, ids, steps, do_sample=False, guidance_scale=guidance,
                                             top_k=None)
            same = ours.codes.shape == codes.shape and bool(np.array_equal(ours.codes, codes))
            if not same:
                raise ConversionError(f"the converted MusicGen's greedy codes for {prompt!r} (guidance {guidance:g}) "
                                      "differ from transformers' generate(do_sample=False)")
            greedy.append({"prompt": prompt, "guidance": guidance, "codes_equal": same,
                           "frames": int(codes.shape[1])})
            samples = music.decode(codes)
            snrs.append(snr_db(wave[0] if wave.shape[0] == 1 else wave, samples))
    if not min(snrs) >= MIN_SNR_DB:
        raise ConversionError(f"the EnCodec graph's waveform differs from transformers': SNR {min(snrs):.1f} dB "
                              f"(< {MIN_SNR_DB:g} dB)")
    ids = music.encode(PROMPTS[0])
    temperature = None if music.sampler.do_sample else 1.0          # a sampled run even for a greedy model
    sampled = music.generate_ids(ids, steps, seed=0, temperature=temperature, keep_scores=True)
    cfg = music.settings(None, None, temperature)[0]
    worst = float(np.max(np.abs(sampled.scores - teacher_forced(model, ids, sampled.sequence, cfg))))
    if not worst <= LOGITS_ATOL:
        raise ConversionError(f"the converted MusicGen's logits over a sampled run differ from transformers' "
                              f"(teacher forced) by {worst:.3g} (> {LOGITS_ATOL:g})")
    return {"reference": "transformers MusicgenForConditionalGeneration.generate / forward", "steps": steps,
            "greedy": greedy, "snr_db": snrs, "min_snr_db": min(snrs), "teacher_forced_max_abs": worst,
            "tolerance": {"min_snr_db": MIN_SNR_DB, "teacher_forced_max_abs": LOGITS_ATOL}}
