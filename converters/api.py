"""``edgegen.convert``: find out what a source is, and hand it to its family's converter.

A source is one of:

- a Hugging Face ``transformers`` directory (``config.json`` + weights + tokenizer);
- a spec object such as :class:`~edgegen.CausalLMSpec`;
- ``"path/to/file.py:function"``: a Python file the user names, whose function returns a
  spec (the only way the CLI runs user code, and only code the user pointed at).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgegen.converters.diffusion.spec import DiffusionSpec
from edgegen.converters.flow.spec import FlowSpec
from edgegen.converters.image.spec import GANSpec, VAESpec, VQVAESpec
from edgegen.converters.lm.spec import CausalLMSpec
from edgegen.converters.quantization.defaults import check_target
from edgegen.converters.rnn.spec import RNNLMSpec
from edgegen.converters.tabular.spec import TabularSpec
from edgegen.errors import EdgegenError, InvalidArgumentError, UnsupportedModelError


def _no_gate(options: dict[str, Any], family: str) -> dict[str, Any]:
    """``min_psnr`` is the quality gate of image-model quantization; other families measure their own figures."""
    if options.pop("min_psnr", None) is not None:
        raise InvalidArgumentError(f"min_psnr (the quality gate of image-model quantization) does not apply to "
                                   f"{family} models; drop it")
    return options


def _no_lm_gate(options: dict[str, Any], family: str) -> dict[str, Any]:
    """``max_ppl_increase`` and ``lm_head`` shape causal-LM quantization; other families refuse them."""
    for name, default in (("max_ppl_increase", None), ("lm_head", "auto")):
        if options.pop(name, default) != default:
            raise InvalidArgumentError(f"{name} (of causal-LM quantization) does not apply to {family} models; "
                                       "drop it" + (" (image models take min_psnr)" if family not in
                                                    ("rnn-lm", "flow") else ""))
    return options


def _fp32_only(options: dict[str, Any], family: str, why: str) -> None:
    """Families without quantization: ``auto`` means fp32, an explicit scheme is refused."""
    quantize = options.pop("quantize", "none")
    options.pop("target", None)
    if quantize not in ("none", "auto"):
        raise InvalidArgumentError(f"{family} artifacts are fp32: {why}; use --quantize none (or auto)")


def _lm_options(options: dict[str, Any]) -> dict[str, Any]:
    from edgegen.converters.lm.quant_gate import check_options

    if options.get("quantize") == "int8-static":
        raise InvalidArgumentError("int8-static (QDQ with calibration) is for conv nets (diffusion, gan, vae, "
                                   "vq-vae); causal-lm artifacts take --quantize fp16, int8 or int4")
    check_options(options.get("quantize", "none"), options.get("lm_head", "auto"), options.get("max_ppl_increase"))
    return _no_gate(options, "causal-lm")


def _convert_causal_lm_spec(spec: CausalLMSpec, output: Path, **options: Any) -> Path:
    from edgegen.converters.lm.custom import CustomLMSource
    from edgegen.converters.lm.convert import convert_lm

    options = _lm_options(options)   # before the model loads
    return convert_lm(CustomLMSource(spec), output, **options)


def _no_attention(options: dict[str, Any], what: str) -> dict[str, Any]:
    """``attention`` picks the decoder graph of Hugging Face LMs; other sources refuse a non-default one."""
    if options.pop("attention", "auto") == "gqa":
        raise InvalidArgumentError(f"attention='gqa' applies to Hugging Face llama, mistral and qwen2 models, not "
                                   f"{what}; drop --attention")
    return options


def _convert_hf_transformers(model_dir: Path, output: Path, **options: Any) -> Path:
    attention = options.pop("attention", "auto")
    options = _lm_options(options)   # before torch and transformers load (seconds) and the model (minutes)
    from edgegen.converters.lm.hf import HFLMSource
    from edgegen.converters.lm.convert import convert_lm

    if attention == "auto":
        attention = _auto_attention(model_dir, options.get("target", "cpu"), options["report"])
    return convert_lm(HFLMSource(model_dir, attention=attention), output, **options)


def _auto_attention(model_dir: Path, target: str, report: Callable[[str], None]) -> str:
    """gqa where its graph reproduces the model and runs on the target (CPU: measured 1.5x int4 decode on a
    100M Llama, benchmarks/lm_genai.py), else standard."""
    from edgegen.converters.lm.gqa_decoder import check_gqa_config
    from edgegen.converters.lm.hf import read_config

    config = read_config(model_dir)
    if target != "cpu":   # ORT's CUDA GroupQueryAttention is fp16/bf16 only; DirectML's is unmeasured
        return "standard"
    try:
        check_gqa_config(config)
    except UnsupportedModelError:
        return "standard"
    report(f"attention auto: gqa ({config.model_type}: GroupQueryAttention layers)")
    return "gqa"


def _convert_rnn_lm_spec(spec: RNNLMSpec, output: Path, **options: Any) -> Path:
    from edgegen.converters.rnn.convert import convert_rnn_lm

    _fp32_only(options, "rnn-lm", "recurrent step graphs are not quantized yet")
    options.pop("optimize", None)  # no transformer-optimizer fusions apply to a recurrent step graph
    return convert_rnn_lm(spec, output, **_no_gate(_no_lm_gate(options, "rnn-lm"), "rnn-lm"))


def _diffusion_options(options: dict[str, Any]) -> dict[str, Any]:
    from edgegen.converters.quantization.psnr_gate import check_scheme

    if options.get("quantize", "none") not in ("none", "auto"):
        check_scheme(options["quantize"], "diffusion")   # before any export
    return _no_lm_gate(options, "diffusion")


def _no_scheduler(options: dict[str, Any], what: str) -> dict[str, Any]:
    """``scheduler`` picks a diffusion artifact's default scheduler; other sources refuse it."""
    if options.pop("scheduler", None) is not None:
        raise InvalidArgumentError(f"scheduler applies to diffusion models, not {what}; drop --scheduler")
    return options


