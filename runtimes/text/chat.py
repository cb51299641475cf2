"""Chat on top of a text model: messages rendered by the model's own chat template, the reply generated until
one of its end-of-turn tokens, and a :class:`ChatSession` that keeps the conversation and its KV cache.

``model.chat(messages)`` answers one conversation (a :class:`ChatReply`: the assistant message, the finish
reason and the usage, OpenAI-style); ``model.chat_stream(messages)`` yields the reply's text as it comes (a
:class:`ChatStream`, whose ``reply`` is set at the end); ``model.chat_session(system=...)`` keeps the
conversation, and each turn runs only the tokens the cache does not already hold.  Independent requests that
share a prefix (a system prompt) reuse its KV through the model's prefix cache.  Both give the tokens a cold
run gives (tests/runtimes/text/test_chat.py).

The template is the artifact's (``chat_template.json``, carried from the source model at conversion), or one
the caller names: ``template="chatml"`` or the path of a template file.  A model without one refuses chat and
says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgegen.errors import CancelledError, ContextOverflowError, InvalidArgumentError
from edgegen.runtimes.text.settings import GenerationSettings, resolve

__all__ = ["ChatReply", "ChatSession", "ChatStream"]

#: edgegen's finish reasons in OpenAI's words: an end-of-turn token and a stop string are both "stop".
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "cancelled"}


@dataclass(frozen=True)
class ChatReply:
    """The model's turn: ``message`` {"role": "assistant", "content": ...}, why it ended, and the token counts."""

    message: dict[str, Any]
    finish_reason: str                 # "stop" | "length" | "cancelled"
    usage: dict[str, int]              # prompt_tokens, completion_tokens, total_tokens, cached_tokens
    completion: Any                    # the run's Completion: token ids, timings, logprobs

    @property
    def content(self) -> str:
        return str(self.message["content"])


class ChatStream:
    """The reply's text pieces as they become final; ``reply`` holds the :class:`ChatReply` once iterated."""

    def __init__(self, pieces: Iterator[str], finish: Callable[[], ChatReply]) -> None:
        self._pieces, self._finish = pieces, finish
        self.reply: ChatReply | None = None

    def __iter__(self) -> Iterator[str]:
        yield from self._pieces
        self.reply = self._finish()

    def text(self) -> str:
        """Run to the end; the whole reply's text."""
        return "".join(self)


def template_of(model: Any, template: Any) -> Any:
    """The chat template a run uses: ``template`` ("chatml", a file path, a ChatTemplate), else the artifact's."""
    from edgegen.runtimes.text.chat_template import ChatTemplate, resolve_template

    if isinstance(template, ChatTemplate):
        return template
    if template is not None:
        if not isinstance(template, str) or not template:
            raise InvalidArgumentError(f"template must be 'chatml' or the path of a template file, got {template!r}")
        return resolve_template(template, model.tokenizer)
    with _LOCK:
        if not hasattr(model, "_chat_template"):
            model._chat_template = ChatTemplate.from_artifact(model.artifact)
    if model._chat_template is None:
        raise InvalidArgumentError(
            f"{model.artifact.root} has no chat template (its source model had none); pass template='chatml' "
            "(--template chatml) or the path of a .jinja template file, or use generate for plain continuation")
    return model._chat_template


_LOCK = threading.Lock()


def chat_ids(model: Any, template: Any, messages: Sequence[dict[str, Any]], tools: Any = None,
             documents: Any = None, add_generation_prompt: bool = True, **extra: Any) -> list[int]:
    """The conversation as the template renders it, encoded as transformers' apply_chat_template does."""
    from edgegen.runtimes.text.chat_template import check_messages

    check_messages(messages)
    text = template.render(list(messages), add_generation_prompt=add_generation_prompt, tools=tools,
                           documents=documents, **extra)
    ids = template.encode(model.tokenizer, text)
    if not ids:
        raise InvalidArgumentError("the chat template rendered these messages as no tokens; give a message")
    limit = getattr(getattr(model, "sampler", None), "context_length", None)
    if limit is not None and len(ids) >= limit:
        raise ContextOverflowError(
            f"the conversation is {len(ids)} tokens but the model's context is {limit} (and the reply needs room); "
            "start a new one (/reset) or drop earlier messages")
    return ids


