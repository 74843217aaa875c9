"""A request-body size limit for any ASGI application (a pure ASGI middleware, so it also bounds
multipart uploads and bodies sent without a ``Content-Length``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import error_body

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyLimit:
    """Answers 413 (OpenAI's error shape) to a request whose body exceeds ``max_bytes``, before the
    application sees it: a declared ``Content-Length`` over the limit is refused at once, other bodies
    are read up to the limit (so memory stays bounded) and handed on whole."""

    def __init__(self, app: Callable, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive; got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, size, at_least=True)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int, at_least: bool = False) -> None:
        message = (f"the request body is {'over ' if at_least else ''}{size} bytes; this server accepts at most "
                   f"{self.max_bytes} bytes per request")
        body = json.dumps(error_body(message, code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
