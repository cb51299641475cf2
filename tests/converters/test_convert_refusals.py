"""What ``edgegen convert`` can refuse from the command line and config.json alone, it refuses before torch
loads (seconds) and before the model loads (minutes), in one line that names what the directory is.

"Before torch loads" is shown without timing anything: the commands run where torch, transformers,
Optimum and diffusers cannot be imported, and must still give their own refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgegen
from edgegen.errors import UnsupportedModelError
from import_blocker import HEAVY, run_many

GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_head": 2, "n_embd": 32}

#: name -> (config.json text, extra convert options, words of the one error line)
CASES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "empty-config": ("", [], ("config.json is empty", "save_pretrained")),
    "config-not-json": ('{"model_type": ', [], ("config.json is not valid JSON (line 1, column 16",)),
    "config-a-list": ("[1, 2]", [], ("config.json holds a JSON list, not an object",)),
    "no-model-type": ('{"hidden_size": 16}', [], ("config.json has no model_type", "not a Hugging Face transformers",
                                                 "edgegen converts causal (decoder-only) LMs")),
    "t5": (json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                       "is_encoder_decoder": True}), [],
           ("holds a t5 encoder-decoder model without its weights", "model.save_pretrained")),
    "bart": ('{"model_type": "bart"}', [], ("holds a bart encoder-decoder model without its weights",)),
    "bert": (json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}), [],
             ("holds a BERT model (BertForMaskedLM), an encoder-only (masked) model", "edgegen converts causal")),
    "autoencoder-kl": ('{"_class_name": "AutoencoderKL", "latent_channels": 4}', [],
                       ("has no weights (no *.safetensors file)", "save_pretrained")),
    "vq-model": ('{"_class_name": "VQModel"}', [], ("has no weights (no *.safetensors file)",)),
    "vq-model-odd-size": ('{"_class_name": "VQModel", "sample_size": 30, "block_out_channels": [8, 16, 32]}', [],
                          ("sample_size 30 is not a multiple of the downsampling factor 4",)),
    "autoencoder-tiny": ('{"_class_name": "AutoencoderTiny"}', [],
                         ("holds a diffusers AutoencoderTiny on its own", "converts standalone AutoencoderKL")),
    "sd-unet-alone": ('{"_class_name": "UNet2DConditionModel"}', [],
                      ("holds a diffusers UNet2DConditionModel; edgegen converts diffusers UNet2DModel",)),
    "gqa-on-gpt2": (json.dumps(GPT2), ["--attention", "gqa"],
                    ("attention='gqa' supports model_type llama, mistral, qwen2, not 'gpt2'", "--attention standard")),
    "int8-static-on-lm": (json.dumps(GPT2), ["-q", "int8-static"], ("int8-static", "causal-lm artifacts take")),
    "output-exists": (json.dumps(GPT2), ["-o", "{existing}"], ("already exists; pass --overwrite",)),
    "output-under-a-file": (json.dumps(GPT2), ["-o", "{file}/out"], ("is a file, not a folder",)),
}


def test_refused_before_torch_loads_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "file").write_text("x")
    commands = []
    for name, (config, options, _) in CASES.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config, encoding="utf-8")
        options = [o.format(existing=tmp_path / "existing", file=tmp_path / "file") for o in options]
        output = [] if "-o" in options else ["-o", str(tmp_path / f"out-{name}")]
        commands.append(["convert", str(tmp_path / name), *output, *options])
    results = run_many(commands, blocked=HEAVY, cwd=tmp_path)
    for (name, (_, _, words)), result in zip(CASES.items(), results, strict=True):
        lines = result["output"].strip().splitlines()
        assert result["exit_code"] == 1 and result["exception"] is None, (name, result)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, result["output"])
        assert "[convert] extra" not in lines[0], (name, "needed torch to refuse", lines[0])
        for part in words:
            assert part in lines[0], (name, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out-", "."))) == []


def test_the_static_gqa_list_is_gqa_decoders() -> None:
    pytest.importorskip("torch")
    from edgegen.converters.lm.gqa_decoder import GQA_MODEL_TYPES
    from edgegen.converters.lm.hf_config import GQA_MODEL_TYPES as STATIC

    assert tuple(STATIC) == tuple(GQA_MODEL_TYPES)


def test_transformers_mappings_refuse_the_rarer_types_with_the_same_words(tmp_path: Path) -> None:
    """Types outside the static lists are named after transformers loads; the list of supported architectures
    no longer offers encoder-decoder or masked families (BART has a causal-LM class, but a BART is not one)."""
    pytest.importorskip("transformers")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ

    from edgegen.converters.lm.hf import read_config
    from edgegen.converters.lm.hf_config import ENCODER_DECODER_TYPES

    rare = sorted(set(SEQ2SEQ) - ENCODER_DECODER_TYPES - set(CAUSAL))[0]
    (tmp_path / "rare").mkdir()
    (tmp_path / "rare" / "config.json").write_text(json.dumps({"model_type": rare}))
    with pytest.raises(UnsupportedModelError, match=f"holds a {rare} model, an encoder-decoder model: edgegen"):
        read_config(tmp_path / "rare")
    (tmp_path / "gpt3").mkdir()
    (tmp_path / "gpt3" / "config.json").write_text('{"model_type": "gpt3"}')
    with pytest.raises(UnsupportedModelError, match="'gpt3' model, which is not a causal language model") as caught:
        read_config(tmp_path / "gpt3")
    supported = str(caught.value).rpartition("(supported: ")[2].rstrip(")").split(", ")
    assert "gpt2" in supported and "llama" in supported
    assert not {"bart", "mbart", "marian", "pegasus", "bert", "roberta"} & set(supported), supported


def write_pickled_unet(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": 8}')
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 not read: refused before loading")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDPMScheduler"}')
    (root / "model_index.json").write_text('{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}')
    return root


def test_pickled_diffusers_weights_are_refused_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    pipeline = write_pickled_unet(tmp_path / "pipe")
    unet = pipeline / "unet"
    (unet / "scheduler_config.json").write_text('{"_class_name": "DDPMScheduler"}')   # a UNet2DModel directory
    for source in (pipeline, unet):
        with pytest.raises(UnsupportedModelError, match=r"unet holds only pickled weights "
                                                        r"\(diffusion_pytorch_model.bin\); edgegen loads safetensors "
                                                        r"only: .*save_pretrained\(safe_serialization=True\)"):
            edgegen.convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
