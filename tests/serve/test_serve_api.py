"""``edgegen serve`` as a client sees it: the official ``openai`` client against a real server process on a free
loopback port (one per module, plus a tiny-queue one for 429s), every answer checked against the runtime's own
result for the same request run alone."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import edgegen  # noqa: E402
import image_support  # noqa: E402
from edgegen import GenerationSettings  # noqa: E402
from edgegen.runtimes.text.logprobs import openai_logprobs  # noqa: E402
from serve_support import ServeProcess  # noqa: E402

KEY = "test-key-123"
dcgan_artifact = image_support.dcgan_artifact
#: greedy with a frequency penalty: the tiny random model's greedy text would repeat one token; this varies it
GREEDY = {"temperature": 0, "frequency_penalty": 0.5}


@pytest.fixture(scope="module")
def server(chat_lm_artifact, dcgan_artifact, tmp_path_factory):
    proc = ServeProcess([f"chat={chat_lm_artifact}", f"gan={dcgan_artifact}", "--api-key", KEY, "--provider", "cpu",
                         "--threads", "1", "--max-batch", "16", "--max-queue", "64",
                         "--max-request-bytes", "65536"], cwd=tmp_path_factory.mktemp("serve"))
    yield proc
    code = proc.stop()
    assert code == 0 and "Traceback" not in proc.output(), proc.output()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def lm(chat_lm_artifact):
    return edgegen.load(chat_lm_artifact, provider="cpu", threads=1)


def settings(max_tokens, **extra):
    return GenerationSettings(max_new_tokens=max_tokens, temperature=0, frequency_penalty=0.5, **extra)


def chat(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# -- models, chat, completions -----------------------------------------------------------------------------
def test_models_lists_every_artifact_with_its_family(client):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"chat", "gan"}
    assert cards["chat"].family == "causal-lm" and cards["gan"].family == "gan" and cards["gan"].sizes == ["8x8"]


def test_chat_gives_what_the_runtime_gives_alone(client, lm):
    got = client.chat.completions.create(model="chat", messages=chat("Hello"), max_tokens=12, **GREEDY)
    want = lm.chat(chat("Hello"), settings(12))
    assert got.object == "chat.completion" and got.model == "chat"
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want.content
    assert got.choices[0].finish_reason == want.finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage["prompt_tokens"],
                                                                      want.usage["completion_tokens"])


def test_a_streamed_chat_is_the_same_text_and_ends_with_usage(client, lm):
    stream = client.chat.completions.create(model="chat", messages=chat("Stream it"), max_tokens=14, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    want = lm.chat(chat("Stream it"), settings(14))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.content and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.usage["completion_tokens"]
    assert chunks[-1].usage.prompt_tokens == want.usage["prompt_tokens"]


def test_completions_with_several_prompts_and_n(client, lm):
    prompts = ["def fib(n):", "import os\n"]
    got = client.completions.create(model="chat", prompt=prompts, max_tokens=10, n=2, **GREEDY)
    want = lm.complete(prompts, settings(10))
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert [c.text for c in got.choices] == [want[0].text, want[0].text, want[1].text, want[1].text]
    assert got.usage.prompt_tokens == sum(c.prompt_tokens for c in want)
    assert got.usage.completion_tokens == 2 * sum(len(c.token_ids) for c in want)


def test_n_sampled_choices_differ_and_a_seed_repeats_them(client):
    def texts(seed):
        got = client.chat.completions.create(model="chat", messages=chat("Pick"), max_tokens=8, n=3,
                                             temperature=1.0, seed=seed)
        return [c.message.content for c in got.choices]

    first = texts(5)
    assert first == texts(5) and len(set(first)) > 1


def test_chat_logprobs_are_the_runtimes(client, lm):
    got = client.chat.completions.create(model="chat", messages=chat("Scores"), max_tokens=6, logprobs=True,
                                         top_logprobs=3, **GREEDY)
    want = lm.chat(chat("Scores"), settings(6, logprobs=True, top_logprobs=3))
    expected = openai_logprobs(lm.tokenizer, want.completion.logprobs)
    content = got.choices[0].logprobs.content
    assert [e.token for e in content] == [e["token"] for e in expected]
    np.testing.assert_allclose([e.logprob for e in content], [e["logprob"] for e in expected], atol=1e-5)
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in content)


def test_completion_logprobs_in_the_legacy_shape(client, lm):
    got = client.completions.create(model="chat", prompt="x = ", max_tokens=5, logprobs=2, **GREEDY)
    want = lm.complete(["x = "], settings(5, logprobs=True, top_logprobs=2))[0]
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(want.token_ids) and all(len(t) == 2 for t in lp.top_logprobs)
    np.testing.assert_allclose(lp.token_logprobs, [e.logprob for e in want.logprobs], atol=1e-5)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_json_schema_output_validates(client, lm):
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
              "required": ["color", "ok"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    got = client.chat.completions.create(model="chat", messages=chat("JSON please"), max_tokens=60,
                                         response_format=response_format, **GREEDY)
    value = json.loads(got.choices[0].message.content)
    assert set(value) == {"color", "ok"} and value["color"] in ("red", "green", "blue") and type(value["ok"]) is bool
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[0].message.content == lm.chat(chat("JSON please"), settings(
        60, response_format=response_format)).content


# -- images ---------------------------------------------------------------------------------------------------
def test_images_are_pngs_of_the_artifacts_size_and_seed(client, dcgan_artifact):
    from PIL import Image

    got = client.images.generate(model="gan", prompt="digits", n=3, size="8x8", response_format="b64_json",
                                 extra_body={"seed": 7})
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in got.data]
    assert [im.shape for im in images] == [(8, 8, 3)] * 3
    np.testing.assert_array_equal(np.stack(images), edgegen.load(dcgan_artifact, provider="cpu").sample(3, seed=7))


# -- errors ---------------------------------------------------------------------------------------------------
def test_a_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key"
    response = httpx.get(server.url + "/v1/models")
    assert response.status_code == 401 and "Bearer" in response.json()["error"]["message"]
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200          # open: a load balancer's probe


def test_an_unknown_model_is_404_naming_the_models(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=chat("hi"))
    assert info.value.code == "model_not_found" and "chat, gan" in info.value.message


@pytest.mark.parametrize("call, words", [
    (lambda c: c.chat.completions.create(model="chat", messages=chat("hi"), temperature=-1), ["temperature"]),
    (lambda c: c.chat.completions.create(model="chat", messages=chat("hi"), max_tokens=5000),
     ["context is 256", "max_tokens"]),
    (lambda c: c.chat.completions.create(model="chat", messages=[{"role": "robot", "content": "x"}]), ["role"]),
    (lambda c: c.chat.completions.create(model="chat", messages=chat("hi"), n=99), ["n must be"]),
    (lambda c: c.chat.completions.create(model="gan", messages=chat("hi")), ["gan artifact", "images"]),
    (lambda c: c.completions.create(model="chat", prompt="hi", echo=True), ["echo"]),
    (lambda c: c.images.generate(model="gan", prompt="x", size="512x512"), ["512x512", "8x8"]),
    (lambda c: c.images.generate(model="gan", prompt="x", response_format="url"), ["b64_json"]),
    (lambda c: c.images.generate(model="chat", prompt="x"), ["causal-lm"]),
], ids=["temperature", "context", "role", "n", "image-model-chat", "echo", "size", "url", "text-model-images"])
def test_bad_requests_are_400_in_openais_shape(client, call, words):
    with pytest.raises(openai.BadRequestError) as info:
        call(client)
    body = info.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert all(w in body["message"] for w in words), body["message"]


def test_a_body_over_the_limit_is_413_and_an_unknown_path_404(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(server.url + "/v1/completions", headers=headers,
                     json={"model": "chat", "prompt": "x" * 70_000})
    assert big.status_code == 413 and "65536" in big.json()["error"]["message"]
    assert httpx.get(server.url + "/v2/nothing", headers=headers).status_code == 404
    bad_json = httpx.post(server.url + "/v1/completions", headers={**headers, "content-type": "application/json"},
                          content=b"{not json")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]


def test_a_client_that_disconnects_stops_its_generation(server, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "chat", "prompt": "Once upon", "max_tokens": 240, **GREEDY}
    full = client.completions.create(**body)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 240

    def generated():
        text = httpx.get(server.url + "/metrics", headers=headers).text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith('edgegen_generated_tokens_total{model="chat"}')))

    before = generated()
    with httpx.stream("POST", server.url + "/v1/completions", headers=headers, json={**body, "stream": True}) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))      # the first token arrived
    time.sleep(1.0)
    assert generated() - before < 120                                            # not the 240 it asked for


# -- many clients at once ---------------------------------------------------------------------------------------
PROMPTS = [f"Question {i}: what is {i * 7} plus {'one ' * (i % 5)}?" for i in range(8)]


def test_32_clients_4_requests_each_all_complete_and_greedy_ones_match_alone(client, lm, server):
    """Mixed streaming and not, chat and completions; the greedy answers equal the same request run alone."""
    chat_want = {p: lm.chat(chat(p), settings(16)).content for p in PROMPTS}
    text_want = {p: lm.complete([p], settings(16))[0].text for p in PROMPTS}
    start = threading.Barrier(32)

    def one_client(i):
        start.wait()
        out = []
        for k in range(4):
            prompt, kind = PROMPTS[(i * 4 + k) % len(PROMPTS)], (i + k) % 4
            if kind == 0:
                r = client.chat.completions.create(model="chat", messages=chat(prompt), max_tokens=16, **GREEDY)
                out.append(("chat", prompt, r.choices[0].message.content, r.choices[0].finish_reason))
            elif kind == 1:
                chunks = list(client.chat.completions.create(model="chat", messages=chat(prompt), max_tokens=16,
                                                             stream=True, **GREEDY))
                out.append(("chat", prompt, "".join(c.choices[0].delta.content or "" for c in chunks),
                            chunks[-1].choices[0].finish_reason))
            elif kind == 2:
                r = client.completions.create(model="chat", prompt=prompt, max_tokens=16, **GREEDY)
                out.append(("text", prompt, r.choices[0].text, r.choices[0].finish_reason))
            else:   # sampled, streamed: complete, not compared
                chunks = list(client.completions.create(model="chat", prompt=prompt, max_tokens=16, stream=True,
                                                        temperature=0.9))
                out.append(("sampled", prompt, "".join(c.choices[0].text for c in chunks),
                            chunks[-1].choices[0].finish_reason))
        return out

    with ThreadPoolExecutor(32) as pool:
        results = [r for rs in pool.map(one_client, range(32)) for r in rs]
    assert len(results) == 128
    assert all(finish in ("stop", "length") for *_, finish in results)
    wrong = [(kind, prompt, text) for kind, prompt, text, _ in results
             if (kind == "chat" and text != chat_want[prompt]) or (kind == "text" and text != text_want[prompt])]
    assert not wrong, wrong[:3]
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'status="5' not in metrics and 'status="429"' not in metrics


@pytest.fixture(scope="module")
def tiny_queue_server(chat_lm_artifact, tmp_path_factory):
    proc = ServeProcess([str(chat_lm_artifact), "--provider", "cpu", "--threads", "1", "--max-batch", "1",
                         "--max-queue", "1"], cwd=tmp_path_factory.mktemp("serve-small"))
    yield proc
    proc.stop()


def test_a_full_queue_is_429_and_the_admitted_requests_complete(tiny_queue_server):
    small = openai.OpenAI(base_url=tiny_queue_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    start = threading.Barrier(12)

    def one(_):
        start.wait()
        try:
            chunks = list(small.chat.completions.create(model="artifact", messages=chat("go"), max_tokens=60,
                                                        stream=True, **GREEDY))
            return chunks[-1].choices[0].finish_reason
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded" and "--max-queue" in exc.message
            return 429

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(one, range(12)))
    assert 429 in outcomes and any(o in ("stop", "length") for o in outcomes), outcomes
    assert set(outcomes) <= {429, "stop", "length"}


# -- the page, health, metrics, Ctrl-C ------------------------------------------------------------------------
def test_the_page_is_served_with_nothing_from_elsewhere(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text and '/static/style.css' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        response = httpx.get(server.url + asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text    # no CDN
    assert "https://" not in page.text and "http://" not in page.text


def test_metrics_count_requests_tokens_and_first_token_times(server, client):
    client.chat.completions.create(model="chat", messages=chat("count me"), max_tokens=3, **GREEDY)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "# TYPE edgegen_time_to_first_token_seconds histogram" in text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['edgegen_requests_total{endpoint="/v1/chat/completions",model="chat",status="200"}'] >= 1
    assert values['edgegen_generated_tokens_total{model="chat"}'] >= 3
    assert values['edgegen_time_to_first_token_seconds_count{model="chat"}'] >= 1
    assert values['edgegen_time_to_first_token_seconds_bucket{model="chat",le="+Inf"}'] == \
        values['edgegen_time_to_first_token_seconds_count{model="chat"}']
    assert values['edgegen_queue_length{model="chat"}'] == 0


def test_ctrl_c_stops_the_server_cleanly(tiny_queue_server):
    assert tiny_queue_server.stop() == 0
    out = tiny_queue_server.output()
    assert "Traceback" not in out and "listening on http://127.0.0.1:" in out and "artifact (causal-lm, cpu)" in out
