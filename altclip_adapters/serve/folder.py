"""The embedding folder a server searches: its index, the files it may serve, and whether it can be searched.
Opened at start, again by ``POST /admin/reload``, and again when a search finds that a file of the folder changed
(``EmbeddingIndex.is_current``, checked at most every ``RECHECK_SECONDS``); the new one replaces the old only once
it is open."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from altclip_adapters.serve.files import Collection

if TYPE_CHECKING:
    from altclip_adapters.collection.search import EmbeddingIndex

log = logging.getLogger("altclip.serve")
RECHECK_SECONDS = 2.0  # how stale a search may be after `altclip embed` / `altclip index` changed the folder


@dataclass(frozen=True)
class ServedFolder:
    """``index`` over ``folder``; ``modality``: what queries are matched against (images when the folder has
    them); ``collection``: its servable files; ``problem``: why it cannot be searched (None: it can)."""

    folder: Path
    index: EmbeddingIndex
    modality: str
    collection: Collection
    problem: str | None


def open_folder(folder: str | Path, *, image_base: str | Path, dim: int) -> ServedFolder:
    """Open ``folder`` for serving. Raises FileNotFoundError for a folder without embeddings and ValueError when
    its embeddings are not ``dim``-dimensional. Logs (once, here) how many metadata paths lie outside
    ``image_base`` and a searcher that cannot be read (the folder is served, its searches answer 503)."""
    import numpy as np

    from altclip_adapters.collection.search import open_index

    index = open_index(folder, on_warning=log.warning)
    if index.dim != dim:
        raise ValueError(f"{folder} holds {index.dim}-d embeddings of {index.model} but the served model makes "
                         f"{dim}-d ones: serve the model that built it")
    modality = "image" if "image" in index.modalities else "text"
    try:
        image_paths = index.column("image_path", index.modalities[0])
    except KeyError:  # captions only: nothing to serve
        image_paths = []
    collection = Collection(image_paths, base=image_base)
    if collection.outside:
        log.warning("%s: %d image path(s) in the metadata lie outside the image base %s or name no image file, "
                    "and are not served (first: %r)", folder, collection.outside, collection.base, collection.first_outside)
    problem = None
    probe = np.zeros((1, dim), np.float32)
    probe[0, 0] = 1.0
    try:  # loads the searcher now: a broken index shows at start, not at the first user's search
        index.search(probe, 1, modality=modality)
    except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError, a bad file ValueError or OSError...
        problem = (f"the index of {folder} cannot be searched ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                   f"rebuild it with altclip index {folder}")
        log.warning("%s", problem)
    return ServedFolder(Path(folder), index, modality, collection, problem)


async def current_folder(state) -> ServedFolder | None:
    """``state.served``, first re-opened when a file of its folder was added, replaced or removed (new shards from
    an incremental ``altclip embed``, a rebuilt index): checked at most every ``RECHECK_SECONDS``, one re-open at a
    time, in a worker thread. A folder that cannot be re-opened keeps being served as it was (logged)."""
    from starlette.concurrency import run_in_threadpool

    served = state.served
    if served is None or time.monotonic() - getattr(state, "checked_at", 0.0) < RECHECK_SECONDS:
        return served
    lock = state.__dict__.setdefault("reload_lock", asyncio.Lock())
    async with lock:
        if time.monotonic() - getattr(state, "checked_at", 0.0) < RECHECK_SECONDS:
            return state.served
        try:
            if not await run_in_threadpool(state.served.index.is_current):
                state.served = await run_in_threadpool(open_folder, served.folder, image_base=state.image_base,
                                                       dim=state.handler.dim)
                log.info("%s changed: re-opened (%s)", served.folder, state.served.index)
        except (OSError, ValueError) as e:
            log.warning("%s changed but cannot be re-opened (%s); still serving what was open", served.folder, e)
        state.checked_at = time.monotonic()
    return state.served
