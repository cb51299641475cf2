"""The converter carries a source model's chat template into chat_template.json: read from every file format
transformers' ``save_pretrained`` writes (and a processor's legacy chat_template.json), checked, with its special
tokens and end-of-turn ids; the artifact's template then renders what the source tokenizer renders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from chat_template_support import (FAMILIES, LLAMA3, QWEN25, SMOLLM2, WEATHER_TOOL, chat_tokenizer, conversations,
                                   system_conversation, tool_conversation)
from edgegen.errors import ConversionError, InvalidArgumentError
from edgegen.manifest import FileRef
from edgegen.runtimes.text.chat_template import ChatTemplate

transformers = pytest.importorskip("transformers")

from edgegen.converters.text.chat_template import (asset_json, read_chat_template,  # noqa: E402
                                                   spec_chat_template, summary)

SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "unk_token": "<|endoftext|>"}


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def as_template(tmp_path: Path, doc: dict) -> ChatTemplate:
    """The document as the runtime reads it from an artifact (written as the converter writes it)."""
    (tmp_path / "chat_template.json").write_text(asset_json(doc), encoding="utf-8")
    ref = FileRef(file="chat_template.json", sha256="0" * 64)
    artifact = SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(assets={"chat_template": ref}),
                               path=lambda file: tmp_path / file)
    template = ChatTemplate.from_artifact(artifact)
    assert template is not None
    return template


def save(tok, directory: Path, template, jinja_files: bool, **special: str) -> Path:
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **(special or SPECIAL))
    hf.save_pretrained(directory, save_jinja_files=jinja_files)
    return directory


def same_as_transformers(template: ChatTemplate, hf, tok) -> None:
    """Text and ids equal the reloaded transformers tokenizer's, with and without tools and generation prompt."""
    for msgs, kwargs in ((system_conversation(), {}), (conversations()["multi turn"], {}),
                         (tool_conversation(), {"tools": [WEATHER_TOOL]})):
        for prompt in (True, False):
            text = template.render(msgs, add_generation_prompt=prompt, **kwargs)
            assert text == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt, **kwargs)
            assert template.encode(tok, text) == hf.apply_chat_template(msgs, add_generation_prompt=prompt, **kwargs)


@pytest.mark.parametrize("jinja_files, source", [(True, "chat_template.jinja"), (False, "tokenizer_config.json")])
def test_a_single_template_in_either_save_format(tok, tmp_path: Path, jinja_files: bool, source: str) -> None:
    hf_dir = save(tok, tmp_path / "hf", QWEN25, jinja_files)
    assert (hf_dir / "chat_template.jinja").is_file() == jinja_files
    doc = read_chat_template(hf_dir, tok.to_str(), [0])
    assert doc["format"] == 1 and doc["templates"] == {"default": QWEN25} and doc["source"] == source
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert doc["special_tokens"] == {k: v for k, v in hf.special_tokens_map.items() if isinstance(v, str)}
    # the eos ids given, then the eos token's, then <|im_end|> (the template's marker) once
    assert doc["end_of_turn_token_ids"] == [0, tok.token_to_id("<|im_end|>")]
    same_as_transformers(as_template(tmp_path, doc), hf, tok)


@pytest.mark.parametrize("jinja_files, source", [(True, "chat_template.jinja"), (False, "tokenizer_config.json")])
def test_named_templates_in_either_save_format(tok, tmp_path: Path, jinja_files: bool, source: str) -> None:
    templates = {"default": SMOLLM2, "tool_use": QWEN25}
    hf_dir = save(tok, tmp_path / "hf", templates, jinja_files)
    assert (hf_dir / "additional_chat_templates" / "tool_use.jinja").is_file() == jinja_files
    doc = read_chat_template(hf_dir, tok.to_str(), [])
    assert doc["templates"] == templates and doc["source"] == source
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    template = as_template(tmp_path, doc)
    same_as_transformers(template, hf, tok)            # the tools case renders with tool_use, as transformers does
    assert "# Tools" in template.render(tool_conversation(), tools=[WEATHER_TOOL])
    assert summary(doc, tok.to_str()) == ("chat template: default (+tool_use) from " + source +
                                          ", end of turn: <|im_end|>")


def test_a_processors_legacy_chat_template_json(tok, tmp_path: Path) -> None:
    hf_dir = save(tok, tmp_path / "hf", None, True)
    assert read_chat_template(hf_dir, tok.to_str(), [0]) is None          # no template anywhere: none carried
    (hf_dir / "chat_template.json").write_text(json.dumps({"chat_template": LLAMA3}), encoding="utf-8")
    doc = read_chat_template(hf_dir, tok.to_str(), [])
    assert doc["templates"] == {"default": LLAMA3} and doc["source"] == "chat_template.json"
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=LLAMA3, **SPECIAL)
    same_as_transformers(as_template(tmp_path, doc), hf, tok)


def test_the_jinja_files_win_over_tokenizer_config(tok, tmp_path: Path) -> None:
    """As transformers reads them: a chat_template.jinja replaces tokenizer_config.json's template."""
    hf_dir = save(tok, tmp_path / "hf", SMOLLM2, False)
    (hf_dir / "chat_template.jinja").write_text(QWEN25, encoding="utf-8")
    assert transformers.AutoTokenizer.from_pretrained(hf_dir).chat_template == QWEN25
    assert read_chat_template(hf_dir, tok.to_str(), [])["templates"] == {"default": QWEN25}


