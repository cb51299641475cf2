"""Converting a transformers ``VitsModel`` directory (MMS-TTS and other VITS voices) into a tts artifact.

Two graphs, every random draw an input (the runtime fills them from its seeded generator)::

    encoder  input_ids [B, T] int64, attention_mask [B, T] int64, duration_noise [B, 2, T] (stochastic duration
             predictor only), noise_scale_duration [], length_scale [], speaker_id [B] int64 (multi-speaker only)
             -> durations [B, 1, T] (frames per token, ceil'd as transformers does), prior_means [B, T, C],
                prior_log_variances [B, T, C], speaker_embeddings [B, E, 1] (multi-speaker only)
    decoder  prior_means, prior_log_variances, latent_noise [B, C, L], noise_scale [], padding_mask [B, 1, L],
             speaker_embeddings [B, E, 1] (multi-speaker only) -> waveform [B, L * hop]

Between them the runtime repeats each token's prior over its frames (transformers' alignment matmul with a 0/1
matrix: the same values).  The graphs run the model's own modules; the encoder wrapper spells out the reverse
branch of ``VitsStochasticDurationPredictor.forward`` with its ``torch.randn`` replaced by the noise input, and
the duration flows' rational-quadratic spline runs as an export-friendly version of transformers' (the same
element-wise arithmetic, ``torch.where`` for the boolean-mask indexing and without the data-dependent
``raise`` checks, which torch.export cannot trace: :func:`spline`).

Exported with torch.export (``dynamo=True``): the TorchScript tracer gets VITS's relative-position attention
wrong (measured: max abs 1.6 on prior_means at the traced length itself).  Checked twice: each graph against
PyTorch at two lengths (max abs <= 1e-4), then end to end: the staged artifact speaks test sentences from its
own draws and ``VitsModel.forward`` runs with the same draws (its ``torch.randn`` / ``randn_like`` calls fed them
in order); the waveforms' SNR must reach 40 dB.  The figures go into ``validation``.
"""

from __future__ import annotations

import inspect
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

from edgegen.converters.tts import is_tts_config  # noqa: F401  (re-exported)
from edgegen.converters.tts.tokenizer import read_vits_tokenizer
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError
from edgegen.manifest import Source

OPSET = 18
#: graph checks against PyTorch (max abs) and the end-to-end gate (dB)
ATOL, MIN_SNR_DB = 1e-4, 40.0
#: the quantized decoder's gate: SNR of its waveforms against the fp32 artifact's, the same draws (dB)
MIN_QUANTIZED_SNR_DB = 20.0
#: --quantize schemes: the decoder only (the encoder's durations are ceil'd: a quantized encoder moves them)
SCHEMES = {"fp16": "fp16", "int8": "int8-dynamic"}
#: token counts the graphs are checked at (neither is the export length)
CHECK_LENGTHS = (3, 17)
EXPORT_LENGTH = 9


