"""A model's chat template: messages -> the prompt text -> token ids, exactly as transformers'
``apply_chat_template`` gives them (tests/runtimes/text/test_chat_template.py compares both on templates in each
major family's style).  Rendered in transformers' sandboxed jinja2 environment (:mod:`.chat_sandbox`) with
``messages``, ``tools``, ``documents``, ``add_generation_prompt``, the special tokens (``bos_token``,
``eos_token``...) and the caller's extra variables; then encoded without special tokens added.

The template comes from an artifact (asset ``chat_template``, file ``chat_template.json``, whose format
:class:`ChatTemplateAsset` defines and ``edgegen.converters.text.chat_template`` writes), from a built-in
(``"chatml"``), or from a file of the user's (:func:`resolve_template`).  An artifact's file is hostile input:
parsed strictly, every template compiled at load.  Differences from transformers: ``additional_special_tokens``
(a list) is not passed, and tools must be JSON-schema dicts (transformers also takes Python functions).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import InvalidArgumentError, ManifestError, UnsupportedFormatError
from edgegen.manifest import MAX_COUNT, count_problem
from edgegen.runtimes.text.chat_sandbox import render, template_problems
from edgegen.runtimes.text.tokenizer import tokenizer_call
from edgegen.strict import FieldError, JSONValueError, from_json, parse_json, short

__all__ = ["ASSET", "BUILTIN", "END_OF_TURN_MARKERS", "FORMAT", "ROLES", "ChatTemplate", "ChatTemplateAsset",
           "check_messages", "end_of_turn_ids", "resolve_template", "special_tokens_of", "template_problems",
           "templates_of"]

#: The asset role and file name in an artifact.
ASSET, ASSET_FILE = "chat_template", "chat_template.json"
#: The version of chat_template.json this edgegen writes and reads.
FORMAT = 1
ROLES = ("system", "user", "assistant", "tool", "developer")
#: The special tokens transformers passes to a template (``special_tokens_map``, less the list
#: ``additional_special_tokens``), as tokenizer_config.json names them.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
#: Tokens that end a turn in the chat formats of the major families: one of them in a template (and in the
#: tokenizer) is an end-of-turn token of that model.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|end|>", "<end_of_turn>",
                       "<|endoftext|>", "</s>", "<|end_of_text|>", "<|return|>", "<|call|>", "<|end_of_turn|>",
                       "<|END_OF_TURN_TOKEN|>", "<｜end▁of▁sentence｜>")
#: Built-in templates: name -> (jinja source, the end-of-turn tokens the tokenizer must have).
#: chatml: ChatML as in transformers' chat-templating guide (Qwen2, SmolLM without their default system).
BUILTIN = {
    "chatml": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}", ("<|im_end|>",)),
}
#: Limits on what an artifact's (or a user's) template file may hold; the largest real templates are ~20 KB.
MAX_FILE_BYTES = 8 << 20
MAX_TEMPLATE_CHARS = 1 << 20
MAX_TEMPLATES = 64
_NAME = re.compile(r"[\w.\-]{1,64}")


@dataclass(frozen=True)
class ChatTemplateAsset:
    """``chat_template.json``: the contract between the converter that writes it and the runtime."""

    format: int
    #: name -> jinja source; "default" is the one used, "tool_use" the one used when tools are given.
    templates: dict[str, str]
    special_tokens: dict[str, str] = field(default_factory=dict)
    end_of_turn_token_ids: tuple[int, ...] = ()
    #: Where the converter found it: "tokenizer_config.json", "chat_template.jinja", a spec...
    source: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.format != FORMAT:
            problems.append(("format", f"is {self.format}; this edgegen reads format {FORMAT}"))
        if not self.templates or len(self.templates) > MAX_TEMPLATES:
            problems.append(("templates", f"holds {len(self.templates)} templates (1 to {MAX_TEMPLATES} allowed)"))
        for name, source in self.templates.items():
            if not _NAME.fullmatch(name):
                problems.append(("templates", f"{short(name)} is not a template name (letters, digits, . - _)"))
            elif len(source) > MAX_TEMPLATE_CHARS:
                problems.append(("templates", f"{name!r} is {len(source):,} characters (at most "
                                              f"{MAX_TEMPLATE_CHARS:,})"))
        for key, value in self.special_tokens.items():
            if len(key) > 64 or len(value) > 256:
                problems.append(("special_tokens", f"{short(key)}: {short(value)} is too long for a special token"))
        bad = next((p for i in self.end_of_turn_token_ids if (p := count_problem(i, 0, MAX_COUNT - 1))), None)
        if bad:
            problems.append(("end_of_turn_token_ids", bad))
        if problems:
            raise FieldError(*problems)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat templates, the special tokens they see, and the tokens that end the model's turn."""

    templates: dict[str, str]
    special_tokens: dict[str, str] = field(default_factory=dict)
    end_of_turn_token_ids: tuple[int, ...] = ()
    source: str = ""

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.templates.items())), tuple(sorted(self.special_tokens.items())),
                     self.end_of_turn_token_ids, self.source))

    @classmethod
    def from_artifact(cls, artifact: Any) -> ChatTemplate | None:
        """The artifact's template (asset ``chat_template``), or None when it has none; a ManifestError naming
        the file when it is not a valid chat_template.json or a template does not compile."""
        ref = artifact.manifest.assets.get(ASSET)
        if ref is None:
            return None
        where = f"{artifact.root}: {ref.file}"
        text = _read_text(artifact.path(ref.file), lambda why: ManifestError(
            f"{where} {why}; the artifact is corrupt, re-convert the model"))
        try:
            data = parse_json(text)
        except (json.JSONDecodeError, JSONValueError) as exc:
            raise ManifestError(f"{where} is not valid JSON ({exc}); the artifact is corrupt, re-convert "
                                "the model") from None
        if isinstance(data, dict) and isinstance(data.get("format"), int) and not isinstance(data["format"], bool) \
                and data["format"] > FORMAT:
            raise UnsupportedFormatError(f"{where} is chat template format {data['format']}; this edgegen reads "
                                         f"format {FORMAT}: upgrade edgegen")
        try:
            doc = from_json(ChatTemplateAsset, data, where=ref.file, fix="re-convert the model")
        except ManifestError as exc:
            raise ManifestError(f"{artifact.root}: {exc}") from None
        problems = template_problems(doc.templates)
        if problems:
            raise ManifestError(f"{where}: {'; '.join(problems)}; re-convert the model")
        return cls(templates=dict(doc.templates), special_tokens=dict(doc.special_tokens),
                   end_of_turn_token_ids=doc.end_of_turn_token_ids, source=doc.source or ref.file)

    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        """A built-in template (``"chatml"``), without end-of-turn ids: :func:`resolve_template` adds them."""
        if name not in BUILTIN:
            raise InvalidArgumentError(f"no built-in chat template {name!r}; built-in: {', '.join(BUILTIN)}")
        return cls(templates={"default": BUILTIN[name][0]}, source=f"builtin:{name}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ChatTemplate:
        """A user's template: a ``.json`` file holding ``chat_template`` (tokenizer_config.json, a processor's
        chat_template.json; a string or a list of {"name", "template"}) or an edgegen chat_template.json;
        any other file is the raw jinja source (``.jinja``).  End-of-turn ids: :func:`resolve_template`."""
        path = Path(path)
        fail = lambda why: InvalidArgumentError(f"chat template {path}: {why}")  # noqa: E731
        text = _read_text(path, fail)
        if path.suffix.lower() != ".json":
            templates: dict[str, str] = {"default": text}
            special: dict[str, str] = {}
        else:
            try:
                data = parse_json(text)
            except (json.JSONDecodeError, JSONValueError) as exc:
                raise fail(f"is not valid JSON ({exc})") from None
            if isinstance(data, dict) and "templates" in data and "format" in data:   # an edgegen asset
                doc = from_json(ChatTemplateAsset, data, where=str(path), error=InvalidArgumentError)
                templates, special = dict(doc.templates), dict(doc.special_tokens)
            elif isinstance(data, dict) and "chat_template" in data:
                templates, problem = templates_of(data["chat_template"])
                if problem:
                    raise fail(f"'chat_template' {problem}")
                special, problems = special_tokens_of(data)
                if problems:
                    raise fail("; ".join(problems))
            else:
                raise fail("holds no 'chat_template' key; give a tokenizer_config.json or chat_template.json "
                           "that has one, or a .jinja file")
        problems = template_problems(templates)
        if problems:
            raise fail("; ".join(problems))
        return cls(templates=templates, special_tokens=special, source=str(path))

    def select(self, name: str | None = None, tools: Any = None) -> str:
        """The name of the template a render uses, as transformers' ``get_chat_template`` picks it."""
        if name is not None:
            if name in self.templates:
                return name
            raise InvalidArgumentError(f"the model has no chat template named {short(name)}; it has "
                                       f"{', '.join(sorted(self.templates))}")
        if tools is not None and "tool_use" in self.templates:
            return "tool_use"
        if "default" in self.templates:
            return "default"
        raise InvalidArgumentError(f"the model has several chat templates and none is the default: pass "
                                   f"template= one of {', '.join(sorted(self.templates))}")

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None, documents: Sequence[Mapping[str, Any]] | None = None,
               template: str | None = None, **extra: Any) -> str:
        """The prompt text, exactly as ``apply_chat_template(messages, tokenize=False, ...)`` renders it;
        ``extra``: more template variables (``date_string``, ``enable_thinking``...), over the special tokens."""
        check_messages(messages)
        for what, items in (("tools", tools), ("documents", documents)):
            if items is None:
                continue
            if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
                raise InvalidArgumentError(f"{what} must be a list of dicts, got {type(items).__name__}")
            bad = next((i for i, item in enumerate(items) if not isinstance(item, Mapping)), None)
            if bad is not None:
                raise InvalidArgumentError(f"{what}[{bad}] is a {type(items[bad]).__name__}; each must be a dict"
                                           + (" (a JSON schema: {'type': 'function', 'function': {...}})"
                                              if what == "tools" else " ({'title': ..., 'text': ...})"))
        name = self.select(template, tools)
        # as transformers: the special tokens, the caller's variables over them, then the conversation's
        variables = {**self.special_tokens, **extra, "messages": list(messages),
                     "tools": None if tools is None else list(tools),
                     "documents": None if documents is None else list(documents),
                     "add_generation_prompt": add_generation_prompt}
        return render(self.templates[name], self._label(name), variables)

    def _label(self, name: str) -> str:
        return f"{name!r} of {self.source}" if self.source else repr(name)

    def encode(self, tokenizer: Any, text: str) -> list[int]:
        """``text``'s ids as ``apply_chat_template(tokenize=True)`` gives them: no special tokens added (the
        template writes its own)."""
        return list(tokenizer_call(lambda: tokenizer.encode(text, add_special_tokens=False)).ids)

    def with_end_of_turn(self, ids: Sequence[int]) -> ChatTemplate:
        """A copy whose end-of-turn ids are ``ids``."""
        return ChatTemplate(templates=dict(self.templates), special_tokens=dict(self.special_tokens),
                            end_of_turn_token_ids=tuple(dict.fromkeys(int(i) for i in ids)), source=self.source)


