"""Chat: a conversation rendered with the artifact's own template (as transformers renders it), the reply
generated until an end-of-turn token, a ChatSession whose turns reuse the KV cache, and the prefix cache for
independent requests; every reuse gives the tokens of a cold run of the same conversation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.errors import CancelledError, ContextOverflowError, InvalidArgumentError
from tests_support import write_chat_lm

torch = pytest.importorskip("torch")

GREEDY = GenerationSettings(temperature=0, max_new_tokens=10)


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def chat_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"chat-{request.param}")
    if request.param == "gpt2":
        hf = write_chat_lm(root / "hf", "gpt2", n_positions=256)
        art = edgegen.convert(hf, root / "art", optimize=False)
    else:
        hf = write_chat_lm(root / "hf", "llama", hidden_size=64, max_position_embeddings=256)
        art = edgegen.convert(hf, root / "art", attention="gqa")
    return hf, edgegen.load(art, provider="cpu")


@pytest.fixture(scope="module")
def plain_lm(tiny_lm_artifact):
    return edgegen.load(tiny_lm_artifact, provider="cpu")


def conversation(turns: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "You write short Python."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Write function number {i} that adds {i} to x."})
        if i < turns - 1:
            msgs.append({"role": "assistant", "content": f"def f{i}(x):\n    return x + {i}"})
    return msgs


def cold_tokens(lm, messages, settings=GREEDY) -> tuple[int, ...]:
    """The reply's tokens from a fresh run on the rendered conversation (no cache of any kind)."""
    lm.prefix_cache.clear()
    reply = lm.chat(messages, settings)
    lm.prefix_cache.clear()
    assert reply.usage["cached_tokens"] == 0
    return reply.completion.token_ids


def test_the_prompt_is_what_transformers_renders_and_the_reply_a_plain_continuation(chat_lm) -> None:
    from transformers import AutoTokenizer

    hf, lm = chat_lm
    msgs = conversation(2)
    expected = AutoTokenizer.from_pretrained(hf).apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    lm.prefix_cache.clear()
    reply = lm.chat(msgs, GREEDY)
    assert reply.usage["prompt_tokens"] == len(expected)
    gen = lm.generator(GREEDY)
    gen.append_tokens([list(expected)])
    while not gen.is_done():
        gen.generate_next_token()
    plain = gen.tokens(0)
    im_end = lm.tokenizer.token_to_id("<|im_end|>")
    if im_end in plain:                        # the template's end of turn ends the reply, as a stop
        plain = plain[:plain.index(im_end) + 1]
    assert list(reply.completion.token_ids) == plain
    assert reply.message == {"role": "assistant", "content": reply.completion.text}
    assert reply.usage["total_tokens"] == reply.usage["prompt_tokens"] + reply.usage["completion_tokens"]


def test_the_end_of_turn_token_ends_the_reply(chat_lm) -> None:
    _, lm = chat_lm
    template = lm.chat_session().template
    im_end = lm.tokenizer.token_to_id("<|im_end|>")
    assert im_end in template.end_of_turn_token_ids
    # a token the model picks first, made the end of turn: the reply stops there and says "stop"
    first = cold_tokens(lm, conversation(1))[0]
    forced = template.with_end_of_turn((first,))
    reply = lm.chat(conversation(1), GREEDY, template=forced)
    assert reply.finish_reason == "stop" and reply.completion.token_ids == (first,) and reply.content == ""


def test_session_turns_reuse_the_cache_and_equal_cold_runs(chat_lm) -> None:
    _, lm = chat_lm
    lm.prefix_cache.clear()
    session = lm.chat_session(system="You write short Python.", settings=GREEDY)
    previous = 0
    for i in range(3):
        reply = session.send(f"Write function number {i} that adds {i} to x.")
        history = session.messages[:-1]            # the conversation this reply answered
        assert reply.completion.token_ids == cold_tokens(lm, history)
        # at least the last turn's prompt is reused (the reply re-encoded from its text may part from the tokens
        # generated, a random model's most of all; a merge across the seam may cost a token or two)
        assert reply.usage["cached_tokens"] >= previous - 2
        previous = reply.usage["prompt_tokens"]
        assert session.messages[-1] == reply.message
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 3