def run_chat(model: Any, ids: list[int], template: Any, settings: GenerationSettings | None,
             cancel: threading.Event | None, state: Any = None,
             keep: Callable[[Any], None] | None = None) -> tuple[Iterator[str], Callable[[], ChatReply]]:
    """One reply to the rendered conversation ``ids``: (its text pieces, a function giving the ChatReply after).
    ``state``: a session's KV state to resume; ``keep(state)`` receives the run's state at the end (default:
    the model's prefix cache keeps it)."""
    resolved = resolve(settings or GenerationSettings(), model.defaults)
    eot = frozenset(int(i) for i in template.end_of_turn_token_ids)
    resolved = replace(resolved, stop_token_ids=resolved.stop_token_ids | eot)
    results: list[Any] = []

    def start(gen: Any, prompt: list[int]) -> list[int]:
        return model._kv_start(gen, prompt, state)

    def done(gen: Any) -> None:
        kv = model._kv_state(gen)
        if keep is not None:
            keep(kv)
        elif kv is not None and hasattr(model, "prefix_cache"):
            model.prefix_cache.put(kv)

    def pieces() -> Iterator[str]:
        for _row, piece in model._run_ids([ids], resolved, cancel, results, start=start, done=done):
            yield piece

    def finish() -> ChatReply:
        c = results[0]
        return ChatReply(message={"role": "assistant", "content": c.text},
                         finish_reason=FINISH.get(c.finish_reason, c.finish_reason),
                         usage={"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids),
                                "total_tokens": c.prompt_tokens + len(c.token_ids), "cached_tokens": c.cached_tokens},
                         completion=c)

    return pieces(), finish


class ChatSession:
    """A conversation with a model that keeps its messages and KV cache: each :meth:`send` runs only the new
    tokens.  Not for several threads at once (one conversation is one sequence of turns)."""

    def __init__(self, model: Any, *, system: str | None = None, settings: GenerationSettings | None = None,
                 template: Any = None, tools: Any = None) -> None:
        self.model, self.settings, self.tools = model, settings, tools
        self.template = template_of(model, template)
        self.messages: list[dict[str, Any]] = []
        self._state: Any = None
        self.last_reply: ChatReply | None = None
        if system is not None:
            self.set_system(system)

    def set_system(self, text: str) -> None:
        """Replace (or add) the system message; the cache is kept up to where the conversation changes."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"the system message must be a string, got {type(text).__name__}")
        rest = [m for m in self.messages if m.get("role") != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest

    def reset(self, system: str | None = None) -> None:
        """Forget the conversation (keeping the system message unless a new one is given) and its cache."""
        kept = [m for m in self.messages if m.get("role") == "system"] if system is None else []
        self.messages, self._state, self.last_reply = kept, None, None
        if system:
            self.set_system(system)

    def send(self, content: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None) -> ChatReply:
        """Add a user message and generate the reply (added to :attr:`messages`)."""
        stream = self.stream(content, settings, cancel)
        for _ in stream:
            pass
        assert stream.reply is not None
        return stream.reply

    def stream(self, content: str, settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> ChatStream:
        """Add a user message; the reply's pieces as they come.  A cancelled reply keeps its text so far."""
        if not isinstance(content, str):
            raise InvalidArgumentError(f"a message's content must be a string, got {type(content).__name__}")
        messages = [*self.messages, {"role": "user", "content": content}]
        ids = chat_ids(self.model, self.template, messages, tools=self.tools)   # refused: nothing changes
        merged = settings.over(self.settings or GenerationSettings()) if settings else self.settings
        kept: list[Any] = []
        pieces, finish = run_chat(self.model, ids, self.template, merged, cancel, self._state, keep=kept.append)
        texts: list[str] = []

        def run() -> Iterator[str]:
            self._state = None   # taken by the run (a shared buffer is written in place)
            try:
                for piece in pieces:
                    texts.append(piece)
                    yield piece
            except (CancelledError, KeyboardInterrupt):
                self.messages = [*messages, {"role": "assistant", "content": "".join(texts)}]
                raise
            self._state = kept[0] if kept else None

        def done() -> ChatReply:
            reply = finish()
            self.messages = [*messages, dict(reply.message)]
            self.last_reply = reply
            return reply

        return ChatStream(run(), done)