def _convert_diffusion_spec(spec: DiffusionSpec, output: Path, **options: Any) -> Path:
    from edgegen.converters.diffusion.convert import convert_diffusion, from_spec

    return convert_diffusion(from_spec(spec), output, **_diffusion_options(options))


def _convert_diffusers(model_dir: Path, output: Path, **options: Any) -> Path:
    options = _diffusion_options(options)   # before the pipeline loads
    from edgegen.converters.diffusion.convert import convert_diffusion, from_directory

    return convert_diffusion(from_directory(model_dir, loras=options.pop("lora", ())), output, **options)


def _refuse_diffusers_component(model_dir: Path, name: str) -> None:
    if name in ("AsymmetricAutoencoderKL", "AutoencoderTiny"):
        raise UnsupportedModelError(f"{model_dir} holds a diffusers {name} on its own; edgegen converts standalone "
                                    "AutoencoderKL (to a vae artifact) and VQModel (vq-vae) directories")
    raise UnsupportedModelError(f"{model_dir} holds a diffusers {name}; edgegen converts diffusers UNet2DModel "
                                "directories (with scheduler_config.json) and DDPM, DDIM and Stable Diffusion "
                                "pipeline directories (model_index.json)")


def _convert_config_dir(model_dir: Path, output: Path, **options: Any) -> Path:
    """config.json: a diffusers UNet2DModel (its ``_class_name`` says so) or a transformers model; what its
    fields refuse is refused before torch loads."""
    from edgegen.converters.lm.hf_config import check_lm_config, read_config_json

    config = read_config_json(model_dir)
    vocoder = options.pop("vocoder", None)   # SpeechT5 text-to-speech only
    if vocoder is not None and config.get("model_type") != "speecht5":
        raise InvalidArgumentError("--vocoder applies to SpeechT5 text-to-speech models; drop it")
    diffusers_class = config.get("_class_name")
    if diffusers_class == "UNet2DModel":
        return _convert_diffusers(model_dir, output, **_no_attention(options, "a diffusers UNet"))
    if diffusers_class in ("AutoencoderKL", "VQModel") and "model_type" not in config:   # vae / vq-vae artifacts
        from edgegen.converters.image.diffusers_autoencoder import spec_from_directory

        what = f"a diffusers {diffusers_class}"
        options = _no_scheduler(_no_attention(options, what), what)
        return _convert_image_spec(spec_from_directory(model_dir, config), output, **options)
    if diffusers_class is not None and "model_type" not in config:
        _refuse_diffusers_component(model_dir, str(diffusers_class))
    from edgegen.converters.tts import is_tts_config

    if config.get("model_type") == "hifigan":
        raise UnsupportedModelError(f"{model_dir} holds a SpeechT5HifiGan vocoder on its own; convert the SpeechT5 "
                                    f"model and pass this directory as its vocoder: --vocoder {model_dir}")
    if is_tts_config(config):   # VitsModel (MMS-TTS), SpeechT5ForTextToSpeech: the tts family
        from edgegen.converters.tts import converter_for

        what = "a text-to-speech model"
        _no_gate(_no_lm_gate(_no_scheduler(_no_attention(options, what), what), "tts"), "tts")
        return converter_for(config)(model_dir, output, vocoder=vocoder, **options)
    from edgegen.converters.music import is_music_config

    if is_music_config(config):   # MusicgenForConditionalGeneration: the music family
        from edgegen.converters.music.musicgen import convert_musicgen

        what = "a MusicGen model"
        _no_gate(_no_lm_gate(_no_scheduler(_no_attention(options, what), what), "music"), "music")
        return convert_musicgen(model_dir, output, **options)
    from edgegen.converters.seq2seq.convert import is_seq2seq_config

    if is_seq2seq_config(config):   # T5, BART, Marian...: the seq2seq family
        from edgegen.converters.seq2seq.convert import convert_seq2seq

        what = "an encoder-decoder model"
        _no_gate(_no_lm_gate(_no_scheduler(_no_attention(options, what), what), "seq2seq"), "seq2seq")
        return convert_seq2seq(model_dir, output, **options)
    check_lm_config(model_dir, config, options.get("attention", "auto"))
    return _convert_hf_transformers(model_dir, output, **_no_scheduler(options, "a language model"))


