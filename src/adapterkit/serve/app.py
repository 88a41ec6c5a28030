"""build_app: the OpenAI-compatible ASGI app (FastAPI) over one ServerState.

Routes are thin: validate (pydantic, then lengths), take a lease on the adapter,
queue the sequences with the engine, and turn its events into OpenAI JSON or SSE.
Every error leaves as OpenAI's `{"error": {...}}` with a status that tells the
client whether retrying makes sense (see errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterkit.serve.errors import (
    AdminDisabledError,
    AuthenticationError,
    BadRequestError,
    DrainingError,
    ServeError,
    error_body,
)
from adapterkit.serve.generation import GenerationRun, check_lengths
from adapterkit.serve.limits import BodySizeLimit
from adapterkit.serve.metrics import CONTENT_TYPE
from adapterkit.serve.playground import add_playground
from adapterkit.serve.protocol import (
    UNSUPPORTED,
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraRequest,
    SamplingFields,
    UnloadLoraRequest,
)
from adapterkit.serve.state import ServeConfig, ServerState


def build_app(model, tokenizer, config: ServeConfig, store=None, state: ServerState | None = None) -> FastAPI:
    """The ASGI app serving `model` (an AdapterModel or a plain transformers model).

    Start-up adapters load here, before any port opens; the engine thread starts and
    stops with the app's lifespan (uvicorn runs it).
    """
    state = state or ServerState(model, tokenizer, config, store)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        state.engine.start()
        try:
            yield
        finally:
            state.engine.stop()

    app = FastAPI(title="adapterkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.add_middleware(BodySizeLimit, max_bytes=state.config.max_body_bytes)
    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        stats = state.engine.stats
        body = {"status": "draining" if state.draining else "ok", "running": stats.running,
                "waiting": stats.waiting, "free_rows": state.engine.free_rows,
                "resident_adapters": len(state.adapters.resident)}
        return JSONResponse(body, status_code=503 if state.draining else 200)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        _check_key(state, request, admin=False)
        created = int(time.time())
        base = {"id": state.config.base_name, "object": "model", "created": created, "owned_by": "adapterkit",
                "root": state.config.base_root or state.config.base_name, "parent": None,
                "max_model_len": state.config.max_model_len, "permission": []}
        adapters = [{"id": a["id"], "object": "model", "created": created, "owned_by": "adapterkit",
                     "root": a["root"], "parent": state.config.base_name, "max_model_len": state.config.max_model_len,
                     "permission": []} for a in state.adapters.listing()]
        return {"object": "list", "data": [base, *adapters]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_key(state, request, admin=False)
        prompts = _completion_prompts(state, body)
        return await _generate(state, request, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_key(state, request, admin=False)
        from adapterkit.training.encoding import encode_prompt

        try:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            prompt = encode_prompt(state.tokenizer, messages)
        except ValueError as exc:
            raise BadRequestError(str(exc), param="messages") from exc
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        return await _generate(state, request, body, [prompt], chat=True)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraRequest, request: Request):
        _check_key(state, request, admin=True)
        _refuse_if_draining(state)
        await state.adapters.load(body.lora_name, body.lora_path, replace=body.load_inplace)
        verb = "reloaded" if body.load_inplace else "added"
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' {verb} successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraRequest, request: Request):
        _check_key(state, request, admin=True)
        await state.adapters.unload(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    add_playground(app, state, check_key=_check_key)  # the web page at /
    return app


# --- requests ---------------------------------------------------------------------------
def _completion_prompts(state: ServerState, body: CompletionRequest) -> list[list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        texts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        texts = [prompt]  # one prompt given as token ids
    else:
        texts = list(prompt)
    if not texts:
        raise BadRequestError("prompt is an empty list; send at least one prompt", param="prompt")
    vocab = len(state.tokenizer)
    out = []
    for text in texts:
        if isinstance(text, str):
            out.append(list(state.tokenizer(text)["input_ids"]))
        else:
            if any(not 0 <= t < vocab for t in text):
                raise BadRequestError(f"prompt holds token ids outside the vocabulary [0, {vocab})", param="prompt")
            out.append(list(text))
    return out


async def _generate(state: ServerState, request: Request, body: SamplingFields, prompts: list[list[int]], *,
                    chat: bool):
    _refuse_if_draining(state)
    unsupported = body.unsupported()
    if unsupported:
        raise BadRequestError(
            f"{', '.join(unsupported)}: not supported by this server ({', '.join(UNSUPPORTED[k] for k in unsupported)}); "
            "leave the field out", param=unsupported[0])
    stop = body.stop_strings()
    if len(stop) > 16 or any(not isinstance(s, str) or not s for s in stop):
        raise BadRequestError("stop must be a non-empty string or a list of at most 16 non-empty strings", param="stop")
    if len(prompts) * body.n > state.config.max_batch:
        raise BadRequestError(
            f"{len(prompts)} prompts x n={body.n} = {len(prompts) * body.n} sequences, more than this server's "
            f"--max-batch {state.config.max_batch}; send fewer at once", param="n")
    max_tokens = [check_lengths(p, body.max_tokens, state.config.max_model_len,
                                param="messages" if chat else "prompt") for p in prompts]
    if body.merged_adapters is not None:
        lease = await state.adapters.acquire_combination(body.model, body.merged_adapters)
    else:
        lease = await state.adapters.acquire(body.model)
    try:
        temperature = 1.0 if body.temperature is None else body.temperature
        run = GenerationRun(state.engine, state.tokenizer, prompts, lease.adapter, n=body.n, max_tokens=max_tokens,
                            temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
                            seed=body.seed, stop=stop, ignore_eos=body.ignore_eos)
        run.start()
    except BaseException:
        state.adapters.release(lease)
        raise
    endpoint = "chat" if chat else "completions"
    reply = _Reply(state, run, body, chat)

    def finish() -> None:
        run.cancel()
        state.adapters.release(lease)
        state.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - run.started)
        if run.first_token_at is not None:
            state.metrics.time_to_first_token.labels(endpoint).observe(run.first_token_at - run.started)

    if body.stream:
        return _ManagedStream(reply.sse(), on_close=finish)
    try:
        return JSONResponse(await _unless_disconnected(request, reply.collect()))
    finally:
        finish()


class _Reply:
    """Formats a GenerationRun as OpenAI's completion / chat completion objects."""

    def __init__(self, state: ServerState, run: GenerationRun, body: SamplingFields, chat: bool) -> None:
        self.run, self.body, self.chat = run, body, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.body.model}

    async def collect(self) -> dict:
        async for _ in self.run.events():
            pass
        choices = []
        for c in self.run.choices:
            text = "".join(c.content)
            if self.chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": c.index, "text": text, "logprobs": None, "finish_reason": c.finish_reason})
        return {**self._head(self.object), "choices": choices, "usage": self.run.usage.as_dict()}

    async def sse(self):
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        try:
            if self.chat:  # OpenAI opens each chat choice with the role
                for c in self.run.choices:
                    yield _sse({**self._head(obj), "choices": [
                        {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}], **extra})
            async for choice, delta, reason in self.run.events():
                if self.chat:
                    part = {"index": choice.index, "delta": {"content": delta} if delta else {}, "logprobs": None,
                            "finish_reason": reason}
                else:
                    part = {"index": choice.index, "text": delta, "logprobs": None, "finish_reason": reason}
                yield _sse({**self._head(obj), "choices": [part], **extra})
            if include_usage:
                yield _sse({**self._head(obj), "choices": [], "usage": self.run.usage.as_dict()})
        except ServeError as exc:  # the status line is gone: report in the stream, as OpenAI does
            yield _sse(exc.body())
        yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class _ManagedStream(StreamingResponse):
    """An SSE response that always runs `on_close` (cancel the sequences, end the lease),
    whether the stream ends, fails, or the client disconnects mid-stream."""

    def __init__(self, content, on_close) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it if the client disconnects first (a non-streaming request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise _ClientGone()
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    """The client went away; nothing can be answered."""


# --- keys, draining, errors ---------------------------------------------------------------
def _check_key(state: ServerState, request: Request, *, admin: bool) -> None:
    key = state.config.api_key
    if key is None:
        if admin:
            raise AdminDisabledError("the admin endpoints are off: start the server with --api-key KEY and send "
                                     "'Authorization: Bearer KEY'")
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise AuthenticationError("missing or wrong API key: send 'Authorization: Bearer KEY' with the server's "
                                  "--api-key")


def _refuse_if_draining(state: ServerState) -> None:
    if state.draining:
        raise DrainingError()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(_request, exc: ServeError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors[:5])
        return JSONResponse(error_body(message or "invalid request body", "invalid_request_error",
                                       ".".join(loc) or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(_ClientGone)
    async def client_gone(_request, _exc):
        return Response(status_code=499)  # nobody reads it; uvicorn drops it

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)