def spline(inputs: torch.Tensor, unnormalized_widths: torch.Tensor, unnormalized_heights: torch.Tensor,
           unnormalized_derivatives: torch.Tensor, reverse: bool = False, tail_bound: float = 5.0,
           min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
           min_derivative: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``_unconstrained_rational_quadratic_spline`` computed on every element (inputs outside
    the tail bound clamped inside, then passed through unchanged with ``torch.where``): the same floats for
    elements inside, identity outside, and no data-dependent shapes or branches."""
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    x = torch.clamp(inputs, -tail_bound, tail_bound)
    constant = float(np.log(np.exp(1 - min_derivative) - 1))
    d = torch.nn.functional.pad(unnormalized_derivatives, pad=(1, 1))
    d = torch.cat([torch.full_like(d[..., :1], constant), d[..., 1:-1], torch.full_like(d[..., :1], constant)], -1)
    lower, upper = -tail_bound, tail_bound
    num_bins = unnormalized_widths.shape[-1]

    def edges(unnormalized: torch.Tensor, minimum: float) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = torch.softmax(unnormalized, dim=-1)
        sizes = minimum + (1 - minimum * num_bins) * sizes
        cum = torch.nn.functional.pad(torch.cumsum(sizes, dim=-1), pad=(1, 0), mode="constant", value=0.0)
        cum = (upper - lower) * cum + lower
        cum = torch.cat([torch.full_like(cum[..., :1], lower), cum[..., 1:-1], torch.full_like(cum[..., :1], upper)],
                        -1)
        return cum, cum[..., 1:] - cum[..., :-1]

    cumwidths, widths = edges(unnormalized_widths, min_bin_width)
    derivatives = min_derivative + torch.nn.functional.softplus(d)
    cumheights, heights = edges(unnormalized_heights, min_bin_height)
    locations = cumheights if reverse else cumwidths
    locations = torch.cat([locations[..., :-1], locations[..., -1:] + 1e-6], -1)
    bin_idx = (torch.sum((x[..., None] >= locations).to(torch.int64), dim=-1) - 1)[..., None]
    pick = lambda t: t.gather(-1, bin_idx)[..., 0]   # noqa: E731
    input_cumwidths, input_bin_widths, input_cumheights = pick(cumwidths), pick(widths), pick(cumheights)
    delta = heights / widths
    input_delta, input_derivatives = pick(delta), pick(derivatives)
    input_derivatives_plus_one, input_heights = pick(derivatives[..., 1:]), pick(heights)
    intermediate1 = input_derivatives + input_derivatives_plus_one - 2 * input_delta
    if not reverse:
        theta = (x - input_cumwidths) / input_bin_widths
        theta_one_minus_theta = theta * (1 - theta)
        numerator = input_heights * (input_delta * theta.pow(2) + input_derivatives * theta_one_minus_theta)
        denominator = input_delta + intermediate1 * theta_one_minus_theta
        outputs = input_cumheights + numerator / denominator
        derivative_numerator = input_delta.pow(2) * (input_derivatives_plus_one * theta.pow(2)
                                                     + 2 * input_delta * theta_one_minus_theta
                                                     + input_derivatives * (1 - theta).pow(2))
        log_abs_det = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    else:
        intermediate2 = x - input_cumheights
        intermediate3 = intermediate2 * intermediate1
        a = input_heights * (input_delta - input_derivatives) + intermediate3
        b = input_heights * input_derivatives - intermediate3
        c = -input_delta * intermediate2
        discriminant = b.pow(2) - 4 * a * c
        root = (2 * c) / (-b - torch.sqrt(discriminant))
        outputs = root * input_bin_widths + input_cumwidths
        theta_one_minus_theta = root * (1 - root)
        denominator = input_delta + intermediate1 * theta_one_minus_theta
        derivative_numerator = input_delta.pow(2) * (input_derivatives_plus_one * root.pow(2)
                                                     + 2 * input_delta * theta_one_minus_theta
                                                     + input_derivatives * (1 - root).pow(2))
        log_abs_det = -(torch.log(derivative_numerator) - 2 * torch.log(denominator))
    return torch.where(inside, outputs, inputs), torch.where(inside, log_abs_det, torch.zeros_like(inputs))


@contextmanager
def export_friendly_spline() -> Iterator[None]:
    from transformers.models.vits import modeling_vits

    original = modeling_vits._unconstrained_rational_quadratic_spline
    modeling_vits._unconstrained_rational_quadratic_spline = spline
    try:
        yield
    finally:
        modeling_vits._unconstrained_rational_quadratic_spline = original


class Encoder(torch.nn.Module):
    """Text encoder and duration predictor of a VitsModel, its random draw an input."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.stochastic = bool(model.config.use_stochastic_duration_prediction)
        self.speakers = model.config.num_speakers > 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> tuple:
        m, rest = self.model, list(rest)
        duration_noise = rest.pop(0) if self.stochastic else None
        noise_scale_duration, length_scale = rest.pop(0), rest.pop(0)
        g = m.embed_speaker(rest.pop(0)).unsqueeze(-1) if self.speakers else None          # [B, E, 1]
        mask = attention_mask.unsqueeze(-1).to(m.text_encoder.embed_tokens.weight.dtype)   # [B, T, 1]
        out = m.text_encoder(input_ids=input_ids, padding_mask=mask, attention_mask=attention_mask, return_dict=True)
        hidden, pad = out.last_hidden_state.transpose(1, 2), mask.transpose(1, 2)          # [B, H, T], [B, 1, T]
        dp = m.duration_predictor
        if self.stochastic:   # VitsStochasticDurationPredictor.forward(reverse=True), its torch.randn an input
            x = dp.conv_pre(hidden)
            if g is not None:
                x = x + dp.cond(g)
            x = dp.conv_proj(dp.conv_dds(x, pad)) * pad
            flows = list(reversed(dp.flows))
            flows = flows[:-2] + [flows[-1]]   # as transformers: "remove a useless vflow"
            latents = duration_noise * noise_scale_duration
            for flow in flows:
                latents = torch.flip(latents, [1])
                latents, _ = flow(latents, pad, global_conditioning=x, reverse=True)
            log_duration = latents[:, :1]
        else:
            log_duration = dp(hidden, pad, g)
        durations = torch.ceil(torch.exp(log_duration) * pad * length_scale)                # [B, 1, T]
        outputs = (durations, out.prior_means, out.prior_log_variances)
        return (*outputs, g) if g is not None else outputs


class Decoder(torch.nn.Module):
    """Prior sample, reverse flow and HiFi-GAN of a VitsModel, the prior's noise an input."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.speakers = model.config.num_speakers > 1

    def forward(self, prior_means: torch.Tensor, prior_log_variances: torch.Tensor, latent_noise: torch.Tensor,
                noise_scale: torch.Tensor, padding_mask: torch.Tensor, *speaker: torch.Tensor) -> torch.Tensor:
        g = speaker[0] if self.speakers else None
        prior = prior_means + latent_noise * torch.exp(prior_log_variances) * noise_scale
        latents = self.model.flow(prior, padding_mask, g, reverse=True)
        return self.model.decoder(latents * padding_mask, g).squeeze(1)                    # [B, L * hop]


def encoder_io(config: Any) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask"]
    inputs += ["duration_noise"] if config.use_stochastic_duration_prediction else []
    inputs += ["noise_scale_duration", "length_scale"] + (["speaker_id"] if config.num_speakers > 1 else [])
    outputs = ["durations", "prior_means", "prior_log_variances"]
    return inputs, outputs + (["speaker_embeddings"] if config.num_speakers > 1 else [])


def decoder_io(config: Any) -> tuple[list[str], list[str]]:
    inputs = ["prior_means", "prior_log_variances", "latent_noise", "noise_scale", "padding_mask"]
    return inputs + (["speaker_embeddings"] if config.num_speakers > 1 else []), ["waveform"]


def context_frames(config: Any) -> int:
    """Latent frames on each side that reach one output sample of the decoder (an upper bound, doubled): the
    reverse flow's WaveNets (prior_encoder_num_flows couplings of prior_encoder_num_wavenet_layers dilated
    convolutions each) and HiFi-GAN (conv_pre, per upsampling stage its transposed convolution and the widest
    residual block, conv_post), the later stages counted in frames at their upsampled rate."""
    k, rate = config.wavenet_kernel_size, config.wavenet_dilation_rate
    flow = config.prior_encoder_num_flows * sum((k - 1) // 2 * rate ** i
                                               for i in range(config.prior_encoder_num_wavenet_layers))
    return 2 * (flow + math.ceil(hifigan_reach(config))) + 2


def hifigan_reach(config: Any) -> float:
    """Input frames on each side that reach one output sample of a HiFi-GAN generator (transformers' VITS decoder
    and SpeechT5HifiGan share its layout and config keys): conv_pre, per upsampling stage its transposed
    convolution and the widest residual block, conv_post, the later stages counted in frames at their rate."""
    vocoder, scale = 3.0, 1                                     # conv_pre: kernel 7
    for up, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
        vocoder += math.ceil(kernel / up) / scale               # the transposed convolution, in input frames
        scale *= up
        widest = max(sum((kr - 1) // 2 * d + (kr - 1) // 2 for d in dilations)
                     for kr, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        vocoder += widest / scale
    return vocoder + 3 / scale                                  # conv_post: kernel 7


def bytes_per_frame(config: Any) -> int:
    """Memory of one latent frame through the decoder: the flow's hidden state and HiFi-GAN's widest stage
    (channels x samples per frame), float32, a few buffers of each live at once."""
    flow = 4 * (config.flow_size + config.hidden_size) * 4
    widest, channels, scale = 0, config.upsample_initial_channel, 1
    for up in config.upsample_rates:
        channels, scale = channels // 2, scale * up
        widest = max(widest, channels * scale)
    return int(flow + 4 * widest * 4 + 4 * int(np.prod(config.upsample_rates)))


def check_directory(model_dir: Path, config: dict[str, Any]) -> None:
    """Before torch loads: safetensors weights, a config this converter reads."""
    kind = f"{model_dir} holds a VITS voice"
    if not any(model_dir.glob("*.safetensors")):
        pickled = sorted(p.name for p in model_dir.glob("*.bin"))
        if pickled:
            raise UnsupportedModelError(f"{kind} with only pickled weights ({', '.join(pickled)}); edgegen loads "
                                        "safetensors only: save it again with model.save_pretrained(dir)")
        raise UnsupportedModelError(f"{kind} without its weights (model.safetensors); save it with "
                                    "model.save_pretrained(dir)")
    speakers, size = config.get("num_speakers", 1), config.get("speaker_embedding_size", 0)
    if not isinstance(speakers, int) or speakers < 1 or (speakers > 1 and not (isinstance(size, int) and size > 0)):
        raise ConversionError(f"{kind} whose config has num_speakers={speakers!r} and speaker_embedding_size="
                              f"{size!r}; a multi-speaker voice needs a positive speaker_embedding_size")


def _example(config: Any, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=gen)
    args: list[torch.Tensor] = [ids, torch.ones_like(ids)]
    if config.use_stochastic_duration_prediction:
        args.append(torch.randn((batch, 2, length), generator=gen))
    args += [torch.tensor(float(config.noise_scale_duration)), torch.tensor(1.0 / float(config.speaking_rate))]
    if config.num_speakers > 1:
        args.append(torch.randint(0, config.num_speakers, (batch,), generator=gen))
    return tuple(args)


def _decoder_example(config: Any, batch: int, frames: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    c = config.flow_size
    args = [torch.randn((batch, c, frames), generator=gen) * 0.5, torch.randn((batch, c, frames), generator=gen) * 0.1,
            torch.randn((batch, c, frames), generator=gen), torch.tensor(float(config.noise_scale)),
            torch.ones((batch, 1, frames))]
    if config.num_speakers > 1:
        args.append(torch.randn((batch, config.speaker_embedding_size, 1), generator=gen))
    return tuple(args)


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, dict[int, Any]]) -> None:
    import logging

    named = len(inspect.signature(module.forward).parameters) - 1   # the parameters before *rest
    shapes: tuple = tuple(dynamic.get(name) for name in inputs[:named])
    if len(inputs) > named:   # torch.export wants *rest's shapes as one tuple, and no entry when it is empty
        shapes += (tuple(dynamic.get(name) for name in inputs[named:]),)
    quiet = logging.getLogger("torch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), export_friendly_spline(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=inputs,
                                        output_names=outputs, dynamic_shapes=shapes, verbose=False,
                                        external_data=False)
            program.save(str(path))
    except Exception as exc:   # torch.export's messages run to pages: the first line, and the fix
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if "Error" in line), lines[-1] if lines else type(exc).__name__)[:300]
        raise ConversionError(f"torch.export could not export this VITS voice's {path.stem} ({first}); edgegen "
                              "converts transformers' VitsModel as transformers 4.57 writes it") from None
    finally:
        quiet.setLevel(level)


@torch.no_grad()
def _check_graph(path: Path, module: torch.nn.Module, examples: list[tuple[torch.Tensor, ...]],
                 inputs: list[str]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for args in examples:
        ours = session.run(None, {n: t.numpy() for n, t in zip(inputs, args)})
        with export_friendly_spline():
            theirs = module(*args)
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for o, t in zip(ours, theirs):
            if o.shape != tuple(t.shape):
                raise ConversionError(f"the exported {path.stem} gives shape {list(o.shape)} where PyTorch gives "
                                      f"{list(t.shape)} at input shape {list(args[0].shape)}")
            worst = max(worst, float(np.max(np.abs(o - t.numpy()), initial=0.0)))
    if not worst <= ATOL:
        raise ConversionError(f"the exported {path.stem} differs from PyTorch by {worst:.3g} (> {ATOL:g})")
    return worst


def convert_vits(model_dir: Path, output: str | Path, *, quantize: str = "auto", overwrite: bool = False,
                 report: Callable[[str], None] = lambda _line: None, **_ignored: Any) -> Path:
    """Convert the VitsModel directory ``model_dir`` (weights, config and VitsTokenizer files) into a tts
    artifact at ``output``.  ``quantize``: ``auto`` / ``none`` keep fp32; ``fp16`` or ``int8`` (dynamic, Conv and
    MatMul weights) quantize the decoder, whose waveforms must stay within MIN_QUANTIZED_SNR_DB of the fp32
    artifact's on the same draws (recorded in validation.quantization)."""
    from edgegen.converters.versions import library_versions
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.session import SessionConfig
    from edgegen.runtimes.tts.tts import TTS

    if quantize not in ("auto", "none", *SCHEMES):
        raise InvalidArgumentError(f"a VITS voice converts as fp32 (auto, none), or with its decoder in fp16 or "
                                   f"int8; --quantize {quantize} does not apply")
    config_json = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_directory(model_dir, config_json)
    text = read_vits_tokenizer(model_dir)
    started = time.perf_counter()
    from transformers import VitsModel

    model = VitsModel.from_pretrained(model_dir, use_safetensors=True).float().eval()
    cfg = model.config
    if len(text.vocab) > cfg.vocab_size:
        raise ConversionError(f"{model_dir}: the tokenizer has {len(text.vocab)} symbols, the model's embedding "
                              f"{cfg.vocab_size}; the directory's tokenizer is not this voice's")
    hop = int(np.prod(cfg.upsample_rates))
    sampler = {"model": "vits", "sampling_rate": int(cfg.sampling_rate), "hop_length": hop,
               "flow_size": int(cfg.flow_size), "stochastic_duration": bool(cfg.use_stochastic_duration_prediction),
               "num_speakers": int(cfg.num_speakers),
               "speaker_embedding_size": int(cfg.speaker_embedding_size) if cfg.num_speakers > 1 else 0,
               "noise_scale": float(cfg.noise_scale), "noise_scale_duration": float(cfg.noise_scale_duration),
               "speaking_rate": float(cfg.speaking_rate), "vocab_size": int(cfg.vocab_size),
               "attention_heads": int(cfg.num_attention_heads),
               "context_frames": context_frames(cfg), "bytes_per_frame": bytes_per_frame(cfg), "text": text.to_json()}
    report(f"read: VITS voice, {sum(p.numel() for p in model.parameters()):,} weights, {cfg.sampling_rate} Hz, "
           f"{len(text.vocab)} symbols, {cfg.num_speakers} speaker(s) ({time.perf_counter() - started:.1f} s)")
    from edgegen.runtimes.artifact import sha256_file

    weights = model_dir / "model.safetensors"   # a single weights file (a sharded voice records none)
    source = Source(model_class="transformers.VitsModel", converter=f"torch.onnx.export (dynamo, torch "
                    f"{torch.__version__}, opset {OPSET})", opset=OPSET, libraries=library_versions(),
                    checkpoint_sha256=sha256_file(weights) if weights.is_file() else None)
    batch, tokens, frames = (torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("tokens", min=1, max=65536),
                             torch.export.Dim("frames", min=1, max=1 << 24))
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        errors = {}
        for role, module, io, example, dims in (
                ("encoder", Encoder(model), encoder_io(cfg), _example,
                 {"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens},
                  "duration_noise": {0: batch, 2: tokens}, "speaker_id": {0: batch}}),
                ("decoder", Decoder(model), decoder_io(cfg), _decoder_example,
                 {n: {0: batch, 2: frames} for n in ("prior_means", "prior_log_variances", "latent_noise",
                                                     "padding_mask")} | {"speaker_embeddings": {0: batch}})):
            started = time.perf_counter()
            path = writer.path(f"{role}.onnx")
            gen = torch.Generator().manual_seed(0)
            _export(module, example(cfg, 2, EXPORT_LENGTH, gen), path, *io, dims)
            writer.add_graph_file(role, f"{role}.onnx", precision="fp32")
            checks = [example(cfg, b, n, gen) for b, n in ((1, 1), (1, CHECK_LENGTHS[0]), (3, CHECK_LENGTHS[1]))]
            errors[role] = _check_graph(path, module, checks, io[0])
            report(f"export: graph {role} ({', '.join(io[0])} -> {', '.join(io[1])}), max abs error vs PyTorch "
                   f"{errors[role]:.1e} ({time.perf_counter() - started:.1f} s)")
        writer.write(writer.manifest(family="tts", source=source, sampler=sampler))
        voice = TTS.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
        figures = validate(voice, model)
        figures["graph_max_abs_error"] = errors
        report(f"validate: {len(figures['sentences'])} sentences through the runtime vs transformers' VitsModel on "
               f"the same draws: SNR {figures['min_snr_db']:.1f} dB at worst (gate {MIN_SNR_DB:g} dB)")
        if quantize in SCHEMES:
            figures["quantization"] = _quantize(writer, voice, quantize, report)
        writer.write(writer.manifest(family="tts", source=source, sampler=sampler, validation=figures))
        return writer.commit()