def _convert_flow_spec(spec: FlowSpec, output: Path, *, quantize: str = "none", **options: Any) -> Path:
    from edgegen.converters.flow.convert import convert_flow
    from edgegen.converters.quantization.psnr_gate import check_scheme

    if quantize not in ("none", "auto"):
        check_scheme(quantize, "flow")   # refuses, with the reason
    options.pop("optimize", None)
    options.pop("target", None)
    return convert_flow(spec, output, **_no_gate(_no_lm_gate(options, "flow"), "flow"))


def _convert_image_spec(spec: GANSpec | VAESpec | VQVAESpec, output: Path, *, quantize: str = "none",
                        target: str = "cpu", **options: Any) -> Path:
    from edgegen.converters.image.convert import convert_image
    from edgegen.converters.quantization.psnr_gate import check_scheme
    import torch

    from edgegen.converters.quantization.defaults import report_lines, resolve

    family = {GANSpec: "gan", VAESpec: "vae", VQVAESpec: "vq-vae"}[type(spec)]
    _no_lm_gate(options, family)
    default = None
    if quantize == "auto":   # resolved before export, so a refusal costs nothing
        weights = {id(p): p.numel() for m in vars(spec).values() if isinstance(m, torch.nn.Module)
                   for p in m.parameters()}
        quantize, why = resolve(family, target, sum(weights.values()))
        default = {"target": target, "scheme": quantize, "reason": why}
        for line in report_lines(quantize, why):
            options["report"](line)
    if quantize != "none":
        check_scheme(quantize, family)  # before export
    options.pop("optimize", None)
    return convert_image(spec, output, quantize=quantize, quantization_default=default, **options)


def _convert_tabular_spec(spec: TabularSpec, output: Path, **options: Any) -> Path:
    from edgegen.converters.tabular.convert import convert_tabular

    for key in ("optimize", "target"):
        options.pop(key, None)
    return convert_tabular(spec, output, **_no_gate(_no_lm_gate(options, "tabular"), "tabular"))


#: spec type -> converter
SPEC_CONVERTERS: dict[type, Callable[..., Path]] = {CausalLMSpec: _convert_causal_lm_spec,
                                                    RNNLMSpec: _convert_rnn_lm_spec,
                                                    DiffusionSpec: _convert_diffusion_spec,
                                                    FlowSpec: _convert_flow_spec,
                                                    GANSpec: _convert_image_spec, VAESpec: _convert_image_spec,
                                                    VQVAESpec: _convert_image_spec,
                                                    TabularSpec: _convert_tabular_spec}
#: marker file of a directory -> converter (first match wins)
DIRECTORY_CONVERTERS: dict[str, Callable[..., Path]] = {"model_index.json": _convert_diffusers,
                                                        "config.json": _convert_config_dir}


