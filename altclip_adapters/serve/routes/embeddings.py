"""OpenAI-compatible embeddings and models: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``.

``/v1/embeddings`` takes OpenAI's request (``model``, ``input``: a string or a list of strings,
``encoding_format``: ``float`` or ``base64``, ``dimensions``: only the model's own, ``user``: ignored) and
infinity-emb's ``modality``: ``"text"`` (default) or ``"image"``, whose inputs are ``data:`` URIs, or http(s) URLs
when the operator allows fetching them. ``usage`` counts the tokens the model read; images count none.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from altclip_adapters.serve.errors import APIError
from altclip_adapters.serve.prepare import check_texts, declared_size, image_bytes, pixels, tokenize
from altclip_adapters.serve.schemas import EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList
from altclip_adapters.serve.security import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI-compatible"])


def check_model(request: Request, model: str) -> None:
    served = request.app.state.settings.model_id
    if model != served:
        raise APIError(404, f"the model {model!r} is not served here; this server serves {served!r} (GET /v1/models)",
                       param="model", code="model_not_found")


def _model_card(request: Request) -> dict[str, Any]:
    return {"id": request.app.state.settings.model_id, "object": "model", "created": request.app.state.created,
            "owned_by": "altclip-adapters"}


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    check_model(request, model)
    return _model_card(request)


async def embed_texts(request: Request, texts: list[str]) -> tuple[np.ndarray, int]:
    """(embeddings float32 [n, D], tokens read) of ``texts``: checked and tokenised here, embedded in shared batches."""
    state = request.app.state
    check_texts(texts, state.settings.max_input_chars)
    ids = await run_in_threadpool(tokenize, state.processor, texts)
    return await state.handler.embed_tokens(ids), sum(map(len, ids))


async def embed_images(request: Request, sources: list[str | bytes], names: list[str], param: str) -> np.ndarray:
    """Embeddings float32 [n, D] of encoded images (bytes, or URLs when allowed), each decoded under the pixel budget."""
    state, settings = request.app.state, request.app.state.settings

    async def one(source: str | bytes, name: str):
        size = declared_size(source)
        cost = size[0] * size[1] if size is not None else (settings.max_image_pixels or state.budget.total)
        return await state.budget.run(cost, lambda: pixels(state.processor, source, name, param, size=size,
                                                           max_image_pixels=settings.max_image_pixels,
                                                           allow_urls=settings.allow_url_fetch))

    prepared = await asyncio.gather(*(one(s, n) for s, n in zip(sources, names)))
    return await state.handler.embed_pixels(prepared)


def _embedding_json(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def embeddings(request: Request, body: EmbeddingRequest) -> JSONResponse:
    settings, handler = request.app.state.settings, request.app.state.handler
    check_model(request, body.model)
    if body.dimensions is not None and body.dimensions != handler.dim:
        raise APIError(400, f"dimensions={body.dimensions} cannot be honoured: {settings.model_id} makes "
                            f"{handler.dim}-dimensional embeddings and cannot shorten them (it is not a Matryoshka "
                            f"model); omit dimensions or pass {handler.dim}", param="dimensions", code="invalid_value")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise APIError(400, "input is an empty list: give at least one input", param="input")
    if len(inputs) > settings.max_inputs:
        raise APIError(400, f"input has {len(inputs)} items; this server takes at most {settings.max_inputs} "
                            "per request", param="input", code="too_many_inputs")
    if body.modality == "text":
        vectors, tokens = await embed_texts(request, inputs)
    else:
        sources = await run_in_threadpool(lambda: [image_bytes(t, i, settings.allow_url_fetch) for i, t in enumerate(inputs)])
        vectors, tokens = await embed_images(request, sources, [f"input[{i}]" for i in range(len(inputs))], "input"), 0
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _embedding_json(v, body.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": settings.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
