"""What the operator chose for a server (no heavy import: the CLI reads the defaults for ``--help``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SERVE_MAX_IMAGE_PIXELS = 40_000_000
"""The server's default pixel limit (width x height of one image): a 40 MP photo decodes to 120 MB of RGB.
Lower than the other commands' (PIL's 179 MP), for an endpoint that strangers may reach."""

SERVE_PIXEL_BUDGET = 100_000_000
"""Decoded pixels in flight across all requests by default (about 300 MB of RGB); more wait."""


@dataclass
class ServeSettings:
    """What the operator chose. ``model_id``: the name clients pass as ``model`` (and ``/v1/models`` lists);
    ``allow_url_fetch``: fetch http(s) image URLs given to ``/v1/embeddings`` (off: a server must not fetch
    arbitrary URLs for anyone); ``max_request_bytes``: larger request bodies get 413; ``body_timeout``: seconds
    a request body may take to arrive (408 after); ``max_inputs``: most inputs in one embeddings request
    (OpenAI's limit is 2048); ``max_input_chars``: longest text input; ``max_k``: most results one search
    returns; ``max_image_pixels``: larger images (width x height) are refused before decoding (None: no limit);
    ``pixel_budget``: decoded pixels in flight across all requests, ``pixel_wait``: seconds a request waits
    for room before 503; ``api_keys``: accepted bearer keys (none: no authentication); ``allowed_hosts``: Host
    names accepted (None: any); ``cors_origins``: origins allowed cross-origin requests (none: CORS off);
    ``metrics``: serve ``/metrics``."""

    model_id: str
    allow_url_fetch: bool = False
    max_request_bytes: int = 32 * 2**20
    body_timeout: float = 30.0
    max_inputs: int = 2048
    max_input_chars: int = 32_768
    max_k: int = 100
    max_image_pixels: int | None = SERVE_MAX_IMAGE_PIXELS
    pixel_budget: int = SERVE_PIXEL_BUDGET
    pixel_wait: float = 30.0
    api_keys: Sequence[str] = ()
    allowed_hosts: Sequence[str] | None = ("localhost", "127.0.0.1", "::1", "[::1]")
    cors_origins: Sequence[str] = ()
    metrics: bool = True


@dataclass(frozen=True)
class Connections:
    """uvicorn's connection settings: ``header_timeout``: seconds a client may take to send a request's headers
    (closed after); ``keep_alive``: seconds an idle keep-alive connection stays open; ``limit_concurrency``:
    most connections and requests at once (more get 503); ``graceful_timeout``: on SIGTERM, seconds the requests
    in flight may take to finish."""

    header_timeout: float = 10.0
    keep_alive: int = 5
    limit_concurrency: int | None = 1024
    graceful_timeout: int = 30