def test_end_of_turn_ids_are_the_markers_the_template_writes(tok, tmp_path: Path) -> None:
    """The eos ids given, the eos token's, then the special tokens that are end-of-turn markers and that the
    template writes: Llama 3's <|eot_id|>, not its <|eom_id|> until the template writes it too; a marker that
    is a plain (not special) token of the tokenizer is none."""
    from tokenizers import AddedToken

    from tests_support import train_tiny_tokenizer

    hf_dir = save(tok, tmp_path / "hf", LLAMA3, True, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    end_of_text = tok.token_to_id("<|endoftext|>")
    eot, eom = tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|eom_id|>")
    assert read_chat_template(hf_dir, tok.to_str(), [end_of_text])["end_of_turn_token_ids"] == [end_of_text, eot]
    (hf_dir / "chat_template.jinja").write_text(LLAMA3 + "{{ '<|eom_id|>' if tools }}", encoding="utf-8")
    assert read_chat_template(hf_dir, tok.to_str(), [])["end_of_turn_token_ids"] == [eot, eom]
    bare = train_tiny_tokenizer()
    bare.add_tokens([AddedToken("<|eot_id|>", special=False)])
    (hf_dir / "chat_template.jinja").write_text("{{ '<|eot_id|>' }}", encoding="utf-8")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}), encoding="utf-8")
    assert read_chat_template(hf_dir, bare.to_str(), [])["end_of_turn_token_ids"] == [0]   # the eos token's only


def test_a_template_that_does_not_compile_is_a_conversion_error(tok, tmp_path: Path) -> None:
    hf_dir = save(tok, tmp_path / "hf", {"default": SMOLLM2, "rag": "{% for d in documents %}\n{{ d.text }"}, True)
    with pytest.raises(ConversionError, match=r"hf/additional_chat_templates/rag.jinja: ") as exc:
        read_chat_template(hf_dir, tok.to_str(), [])
    text = str(exc.value)
    assert "template 'rag' does not compile (jinja: " in text and "at line 2)" in text and "\n" not in text
    (hf_dir / "tokenizer_config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ConversionError, match="tokenizer_config.json is not valid JSON"):
        read_chat_template(hf_dir, tok.to_str(), [])


def test_a_specs_template(tok) -> None:
    doc = spec_chat_template("chatml", tok.to_str(), [0], bos_token_id=None, pad_token_id=0)
    assert doc["source"] == "builtin:chatml" and doc["special_tokens"] == {"eos_token": "<|endoftext|>",
                                                                          "pad_token": "<|endoftext|>"}
    assert doc["end_of_turn_token_ids"] == [0, tok.token_to_id("<|im_end|>")]
    doc = spec_chat_template(FAMILIES["phi3"][0], tok.to_str(), [0])
    assert doc["source"] == "spec" and doc["end_of_turn_token_ids"] == [0, tok.token_to_id("<|end|>")]
    from tests_support import train_tiny_tokenizer

    with pytest.raises(InvalidArgumentError, match=r"chat_template='chatml' ends each turn with <\|im_end\|>, which "
                                                   "the spec's tokenizer lacks"):
        spec_chat_template("chatml", train_tiny_tokenizer().to_str(), [0])


def test_the_spec_checks_its_template_and_the_source_carries_it(tok) -> None:
    torch = pytest.importorskip("torch")
    from edgegen.converters.lm.custom import CustomLMSource
    from edgegen.converters.lm.spec import CausalLMSpec

    module = torch.nn.Linear(2, 2)
    with pytest.raises(InvalidArgumentError, match=r"CausalLMSpec: chat_template: template 'default' does not "
                                                   r"compile \(jinja: .* at line 1\)"):
        CausalLMSpec(module=module, tokenizer=tok, context_length=8, cache="none", chat_template="{% if %}")
    with pytest.raises(InvalidArgumentError, match="chat_template must be a jinja template or 'chatml', got dict"):
        CausalLMSpec(module=module, tokenizer=tok, context_length=8, cache="none", chat_template={"a": "b"})
    spec = CausalLMSpec(module=module, tokenizer=tok, context_length=8, cache="none", eos_token_ids=(0,),
                        chat_template="chatml")
    assert CustomLMSource(spec).chat_template["end_of_turn_token_ids"] == [0, tok.token_to_id("<|im_end|>")]
    assert CustomLMSource(CausalLMSpec(module=module, tokenizer=tok, context_length=8, cache="none")) \
        .chat_template is None


@pytest.fixture(scope="module")
def chat_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A tiny GPT-2 whose tokenizer has ChatML's tokens and two named templates, converted once."""
    pytest.importorskip("torch")
    import edgegen
    from tests_support import write_tiny_hf_lm

    root = tmp_path_factory.mktemp("chat-convert")
    hf_dir = write_tiny_hf_lm(root / "hf", "gpt2")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dir)
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    hf.chat_template = {"default": SMOLLM2, "tool_use": QWEN25}
    hf.save_pretrained(hf_dir)
    lines: list[str] = []
    art = edgegen.convert(hf_dir, root / "art", optimize=False, quantize="none", report=lines.append)
    return hf_dir, art, lines


def test_a_converted_artifact_carries_the_template(chat_artifact) -> None:
    import edgegen

    hf_dir, art, lines = chat_artifact
    manifest = json.loads((art / "edgegen.json").read_text(encoding="utf-8"))
    assert manifest["assets"]["chat_template"]["file"] == "chat_template.json"
    assert "chat template: default (+tool_use) from chat_template.jinja, end of turn: <|endoftext|>, <|im_end|>" \
        in lines
    lm = edgegen.load(art, provider="cpu")
    template = ChatTemplate.from_artifact(lm.artifact)
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert template.end_of_turn_token_ids == (0, hf.convert_tokens_to_ids("<|im_end|>"))
    same_as_transformers(template, hf, lm.tokenizer)