QUANTIZE = ("auto", "none", "fp16", "int8", "int4", "int8-static")


def convert(source: Any, output: str | os.PathLike[str], *, overwrite: bool = False, optimize: bool = True,
            quantize: str = "auto", target: str = "cpu", min_psnr: float | None = None,
            max_ppl_increase: float | None = None, lm_head: str = "auto",
            report: Callable[[str], None] | None = None, attention: str = "auto",
            scheduler: str | None = None, vocoder: str | os.PathLike[str] | None = None,
            lora: Any = None) -> Path:
    """Convert ``source`` into an artifact directory at ``output``; returns its path.

    ``overwrite`` replaces an existing artifact (atomically); ``optimize`` tries ONNX
    Runtime's transformer optimizer (kept only when validated and not slower);
    ``quantize`` is ``auto`` (the family's measured default for ``target``: ``cpu``, ``cuda`` or
    ``dml``; see :mod:`edgegen.converters.quantization.defaults`), ``none``, ``fp16``, ``int8`` (dynamic, MatMul weights), ``int4``
    (weight-only MatMulNBits, LMs) or ``int8-static`` (QDQ calibrated on the model's own
    sampling loop, image models); the quantized graph's cost against fp32 is measured and
    recorded.  ``min_psnr`` (image models) is the quality gate: dB of the quantized samples
    against fp32 (default 30), met by keeping sensitive nodes in float, else an error.
    ``max_ppl_increase`` (causal LMs) is theirs: the largest perplexity increase over fp32 allowed, in
    percent (defaults: int8 2, int4 5, fp16 1), met the same way; under ``quantize="auto"`` a missed gate
    keeps fp32.  ``lm_head`` (int8: ``float`` or ``int8``; int4: also ``int4``; ``auto``: int8) stores the LM head.
    ``report`` receives progress lines (default: silent).  ``attention="gqa"`` (Hugging Face llama,
    mistral, qwen2) writes the decoder with ONNX Runtime's GroupQueryAttention (:mod:`edgegen.converters.lm.gqa_decoder`);
    ``auto`` (the default) does so where the model allows it and ``target`` is ``cpu``.  ``vocoder`` (SpeechT5
    text-to-speech): its SpeechT5HifiGan directory (default: ``source/vocoder``).  ``lora`` (Stable Diffusion and
    SDXL pipeline directories): a diffusers / PEFT LoRA file, ``"FILE:SCALE"``, a ``(file, scale)`` pair or a list
    of those, fused into the weights before export (diffusers' own ``load_lora_weights`` and ``fuse_lora``).
    """
    if quantize not in QUANTIZE:
        raise InvalidArgumentError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    check_target(target)
    if attention not in ("auto", "standard", "gqa"):
        raise InvalidArgumentError(f"attention must be auto, standard or gqa, got {attention!r}")
    options = {"overwrite": overwrite, "optimize": optimize, "quantize": quantize, "target": target,
               "report": report or (lambda _line: None), "attention": attention}
    if vocoder is not None:   # SpeechT5: its SpeechT5HifiGan directory
        if not (isinstance(source, (str, os.PathLike)) and (Path(source) / "config.json").is_file()):
            raise InvalidArgumentError("--vocoder applies to SpeechT5 text-to-speech model directories; drop it")
        options["vocoder"] = vocoder
    if lora not in (None, [], ()):   # diffusion pipelines: LoRAs fused before export
        from edgegen.converters.diffusion.lora import parse_loras

        loras = parse_loras(lora)
        if not (isinstance(source, (str, os.PathLike)) and (Path(source) / "model_index.json").is_file()):
            raise InvalidArgumentError("--lora applies to Stable Diffusion and SDXL pipeline directories "
                                       "(model_index.json); drop it")
        options["lora"] = loras
    if scheduler is not None:   # diffusion: the default scheduler instead of the source's own (recorded as the user's)
        options["scheduler"] = scheduler
    if min_psnr is not None:
        options["min_psnr"] = min_psnr
    if max_ppl_increase is not None:
        options["max_ppl_increase"] = max_ppl_increase
    if lm_head != "auto":
        options["lm_head"] = lm_head
    from edgegen.converters.writer import check_destination

    check_destination(output, overwrite=overwrite)   # now, not after minutes of loading and exporting
    if isinstance(source, str) and ":" in source and source.rsplit(":", 1)[0].endswith(".py"):
        source = load_spec(source)
    for spec_type, converter in SPEC_CONVERTERS.items():
        if isinstance(source, spec_type):
            if spec_type is not DiffusionSpec:
                _no_scheduler(options, f"a {spec_type.__name__}")
            return converter(source, Path(output), **_no_attention(options, f"a {spec_type.__name__}"))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InvalidArgumentError(f"{path} does not exist; give a model directory or file.py:function")
        from edgegen.converters.weights import PICKLED_SUFFIXES

        if path.is_file() and path.suffix.lower() in PICKLED_SUFFIXES:
            raise UnsupportedModelError(
                f"{path} is a pickle (ctgan's save, torch.save, joblib): loading one runs whatever code it holds, so "
                "edgegen does not open it; for a model you trust, load it yourself in Python and convert "
                "TabularSpec(model=...) (ctgan) or a spec, or save it as safetensors (for ctgan: "
                "edgegen.converters.tabular.save_checkpoint) and convert that")
        if path.is_file() and path.suffix.lower() == ".safetensors" and path.name == "model.safetensors":
            path = path.parent
        if path.is_dir() and (path / "model.safetensors").is_file() and not (path / "config.json").exists() \
                and not (path / "model_index.json").exists():
            from edgegen.converters.tabular.checkpoint import is_checkpoint

            if is_checkpoint(path / "model.safetensors"):
                return _convert_tabular_spec(TabularSpec.from_checkpoint(path), Path(output),
                                             **_no_scheduler(_no_attention(options, "a tabular checkpoint"),
                                                             "a tabular checkpoint"))
        if path.is_dir():
            for marker, converter in DIRECTORY_CONVERTERS.items():
                if (path / marker).is_file():
                    if marker != "config.json":
                        _no_attention(options, "a diffusers pipeline")
                    return converter(path, Path(output), **options)
        raise UnsupportedModelError(
            f"{path} is not a model edgegen knows: expected a Hugging Face directory with config.json or a "
            "diffusers pipeline with model_index.json, "
            "or file.py:function returning an edgegen spec such as CausalLMSpec")
    raise InvalidArgumentError(f"cannot convert a {type(source).__name__}; give a model directory, "
                               "a spec (e.g. CausalLMSpec) or 'file.py:function'")


