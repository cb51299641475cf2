"""The HTTP face of ``edgegen serve``: a FastAPI application speaking OpenAI's API over loaded artifacts.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streamed over SSE
with ``stream: true``), ``POST /v1/images/generations`` (b64_json PNGs), ``GET /health``, ``GET /metrics``
(Prometheus text) and the web page at ``/`` (``static/``).  With an API key, ``/v1/*`` and ``/metrics`` want
``Authorization: Bearer KEY``.  Errors are OpenAI's error JSON: 400 for bad input (the runtime's one line),
401, 404 (unknown model or path), 413 (body over the limit), 429 (the model's queue is full), 503 (shutting
down), 500 for a failed run.

Text models run through :class:`~edgegen.serve.scheduler.LMScheduler` (one worker per model, requests joining
at step boundaries); a client that disconnects cancels its request, which stops within one step (streams: the
SSE response is cancelled; plain requests: the connection is watched while they wait).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRouter
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from edgegen.errors import CancelledError, ContextOverflowError, EdgegenError, InvalidArgumentError
from edgegen.serve import protocol as p
from edgegen.serve.images import ImageWorker
from edgegen.serve.metrics import Metrics
from edgegen.serve.protocol import APIError, ChatBody, CompletionBody, ImageBody
from edgegen.serve.scheduler import LMRequest, LMScheduler, QueueFullError, RowResult, ShuttingDownError

STATIC = Path(__file__).parent / "static"
TEXT_FAMILIES = ("causal-lm", "rnn-lm")
#: OpenAI's bound on images per request
MAX_IMAGES = 10
#: how often a plain (not streamed) request looks whether its client is still there
WATCH_S = 0.2
ENDPOINTS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/images/generations", "/health", "/metrics",
             "/")


@dataclass(frozen=True)
class Limits:
    """Per-server limits: rows a text model runs at once, requests that may wait per model, body bytes."""

    max_batch: int = 16
    max_queue: int = 64
    max_request_bytes: int = 4 << 20


@dataclass
class Served:
    """One model the server answers for, and its worker."""

    name: str
    family: str
    model: Any
    created: int
    scheduler: LMScheduler | None = None
    images: ImageWorker | None = None

    def close(self, wait: bool) -> None:
        if self.scheduler is not None:
            self.scheduler.close(timeout=10.0 if wait else 0.0)
        if self.images is not None:
            self.images.close()


class Server:
    """The loaded models, their workers and the metrics; :attr:`app` is the ASGI application."""

    def __init__(self, models: Mapping[str, Any], *, api_key: str | None = None, limits: Limits = Limits()) -> None:
        self.limits, self.api_key, self.metrics = limits, api_key, Metrics()
        self.closing = False
        self.served: dict[str, Served] = {}
        for name, model in models.items():
            family = model.artifact.manifest.family
            served = Served(name, family, model, p.now())
            if family in TEXT_FAMILIES:
                served.scheduler = LMScheduler(model, name=name, max_batch=limits.max_batch,
                                               max_queue=limits.max_queue, metrics=self.metrics.for_model(name))
            else:
                served.images = ImageWorker(model, name=name, max_queue=limits.max_queue,
                                            metrics=self.metrics.for_model(name))
            self.served[name] = served
        self.app = _Guard(build_app(self), self)

    def close(self, wait: bool = True) -> None:
        """Stop every worker (running requests end with a 503); safe to call twice."""
        self.closing = True
        for served in self.served.values():
            served.close(wait)

    def lookup(self, name: str | None, kind: str) -> Served:
        """The model a request names, of ``kind`` "text" or "image" (images: may be left out if only one)."""
        names = ", ".join(self.served) or "none"
        if name is None:
            candidates = [s for s in self.served.values() if (s.images is not None) == (kind == "image")]
            if len(candidates) == 1:
                return candidates[0]
            raise APIError(400, f"model is required: this server serves {names}", param="model")
        served = self.served.get(name)
        if served is None:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {names} (GET /v1/models)",
                           param="model", code="model_not_found")
        if kind == "text" and served.scheduler is None:
            raise APIError(400, f"model {name!r} is a {served.family} artifact: it answers /v1/images/generations, "
                                "not text requests", param="model", code="model_not_supported")
        if kind == "image" and served.images is None:
            raise APIError(400, f"model {name!r} is a {served.family} artifact: it answers /v1/chat/completions and "
                                "/v1/completions, not image requests", param="model", code="model_not_supported")
        return served


def error_of(exc: BaseException) -> APIError:
    """Any failure as the OpenAI error it is answered with."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type="requests", code="rate_limit_exceeded")
    if isinstance(exc, ShuttingDownError):
        return APIError(503, str(exc), type="server_error", code="server_shutting_down")
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, InvalidArgumentError):
        return APIError(400, str(exc))
    if isinstance(exc, CancelledError):
        return APIError(499, str(exc), code="cancelled")
    if isinstance(exc, EdgegenError):
        return APIError(500, str(exc), type="server_error")
    return APIError(500, f"internal error: {type(exc).__name__}: {str(exc).strip()[:300]}", type="server_error")


