"""Putting the server together: the application for an embedder and an optional embedding folder, uvicorn's
settings (timeouts, connection cap, graceful stop), and a uvicorn server in a background thread (for
notebooks, tests and the load benchmark)."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from altclip_adapters.serve.app import create_app
from altclip_adapters.serve.batching import BatchHandler
from altclip_adapters.serve.files import ThumbnailCache
from altclip_adapters.serve.folder import open_folder
from altclip_adapters.serve.limits import header_timeout_protocol
from altclip_adapters.serve.settings import Connections, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from altclip_adapters.inference.embedder import Embedder


def default_thumbnail_cache() -> Path:
    """``$XDG_CACHE_HOME/altclip-adapters/thumbnails`` (``~/.cache/...`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "altclip-adapters" / "thumbnails"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_model_name(model: str) -> str:
    """The name clients pass as ``model`` for ``model`` (a registry name, hub id or checkpoint folder): the
    registry name when it is one (``BAAI/AltCLIP`` -> ``AltCLIP``), else the last part of the hub id or folder
    (never an absolute path of the server's disk)."""
    from altclip_adapters.model.registry import find

    card = find(model)
    if card is not None:
        return card.name
    return Path(str(model).rstrip("/\\")).name or str(model)


def build_app(
    embedder: Embedder,
    settings: ServeSettings,
    *,
    folder: str | Path | None = None,
    image_base: str | Path = ".",
    thumbnail_cache: str | Path | None = None,
    max_batch_size: int = 64,
    max_wait: float = 0.005,
) -> FastAPI:
    """The application serving ``embedder`` (built with ``num_workers=0``) and, when ``folder`` is given,
    search over that embedding folder, its image files (paths in its metadata read relative to ``image_base``,
    the servable root: files outside it are never served) and their thumbnails (cached under
    ``thumbnail_cache``, default :func:`default_thumbnail_cache`).

    Raises FileNotFoundError for a folder without embeddings and ValueError when the folder's embeddings do not
    have the embedder's dimension. A folder whose index cannot be read is served (searches answer 503, ``/ready``
    says why) after one logged warning.
    """
    handler = BatchHandler(embedder, max_batch_size=max_batch_size, max_wait=max_wait)
    served = thumbnails = None
    if folder is not None:
        served = open_folder(folder, image_base=image_base, dim=handler.dim)
        thumbnails = ThumbnailCache(thumbnail_cache or default_thumbnail_cache(), max_image_pixels=settings.max_image_pixels)
    return create_app(handler, settings, served=served, image_base=image_base, thumbnails=thumbnails)


def uvicorn_config(app: FastAPI, *, host: str, port: int, connections: Connections | None = None,
                   log_level: str = "info", **kwargs: Any):
    """The ``uvicorn.Config`` every server of the package runs with (h11 with a header timeout; ``connections``:
    default :class:`Connections`)."""
    import uvicorn

    connections = connections or Connections()
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          http=header_timeout_protocol(connections.header_timeout), timeout_keep_alive=connections.keep_alive,
                          limit_concurrency=connections.limit_concurrency,
                          timeout_graceful_shutdown=connections.graceful_timeout, **kwargs)


class ServerThread:
    """Runs ``app`` with uvicorn in a daemon thread on ``host`` (loopback by default) and ``port`` (0: a
    free one), as a context manager: ``with ServerThread(app) as server: httpx.get(server.url + "/v1/models")``.
    Entering returns once the server accepts connections (or raises RuntimeError after ``timeout`` s)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0,
                 log_level: str = "warning", connections: Connections | None = None):
        import uvicorn

        self.host, self.port, self.timeout = host, port, timeout
        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=port, connections=connections, log_level=log_level))
        self.url = ""
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="altclip-serve")
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.timeout)
            self._thread = None
