"""The search page: ``GET /`` and its assets under ``/page/`` (plain HTML, JS and CSS, no build step). Public:
it holds no data; with API keys on, it asks for a key once and sends it with every request it makes."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

PAGE = Path(__file__).parents[1] / "page"
CSP = ("default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(PAGE / "index.html", headers={"Content-Security-Policy": CSP})