def _json_error(exc: BaseException) -> JSONResponse:
    error = error_of(exc)
    return JSONResponse(error.body(), status_code=error.status)


def _validation_message(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
    where = ".".join(loc)
    return APIError(400, f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}", param=where or None)


class _Run:
    """One HTTP request's LM requests (one per prompt, ``n`` rows each), their events on one asyncio queue:
    ("piece", choice, text, logprobs), ("done", choice, RowResult), ("error", exc)."""

    def __init__(self, served: Served, prompts: list[tuple[list[int], Any]], n: int) -> None:
        assert served.scheduler is not None
        self.scheduler, self.n = served.scheduler, n
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.requests = [LMRequest(ids, settings, n, _Sink(self, i * n)) for i, (ids, settings) in enumerate(prompts)]
        self.prompt_tokens = sum(len(ids) for ids, _ in prompts)
        self.rows_left = len(prompts) * n
        self.scheduler.submit(self.requests)

    def put(self, item: tuple[Any, ...]) -> None:
        with contextlib.suppress(RuntimeError):        # the loop is closed: the server is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def events(self, request: Request | None) -> AsyncIterator[tuple[Any, ...]]:
        """The events until every row is done; with ``request``, stops (and cancels) when its client leaves."""
        try:
            while self.rows_left:
                if request is None:
                    item = await self.queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), WATCH_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        continue
                if item[0] == "error":
                    raise item[1]
                if item[0] == "done":
                    self.rows_left -= 1
                yield item
        finally:
            if self.rows_left:
                for r in self.requests:
                    self.scheduler.cancel(r)

    async def results(self, request: Request) -> list[RowResult] | None:
        """Every row's result in choice order, or None when the client went away first."""
        done: dict[int, RowResult] = {}
        async for item in self.events(request):
            if item[0] == "done":
                done[item[1]] = item[2]
        return None if self.rows_left else [done[i] for i in sorted(done)]


class _Sink:
    """A request's events onto its run's queue, from the worker thread."""

    def __init__(self, run: _Run, first_choice: int) -> None:
        self.run, self.first = run, first_choice

    def piece(self, row: int, text: str, logprobs: Any) -> None:
        self.run.put(("piece", self.first + row, text, list(logprobs)))

    def done(self, row: int, result: RowResult) -> None:
        self.run.put(("done", self.first + row, result))

    def error(self, exc: BaseException) -> None:
        self.run.put(("error", exc))


