"""A Hugging Face ``config.json`` read as plain JSON, and what its fields alone refuse.

Loading transformers takes seconds (its config mapping alone 5 s) and a model minutes, so the
dispatcher (:mod:`edgegen.converters.api`) reads the file itself first: a broken file, a config
with no ``model_type``, an encoder-decoder (T5, BART) or encoder-only (BERT) model, or
a state-space, recurrent or hybrid model (Mamba, RWKV, Jamba: a recurrent state, not a KV cache), or
``attention="gqa"`` on a model type it does not cover is refused at once.  Rarer model types are
refused after transformers loads, by :func:`edgegen.converters.lm.hf.read_config` with transformers'
own mappings and the same wording (:func:`refusal`).  No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgegen.errors import ConversionError, UnsupportedModelError


def read_config_json(model_dir: Path) -> dict[str, Any]:
    """``config.json`` as a dict, or one line saying what is wrong with it (plain json: no torch, no transformers)."""
    path = model_dir / "config.json"
    fix = "restore it, e.g. by saving the model again with save_pretrained"
    try:
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc.strerror or exc}; check that it is a readable file") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        what = ("is empty" if not text.strip()
                else f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
        raise ConversionError(f"{path} {what}; {fix}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} holds a JSON {type(config).__name__}, not an object; {fix}")
    return config


#: model types whose config.json is an encoder-decoder or an encoder-only (masked) model: refused before
#: transformers loads (5 s); rarer ones are refused by :func:`edgegen.converters.lm.hf.read_config`.
ENCODER_DECODER_TYPES = frozenset({
    "t5", "mt5", "umt5", "longt5", "t5gemma", "switch_transformers", "bart", "mbart", "plbart", "mvp", "marian",
    "pegasus", "pegasus_x", "bigbird_pegasus", "blenderbot", "blenderbot-small", "led", "m2m_100", "nllb-moe",
    "fsmt", "prophetnet", "xlm-prophetnet", "encoder-decoder", "whisper"})
ENCODER_ONLY_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "distilbert", "albert", "electra", "deberta", "deberta-v2",
    "camembert", "mpnet", "modernbert", "ernie", "roformer", "big_bird", "funnel", "megatron-bert", "mobilebert",
    "squeezebert", "convbert", "data2vec-text", "rembert", "esm", "xlm", "flaubert", "layoutlm"})
_NAMES = {"t5": "T5", "mt5": "mT5", "umt5": "UMT5", "longt5": "LongT5", "bart": "BART", "mbart": "mBART",
          "pegasus": "Pegasus", "marian": "Marian", "whisper": "Whisper", "bert": "BERT", "roberta": "RoBERTa",
          "xlm-roberta": "XLM-RoBERTa", "distilbert": "DistilBERT", "albert": "ALBERT", "electra": "ELECTRA",
          "deberta": "DeBERTa", "deberta-v2": "DeBERTa-v2", "camembert": "CamemBERT", "modernbert": "ModernBERT"}
#: causal LMs that carry a recurrent state between steps (conv and SSM states, an RNN's hidden state), wholly or
#: in some layers (hybrids), instead of a KV cache only: a causal-lm artifact has no place for that state yet.
#: The value is what the model is, for the refusal.
RECURRENT_STATE_TYPES = {
    "mamba": "a state-space model", "mamba2": "a state-space model", "falcon_mamba": "a state-space model",
    "rwkv": "a recurrent (RWKV) model", "xlstm": "a recurrent (xLSTM) model",
    "recurrent_gemma": "a recurrent (Griffin) model", "jamba": "a hybrid of attention and state-space (Mamba) layers",
    "bamba": "a hybrid of attention and state-space (Mamba2) layers",
    "zamba": "a hybrid of attention and state-space (Mamba) layers",
    "zamba2": "a hybrid of attention and state-space (Mamba2) layers",
    "falcon_h1": "a hybrid of attention and state-space (Mamba2) layers",
    "granitemoehybrid": "a hybrid of attention and state-space (Mamba2) layers",
    "nemotron_h": "a hybrid of attention and state-space (Mamba2) layers",
    "lfm2": "a hybrid of attention and short-convolution layers",
    "qwen3_next": "a hybrid of attention and linear-attention (gated DeltaNet) layers",
    "minimax": "a hybrid of attention and linear (lightning) attention layers",
}
#: the model types edgegen.converters.lm.gqa_decoder.GQA_MODEL_TYPES names (that module imports torch)
GQA_MODEL_TYPES = ("llama", "mistral", "qwen2")
_CAUSAL = "edgegen converts causal (decoder-only) LMs such as gpt2, llama or qwen2"


def model_kind(model_type: str, config: dict[str, Any]) -> str | None:
    """"encoder-decoder", "encoder-only" or None (maybe causal), from config.json's fields alone."""
    if config.get("is_encoder_decoder") or model_type in ENCODER_DECODER_TYPES:
        return "encoder-decoder"
    if model_type in ENCODER_ONLY_TYPES and not config.get("is_decoder"):
        return "encoder-only"
    if model_type in RECURRENT_STATE_TYPES:
        return "recurrent-state"
    return None


def refusal(model_dir: Path, model_type: Any, config: dict[str, Any], kind: str | None) -> str | None:
    """The one line refusing a config.json that is not a causal LM (``kind``: see :func:`model_kind`), or None."""
    architectures = config.get("architectures")
    arch = architectures[0] if isinstance(architectures, list) and architectures and isinstance(
        architectures[0], str) else None
    if not isinstance(model_type, str) or not model_type:
        named = f" (it names the architecture {arch})" if arch else ""
        return (f"{model_dir / 'config.json'} has no model_type, so it is not a Hugging Face transformers model"
                f"{named}; {_CAUSAL}, saved with save_pretrained (which writes model_type)")
    name = _NAMES.get(model_type, model_type) + " model" + (f" ({arch})" if arch else "")
    if kind == "encoder-decoder":
        return (f"{model_dir} holds a {name}, an encoder-decoder model: {_CAUSAL}; encoder-decoder models "
                "are not supported yet")
    if kind == "encoder-only":
        return (f"{model_dir} holds a {name}, an encoder-only (masked) model that does not generate text "
                f"left to right: {_CAUSAL}")
    if kind == "recurrent-state":
        return (f"{model_dir} holds a {name}, {RECURRENT_STATE_TYPES[model_type]}: it carries a recurrent state "
                "between steps, not (only) a KV cache, and edgegen's causal-lm artifacts carry a KV cache only, so "
                "it is not supported yet; the closest options are a transformer LM of a supported architecture "
                "(llama, qwen3, ...) or, for your own LSTM/GRU module, the rnn-lm spec")
    return None


def check_lm_config(model_dir: Path, config: dict[str, Any], attention: str) -> None:
    """What config.json alone shows is wrong, before torch loads."""
    model_type = config.get("model_type")
    line = refusal(model_dir, model_type, config, model_kind(str(model_type), config))
    if line:
        raise UnsupportedModelError(line)
    if attention == "gqa" and model_type not in GQA_MODEL_TYPES:
        raise UnsupportedModelError(f"attention='gqa' supports model_type {', '.join(GQA_MODEL_TYPES)}, not "
                                    f"{model_type!r}; convert it with --attention standard")