def _quantize(writer: ArtifactWriter, fp32: Any, scheme: str, report: Callable[[str], None]) -> dict[str, Any]:
    """The staged decoder in ``scheme``, measured against the fp32 voice ``fp32`` on the test sentences (the same
    seeds: the fp32 encoder gives the same durations and draws); replaces the fp32 decoder when it meets the gate."""
    from edgegen.converters.quantization.graphs import quantize_staged, remove_graph, tool
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.session import SessionConfig
    from edgegen.runtimes.tts.tts import TTS

    started = time.perf_counter()
    size = quantize_staged(writer, "decoder", scheme, SCHEMES[scheme])
    writer.write(writer.manifest(family="tts", source=fp32.artifact.manifest.source, sampler=fp32.artifact.manifest.sampler))
    quantized = TTS.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
    snrs = []
    for i, sentence in enumerate(test_sentences(fp32)):
        try:
            snrs.append(snr_db(fp32.speak(sentence, seed=i)[0], quantized.speak(sentence, seed=i)[0]))
        except InvalidArgumentError as exc:   # non-finite samples from the quantized decoder
            raise ConversionError(f"the {scheme} decoder fails on a test sentence ({exc}); convert with --quantize "
                                  "none (fp32)") from None
    worst = min(snrs)
    if not worst >= MIN_QUANTIZED_SNR_DB:
        raise ConversionError(f"the {scheme} decoder's speech is {worst:.1f} dB SNR against fp32 (gate "
                              f"{MIN_QUANTIZED_SNR_DB:g} dB); convert with --quantize none (fp32)"
                              + (" or fp16" if scheme == "int8" else ""))
    remove_graph(writer.path("decoder.onnx"))
    report(f"quantize: decoder {scheme}, SNR {worst:.1f} dB against fp32 at worst (gate {MIN_QUANTIZED_SNR_DB:g} dB), "
           f"{size / 2**20:.2f} MiB ({time.perf_counter() - started:.1f} s)")
    return {"scheme": scheme, "graphs": ["decoder"], "snr_db": snrs, "min_snr_db": worst,
            "gate": {"min_snr_db": MIN_QUANTIZED_SNR_DB}, "fp32_decoder_sha256": fp32.artifact.manifest.graphs["decoder"].sha256,
            "tool": tool(scheme)}


