"""Chat templates: the text and the token ids equal transformers' ``apply_chat_template`` for templates in the
style of each major family (tests/chat_template_support.py), on several conversations; bad messages, templates
that refuse them, unsafe templates and corrupt template files are one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chat_template_support import (FAMILIES, QWEN25, SMOLLM2, WEATHER_TOOL, chat_tokenizer, conversations,
                                   system_conversation, tool_conversation)
from edgegen.errors import InvalidArgumentError, ManifestError, UnsupportedFormatError
from edgegen.manifest import FileRef
from edgegen.runtimes.text.chat_template import BUILTIN, ChatTemplate, check_messages, resolve_template


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def hf_tokenizer(tok, template, special):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **special)


def cases() -> list[tuple[str, list[dict], dict]]:
    """(name, messages, apply_chat_template keyword arguments) for every family."""
    out = [(name, msgs, {}) for name, msgs in conversations().items()]
    out.append(("system", system_conversation(), {}))
    out.append(("tools", tool_conversation(), {"tools": [WEATHER_TOOL]}))
    out.append(("tools in system", tool_conversation(), {"tools": [WEATHER_TOOL], "tools_in_user_message": False,
                                                         "date_string": "01 Feb 2025"}))
    out.append(("tools, no calls", conversations()["multi turn"], {"tools": [WEATHER_TOOL]}))
    return out


def compare(tok, template: str, special: dict, messages: list[dict], kwargs: dict, add_generation_prompt: bool):
    """Render with transformers and with edgegen: equal text and ids, or both refuse (the same message for a
    raise_exception, the same error type for a template that fails).  Returns the text (None when refused)."""
    import jinja2

    hf = hf_tokenizer(tok, template, special)
    ours = ChatTemplate(templates={"default": template}, special_tokens=special)
    try:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                          **kwargs)
    except Exception as exc:  # noqa: BLE001  (whatever the template raised in transformers)
        with pytest.raises(InvalidArgumentError) as refused:
            ours.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        if type(exc) is jinja2.TemplateError:   # raise_exception
            assert str(refused.value) == f"the chat template refused these messages: {exc}"
        else:
            assert f"({type(exc).__name__}: " in str(refused.value)
        return None
    text = ours.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
    assert text == expected
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, **kwargs)
    assert ours.encode(tok, text) == ids
    return text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_text_and_ids_equal_transformers(tok, family: str) -> None:
    template, special = FAMILIES[family]
    rendered = {}
    for name, messages, kwargs in cases():
        for prompt in (True, False):
            rendered[name, prompt] = compare(tok, template, special, messages, kwargs, prompt)
    # every family renders the plain conversations (so the comparisons above compared text, not two refusals)
    assert all(rendered[name, p] for name in conversations() for p in (True, False))
    # the special tokens are single ids: the template's markers are in the ids as tokens, not as bytes
    ids = ChatTemplate({"default": template}, special).encode(tok, rendered["multi turn", True])
    marker = next(t for t in ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "</s>")
                  if t in rendered["multi turn", True])
    assert tok.token_to_id(marker) in ids


def test_the_tool_templates_render_tools_calls_and_responses(tok) -> None:
    """The tool cases above did exercise tools: their text holds the schema, the call and both responses."""
    for family in ("llama3", "qwen2.5"):
        template, special = FAMILIES[family]
        text = compare(tok, template, special, tool_conversation(), {"tools": [WEATHER_TOOL]}, True)
        assert "get_weather" in text and "Zürich" in text and "<html>" in text and "sunny & <warm>" in text
    # Llama 3.2's date: strftime_now when no date_string is given, the caller's when it is
    template, special = FAMILIES["llama3"]
    assert "Today Date: 01 Feb 2025" in compare(tok, template, special, system_conversation(),
                                                {"date_string": "01 Feb 2025"}, True)


@pytest.mark.parametrize("family, messages, message", [
    ("gemma", system_conversation(), "System role not supported"),
    ("mistral", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
    ("llama2", [{"role": "assistant", "content": "a"}], "must alternate"),
    ("llama3", [{"role": "system", "content": "s"}], "no first user message"),
])
def test_a_template_that_refuses_the_messages_says_why_in_one_line(tok, family, messages, message) -> None:
    template, special = FAMILIES[family]
    kwargs = {"tools": [WEATHER_TOOL]} if family == "llama3" else {}
    assert compare(tok, template, special, messages, kwargs, True) is None      # transformers refuses them too
    with pytest.raises(InvalidArgumentError, match=message) as exc:
        ChatTemplate({"default": template}, special).render(messages, **kwargs)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("the chat template refused these messages: ")


def test_named_templates_are_chosen_as_transformers_chooses_them(tok) -> None:
    templates = {"default": SMOLLM2, "tool_use": QWEN25}
    ours = ChatTemplate(templates, {"eos_token": "<|im_end|>"})
    hf = hf_tokenizer(tok, templates, {"eos_token": "<|im_end|>"})
    msgs = conversations()["multi turn"]
    for kwargs in ({}, {"tools": [WEATHER_TOOL]}, {"tools": []}, {"chat_template": "tool_use"},
                   {"chat_template": "default", "tools": [WEATHER_TOOL]}):
        name = kwargs.get("chat_template")
        args = {k: v for k, v in kwargs.items() if k != "chat_template"}
        expected = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        assert ours.render(msgs, template=name, **args) == expected
    assert ours.select(tools=[WEATHER_TOOL]) == "tool_use" and ours.select() == "default"
    with pytest.raises(InvalidArgumentError, match="no chat template named 'rag'; it has default, tool_use"):
        ours.render(msgs, template="rag")
    with pytest.raises(InvalidArgumentError, match="none is the default: pass template= one of rag"):
        ChatTemplate({"rag": SMOLLM2}).render(msgs)


def test_tojson_is_transformers_and_not_jinjas(tok) -> None:
    """No HTML escaping, non-ASCII kept, indent / separators / sort_keys as json.dumps."""
    value = {"b": "<a href='x'>&</a>", "a": ["é", 1, None, True]}
    template = ("{{ value | tojson }}|{{ value | tojson(indent=2) }}|{{ value | tojson(sort_keys=True) }}|"
                "{{ value | tojson(separators=(',', ':')) }}|{{ value | tojson(ensure_ascii=True) }}")
    hf = hf_tokenizer(tok, template, {})
    msgs = conversations()["one turn"]
    text = ChatTemplate({"default": template}).render(msgs, value=value)
    assert text == hf.apply_chat_template(msgs, tokenize=False, value=value)
    assert text.split("|")[0] == json.dumps(value, ensure_ascii=False) and "\\u003c" not in text


def test_the_builtin_chatml_and_its_end_of_turn(tok) -> None:
    template = resolve_template("chatml", tok)
    assert template.end_of_turn_token_ids == (tok.token_to_id("<|im_end|>"),)
    compare(tok, BUILTIN["chatml"][0], {}, system_conversation(), {}, True)
    from tests_support import train_tiny_tokenizer

    with pytest.raises(InvalidArgumentError, match=r"ends each turn with <\|im_end\|>, which this model's tokenizer "
                                                   "lacks.*pass the path of its own template"):
        resolve_template("chatml", train_tiny_tokenizer())


def test_a_users_template_file(tok, tmp_path: Path) -> None:
    """A .jinja file, and the tokenizer_config.json transformers saves (legacy format, named templates)."""
    transformers = pytest.importorskip("transformers")
    jinja = tmp_path / "llama3.jinja"
    jinja.write_text(FAMILIES["llama3"][0], encoding="utf-8")
    from_jinja = resolve_template(str(jinja), tok, special_tokens={"bos_token": "<|begin_of_text|>"})
    assert from_jinja.special_tokens == {"bos_token": "<|begin_of_text|>"}
    assert set(from_jinja.end_of_turn_token_ids) == {tok.token_to_id("<|eot_id|>")}
    assert from_jinja.render(system_conversation(), date_string="x").startswith("<|begin_of_text|>")

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template={"default": SMOLLM2,
                                              "tool_use": QWEN25}, eos_token="<|im_end|>", bos_token="<|im_start|>")
    hf.save_pretrained(tmp_path / "hf", save_jinja_files=False)
    template = resolve_template(tmp_path / "hf" / "tokenizer_config.json", tok)
    assert template.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    assert template.end_of_turn_token_ids == (tok.token_to_id("<|im_end|>"),)
    msgs = tool_conversation()
    assert template.render(msgs, tools=[WEATHER_TOOL]) == hf.apply_chat_template(
        msgs, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True)

    with pytest.raises(InvalidArgumentError, match="neither a built-in .* nor an existing file"):
        resolve_template(tmp_path / "missing.jinja", tok)
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}\n{{ m.content }", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=r"bad.jinja: template 'default' does not compile \(jinja: .* "
                                                   r"at line 2\)"):
        resolve_template(tmp_path / "bad.jinja", tok)
    (tmp_path / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="holds no 'chat_template' key"):
        ChatTemplate.from_file(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "bot", "content": "c"}],
     "message 2 has role 'bot'; roles are system, user, assistant, tool, developer"),
    ([{"content": "a"}], "message 0 has no role; roles are"),
    ([{"role": "user", "content": ["a", "b"]}], r"message 0 \(user\) has content of type list; content must be a "
                                                "string"),
    ([{"role": "user", "content": None}], r"message 0 \(user\) has content of type NoneType.*None only for an "
                                          "assistant message with tool_calls"),
    ([{"role": "user"}], r"message 0 \(user\) has no 'content'"),
    (["hello"], "message 0 is a str, not a dict"),
    ("hello", "messages must be a list .* got str"),
    ({"role": "user", "content": "a"}, "messages must be a list .* got dict"),
])
def test_bad_messages_are_one_line(messages, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as exc:
        check_messages(messages)
    assert "\n" not in str(exc.value)
    with pytest.raises(InvalidArgumentError, match=message):   # render checks them too
        ChatTemplate.builtin("chatml").render(messages)


def test_extra_keys_and_tool_call_messages_are_kept() -> None:
    msgs = tool_conversation()
    check_messages(msgs)
    text = ChatTemplate({"default": "{% for m in messages %}{{ m.tool_call_id or '-' }}{{ m.name }};{% endfor %}"}) \
        .render(msgs, add_generation_prompt=False)
    assert text == "-;-;-;call_1get_weather;call_1get_weather;"
    with pytest.raises(InvalidArgumentError, match=r"tools\[0\] is a str; each must be a dict"):
        ChatTemplate.builtin("chatml").render(msgs[:2], tools=["get_weather"])
    with pytest.raises(InvalidArgumentError, match="tools must be a list of dicts, got dict"):
        ChatTemplate.builtin("chatml").render(msgs[:2], tools=WEATHER_TOOL)


@pytest.mark.parametrize("template, message", [
    ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
    ("{{ messages.__class__.__base__.__subclasses__() }}", "'__class__' of 'list' object is unsafe"),
    ("{% for m in messages %}\n{{ m.__init__.__globals__ }}{% endfor %}", "'__init__' of 'dict' object is unsafe"),
    ("{{ messages.append({'role': 'system'}) }}", "'append' of 'list' object is unsafe"),
    ("{{ messages[0].update(role='system') }}", "'update' of 'dict' object is unsafe"),
    ("{{ 'x' * 100000000 }}", "repeats a value 100,000,000 times"),
    ("{{ 10 ** 100000 }}", "10 to the power 100,000"),
    ("{% set n = 10 ** 1000 %}{{ (n ** 1000) ** 1000 }}", "to the power 1,000"),
])
def test_the_sandbox_refuses_unsafe_templates_in_one_line(template: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as exc:
        ChatTemplate({"default": template}, source="evil.jinja").render(conversations()["one turn"])
    text = str(exc.value)
    assert "\n" not in text and "the chat template 'default' of evil.jinja" in text and "unsafe" in text


def test_the_sandbox_refuses_what_transformers_refuses(tok) -> None:
    """The same templates are refused by transformers' own environment (its SecurityError)."""
    from jinja2.sandbox import SecurityError

    hf = hf_tokenizer(tok, "{{ ''.__class__.__mro__ }}", {})
    with pytest.raises(SecurityError):
        hf.apply_chat_template(conversations()["one turn"], tokenize=False)


