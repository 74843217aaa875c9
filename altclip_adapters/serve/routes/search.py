"""Search over the served embedding folder: ``GET /search?q=&k=`` (a text query) and ``POST /search``
(multipart: ``image`` file, ``k``): the k nearest rows, with rank, score (cosine similarity), metadata and links
to the file and its thumbnail."""

from __future__ import annotations

import math
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from altclip_adapters.serve.errors import APIError
from altclip_adapters.serve.folder import ServedFolder, current_folder
from altclip_adapters.serve.schemas import SearchResponse
from altclip_adapters.serve.security import require_api_key
from altclip_adapters.serve.routes.embeddings import embed_images, embed_texts

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["search"])


def jsonable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata columns as JSON values: binary columns left out, NaN and infinities as null."""
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in metadata.items() if not isinstance(v, (bytes, bytearray))}
    return jsonable_encoder(values)


async def served_folder(request: Request, k: int) -> ServedFolder:
    served: ServedFolder | None = await current_folder(request.app.state)
    if served is None:
        raise APIError(404, "no embedding folder is served: start the server as altclip serve DIR", code="no_index")
    limit = request.app.state.settings.max_k
    if not 1 <= k <= limit:
        raise APIError(400, f"k must be between 1 and {limit}; got {k}", param="k")
    return served


def _hit_json(request: Request, served: ServedFolder, hit: Any) -> dict[str, Any]:
    link = served.collection.link(hit.row)
    thumbnails = request.app.state.thumbnails is not None
    url = hit.metadata.get("url")
    remote = url if isinstance(url, str) and url.startswith(("http://", "https://")) else None
    return {
        "rank": hit.rank, "score": hit.score, "row": hit.row, "metadata": jsonable_metadata(hit.metadata),
        "file": f"/files/{quote(link)}" if link else remote,
        "thumbnail": f"/thumbnails/{quote(link)}" if link and thumbnails else remote,
    }


async def _answer(request: Request, served: ServedFolder, query: np.ndarray, k: int, about: dict[str, Any]) -> JSONResponse:
    if served.problem is not None:
        raise APIError(503, served.problem, code="index_unreadable", type="server_error")
    try:
        hits = await run_in_threadpool(served.index.search, query, k, modality=served.modality)
    except Exception as e:  # a file that broke after start: one line, not a 500
        raise APIError(503, f"the index of {served.folder} cannot be searched ({type(e).__name__}: {e}): rebuild it "
                            f"with altclip index {served.folder}", code="index_unreadable", type="server_error") from e
    return JSONResponse({**about, "k": k, "modality": served.modality,
                         "results": [_hit_json(request, served, h) for h in hits[0]]})


@router.get("/search", response_model=SearchResponse)
async def search_text(request: Request, q: Annotated[str, Query(description="the query, any language")],
                      k: Annotated[int, Query()] = 10) -> JSONResponse:
    served = await served_folder(request, k)
    if not q.strip():
        raise APIError(400, "the query q is empty", param="q")
    vectors, _ = await embed_texts(request, [q])
    return await _answer(request, served, vectors, k, {"query": q})


@router.post("/search", response_model=SearchResponse)
async def search_image(request: Request, image: Annotated[UploadFile, File(description="the query image")],
                       k: Annotated[int, Form()] = 10) -> JSONResponse:
    served = await served_folder(request, k)
    data = await image.read()
    name = f"the uploaded file {image.filename!r}" if image.filename else "the uploaded file"
    if not data:
        raise APIError(400, f"{name} is empty", param="image", code="invalid_image")
    vectors = await embed_images(request, [data], [name], "image")
    return await _answer(request, served, vectors, k, {"image": image.filename})