def test_sentences(voice: Any) -> list[str]:
    """Three sentences of 1, ~12 and ~40 characters made from the voice's own alphabet (letters first)."""
    symbols = [s for s in voice.text.vocab if len(s) == 1 and not s.isspace() and s not in (voice.text.pad_token,
                                                                                       voice.text.unk_token)]
    letters = [s for s in symbols if s.isalpha()] or symbols
    if not letters:
        raise ConversionError("the voice's tokenizer has no character it can say")
    rng = np.random.default_rng(0)
    words = lambda n: " ".join("".join(rng.choice(letters, size=int(rng.integers(2, 6)))) for _ in range(n))  # noqa
    return [letters[0], words(3)[:12].strip() or letters[0], words(10)[:40].strip() or letters[0]]


@torch.no_grad()
def validate(voice: Any, model: Any) -> dict[str, Any]:
    """Each test sentence spoken by the runtime from its own draws and by ``VitsModel.forward`` fed the same draws
    (its torch.randn / randn_like calls answered in order): SNR of transformers' waveform over the difference."""
    sentences, snrs = test_sentences(voice), []
    speaker = 0 if model.config.num_speakers > 1 else None
    for i, sentence in enumerate(sentences):
        result = voice.speak_with_draws(sentence, seed=i, speaker=speaker)
        ids = torch.tensor([voice.text.encode(sentence)])
        with _replayed([torch.from_numpy(d) for d in result.draws]):
            reference = model(ids, speaker_id=speaker).waveform[0].numpy()
        if reference.shape != result.samples.shape:
            raise ConversionError(f"the converted voice gives {result.samples.shape[0]} samples for {sentence!r} "
                                  f"where transformers gives {reference.shape[0]} (durations differ)")
        snrs.append(snr_db(reference, result.samples))
    worst = min(snrs)
    if not worst >= MIN_SNR_DB:
        raise ConversionError(f"the converted voice does not match transformers' VitsModel on the same draws: SNR "
                              f"{worst:.1f} dB (< {MIN_SNR_DB:g} dB)")
    return {"reference": "transformers VitsModel.forward, the same draws", "sentences": sentences,
            "snr_db": snrs, "min_snr_db": worst, "tolerance": {"min_snr_db": MIN_SNR_DB}}


