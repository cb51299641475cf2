"""OpenAI's HTTP API in edgegen's terms: request bodies -> prompt ids and generation settings, results -> the
response and chunk objects (``chat.completion``, ``chat.completion.chunk``, ``text_completion``), errors -> its
error JSON.

Bodies are pydantic models that ignore fields they do not know (clients send ``user``, ``metadata``...); the
values are checked where the runtime checks them (``resolve``), so a bad temperature gets the runtime's one
line.  ``max_tokens`` is bounded by the context: asking for more than the prompt leaves room for is a 400
(``context_length_exceeded``, as OpenAI answers it); left out, it is the artifact's default cut to the room.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgegen.errors import ContextOverflowError
from edgegen.runtimes.text.settings import GenerationSettings, resolve

#: edgegen's finish reasons in OpenAI's words (an end-of-sequence token and a stop string are both "stop")
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class APIError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Sampling(_Body):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None                  # not OpenAI's; llama.cpp's server and vLLM take it too
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))


class ChatBody(_Sampling):
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None               # the legacy API: how many alternatives (0: the token's own only)
    echo: bool = False
    suffix: str | None = None


class ImageBody(_Body):
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    seed: int | None = None                   # not OpenAI's: same seed, same images


def check_n(n: int, max_batch: int) -> None:
    if not 1 <= n <= max_batch:
        raise APIError(400, f"n must be between 1 and {max_batch} (the server's --max-batch), got {n}", param="n")


def sampling_settings(body: _Sampling, *, max_tokens: int | None, logprobs: bool | None = None,
                      top_logprobs: int | None = None, stop_token_ids: Sequence[int] = (),
                      response_format: Any = None) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, stop=body.stop,
        seed=body.seed, logprobs=logprobs, top_logprobs=top_logprobs,
        stop_token_ids=tuple(stop_token_ids) or None, response_format=response_format)


def token_budget(lm: Any, prompt_tokens: int, asked: int | None, param: str, prompt_param: str) -> int:
    """The max_new_tokens of a request: ``asked`` if the context has room for it after the prompt (else 400),
    or the artifact's default cut to that room."""
    limit = getattr(lm.sampler, "context_length", None)
    if limit is not None and prompt_tokens >= limit:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens but the model's context is {limit} (and the "
                            "reply needs room); shorten it", param=prompt_param,
                       code="context_length_exceeded")
    if asked is not None:
        if asked < 1:
            raise APIError(400, f"{param} must be a positive integer, got {asked}", param=param)
        if limit is not None and prompt_tokens + asked > limit:
            raise APIError(400, f"this model's context is {limit} tokens, but {prompt_tokens + asked} were asked for "
                                f"({prompt_tokens} in the prompt, {asked} in {param}); lower {param} or shorten the "
                                "prompt", param=param, code="context_length_exceeded")
        return asked
    default = resolve(GenerationSettings(), lm.defaults).max_new_tokens
    return default if limit is None else min(default, limit - prompt_tokens)


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI's messages with content given as parts (``[{"type": "text", "text": ...}]``) joined to strings."""
    out = []
    for i, message in enumerate(messages):
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            parts = message["content"]
            kinds = {p.get("type") if isinstance(p, dict) else type(p).__name__ for p in parts}
            if kinds - {"text"}:
                others = ", ".join(sorted(map(str, kinds - {"text"})))
                raise APIError(400, f"message {i} has content parts of type {others}; this server's models take "
                                    "text parts only", param=f"messages.{i}.content")
            message = {**message, "content": "".join(str(p.get("text", "")) for p in parts)}
        out.append(message)
    return out


def chat_prompt(lm: Any, body: ChatBody) -> tuple[list[int], tuple[int, ...]]:
    """The conversation rendered by the model's own chat template: (prompt ids, its end-of-turn token ids)."""
    from edgegen.runtimes.text.chat import chat_ids, template_of

    if body.tools:
        raise APIError(400, "tools are not supported by this server yet; leave them out", param="tools")
    template = template_of(lm, None)          # InvalidArgumentError (400) for a model without one
    try:
        ids = chat_ids(lm, template, chat_messages(body.messages))
    except ContextOverflowError as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
    return ids, tuple(int(i) for i in template.end_of_turn_token_ids)


def completion_prompts(lm: Any, prompt: Any) -> list[list[int]]:
    """The prompt(s) of a completions request as token ids: a string, strings, token ids, lists of ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty: give some text to continue", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        ids = lm.encode(p) if isinstance(p, str) else [int(i) for i in p]
        if not ids:
            raise APIError(400, "a prompt encodes to no tokens: give some text to continue", param="prompt")
        out.append(ids)
    return out


def check_settings(lm: Any, settings: GenerationSettings) -> None:
    """The runtime's own checks, before anything is queued (InvalidArgumentError -> 400)."""
    resolve(settings, lm.defaults)


# -- responses --------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": 0}}


def chat_logprobs(tokenizer: Any, entries: Sequence[Any] | None) -> dict[str, Any] | None:
    from edgegen.runtimes.text.logprobs import openai_logprobs

    return None if entries is None else {"content": openai_logprobs(tokenizer, entries), "refusal": None}


def legacy_logprobs(tokenizer: Any, entries: Sequence[Any] | None, offset: int = 0) -> dict[str, Any] | None:
    """The completions API's logprobs: tokens, token_logprobs, top_logprobs, text_offset (from ``offset``)."""
    from edgegen.runtimes.text.logprobs import openai_logprobs

    if entries is None:
        return None
    content = openai_logprobs(tokenizer, entries)
    offsets = []
    for item in content:
        offsets.append(offset)
        offset += len(item["token"])
    return {"tokens": [c["token"] for c in content], "token_logprobs": [c["logprob"] for c in content],
            "top_logprobs": [{t["token"]: t["logprob"] for t in c["top_logprobs"]} for c in content],
            "text_offset": offsets}

