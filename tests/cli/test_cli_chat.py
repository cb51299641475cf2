"""``edgegen chat`` (the interactive chat, scripted through standard input) and ``edgegen generate --chat``:
commands, replies equal to the library's, JSON with usage and logprobs, one-line refusals, and Ctrl-C stopping
a reply without ending the program (a real process and a real SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen import GenerationSettings
from edgegen.cli import cli
from tests_support import assert_one_line_error, run_cli, write_chat_lm

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def chat_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-chat")
    hf = write_chat_lm(root / "hf", "gpt2", n_positions=1024)
    return edgegen.convert(hf, root / "art", optimize=False, report=lambda *_: None)


def chat(artifact: Path, text: str, *args: str):
    return CliRunner().invoke(cli, ["chat", str(artifact), "-t", "0", "-n", "6", *args], input=text,
                              catch_exceptions=False)


def test_a_scripted_chat_runs_its_commands(chat_artifact: Path) -> None:
    result = chat(chat_artifact, "hello\n/history\n/system be brief\n/reset\n/history\n/nope\nagain\n/exit\nignored\n")
    assert result.exit_code == 0, result.output
    lm = edgegen.load(chat_artifact, provider="cpu")
    first = lm.chat([{"role": "user", "content": "hello"}], GenerationSettings(temperature=0, max_new_tokens=6))
    out = result.output
    assert out.startswith(first.content)                                 # the reply, as the library gives it
    assert "user: hello\nassistant: " + first.content in out            # /history
    assert "[conversation reset]" in out and "unknown command /nope" in out
    assert "ignored" not in out                                          # /exit left


def test_end_of_input_ends_the_chat(chat_artifact: Path) -> None:
    result = chat(chat_artifact, "hi\n")
    assert result.exit_code == 0 and result.output.strip()


def test_generate_chat_json_has_usage_and_logprobs(chat_artifact: Path) -> None:
    result = run_cli("generate", chat_artifact, "--chat", "--system", "be brief", "-p", "hello", "-t", "0", "-n", "4",
                     "--logprobs", "--top-logprobs", "3", "--json")
    assert result.exit_code == 0, result.output
    (c,) = json.loads(result.output)["completions"]
    assert c["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert c["usage"]["completion_tokens"] == len(c["logprobs"]["content"]) <= 4
    assert all(len(e["top_logprobs"]) == 3 for e in c["logprobs"]["content"])
    lm = edgegen.load(chat_artifact, provider="cpu")
    assert c["text"] == lm.chat(c["messages"], GenerationSettings(temperature=0, max_new_tokens=4)).content


def test_generate_chat_prints_only_the_reply(chat_artifact: Path) -> None:
    result = run_cli("generate", chat_artifact, "--chat", "-p", "hello there", "-t", "0", "-n", "4")
    assert result.exit_code == 0 and "hello there" not in result.output


def test_a_model_without_a_template_is_refused_with_the_fix(tiny_lm_artifact: Path) -> None:
    assert_one_line_error(run_cli("chat", tiny_lm_artifact), "no chat template", "--template chatml")
    assert_one_line_error(run_cli("generate", tiny_lm_artifact, "--chat", "-p", "hi"), "--template chatml")
    # chatml needs the tokenizer to have its tokens
    assert_one_line_error(run_cli("generate", tiny_lm_artifact, "--template", "chatml", "-p", "hi"), "<|im_end|>")


def test_a_template_file(chat_artifact: Path, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}<|im_start|>")
    result = run_cli("generate", chat_artifact, "--template", template, "-p", "hi", "-t", "0", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["completions"][0]["usage"]["prompt_tokens"] >= 3
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    assert_one_line_error(run_cli("generate", chat_artifact, "--template", bad, "-p", "hi"), "bad.jinja")


def test_structured_output_from_the_command_line(chat_artifact: Path, tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}))
    result = run_cli("generate", chat_artifact, "--chat", "-p", "a number", "-t", "0", "-n", "40", "--json-schema",
                     schema, "--json")
    assert result.exit_code == 0, result.output
    (c,) = json.loads(result.output)["completions"]
    if c["finish_reason"] == "stop":
        assert isinstance(json.loads(c["text"])["n"], int)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert_one_line_error(run_cli("generate", chat_artifact, "-p", "x", "--json-schema", broken), "broken.json")


def test_ctrl_c_stops_the_reply_not_the_chat(chat_artifact: Path) -> None:
    """A real process: SIGINT while a long reply streams stops it ("[stopped]"), the next command still runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgegen", "chat", str(chat_artifact), "-t", "0", "-n", "900",
                             "--ignore-eos", "--provider", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"tell me a long story\n")
        proc.stdin.flush()
        proc.stdout.read(1)                      # the reply has begun
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.stdin.write(b"/history\n/exit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"[stopped]" in err and b"Traceback" not in err
    assert b"user: tell me a long story" in out     # the conversation went on after the stop
