"""Convert a Hugging Face encoder-decoder directory (T5, mT5, BART, mBART, Marian, Pegasus) to a seq2seq artifact.

Optimum's exporter writes ``encoder_model.onnx``, ``decoder_model.onnx`` and ``decoder_with_past_model.onnx``
(its input and output names are kept); the artifact carries them as the ``encoder``, ``decoder`` and
``decoder_with_past`` graphs, the model's ``tokenizer.json`` and the generation config's token ids and
beam defaults.  ``int8`` quantizes the weight MatMuls dynamically under a quality gate measured against the fp32
graphs (:mod:`edgegen.converters.seq2seq.quantize`); the figures go into ``validation.quantization``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgegen.errors import InvalidArgumentError, UnsupportedModelError

#: model_type -> what the exporter calls it; all are encoder-decoders with a shared tokenizer.
SEQ2SEQ_TYPES = ("t5", "mt5", "bart", "mbart", "marian", "pegasus")
GRAPHS = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx",
          "decoder_with_past": "decoder_with_past_model.onnx"}


def is_seq2seq_config(config: dict[str, Any]) -> bool:
    """Whether a config.json is an encoder-decoder text model this family converts."""
    return config.get("model_type") in SEQ2SEQ_TYPES


def check_options(quantize: str) -> None:
    if quantize not in ("none", "auto", "fp32", "int8"):
        raise InvalidArgumentError(f"seq2seq artifacts take --quantize none or int8 (got {quantize!r}); "
                                   "fp16 and int4 are not supported for encoder-decoders yet")


def check_directory(model_dir: Path, config: dict[str, Any]) -> None:
    """Before torch loads: the weights and a tokenizer are there (one line naming what is missing)."""
    kind = f"{model_dir} holds a {config.get('model_type')} encoder-decoder model"
    if not any(model_dir.glob("*.safetensors")) and not (model_dir / "pytorch_model.bin").is_file():
        raise UnsupportedModelError(f"{kind} without its weights (model.safetensors or pytorch_model.bin); "
                                    "save it with model.save_pretrained(dir)")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "spiece.model", "source.spm",
                                                   "sentencepiece.bpe.model", "vocab.json")):
        raise UnsupportedModelError(f"{kind} without its tokenizer (tokenizer.json); save it with "
                                    "tokenizer.save_pretrained(dir)")


def _token_ids(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sampler section and the defaults section, from generation_config.json (else config.json)."""
    from transformers import GenerationConfig

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = GenerationConfig.from_model_config(_model_config(model_dir))

    def pick(name: str) -> Any:
        value = getattr(gen, name, None)
        return config.get(name) if value is None else value

    start, pad, eos = pick("decoder_start_token_id"), pick("pad_token_id"), pick("eos_token_id")
    if start is None or eos is None:
        raise UnsupportedModelError(f"{model_dir}: the generation config names no decoder_start_token_id or "
                                    "eos_token_id; add them to generation_config.json")
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    sampler: dict[str, Any] = {"decoder_start_token_id": int(start), "eos_token_ids": eos_ids,
                               "pad_token_id": int(pad if pad is not None else eos_ids[0])}
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        if pick(name) is not None:
            sampler[name] = int(pick(name))
    positions = config.get("max_position_embeddings")
    if config.get("model_type") in ("bart", "mbart", "marian", "pegasus") and positions:
        sampler["context_length"] = int(positions)
    defaults: dict[str, Any] = {"temperature": 0.0 if not gen.do_sample else float(gen.temperature or 1.0)}
    if gen.max_new_tokens:
        defaults["max_new_tokens"] = int(gen.max_new_tokens)
    elif gen.max_length and gen.max_length > 1:
        defaults["max_new_tokens"] = int(gen.max_length) - 1
    if gen.num_beams and gen.num_beams > 1:
        defaults["num_beams"] = int(gen.num_beams)
    if gen.length_penalty not in (None, 1.0):
        defaults["length_penalty"] = float(gen.length_penalty)
    if gen.early_stopping not in (None, False):
        defaults["early_stopping"] = gen.early_stopping
    if gen.no_repeat_ngram_size:
        defaults["no_repeat_ngram_size"] = int(gen.no_repeat_ngram_size)
    return sampler, defaults