def test_session_reset_and_system(chat_lm) -> None:
    _, lm = chat_lm
    session = lm.chat_session(system="A", settings=GREEDY)
    session.send("hello")
    session.set_system("B")
    assert session.messages[0] == {"role": "system", "content": "B"} and len(session.messages) == 3
    reply = session.send("again")
    assert reply.completion.token_ids == cold_tokens(lm, session.messages[:-1])
    session.reset()
    assert session.messages == [{"role": "system", "content": "B"}]
    assert session.send("hello").completion.token_ids == cold_tokens(lm, [{"role": "system", "content": "B"},
                                                                          {"role": "user", "content": "hello"}])


def test_prefix_cache_shares_a_system_prompt_between_requests(chat_lm) -> None:
    _, lm = chat_lm
    system = {"role": "system", "content": "You are a careful assistant who answers in Python code only."}
    lm.prefix_cache.clear()
    lm.chat([system, {"role": "user", "content": "first question"}], GREEDY)
    second = [system, {"role": "user", "content": "another question"}]
    reply = lm.chat(second, GREEDY)
    assert reply.usage["cached_tokens"] >= 10
    assert reply.completion.token_ids == cold_tokens(lm, second)
    assert lm.prefix_cache.hits >= 1


def test_sampled_chat_is_reproducible_with_reuse(chat_lm) -> None:
    _, lm = chat_lm
    sampled = GenerationSettings(temperature=0.9, top_p=0.9, seed=11, max_new_tokens=8)
    session = lm.chat_session(settings=sampled)
    session.send("one")
    reply = session.send("two")
    assert reply.usage["cached_tokens"] > 0
    assert reply.completion.token_ids == cold_tokens(lm, session.messages[:-1], sampled)


def test_chat_stream_gives_the_reply_piece_by_piece(chat_lm) -> None:
    _, lm = chat_lm
    stream = lm.chat_stream(conversation(1), GREEDY)
    pieces = list(stream)
    assert "".join(pieces) == stream.reply.content
    assert stream.reply.finish_reason in ("stop", "length")


def test_a_cancelled_turn_keeps_its_text_and_the_next_one_runs_cold(chat_lm) -> None:
    _, lm = chat_lm
    long = GenerationSettings(temperature=0, max_new_tokens=30, ignore_eos=True)
    session = lm.chat_session(settings=long)
    cancel = threading.Event()
    stream = session.stream("count", cancel=cancel)
    with pytest.raises(CancelledError):
        for i, _ in enumerate(stream):
            if i == 2:
                cancel.set()
    assert session.messages[-1]["role"] == "assistant"
    reply = session.send("more")                  # the cancelled run's cache is gone: a fresh (or prefix-cached) run
    assert reply.completion.token_ids == cold_tokens(lm, session.messages[:-1], long)


def test_a_model_without_a_template_refuses_and_names_the_fix(plain_lm) -> None:
    with pytest.raises(InvalidArgumentError, match=r"no chat template.*template='chatml'"):
        plain_lm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidArgumentError, match="no chat template"):
        plain_lm.chat_session()


def test_chatml_named_for_a_model_without_one(chat_lm, tmp_path: Path) -> None:
    hf = write_chat_lm(tmp_path / "hf", "gpt2", template=None, n_positions=256)
    lm = edgegen.load(edgegen.convert(hf, tmp_path / "art", optimize=False), provider="cpu")
    with pytest.raises(InvalidArgumentError, match="no chat template"):
        lm.chat([{"role": "user", "content": "hi"}])
    reply = lm.chat([{"role": "user", "content": "hi"}], GREEDY, template="chatml")
    _, with_template = chat_lm
    if with_template.sampler.kv_buffer == "grow":   # the same weights and template: the same reply
        assert reply.completion.token_ids == cold_tokens(with_template, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("messages, message", [
    ("hello", "list"),
    ([{"role": "bot", "content": "hi"}], "role 'bot'"),
    ([{"role": "user", "content": 3}], "content"),
    ([{"role": "user"}], "content"),
])
def test_bad_messages_are_one_line(chat_lm, messages, message) -> None:
    _, lm = chat_lm
    with pytest.raises(InvalidArgumentError, match=message) as info:
        lm.chat(messages)
    assert "\n" not in str(info.value)


def test_a_conversation_over_the_context_is_refused(chat_lm) -> None:
    _, lm = chat_lm
    long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(ContextOverflowError, match="/reset"):
        lm.chat(long)
    session = lm.chat_session(settings=GREEDY)
    with pytest.raises(ContextOverflowError):
        session.send("word " * 400)
    assert session.messages == []               # a refused turn changes nothing
