"""A source model's chat template, as the artifact's ``chat_template.json`` (read back by
:mod:`edgegen.runtimes.text.chat_template`, which defines the format).

From a Hugging Face directory, in the order transformers 4.57's tokenizer ``from_pretrained`` reads them:
``chat_template.jinja`` (the default) and ``additional_chat_templates/<name>.jinja`` (named templates) take
priority over ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of {"name", "template"});
a processor's legacy ``chat_template.json`` ({"chat_template": ...}) is read when neither is there.  The special
tokens are tokenizer_config.json's (``special_tokens_map.json`` fills what it lacks).  The end-of-turn ids: the
model's eos ids, the eos token's, and those of the known end-of-turn markers the templates write that are
special tokens of the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgegen.errors import ConversionError, InvalidArgumentError
from edgegen.runtimes.text.chat_template import (BUILTIN, FORMAT, ChatTemplateAsset, end_of_turn_ids,
                                                 special_tokens_of, template_problems, templates_of)
from edgegen.strict import to_json

__all__ = ["asset_json", "read_chat_template", "spec_chat_template", "summary"]

TEMPLATE_FILE, TEMPLATE_DIR, LEGACY_FILE, CONFIG_FILE = ("chat_template.jinja", "additional_chat_templates",
                                                         "chat_template.json", "tokenizer_config.json")


def read_chat_template(model_dir: Path, tokenizer_json: str, eos_token_ids: Sequence[int]) -> dict[str, Any] | None:
    """The chat_template.json document of a Hugging Face model directory, or None when it has no template;
    a ConversionError naming the file when one does not compile."""
    found = _templates(model_dir)
    if found is None:
        return None
    templates, source, files = found
    config = _read_json(model_dir / CONFIG_FILE) or {}
    legacy = _read_json(model_dir / "special_tokens_map.json") or {}
    special, problems = special_tokens_of({**legacy, **config})
    if problems:
        raise ConversionError(f"{model_dir / CONFIG_FILE}: {'; '.join(problems)}; fix the tokenizer's special tokens")
    for name, text in templates.items():
        problems = template_problems({name: text})
        if problems:
            raise ConversionError(f"{model_dir / files.get(name, source)}: {problems[0]}; fix the template (or "
                                  "remove it to convert the model without one)")
    return _document(templates, special, tokenizer_json, eos_token_ids, source)


def spec_chat_template(template: str, tokenizer_json: str, eos_token_ids: Sequence[int],
                       bos_token_id: int | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """The document of a spec's ``chat_template``: a jinja source, or a built-in name ("chatml"); its special
    tokens are the spec's bos / eos / pad ids as the tokenizer spells them."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    special = {key: name for key, i in (("bos_token", bos_token_id), ("eos_token", (list(eos_token_ids) or [None])[0]),
                                        ("pad_token", pad_token_id))
               if i is not None and (name := tokenizer.id_to_token(i)) is not None}
    source, required = "spec", ()
    if template in BUILTIN:
        text, required = BUILTIN[template]
        missing = [t for t in required if tokenizer.token_to_id(t) is None]
        if missing:
            raise InvalidArgumentError(f"chat_template={template!r} ends each turn with {', '.join(missing)}, which "
                                       "the spec's tokenizer lacks; add it as a special token, or give the jinja "
                                       "source of the model's own template")
        template, source = text, f"builtin:{template}"
    problems = template_problems({"default": template})
    if problems:
        raise InvalidArgumentError(f"CausalLMSpec.chat_template: {'; '.join(problems)}")
    return _document({"default": template}, special, tokenizer_json, eos_token_ids, source, required)


def asset_json(doc: dict[str, Any]) -> str:
    """The file's text."""
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def summary(doc: dict[str, Any], tokenizer_json: str) -> str:
    """One report line: "chat template: default (+tool_use), end of turn: <|im_end|>"."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    names = sorted(doc["templates"], key=lambda n: (n != "default", n))
    others = f" (+{', '.join(names[1:])})" if len(names) > 1 else ""
    ends = ", ".join(tokenizer.id_to_token(i) or str(i) for i in doc["end_of_turn_token_ids"]) or "none"
    return f"chat template: {names[0]}{others} from {doc['source']}, end of turn: {ends}"


def _document(templates: dict[str, str], special: dict[str, str], tokenizer_json: str,
              eos_token_ids: Sequence[int], source: str, required: Sequence[str] = ()) -> dict[str, Any]:
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    ids = end_of_turn_ids(templates, special, tokenizer, eos_token_ids, required)
    return to_json(ChatTemplateAsset(format=FORMAT, templates=templates, special_tokens=special,
                                     end_of_turn_token_ids=ids, source=source))


def _templates(model_dir: Path) -> tuple[dict[str, str], str, dict[str, str]] | None:
    """(name -> source, the file they came from, name -> its own file), in transformers' order; None when
    there are none."""
    files = {"default": TEMPLATE_FILE} if (model_dir / TEMPLATE_FILE).is_file() else {}
    named = sorted((model_dir / TEMPLATE_DIR).glob("*.jinja")) if (model_dir / TEMPLATE_DIR).is_dir() else []
    files.update({path.name.removesuffix(".jinja"): f"{TEMPLATE_DIR}/{path.name}" for path in named})
    if files:
        templates = {name: _read_text(model_dir / file) for name, file in files.items()}
        return templates, TEMPLATE_FILE if files.get("default") == TEMPLATE_FILE else TEMPLATE_DIR, files
    for name in (CONFIG_FILE, LEGACY_FILE):
        data = _read_json(model_dir / name)
        if data is not None and data.get("chat_template") is not None:
            found, problem = templates_of(data["chat_template"])
            if problem:
                raise ConversionError(f"{model_dir / name}: 'chat_template' {problem}")
            return found, name, {}
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot read the chat template {path}: {exc}") from None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds {type(data).__name__}, not a JSON object; fix or remove it")
    return data
