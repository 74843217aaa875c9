"""Operating the server: ``GET /health`` (liveness: answers while the process lives), ``GET /ready`` (the model
answers: a forward pass succeeded in the last ``READY_WINDOW_S`` seconds, else a tiny one is run now; and the
folder can be searched), ``GET /metrics`` (Prometheus) and ``POST /admin/reload`` (re-open the folder)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from altclip_adapters.serve.errors import APIError
from altclip_adapters.serve.folder import open_folder
from altclip_adapters.serve.prepare import tokenize
from altclip_adapters.serve.schemas import Health, Ready, Reloaded
from altclip_adapters.serve.security import require_api_key

READY_WINDOW_S = 30.0
PROBE_TIMEOUT_S = 10.0

public = APIRouter(tags=["operations"])
private = APIRouter(dependencies=[Depends(require_api_key)], tags=["operations"])


@public.get("/health", response_model=Health)
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _model_problem(request: Request) -> str | None:
    """None when the model answered recently (or answers a tiny forward pass now), else what went wrong."""
    state = request.app.state
    handler = state.handler
    async with state.probe_lock:
        failure = handler.last_failure
        recent = handler.last_success is not None and time.monotonic() - handler.last_success < READY_WINDOW_S
        if recent and (failure is None or failure[0] < handler.last_success):
            return None
        try:
            ids = await run_in_threadpool(tokenize, state.processor, ["ready"])
            await asyncio.wait_for(handler.embed_tokens(ids), PROBE_TIMEOUT_S)
        except TimeoutError:
            return f"the model did not answer a one-token forward pass within {PROBE_TIMEOUT_S:g} s"
        except Exception as e:  # noqa: BLE001 - whatever broke is what /ready reports
            return f"the model fails: {type(e).__name__}: {e}"
    return None


@public.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    problems = [p for p in (await _model_problem(request), state.served.problem if state.served else None) if p]
    last = state.handler.last_success
    body = {"status": "not ready" if problems else "ready", "model": state.settings.model_id,
            "checked_s_ago": None if last is None else round(time.monotonic() - last, 3), "problems": problems}
    return JSONResponse(body, status_code=503 if problems else 200)


@private.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    if request.app.state.metrics is None:
        raise APIError(404, "metrics are off on this server (--no-metrics)", code="not_found")
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@private.post("/admin/reload", response_model=Reloaded)
async def reload(request: Request) -> dict[str, Any]:
    """Re-open the embedding folder (new shards, a rebuilt index) without a restart; the old one serves until
    the new one is open, and stays when the new one cannot be opened (409)."""
    state = request.app.state
    if state.served is None:
        raise APIError(404, "no embedding folder is served: start the server as altclip serve DIR", code="no_index")
    try:
        served = await run_in_threadpool(open_folder, state.served.folder, image_base=state.image_base, dim=state.handler.dim)
    except (OSError, ValueError) as e:
        raise APIError(409, f"cannot reload {state.served.folder}: {e}; still serving what was open", code="reload_failed") from e
    state.served = served
    return {"folder": served.folder.name, "counts": {m: served.index.count(m) for m in served.index.modalities}}