def resolve_template(spec: str | os.PathLike[str], tokenizer: Any, *,
                     special_tokens: Mapping[str, str] | None = None) -> ChatTemplate:
    """A template the caller names: a built-in name (``"chatml"``) or the path of a template file, with its
    end-of-turn ids found in ``tokenizer`` (:func:`end_of_turn_ids`).  ``special_tokens`` (bos_token,
    eos_token... e.g. from the artifact) fill in what the file does not give."""
    name, required = os.fspath(spec), ()
    if name in BUILTIN:
        required = BUILTIN[name][1]
        template = ChatTemplate.builtin(name)
        missing = [t for t in required if tokenizer.token_to_id(t) is None]
        if missing:
            raise InvalidArgumentError(
                f"chat template {name!r} ends each turn with {', '.join(missing)}, which this model's tokenizer "
                f"lacks: the model was not trained on {name}; pass the path of its own template (a .jinja file, "
                "or the tokenizer_config.json it came with)")
    elif os.path.exists(name):
        template = ChatTemplate.from_file(name)
    else:
        raise InvalidArgumentError(f"chat template {short(name)} is neither a built-in ({', '.join(BUILTIN)}) "
                                   "nor an existing file; give 'chatml' or the path of a .jinja / .json template")
    special = {**(special_tokens or {}), **template.special_tokens}
    template = ChatTemplate(templates=template.templates, special_tokens=special, source=template.source)
    return template.with_end_of_turn(end_of_turn_ids(template.templates, special, tokenizer, required=required))