@contextlib.contextmanager
def _user_code(what: str) -> Iterator[None]:
    """A failure of the user's own code (their file.py:function) as one line that says it is theirs; the
    exception stays chained (``EDGEGEN_DEBUG=1`` shows its traceback in the CLI).  edgegen's errors pass."""
    try:
        yield
    except EdgegenError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise InvalidArgumentError(f"{what} raised {type(exc).__name__}: {lines[0][:300] if lines else '(no message)'}; "
                                   "fix that code (set EDGEGEN_DEBUG=1 to see its traceback)") from exc


def load_spec(target: str) -> Any:
    """Call ``function`` of ``file.py`` (``"file.py:function"``) and return the spec it builds."""
    file, _, name = target.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise InvalidArgumentError(f"{file} does not exist; expected file.py:function")
    module_name = f"edgegen_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"{file} is not a Python file Python can import; expected file.py:function")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module   # registered before it runs: dataclasses look their module up
    with _user_code(f"importing {file}"):
        spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        public = sorted(n for n, v in vars(module).items()
                        if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_"))
        raise InvalidArgumentError(f"{file} has no function {name!r} (it has: {', '.join(public) or 'none'})")
    with _user_code(f"{target}()"):
        result = function()
    if not any(isinstance(result, t) for t in SPEC_CONVERTERS):
        raise InvalidArgumentError(f"{target} returned a {type(result).__name__}; it must return an edgegen spec "
                                   "such as edgegen.CausalLMSpec")
    return result


def check_source(source: Any) -> list[str]:
    """``edgegen convert SOURCE --check``: SOURCE is an image spec or "file.py:function" returning one;
    what would block converting it, without exporting."""
    from edgegen.converters.image.convert import check_spec

    if isinstance(source, str) and source.rpartition(":")[0].endswith(".py"):
        source = load_spec(source)
    if type(source) not in (GANSpec, VAESpec, VQVAESpec):
        raise InvalidArgumentError("--check covers gan, vae and vq-vae specs for now: give file.py:function returning "
                                   f"a GANSpec, VAESpec or VQVAESpec (got {type(source).__name__})")
    return check_spec(source)
