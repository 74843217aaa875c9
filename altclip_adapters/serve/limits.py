"""Bounds on what one connection can hold: the request-body size and read time (a pure ASGI middleware, so it
also bounds multipart uploads and bodies sent without a ``Content-Length``), and the time a client may take to
send a request's headers (a uvicorn protocol: headers are read before any ASGI code runs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from altclip_adapters.serve.errors import error_body

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyLimit:
    """Answers 413 (OpenAI's error shape) to a request whose body exceeds ``max_bytes``, and 408 to one whose
    body takes longer than ``timeout`` seconds to arrive, before the application sees it: a declared
    ``Content-Length`` over the limit is refused at once, other bodies are read up to the limit (so memory
    stays bounded) and handed on whole. ``reject(reason)``, when given, is told of each refusal."""

    def __init__(self, app: Callable, max_bytes: int, timeout: float = 30.0, reject: Callable[[str], None] | None = None):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive; got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.reject = reject

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, "request_too_large", self._too_large(int(declared)))
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                return await self._refuse(send, 408, "request_timeout",
                                          f"the request body did not arrive within {self.timeout:g} s ({size} bytes came)")
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, 413, "request_too_large", self._too_large(size, at_least=True))
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

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (f"the request body is {'over ' if at_least else ''}{size} bytes; this server accepts at most "
                f"{self.max_bytes} bytes per request")

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        if self.reject is not None:
            self.reject(code)
        body = json.dumps(error_body(message, code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete ``seconds`` after it
    opened or after its previous response (slow clients: uvicorn itself waits for headers forever).
    Pass as ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._headers_overdue)

        def _headers_overdue(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete  # no request of this connection is being handled
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