def test_other_render_errors_are_one_line() -> None:
    template = ChatTemplate({"default": "{% for m in messages %}\n{{ m.content + 1 }}{% endfor %}"}, source="t")
    with pytest.raises(InvalidArgumentError, match=r"the chat template 'default' of t at line 2 failed on these "
                                                   r"messages \(TypeError: .*\); check the messages") as exc:
        template.render(conversations()["one turn"])
    assert "\n" not in str(exc.value)
    with pytest.raises(InvalidArgumentError, match="UndefinedError: 'None' has no attribute 'x'"):
        ChatTemplate({"default": "{{ none.x.y }}"}).render(conversations()["one turn"])
    with pytest.raises(InvalidArgumentError, match="OverflowError: Range too big. The sandbox blocks ranges"):
        ChatTemplate({"default": "{{ range(10 ** 9) | list }}"}).render(conversations()["one turn"])


def fake_artifact(tmp_path: Path, content: str | bytes) -> SimpleNamespace:
    path = tmp_path / "chat_template.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    ref = FileRef(file="chat_template.json", sha256="0" * 64)
    return SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(assets={"chat_template": ref}),
                           path=lambda file: tmp_path / file)


def asset(**over: object) -> str:
    doc = {"format": 1, "templates": {"default": BUILTIN["chatml"][0]}, "special_tokens": {"eos_token": "<|im_end|>"},
           "end_of_turn_token_ids": [301], "source": "tokenizer_config.json", **over}
    return json.dumps(doc)


