"""Run one HTTP request through an ASGI app in this process, yielding its response as it comes.

The ingress hands a replica the request it received (method, path, headers, body); the
replica runs it through the very app `adapterkit serve` runs (build_app), so validation,
errors, streaming and the OpenAI JSON are the single server's by construction. The response
comes back as a ResponseStart, then body chunks (SSE events as they are generated).

If the caller stops reading (its client went away: Ray cancels the call), the app sees
`http.disconnect`, as under uvicorn, and cancels the request's sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

# How long a request's app task may take to finish its clean-up (cancel sequences, end
# the adapter lease) after its caller went away, before it is cancelled outright.
CLEANUP_WAIT_S = 10.0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # starting with "/"
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


_END = object()


async def call_asgi(app, request: HttpRequest) -> AsyncIterator[ResponseStart | bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
             "root_path": "", "query_string": request.query_string, "headers": list(request.headers),
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_given = False

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(_END)

    task = asyncio.ensure_future(run())
    try:
        while True:
            message = await messages.get()
            if message is _END:
                task.result()  # the app failed before answering: raise its error
                raise RuntimeError(f"the app ended {request.method} {request.path} without a complete response")
            if message["type"] == "http.response.start":
                yield ResponseStart(message["status"], tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ())))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()  # done, or our caller went away: what uvicorn tells an app when its client disconnects
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), CLEANUP_WAIT_S)
        if not task.done():
            task.cancel()
