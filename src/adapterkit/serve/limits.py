"""BodySizeLimit: refuse request bodies over a size with 413, before they are parsed.

A declared Content-Length over the limit is refused at once; otherwise the body is
read here (counting) and replayed to the app, so a body that streams past the limit
(chunked, or lying about its length) is refused too, before any parsing.
"""

from __future__ import annotations

import json

from adapterkit.serve.errors import BodyTooLargeError


class BodySizeLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: http.disconnect, when the client goes

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        error = BodyTooLargeError(f"the request body is larger than this server's limit of {self.max_bytes} bytes; "
                                  "send a shorter prompt")
        payload = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
