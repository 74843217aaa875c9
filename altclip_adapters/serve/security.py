"""Who may talk to the server: API keys (``Authorization: Bearer``, as OpenAI clients send them), the Host
names accepted (DNS rebinding), and the security headers on every response."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request

from altclip_adapters.serve.errors import APIError

API_KEY_ENV = "ALTCLIP_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def read_api_keys(keys: Sequence[str] = (), file: str | Path | None = None, *, environ: dict[str, str] | None = None) -> list[str]:
    """The accepted API keys: ``keys`` (``--api-key``), the lines of ``file`` (``--api-key-file``: one key per
    line; blank lines and ``#`` comments skipped) and the environment variable ``ALTCLIP_API_KEY``.
    Raises FileNotFoundError for a missing file and ValueError for a key with spaces or control characters."""
    environ = os.environ if environ is None else environ
    found = [*keys, *([environ[API_KEY_ENV]] if environ.get(API_KEY_ENV) else [])]
    if file is not None:
        lines = Path(file).read_text().splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    for i, key in enumerate(found):
        if not key or not key.isprintable() or " " in key:
            raise ValueError(f"API key {i + 1} is empty or holds spaces or control characters")
    return list(dict.fromkeys(found))


def allowed_hosts(host: str, extra: Iterable[str], loopback: bool) -> list[str] | None:
    """The Host header names accepted: while bound to loopback, loopback names plus ``extra``
    (``--allowed-hosts``); bound elsewhere, ``extra`` when given, else None (any: the operator's proxy decides)."""
    extra = list(extra)
    if loopback:
        return [*LOOPBACK_HOSTS, *([host] if host not in LOOPBACK_HOSTS else []), *extra]
    return extra or None


async def require_api_key(request: Request) -> None:
    """A route dependency: 401 (OpenAI's shape) unless the request carries one of ``app.state.api_keys``
    (none configured: everyone may)."""
    keys: tuple[bytes, ...] = request.app.state.api_keys
    if not keys:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY' (openai clients: "
                            "api_key=KEY)", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    candidate = given.strip().encode()
    if not any([hmac.compare_digest(candidate, key) for key in keys]):  # noqa: C419 - every key compared: no early exit to time
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class SecurityHeaders:
    """A pure ASGI middleware adding ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
    ``Referrer-Policy: no-referrer`` to every HTTP response (the page sets its own CSP)."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"))

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
