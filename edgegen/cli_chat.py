"""``edgegen chat``: an interactive terminal chat, and ``edgegen generate --chat`` (one-shot replies).

The chat keeps the conversation in a :class:`~edgegen.runtimes.text.chat.ChatSession`, so each turn runs only
its new tokens.  Lines starting with ``/`` are commands (``/help``); Ctrl-C stops a reply (its text so far stays
in the conversation) and, at the prompt, clears the line; Ctrl-D or ``/exit`` leaves.  With readline available
(Linux, macOS), the arrow keys edit the line and go through this session's history.  Standard input that is not
a terminal is read a line per user turn, with no prompt, so a chat can be scripted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from edgegen.cli import cli, generation_options, logprobs_json, runtime_options, settings_from_options
from edgegen.errors import CancelledError, EdgegenError, InvalidArgumentError

HELP = """commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message (empty: none) and keep the conversation
  /history        show the conversation so far
  /exit, /quit    leave (so does Ctrl-D)
Ctrl-C stops a reply; the arrow keys recall earlier lines."""


def _check_chat_artifact(artifact: str, template: str | None) -> None:
    """Before the model loads: a text artifact, with a chat template of its own or one given."""
    from edgegen.runtimes.artifact import open_artifact

    m = open_artifact(artifact).manifest
    if m.family not in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {m.family!r} artifact; chat runs causal-lm and rnn-lm artifacts")
    if template is None and "chat_template" not in m.assets:
        raise InvalidArgumentError(
            f"{artifact} has no chat template (its source model had none): pass --template chatml, or "
            "--template FILE with a .jinja template, or use edgegen generate for plain continuation")


@contextlib.contextmanager
def _ctrl_c_cancels(cancel: threading.Event) -> Iterator[None]:
    """While a reply runs, Ctrl-C sets ``cancel`` (the run stops within a step) instead of ending the program."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reply(session: Any, text: str, settings: Any) -> None:
    cancel = threading.Event()
    stream = session.stream(text, settings, cancel)
    printed = ""
    try:
        with _ctrl_c_cancels(cancel):
            for piece in stream:
                printed += piece
                click.echo(piece, nl=False)
    except CancelledError:
        click.echo(("" if printed.endswith("\n") or not printed else "\n") + "[stopped]", err=True)
        return
    reply = stream.reply
    if not printed.endswith("\n"):
        click.echo()
    if reply is not None and reply.finish_reason == "length":
        click.echo(f"[cut at {reply.usage['completion_tokens']} tokens: raise -n/--max-new-tokens]", err=True)


def _read_line(interactive: bool) -> str | None:
    """The next line of input; None at the end (Ctrl-D)."""
    try:
        return input("> " if interactive else "")
    except EOFError:
        return None


@cli.command(short_help="Chat with a chat model in the terminal.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--system", default=None, help="The system message.")
@click.option("--template", default=None, metavar="chatml|FILE",
              help="A chat template instead of the artifact's: chatml, or a .jinja file.")
@generation_options
@runtime_options
def chat(artifact: str, system: str | None, template: str | None, runtime: dict[str, Any], **options: Any) -> None:
    """Chat with the model of a causal-lm ARTIFACT that has a chat template (or is given one).

    Each turn is rendered with the model's own template and reuses the conversation's KV cache, so a reply
    starts after the new message's tokens only.  /help lists the commands.
    """
    import edgegen
    from edgegen import GenerationSettings
    from edgegen.runtimes.text.settings import resolve

    settings = settings_from_options(**options)
    resolve(settings, GenerationSettings())            # bad settings fail before the model loads
    _check_chat_artifact(artifact, template)
    lm = edgegen.load(artifact, **runtime)
    session = lm.chat_session(system=system, settings=settings, template=template)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):   # line editing and history where the platform has readline
            import readline  # noqa: F401
        click.echo(f"[{lm.artifact.root.name} on {lm.provider}; /help for commands, Ctrl-D to leave]", err=True)
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:                  # at the prompt: a fresh line, not the end
            click.echo("", err=True)
            continue
        if line is None:
            if interactive:
                click.echo("", err=True)
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, rest = line[1:].partition(" ")
            if command in ("exit", "quit"):
                return
            if command == "reset":
                session.reset()
                click.echo("[conversation reset]", err=True)
            elif command == "system":
                session.set_system(rest.strip())
                click.echo("[system message set]" if rest.strip() else "[system message removed]", err=True)
            elif command == "history":
                for m in session.messages:
                    click.echo(f"{m['role']}: {m.get('content') or ''}")
            elif command == "help":
                click.echo(HELP, err=True)
            else:
                click.echo(f"unknown command /{command}; /help lists them", err=True)
            continue
        try:
            _reply(session, line, None)
        except EdgegenError as exc:              # a refused turn (the context is full...): say it, keep chatting
            click.echo(f"Error: {exc}", err=True)


def generate_chat(artifact: str, texts: list[str], settings: Any, *, system: str | None, template: str | None,
                  as_json: bool, runtime: dict[str, Any]) -> None:
    """``edgegen generate --chat``: each prompt a user message (after ``system``), each reply printed."""
    import edgegen

    _check_chat_artifact(artifact, template)
    lm = edgegen.load(artifact, **runtime)
    conversations = [([{"role": "system", "content": system}] if system is not None else []) +
                     [{"role": "user", "content": text}] for text in texts]
    stream_one = not as_json and len(texts) == 1
    replies = []
    try:
        for i, messages in enumerate(conversations):
            stream = lm.chat_stream(messages, settings, template=template)
            if not as_json and len(texts) > 1:
                click.echo(f"== {i + 1}/{len(texts)} ==")
            printed = ""
            for piece in stream:
                if not as_json:
                    printed += piece
                    click.echo(piece, nl=False)
            if not as_json and not printed.endswith("\n"):
                click.echo()
            replies.append(stream.reply)
    except KeyboardInterrupt:
        click.echo("", err=True)
        raise SystemExit(130) from None
    if as_json:
        from edgegen.cli import _echo_json

        _echo_json({"provider": lm.provider, "completions": [{
            "messages": messages, "text": r.content, "finish_reason": r.finish_reason, "usage": r.usage,
            "time_to_first_token_s": r.completion.time_to_first_token_s,
            "decode_tokens_per_s": r.completion.decode_tokens_per_s, **logprobs_json(lm, r.completion)}
            for messages, r in zip(conversations, replies, strict=True)]})
        return
    if stream_one:
        r = replies[0]
        click.echo(f"[{lm.provider}: {r.usage['prompt_tokens']} prompt tokens, {r.usage['completion_tokens']} new "
                   f"({r.finish_reason}); first token {1000 * r.completion.time_to_first_token_s:.0f} ms, "
                   f"{r.completion.decode_tokens_per_s:.1f} tokens/s]", err=True)
