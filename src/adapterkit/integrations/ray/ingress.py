"""OpenAIIngress: the HTTP front of the Ray deployment. It maps the OpenAI `model` field to
Ray Serve's multiplexed model id, so an unchanged OpenAI client gets routed to a replica
that already holds its adapter, and forwards the request there as it came.

The replica answers through the single server's own app, so the API in front is the same:
chat/completions, completions (streamed or not), models, health, errors. What the ingress
adds is the failure of a replica: a replica that dies (or stops answering for
`request_timeout_s`) while it holds a request turns into an OpenAI error for that request
(503 `replica_unavailable`, 504 `replica_timeout`; an error event in a stream already
under way), never a hang, while Ray Serve starts its replacement.

Requests for the base or a start-up adapter (loaded on every replica) carry no
multiplexed id: any replica serves them. The admin load/unload endpoints are refused:
they would change one replica out of N.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from adapterkit.integrations.ray.asgi_call import HttpRequest, ResponseStart
from adapterkit.integrations.ray.options import RayServeOptions
from adapterkit.serve.config import ServeConfig
from adapterkit.serve.errors import AdminDisabledError, BodyTooLargeError, ServeError

# Paths whose JSON body names an adapter in `model`.
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
# The single server's default limit (the replica applies it too; the ingress must not buffer more).
MAX_BODY_BYTES = ServeConfig(base_name="-").max_body_bytes


class ReplicaUnavailableError(ServeError):
    """The replica holding the request died (Ray Serve replaces it) or cannot be reached."""

    status = 503
    type = "server_error"
    code = "replica_unavailable"


class ReplicaTimeoutError(ServeError):
    status = 504
    type = "server_error"
    code = "replica_timeout"


def multiplexed_model_id(path: str, body: bytes, options: RayServeOptions) -> str:
    """The adapter a request names, as Ray's multiplexed model id; "" for none (any replica)."""
    if path not in GENERATION_PATHS:
        return ""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return ""  # the replica's app answers the 400
    if not isinstance(model, str) or not model or model == options.base_name or model in options.adapters:
        return ""
    return model


class OpenAIIngress:
    def __init__(self, replicas, options: RayServeOptions) -> None:
        self.replicas = replicas  # a DeploymentHandle to AdapterReplica
        self.options = options

    async def __call__(self, request: Request) -> Response:
        """Every HTTP request of the application (Ray Serve sends a Starlette response back as it streams)."""
        path = _app_path(request)
        try:
            if path in ADMIN_PATHS:
                raise AdminDisabledError(
                    f"{path} is off behind Ray Serve: it would change one replica of {self.options.replicas}. "
                    "Serve store refs (name@tag) instead, loaded by whichever replica needs them, or pass "
                    "--adapter NAME=DIR at start")
            body = await _bounded_body(request)
            model_id = multiplexed_model_id(path, body, self.options)
            forwarded = HttpRequest(request.method, path, request.url.query.encode(),
                                    tuple((k.lower(), v) for k, v in request.headers.raw), body)
            handle = self.replicas.options(stream=True, multiplexed_model_id=model_id)
            parts = handle.forward.remote(forwarded)
            start = await self._next(parts, model_id)
        except ServeError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        assert isinstance(start, ResponseStart)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.headers if k.lower() != b"content-length"}
        content_type = start.header(b"content-type") or b""
        if not content_type.startswith(b"text/event-stream"):
            try:  # a whole reply (JSON): collect it, so a replica lost midway gives an error, not half a body
                chunks = [chunk async for chunk in self._rest(parts, model_id)]
            except ServeError as exc:
                return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
            return Response(b"".join(chunks), status_code=start.status, headers=headers)
        return StreamingResponse(self._stream(parts, model_id), status_code=start.status, headers=headers)

    async def _next(self, parts, model_id: str):
        """The replica's next part, or the OpenAI error for a replica that died or went silent."""
        import ray

        try:
            return await asyncio.wait_for(parts.__anext__(), self.options.request_timeout_s)
        except TimeoutError:
            parts.cancel()
            raise ReplicaTimeoutError(
                f"no answer from the replica serving {model_id or 'this request'} within "
                f"{self.options.request_timeout_s:g} s (request_timeout_s); retry") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ReplicaUnavailableError(
                f"the replica serving {model_id or 'this request'} stopped ({type(exc).__name__}); Ray Serve "
                "replaces it: retry") from None

    async def _rest(self, parts, model_id: str):
        while True:
            try:
                chunk = await self._next(parts, model_id)
            except StopAsyncIteration:
                return
            yield chunk

    async def _stream(self, parts, model_id: str):
        try:
            async for chunk in self._rest(parts, model_id):
                yield chunk
        except ServeError as exc:  # the status line is gone: report in the stream, as the single server does
            yield f"data: {json.dumps(exc.body(), separators=(',', ':'))}\n\ndata: [DONE]\n\n".encode()
        finally:
            parts.cancel()  # the client went away, or the stream ended: stop the replica's work


def _app_path(request: Request) -> str:
    """The path below the application's route prefix (`serve run --route-prefix /x` mounts it under /x)."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


async def _bounded_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError(f"the request body is larger than this server's limit of {MAX_BODY_BYTES} "
                                    "bytes; send a shorter prompt")
        chunks.append(chunk)
    return b"".join(chunks)