def _sse(data: Any) -> dict[str, str]:
    return {"data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}


def build_app(server: Server) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(server.close, True)

    app = FastAPI(title="edgegen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    limits = server.limits

    def authorized(request: Request) -> None:
        if server.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), server.api_key.encode()):
            raise APIError(401, "a missing or wrong API key: send the server's key as 'Authorization: Bearer KEY'",
                           type="invalid_request_error", code="invalid_api_key")

    async def on_error(_: Request, exc: Exception) -> Response:
        return _json_error(_validation_message(exc) if isinstance(exc, RequestValidationError) else exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                                     code="not_found" if exc.status_code == 404 else None).body(),
                            status_code=exc.status_code)

    for kind in (APIError, EdgegenError, RequestValidationError, Exception):
        app.add_exception_handler(kind, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    api = APIRouter(dependencies=[Depends(authorized)])

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(s) for s in server.served.values()]}

    @api.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name not in server.served:
            server.lookup(name, "any")
        return _model_card(server.served[name])

    @api.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request) -> Any:
        served = _text(request, body.model)
        lm = served.model
        p.check_n(body.n, limits.max_batch)

        def prepare() -> list[tuple[list[int], Any]]:
            ids, end_of_turn = p.chat_prompt(lm, body)
            asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
            param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
            settings = p.sampling_settings(body, max_tokens=p.token_budget(lm, len(ids), asked, param, "messages"),
                                           logprobs=body.logprobs, top_logprobs=body.top_logprobs,
                                           stop_token_ids=end_of_turn, response_format=body.response_format)
            p.check_settings(lm, settings)
            return [(ids, settings)]

        run = _Run(served, await run_in_threadpool(prepare), body.n)
        head = {"id": p.new_id("chatcmpl"), "created": p.now(), "model": served.name, "system_fingerprint": None}
        with_logprobs = bool(body.logprobs)
        if body.stream:
            return EventSourceResponse(_chat_stream(run, head, lm.tokenizer, with_logprobs, body.include_usage()))
        results = await run.results(request)
        if results is None:
            return Response(status_code=499)
        return {**head, "object": "chat.completion", "choices": [
            {"index": i, "message": {"role": "assistant", "content": r.text, "refusal": None},
             "logprobs": p.chat_logprobs(lm.tokenizer, r.logprobs) if with_logprobs else None,
             "finish_reason": p.FINISH[r.finish_reason]} for i, r in enumerate(results)],
            "usage": p.usage(run.prompt_tokens, sum(len(r.token_ids) for r in results))}

    @api.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Any:
        served = _text(request, body.model)
        lm = served.model
        p.check_n(body.n, limits.max_batch)
        if body.echo:
            raise APIError(400, "echo is not supported; leave it out (the prompt is yours already)", param="echo")
        if body.suffix:
            raise APIError(400, "suffix (insertion) is not supported; leave it out", param="suffix")

        def prepare() -> list[tuple[list[int], Any]]:
            out = []
            vocab = lm.tokenizer.get_vocab_size()
            for ids in p.completion_prompts(lm, body.prompt):
                if any(not 0 <= i < vocab for i in ids):
                    raise APIError(400, f"a prompt token id is outside the vocabulary [0, {vocab})", param="prompt")
                settings = p.sampling_settings(
                    body, max_tokens=p.token_budget(lm, len(ids), body.max_tokens, "max_tokens", "prompt"),
                    logprobs=True if body.logprobs is not None else None, top_logprobs=body.logprobs)
                p.check_settings(lm, settings)
                out.append((ids, settings))
            return out

        run = _Run(served, await run_in_threadpool(prepare), body.n)
        head = {"id": p.new_id("cmpl"), "created": p.now(), "model": served.name, "system_fingerprint": None}
        with_logprobs = body.logprobs is not None
        if body.stream:
            return EventSourceResponse(_completion_stream(run, head, lm.tokenizer, with_logprobs,
                                                          body.include_usage()))
        results = await run.results(request)
        if results is None:
            return Response(status_code=499)
        return {**head, "object": "text_completion", "choices": [
            {"index": i, "text": r.text, "finish_reason": p.FINISH[r.finish_reason],
             "logprobs": p.legacy_logprobs(lm.tokenizer, r.logprobs) if with_logprobs else None}
            for i, r in enumerate(results)],
            "usage": p.usage(run.prompt_tokens, sum(len(r.token_ids) for r in results))}

    @api.post("/v1/images/generations")
    async def images(body: ImageBody, request: Request) -> Any:
        served = server.lookup(body.model, "image")
        request.scope["edgegen.model"] = served.name
        worker = served.images
        assert worker is not None
        if body.response_format not in (None, "b64_json"):
            raise APIError(400, f"response_format {body.response_format!r} is not supported: ask for b64_json (this "
                                "server keeps no files to link to)", param="response_format")
        if body.size not in (None, "auto", worker.size):
            raise APIError(400, f"size {body.size!r} is not one model {served.name!r} draws: it draws {worker.size} "
                                "(the size it was converted for)", param="size")
        if not 1 <= body.n <= MAX_IMAGES:
            raise APIError(400, f"n must be between 1 and {MAX_IMAGES}, got {body.n}", param="n")
        cancel = threading.Event()
        future = asyncio.wrap_future(worker.submit(body.n, body.prompt, body.seed, cancel))
        while not future.done():
            await asyncio.wait([future], timeout=WATCH_S)
            if not future.done() and await request.is_disconnected():
                cancel.set()
                return Response(status_code=499)
        pngs = future.result()
        return {"created": p.now(), "data": [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": None}
                                             for png in pngs], "output_format": "png", "size": worker.size}

    @api.get("/metrics")
    async def metrics() -> Response:
        for s in server.served.values():
            if s.images is not None:
                server.metrics.set("edgegen_queue_length", s.images.waiting, model=s.name)
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(api)

    @app.get("/health")
    async def health() -> Response:
        if server.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(server.served)})

    @app.get("/")
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def _text(request: Request, name: str) -> Served:
        served = server.lookup(name, "text")
        request.scope["edgegen.model"] = served.name
        return served

    return app


