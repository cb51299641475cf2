"""Hugging Face causal LM directories (``config.json`` + weights + tokenizer) as LM sources.

The model is loaded once and exported from memory with Optimum's ONNX exporter (task
``text-generation-with-past``), so conversion holds the weights once in torch plus the
exporter's serialized copy.  Architectures Optimum does not cover are exported by our own
wrapper (:mod:`.hf_fallback`) with the same input/output names.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
from pathlib import Path
from typing import Any

import torch

from edgegen.converters.lm.source import LMSource
from edgegen.converters.text.chat_template import read_chat_template
from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError

#: HF model_type -> ONNX Runtime transformer-optimizer model type (fusions it knows for that graph).
OPTIMIZER_MODEL_TYPES = {
    "gpt2": "gpt2", "codegen": "gpt2", "gpt_neox": "gpt_neox", "gptj": "gpt2", "gpt_neo": "gpt2",
    "llama": "gpt2", "mistral": "gpt2", "qwen2": "gpt2", "bloom": "gpt2", "phi": "gpt2",
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
_TASK = "text-generation-with-past"


def optimum_model_types() -> set[str]:
    """HF model types Optimum's ONNX exporter handles for our task."""
    from optimum.exporters.onnx import main_export  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    return {name for name, exporters in TasksManager._SUPPORTED_MODEL_TYPE.items()
            if _TASK in exporters.get("onnx", {})}


def read_config(model_dir: Path) -> Any:
    """The transformers config of a causal LM directory, or one line saying what the directory is instead."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ)

    from edgegen.converters.lm.hf_config import model_kind, read_config_json, refusal

    raw = read_config_json(model_dir)
    model_type = raw.get("model_type")
    kind = model_kind(str(model_type), raw)   # the static lists, then transformers' own mappings
    if kind is None and model_type in SEQ2SEQ and model_type not in CAUSAL:
        kind = "encoder-decoder"
    elif kind is None and model_type in MASKED and not raw.get("is_decoder", False):
        kind = "encoder-only"
    line = refusal(model_dir, model_type, raw, kind)
    if line:
        raise UnsupportedModelError(line)
    if model_type not in CAUSAL:
        # encoder-decoder and masked families have causal-LM classes too (BartForCausalLM): not what users mean
        supported = sorted(optimum_model_types() & set(CAUSAL) - set(SEQ2SEQ) - set(MASKED))
        close = difflib.get_close_matches(str(model_type), supported, n=1, cutoff=0.0)
        raise UnsupportedModelError(
            f"{model_dir} holds a {model_type!r} model, which is not a causal language model edgegen can convert; "
            f"the closest supported architecture is {close[0] if close else 'gpt2'!r} "
            f"(supported: {', '.join(supported)})")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types for bad configs
        raise ConversionError(f"transformers cannot read {model_dir / 'config.json'}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """An error's root cause in one line (transformers' and Optimum's messages run to many)."""
    from edgegen.converters.lm.failures import cause_line

    return cause_line(exc)


def weights_sha256(model_dir: Path) -> str | None:
    """One sha256 over the weight files (sorted by name), or None if there are none."""
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tokenizer_json(model_dir: Path) -> str:
    """The model's tokenizer as a ``tokenizers`` JSON string (converting a slow one if needed)."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
        backend = getattr(tok, "backend_tokenizer", None)
    except Exception as exc:  # noqa: BLE001  (any failure means: no usable tokenizer)
        backend, reason = None, str(exc)
    else:
        reason = "it has no fast (tokenizers) backend"
    if backend is None:
        raise ConversionError(
            f"{model_dir} has no usable tokenizer ({reason}); save one next to the model with "
            "tokenizer.save_pretrained(model_dir) so that tokenizer.json travels with the artifact")
    return str(backend.to_str())


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def sampler_section(config: Any, generation: Any) -> dict[str, Any]:
    context = next((getattr(config, key) for key in _CONTEXT_KEYS if isinstance(getattr(config, key, None), int)), None)
    if config.model_type == "bloom":  # ALiBi: no learned limit in the weights
        context = None
    eos = _ids(getattr(generation, "eos_token_id", None)) or _ids(config.eos_token_id)
    pad = getattr(generation, "pad_token_id", None)
    pad = config.pad_token_id if pad is None else pad
    bos = getattr(generation, "bos_token_id", None)
    bos = config.bos_token_id if bos is None else bos
    return {"context_length": context, "eos_token_ids": eos,
            "bos_token_id": None if bos is None else int(bos),
            "pad_token_id": int(pad) if pad is not None else (eos[0] if eos else None), "cache": "kv"}


def defaults_section(generation: Any) -> dict[str, Any]:
    """The model author's generation_config as edgegen defaults (greedy unless do_sample)."""
    if generation is None or not getattr(generation, "do_sample", False):
        return {"temperature": 0.0}
    out: dict[str, Any] = {"temperature": float(generation.temperature or 1.0)}
    if generation.top_k:
        out["top_k"] = int(generation.top_k)
    if generation.top_p is not None and generation.top_p < 1.0:
        out["top_p"] = float(generation.top_p)
    if generation.repetition_penalty and generation.repetition_penalty != 1.0:
        out["repetition_penalty"] = float(generation.repetition_penalty)
    return out