def test_an_artifacts_template_is_read(tmp_path: Path) -> None:
    template = ChatTemplate.from_artifact(fake_artifact(tmp_path, asset()))
    assert template == ChatTemplate({"default": BUILTIN["chatml"][0]}, {"eos_token": "<|im_end|>"}, (301,),
                                    "tokenizer_config.json")
    none = SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(assets={}), path=lambda file: tmp_path / file)
    assert ChatTemplate.from_artifact(none) is None


@pytest.mark.parametrize("content, message", [
    ("{not json", r"chat_template.json is not valid JSON"),
    (b"\xff\xfe", "chat_template.json is not UTF-8 text"),
    ("[1, 2]", "chat_template.json: expected an object, got a list"),
    (asset(templates={"default": 3}), r"chat_template.json.templates.default: expected a string, got an integer"),
    (asset(extra=1), "chat_template.json: unknown key 'extra'"),
    (asset(templates={}), "holds 0 templates"),
    (asset(end_of_turn_token_ids=[-1]), "end_of_turn_token_ids: must be an integer from 0"),
    (asset(format=0), "format: is 0; this edgegen reads format 1"),
    ('{"format": 1, "format": 1, "templates": {}}', "repeats the key 'format'"),
    (asset(templates={"default": "{% if messages %}\n\n{{ x }"}),
     r"chat_template.json: template 'default' does not compile \(jinja: .* at line 3\)"),
    (asset(templates={"default": "{{ x | no_such_filter }}"}), "No filter named 'no_such_filter'"),
])
def test_a_corrupt_chat_template_json_is_one_manifest_error(tmp_path: Path, content, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as exc:
        ChatTemplate.from_artifact(fake_artifact(tmp_path, content))
    text = str(exc.value)
    assert "\n" not in text and text.startswith(str(tmp_path)) and text.endswith("re-convert the model")


def test_a_newer_format_says_upgrade(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="chat template format 2; this edgegen reads format 1: upgrade"):
        ChatTemplate.from_artifact(fake_artifact(tmp_path, asset(format=2, new_key=1)))


def test_chat_templates_stay_out_of_the_runtimes_import_and_need_no_torch() -> None:
    probe = ("import sys, edgegen, edgegen.runtimes.lm.causal_lm, edgegen.runtimes.text.loop\n"
             "before = 'jinja2' in sys.modules\n"
             "import edgegen.runtimes.text.chat_template\n"
             "print(before, sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "[]"]


def test_a_template_that_loops_without_end_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from edgegen.runtimes.text import chat_sandbox

    monkeypatch.setattr(chat_sandbox, "RENDER_TIMEOUT_S", 0.5)
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=r"ran over 0.5 s on these messages and was stopped") as exc:
        ChatTemplate({"default": endless}, source="evil.jinja").render(conversations()["one turn"])
    assert time.perf_counter() - started < 5 and "\n" not in str(exc.value)
    # the timer of a render that finished in time never fires later
    for _ in range(50):
        ChatTemplate.builtin("chatml").render(conversations()["one turn"])
    time.sleep(0.7)
    assert ChatTemplate.builtin("chatml").render(conversations()["one turn"])