def _model_card(served: Served) -> dict[str, Any]:
    card: dict[str, Any] = {"id": served.name, "object": "model", "created": served.created, "owned_by": "edgegen",
                            "family": served.family}
    if served.images is not None:
        card["sizes"] = [served.images.size]
    else:
        card["context_length"] = getattr(served.model.sampler, "context_length", None)
    return card


async def _chat_stream(run: _Run, head: dict[str, Any], tokenizer: Any, with_logprobs: bool,
                       include_usage: bool) -> AsyncIterator[dict[str, str]]:
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict[str, str]:
        return _sse({**head, "object": "chat.completion.chunk", "choices": [
            {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}], **extra})

    for i in range(run.rows_left):
        yield chunk(i, {"role": "assistant", "content": ""})
    completion_tokens = 0
    try:
        async for item in run.events(None):
            if item[0] == "piece":
                _, i, text, entries = item
                yield chunk(i, {"content": text}, p.chat_logprobs(tokenizer, entries) if with_logprobs else None)
            elif item[0] == "done":
                result = item[2]
                completion_tokens += len(result.token_ids)
                yield chunk(item[1], {}, finish=p.FINISH[result.finish_reason])
    except Exception as exc:  # noqa: BLE001  (the stream has begun: the error goes in it, as OpenAI sends one)
        yield _sse(error_of(exc).body())
        return
    if include_usage:
        yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                    "usage": p.usage(run.prompt_tokens, completion_tokens)})
    yield _sse("[DONE]")


async def _completion_stream(run: _Run, head: dict[str, Any], tokenizer: Any, with_logprobs: bool,
                             include_usage: bool) -> AsyncIterator[dict[str, str]]:
    extra = {"usage": None} if include_usage else {}
    offsets: dict[int, int] = {}
    completion_tokens = 0

    def chunk(i: int, text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, str]:
        return _sse({**head, "object": "text_completion", "choices": [
            {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}], **extra})

    try:
        async for item in run.events(None):
            if item[0] == "piece":
                _, i, text, entries = item
                logprobs = p.legacy_logprobs(tokenizer, entries, offsets.get(i, 0)) if with_logprobs else None
                offsets[i] = offsets.get(i, 0) + len(text)
                yield chunk(i, text, logprobs)
            elif item[0] == "done":
                result = item[2]
                completion_tokens += len(result.token_ids)
                yield chunk(item[1], "", finish=p.FINISH[result.finish_reason])
    except Exception as exc:  # noqa: BLE001  (as in _chat_stream)
        yield _sse(error_of(exc).body())
        return
    if include_usage:
        yield _sse({**head, "object": "text_completion", "choices": [],
                    "usage": p.usage(run.prompt_tokens, completion_tokens)})
    yield _sse("[DONE]")


class _Guard:
    """Pure ASGI around the app: refuses a body over the limit (413) before the app reads it, and counts every
    answer in ``edgegen_requests_total`` (by endpoint, model and status)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [0]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive, send_counted)
            if body is None:
                return
            replayed = [False]

            async def receive_replayed() -> dict[str, Any]:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, receive_replayed, send_counted)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else "other"
            self.server.metrics.inc("edgegen_requests_total", endpoint=endpoint, model=scope.get("edgegen.model", ""),
                                    status=str(status[0] or 499))

    async def _read_body(self, scope: dict[str, Any], receive: Any, send: Any) -> bytes | None:
        """The whole body (None: refused with 413 here, or the client left)."""
        limit = self.server.limits.max_request_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send, limit)
            return None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                await self._too_large(send, limit)
                return None
            if not message.get("more_body", False):
                return bytes(body)

    @staticmethod
    async def _too_large(send: Any, limit: int) -> None:
        error = APIError(413, f"the request body is over the server's limit of {limit} bytes (--max-request-bytes)",
                         code="request_too_large")
        payload = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