#: ``attention=``: "standard" (Optimum's export, or our fallback) or "gqa" (:mod:`.gqa_decoder`, Llama family).
ATTENTION = ("standard", "gqa")


class HFLMSource(LMSource):
    def __init__(self, model_dir: Path, attention: str = "standard") -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        if attention not in ATTENTION:
            raise InvalidArgumentError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        config = read_config(model_dir)
        if attention == "gqa":
            from edgegen.converters.lm.gqa_decoder import check_gqa_config

            check_gqa_config(config)   # before the model loads
        self.model_dir, self.model_type, self.attention = model_dir, config.model_type, attention
        tokenizer = tokenizer_json(model_dir)
        try:
            generation = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation = None
        sampler = sampler_section(config, generation)
        chat_template = read_chat_template(model_dir, tokenizer, sampler["eos_token_ids"])  # before the weights load
        from edgegen.converters.lm.memory import check_memory

        memory = check_memory(model_dir)   # refuses, naming the figures, when the model clearly cannot fit
        try:  # .bin checkpoints are read by transformers with torch.load(weights_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(f"transformers cannot load the model in {model_dir}: {_first_line(exc)}") from exc
        model.eval()
        self._model: Any = model
        self.use_optimum = attention == "standard" and config.model_type in optimum_model_types()
        # a gqa graph has nothing left for the transformer optimizer to fuse
        opt_type = OPTIMIZER_MODEL_TYPES.get(config.model_type) if attention == "standard" else None
        if attention == "gqa":  # GroupQueryAttention reads row lengths from the mask: no left padding
            sampler["padding"], sampler["kv_buffer"] = "none", "shared"   # and it writes its present in place
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        super().__init__(
            tokenizer_json=tokenizer, sampler=sampler,
            defaults=defaults_section(generation), model_class=f"transformers.{type(model).__name__}",
            checkpoint_sha256=weights_sha256(model_dir), optimizer_model_type=opt_type,
            num_heads=int(heads), hidden_size=int(hidden),
            converter="edgegen gqa_decoder (GroupQueryAttention)" if attention == "gqa"
            else "optimum.exporters.onnx (text-generation-with-past)" if self.use_optimum
            else "edgegen hf_fallback (torch.onnx.export)", opset=None, chat_template=chat_template,
            memory_estimate=memory)

    @torch.no_grad()
    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(input_ids)
        return self._model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()

    @torch.no_grad()
    def greedy(self, input_ids: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
        """Greedy tokens through transformers' own KV cache (fast on large models)."""
        tokens, margins = [], []
        out = self._model(input_ids=input_ids, use_cache=True)
        for _ in range(n):
            last = out.logits[0, -1].float()                                  # [V]
            top2 = torch.topk(last, 2).values
            tokens.append(int(torch.argmax(last)))
            margins.append(float(top2[0] - top2[1]))
            out = self._model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                              use_cache=True)
        return tokens, margins

    def export(self, directory: Path) -> Path:
        if self.attention == "gqa":
            from edgegen.converters.lm.gqa_decoder import export_gqa_decoder

            path = export_gqa_decoder(self._model, directory, progress=self.progress)
        elif self.use_optimum:
            from optimum.exporters.onnx import onnx_export_from_model

            try:
                # no_post_process: for one model.onnx Optimum's post-processing only deduplicates tied weights,
                # and only where accelerate is installed (PEFT, for --lora, brings it): the LM head then reads a
                # Transpose of the embedding instead of its own initializer, which the quantizers and their gates
                # look for; edgegen's graphs are the same with or without accelerate
                onnx_export_from_model(self._model, directory, task=_TASK, do_validation=False, no_post_process=True)
            except Exception as exc:  # noqa: BLE001
                raise ConversionError(f"Optimum's ONNX export of {self.model_type} failed: {_first_line(exc)}") from exc
            path = directory / "model.onnx"
        else:
            from edgegen.converters.lm.hf_fallback import export_hf_with_cache

            path = export_hf_with_cache(self._model, directory)
        if not path.is_file():
            raise ConversionError(f"the export wrote no {path.name} into {directory} "
                                  f"(found: {sorted(p.name for p in directory.iterdir())})")
        import onnx

        self.opset = max(op.version for op in onnx.load_model(str(path), load_external_data=False).opset_import
                         if op.domain in ("", "ai.onnx"))
        return path

    def release(self) -> None:
        self._model = None
        gc.collect()