def snr_db(reference: np.ndarray, ours: np.ndarray) -> float:
    """10 log10(|reference|^2 / |reference - ours|^2); inf when equal (capped at 200 dB for JSON)."""
    ref, err = reference.astype(np.float64), reference.astype(np.float64) - ours.astype(np.float64)
    signal, noise = float(np.sum(ref * ref)), float(np.sum(err * err))
    if noise == 0.0:
        return 200.0
    return min(200.0, 10.0 * math.log10(max(signal, 1e-300) / noise))


@contextmanager
def _replayed(draws: list[torch.Tensor]) -> Iterator[None]:
    """torch.randn / randn_like answered with ``draws`` in order (shapes checked)."""
    queue = list(draws)
    real_randn, real_like = torch.randn, torch.randn_like

    def take(shape: tuple[int, ...]) -> torch.Tensor:
        if not queue:
            raise ConversionError("transformers drew more noise than the runtime did; this VITS voice draws in an "
                                  "order edgegen does not reproduce")
        draw = queue.pop(0)
        if tuple(draw.shape) != tuple(shape):
            raise ConversionError(f"transformers drew noise of shape {list(shape)} where the runtime drew "
                                  f"{list(draw.shape)}")
        return draw

    def randn(*size: Any, **_kw: Any) -> torch.Tensor:
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return take(tuple(int(s) for s in shape))

    torch.randn = randn   # type: ignore[assignment]
    torch.randn_like = lambda x, **_kw: take(tuple(x.shape)).to(x.dtype)   # type: ignore[assignment]
    try:
        yield
    finally:
        torch.randn, torch.randn_like = real_randn, real_like
    if queue:
        raise ConversionError(f"the runtime drew {len(queue)} more noise tensor(s) than transformers")
