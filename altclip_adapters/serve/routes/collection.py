"""The served collection's files: ``GET /files/{path}`` and ``GET /thumbnails/{path}`` (a JPEG, made once and
cached), for paths as search results link them (see :class:`..files.Collection` for what is servable)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from altclip_adapters.serve.errors import APIError
from altclip_adapters.serve.files import NotInCollection
from altclip_adapters.serve.security import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["collection"])


def served_file(request: Request, path: str) -> Path:
    served = request.app.state.served
    if served is None:
        raise APIError(404, f"not found: {path}", code="not_found")
    try:
        return served.collection.resolve(path)
    except NotInCollection:
        raise APIError(404, f"not found: {path} is not a file of the indexed collection", code="not_found") from None


@router.get("/files/{path:path}", response_class=FileResponse)
async def file(request: Request, path: str) -> FileResponse:
    return FileResponse(served_file(request, path))


@router.get("/thumbnails/{path:path}", response_class=FileResponse)
async def thumbnail(request: Request, path: str) -> FileResponse:
    thumbnails = request.app.state.thumbnails
    if thumbnails is None:
        raise APIError(404, "thumbnails are not served", code="not_found")
    source = served_file(request, path)
    try:
        made = await run_in_threadpool(thumbnails.get, source)
    except (ValueError, OSError) as e:
        raise APIError(404, f"no thumbnail: {path} is not a readable image ({e})", code="not_found") from e
    return FileResponse(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
