"""Putting the server together: the application for an embedder and an optional embedding folder, and a
uvicorn server running it in a background thread (for notebooks, tests and the load benchmark)."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .app import ServeSettings, create_app
from .batching import BatchHandler
from .files import Collection, ThumbnailCache

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..pipeline import Embedder


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
    search over that embedding folder, its image files (relative paths in its metadata read relative to
    ``image_base``) and their thumbnails (cached under ``thumbnail_cache``, default
    :func:`default_thumbnail_cache`).

    Raises FileNotFoundError for a folder without embeddings and ValueError when the folder's
    embeddings do not have the embedder's dimension.
    """
    from ..index import open_index
    from ..store import read_metadata

    handler = BatchHandler(embedder, max_batch_size=max_batch_size, max_wait=max_wait)
    index = collection = thumbnails = None
    if folder is not None:
        index = open_index(folder)
        if index.dim != handler.dim:
            raise ValueError(f"{folder} holds {index.dim}-d embeddings of {index.model} but the served model makes "
                             f"{handler.dim}-d ones: serve the model that built it")
        metadata = read_metadata(folder, index.modalities[0])
        paths = metadata.column("image_path").to_pylist() if "image_path" in metadata.column_names else []
        collection = Collection(paths, base=image_base)
        thumbnails = ThumbnailCache(thumbnail_cache or default_thumbnail_cache(), max_image_pixels=settings.max_image_pixels)
    return create_app(handler, settings, index=index, collection=collection, thumbnails=thumbnails)


class ServerThread:
    """Runs ``app`` with uvicorn in a daemon thread on ``host`` (loopback by default) and ``port`` (0: a
    free one), as a context manager: ``with ServerThread(app) as server: httpx.get(server.url + "/v1/models")``.
    Entering returns once the server accepts connections (or raises RuntimeError after ``timeout`` s)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0,
                 log_level: str = "warning"):
        import uvicorn

        self.host, self.port, self.timeout = host, port, timeout
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self.url = ""
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ServerThread:
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