def _model_config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _tokenizer_json(model_dir: Path) -> str:
    file = model_dir / "tokenizer.json"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    try:   # a sentencepiece-only directory (Marian, older T5): the fast tokenizer converts it
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
        with tempfile.TemporaryDirectory() as tmp:
            tok.backend_tokenizer.save(str(Path(tmp) / "tokenizer.json"))
            return (Path(tmp) / "tokenizer.json").read_text(encoding="utf-8")
    except Exception as exc:
        raise UnsupportedModelError(f"{model_dir} has no tokenizer.json and its tokenizer does not convert to one "
                                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                    "save it with a fast tokenizer (tokenizer.save_pretrained)") from None


def convert_seq2seq(model_dir: Path, output: Path, *, quantize: str = "auto", overwrite: bool = False,
                    report: Callable[[str], None] = lambda _line: None, **_ignored: Any) -> Path:
    """Export ``model_dir`` with Optimum and write the artifact at ``output``."""
    check_options(quantize)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_directory(model_dir, config)
    from edgegen.converters.versions import library_versions
    from edgegen.converters.writer import ArtifactWriter
    from edgegen.manifest import Source

    sampler, defaults = _token_ids(model_dir)
    tokenizer = _tokenizer_json(model_dir)
    precision = "int8-dynamic" if quantize == "int8" else "fp32"
    with tempfile.TemporaryDirectory(prefix="edgegen-seq2seq-") as tmp, \
            ArtifactWriter(output, overwrite=overwrite) as writer:
        report(f"exporting {config.get('model_type')} encoder and decoders with Optimum")
        _export(model_dir, Path(tmp))
        import onnx

        exported = {role: Path(tmp) / file for role, file in GRAPHS.items()}
        for role, src in exported.items():
            writer.add_graph(role, onnx.load_model(str(src)), precision="fp32")
        writer.add_asset("tokenizer", "tokenizer.json", tokenizer)
        opset = max((o.version for o in onnx.load_model(str(exported["encoder"]),
                                                        load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx")), default=None)
        source = Source(model_class=str((config.get("architectures") or [config.get("model_type")])[0]),
                        converter="edgegen.converters.seq2seq (optimum)", opset=opset,
                        libraries=library_versions())
        validation: dict[str, Any] = {}
        if precision == "int8-dynamic":
            writer.write(writer.manifest(family="seq2seq", source=source, sampler=sampler, defaults=defaults))
            kept, validation["quantization"] = _quantize(writer.stage, exported, Path(tmp),
                                                         str(config.get("model_type")), report)
            for role, file in kept.items():
                writer.add_graph(role, onnx.load_model(str(file)), precision=precision)
        writer.write(writer.manifest(family="seq2seq", source=source, sampler=sampler, defaults=defaults,
                                     validation=validation))
        path = writer.commit()
    return path


def _quantize(stage: Path, exported: dict[str, Path], tmp: Path, model_type: str,
              report: Callable[[str], None]) -> tuple[dict[str, Path], dict[str, Any]]:
    """int8 graphs that meet the quality gate (:mod:`edgegen.converters.seq2seq.quantize`), measured against
    the staged fp32 artifact with the runtime; their validation.quantization figures."""
    from edgegen.converters.seq2seq.quantize import fidelity, run_gate
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.seq2seq.seq2seq import Seq2Seq
    from edgegen.runtimes.session import SessionConfig, create_session

    config = SessionConfig(provider="cpu")
    fp32 = Seq2Seq.from_artifact(open_artifact(stage), config)

    def measure(graphs: dict[str, Path]) -> dict[str, Any]:
        sessions = {role: create_session(file, config, "cpu", label=file.name, role=role)
                    for role, file in graphs.items()}
        return fidelity(fp32, fp32.with_sessions(sessions))

    kept, figures = run_gate(exported, tmp, model_type, measure, report)
    size = sum(f.stat().st_size for f in kept.values()) / sum(f.stat().st_size for f in exported.values())
    report(f"quantize int8: graphs {size:.2f}x the fp32 size")
    return kept, {**figures, "size_ratio": round(size, 4)}


def _export(model_dir: Path, out: Path) -> None:
    import contextlib
    import io
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            main_export(str(model_dir), output=str(out), task="text2text-generation-with-past",
                        no_post_process=True, do_validation=False, local_files_only=True)
        except (KeyError, ValueError, NotImplementedError) as exc:
            raise UnsupportedModelError(f"{model_dir}: Optimum's exporter refuses this model "
                                        f"({str(exc).splitlines()[0]}); edgegen converts T5, mT5, BART, mBART, "
                                        "Marian and Pegasus directories") from None
    missing = [f for f in GRAPHS.values() if not (out / f).is_file()]
    if missing:
        raise UnsupportedModelError(f"{model_dir}: Optimum's export wrote no {', '.join(missing)}")