def end_of_turn_ids(templates: Mapping[str, str], special_tokens: Mapping[str, str], tokenizer: Any,
                    extra_ids: Sequence[int] = (), required: Sequence[str] = ()) -> tuple[int, ...]:
    """The tokens that end the model's turn, in ``tokenizer`` (a tokenizers.Tokenizer): ``extra_ids`` (the
    model's eos ids), the eos_token's id, the ``required`` tokens' ids, and the ids of the added special tokens
    that are :data:`END_OF_TURN_MARKERS` and that a template writes."""
    ids = [int(i) for i in extra_ids]
    for token in (special_tokens.get("eos_token"), *required):
        if token is not None and (found := tokenizer.token_to_id(token)) is not None:
            ids.append(found)
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    text = "\n".join(templates.values())
    ids += [specials[marker] for marker in END_OF_TURN_MARKERS if marker in specials and marker in text]
    return tuple(dict.fromkeys(ids))


def check_messages(messages: Any) -> None:
    """``messages`` is a list of {"role", "content"} dicts (roles :data:`ROLES`; content a string, or None /
    absent for an assistant message with ``tool_calls``); else one InvalidArgumentError naming the message
    (counted from 0).  Other keys (name, tool_calls, tool_call_id) are left to the template."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                                   f"{type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidArgumentError(f"message {i} is a {type(message).__name__}, not a dict with 'role' and "
                                       "'content'")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidArgumentError(f"message {i} has {'no role' if role is None else f'role {short(role)}'}; "
                                       f"roles are {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue
        if "content" not in message:
            raise InvalidArgumentError(f"message {i} ({role}) has no 'content'; give its text as a string")
        raise InvalidArgumentError(f"message {i} ({role}) has content of type {type(content).__name__}; content "
                                   "must be a string" + (" (None only for an assistant message with tool_calls)"
                                                         if content is None else ""))


def templates_of(value: Any) -> tuple[dict[str, str], str | None]:
    """A ``chat_template`` value as tokenizer_config.json holds it (a string, a list of {"name",
    "template"}, or a name -> template object) as name -> source, or the problem with it."""
    if isinstance(value, str):
        return {"default": value}, None
    items = value.items() if isinstance(value, dict) else \
        [(v.get("name"), v.get("template")) if isinstance(v, dict) else (None, None) for v in value] \
        if isinstance(value, list) else None
    if items is None:
        return {}, f"is {type(value).__name__}; expected a string or a list of {{'name', 'template'}}"
    out = {}
    for name, source in items:
        if not isinstance(name, str) or not isinstance(source, str):
            return {}, "holds an entry that is not {'name': str, 'template': str}"
        out[name] = source
    return (out, None) if out else ({}, "is an empty list")


def special_tokens_of(config: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The special tokens of a tokenizer_config.json (a string, or an AddedToken {"content": ...}), with its
    ``extra_special_tokens``, as transformers' ``special_tokens_map`` gives them; and the problems."""
    out, problems = {}, []
    extra = config.get("extra_special_tokens") or {}
    keys = [*SPECIAL_TOKEN_KEYS, *(extra if isinstance(extra, dict) else ())]
    for key in keys:
        value = config.get(key, extra.get(key) if isinstance(extra, dict) else None)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            problems.append(f"{key} is {type(value).__name__}, not a token string")
        else:
            out[key] = value
    return out, problems


def _read_text(path: Path, fail: Any) -> str:
    """A template file's text (UTF-8, at most MAX_FILE_BYTES), or ``fail(why)`` raised."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise fail("is not a file")
        if size > MAX_FILE_BYTES:
            raise fail(f"is {size:,} bytes (a chat template file holds at most {MAX_FILE_BYTES:,})")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("does not exist") from None
    except UnicodeDecodeError:
        raise fail("is not UTF-8 text") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or exc})") from None
