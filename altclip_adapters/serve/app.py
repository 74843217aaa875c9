"""The FastAPI application: OpenAI-compatible embeddings, search over an embedding folder, the search page,
health, metrics and admin; one router per concern in :mod:`.routes`, reading ``request.app.state``.

Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, the message naming the
problem. Requests pass, outermost first: metrics (when on), the Host check, security headers, CORS (only with
``cors_origins``), the body limit (size and read time), then the route (API key, validation, preparation of
the inputs, the shared forward pass behind :class:`~.batching.BatchHandler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from altclip_adapters.serve.errors import install_handlers
from altclip_adapters.serve.limits import BodyLimit
from altclip_adapters.serve.prepare import PixelBudget
from altclip_adapters.serve.routes import collection, embeddings, ops, page, search
from altclip_adapters.serve.security import SecurityHeaders
from altclip_adapters.serve.settings import ServeSettings

if TYPE_CHECKING:
    from pathlib import Path

    from altclip_adapters.serve.batching import BatchHandler
    from altclip_adapters.serve.files import ThumbnailCache
    from altclip_adapters.serve.folder import ServedFolder

def create_app(
    handler: BatchHandler,
    settings: ServeSettings,
    *,
    served: ServedFolder | None = None,
    image_base: str | Path = ".",
    thumbnails: ThumbnailCache | None = None,
) -> FastAPI:
    """The ASGI application. It starts ``handler`` when the server starts and stops it on shutdown (after the
    requests in flight: uvicorn's graceful shutdown).

    ``served``: the embedding folder to search (None: ``/search`` answers 404); ``image_base``: the servable
    root, kept for ``/admin/reload``; ``thumbnails``: where thumbnails are cached (None: ``/thumbnails``
    answers 404). Raises ImportError naming the extra when ``settings.metrics`` is on without prometheus-client.
    """
    from altclip_adapters.serve.metrics import Metrics, MetricsMiddleware

    metrics = Metrics(lambda: handler.pending) if settings.metrics else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        handler.start()
        try:
            yield
        finally:
            handler.stop()

    app = FastAPI(title="altclip serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    state = app.state
    state.settings, state.handler, state.processor = settings, handler, handler.embedder.processor
    state.served, state.image_base, state.thumbnails, state.metrics = served, image_base, thumbnails, metrics
    state.budget = PixelBudget(max(settings.pixel_budget, settings.max_image_pixels or 0), settings.pixel_wait)
    state.api_keys = tuple(key.encode() for key in settings.api_keys)
    state.created = int(time.time())
    state.probe_lock = asyncio.Lock()
    reject = metrics.reject if metrics is not None else None
    if metrics is not None:
        handler.on_batch = metrics.batch

    install_handlers(app, reject)
    for router in (embeddings.router, search.router, collection.router, ops.public, ops.private, page.router):
        app.include_router(router)
    app.mount("/page", StaticFiles(directory=page.PAGE), name="page")

    # middleware: the last added runs first
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout=settings.body_timeout, reject=reject)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(SecurityHeaders)
    if settings.allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts), www_redirect=False)
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
