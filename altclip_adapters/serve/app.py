"""The FastAPI application: OpenAI-compatible embeddings, search over an embedding folder, the search page.

Routes (the request and response schemas are OpenAI's, ``openai/types/embedding_create_params.py`` and
``create_embedding_response.py`` of the openai client; images the way infinity-emb takes them):

- ``POST /v1/embeddings``: ``model``, ``input`` (a string or a list of strings), ``encoding_format``
  (``float`` or ``base64``: little-endian float32, as the openai client decodes it), ``dimensions`` (only
  the model's own), ``user`` (ignored), and infinity-emb's ``modality``: ``"text"`` (default) or
  ``"image"``, whose inputs are ``data:`` URIs, or http(s) URLs when the operator allows fetching them.
  ``usage`` counts the tokens the model read (its XLM-R tokenizer, truncated at the context length);
  images count none.
- ``GET /v1/models``, ``GET /v1/models/{id}``: the served model (OpenAI's list schema).
- ``GET /search?q=&k=``, ``POST /search`` (multipart: ``image`` file, ``k``): the k nearest rows of the
  embedding folder: rank, score (cosine similarity), metadata, and links to the file and its thumbnail.
- ``GET /files/{path}``, ``GET /thumbnails/{path}``: a file of the indexed collection and its thumbnail.
- ``GET /``: the search page.

Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, the message naming
the problem. This module knows schemas and HTTP; the model sits behind :class:`~.batching.BatchHandler`.
"""

from __future__ import annotations

import base64
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..images import DEFAULT_MAX_IMAGE_PIXELS, UnreadableImageError, load_image
from .batching import BatchHandler, Overloaded
from .errors import APIError, error_body
from .files import Collection, NotInCollection, ThumbnailCache
from .limits import BodyLimit

if TYPE_CHECKING:
    from PIL import Image

    from ..index import EmbeddingIndex, Hit

PAGE = Path(__file__).parent / "page"


@dataclass
class ServeSettings:
    """What the operator chose. ``model_id``: the name clients pass as ``model`` (and ``/v1/models``
    lists); ``allow_url_fetch``: fetch http(s) image URLs given to ``/v1/embeddings`` (off: a server must not
    fetch arbitrary URLs for anyone); ``max_request_bytes``: larger request bodies get 413;
    ``max_inputs``: most inputs in one embeddings request (OpenAI's limit is 2048); ``max_k``: most
    results one search returns; ``max_image_pixels``: larger images (width x height) are refused by the
    image loader (None: no limit)."""

    model_id: str
    allow_url_fetch: bool = False
    max_request_bytes: int = 32 * 2**20
    max_inputs: int = 2048
    max_k: int = 100
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def error_response(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **fields), status_code=status)


# schemas ------------------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request plus infinity-emb's ``modality``; unknown fields are refused (as OpenAI
    does), so a misspelt ``modality`` cannot silently embed image URIs as text."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: Literal["text", "image"] = "text"

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, value: Any) -> Any:
        tokens = isinstance(value, list) and value and all(
            isinstance(v, int) or (isinstance(v, list) and all(isinstance(t, int) for t in v)) for v in value)
        if tokens:
            raise ValueError(
                "token arrays are not supported: this server tokenizes text with the model's own (XLM-R) "
                "tokenizer; send strings (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
            )
        return value


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """(message, param) for one pydantic error of a request."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    kind, message = error.get("type", ""), str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', message)}", None
    if kind == "extra_forbidden":
        return f"unrecognized request argument: {loc[-1] if loc else '?'}", loc[-1] if loc else None
    if kind == "missing":
        return (f"missing required argument: {'.'.join(loc)}", loc[0]) if loc else ("the request body is missing", None)
    if not loc:
        return f"the request body must be a JSON object: {message}", None
    if loc[0] == "input" and kind != "value_error":  # pydantic names the union member tried: input.list[str].3
        index = next((part for part in loc[1:] if part.isdigit()), None)
        if index is not None:
            return f"input[{index}] must be a string; got {type(error.get('input')).__name__}", "input"
        return f"input must be a string or a list of strings; got {type(error.get('input')).__name__}", "input"
    return f"{'.'.join(loc)}: {message}", loc[0]


def _embedding_json(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _jsonable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata columns as JSON values: binary columns left out, NaN and infinities as null."""
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in metadata.items() if not isinstance(v, (bytes, bytearray))}
    return jsonable_encoder(values)


# the application ----------------------------------------------------------------------------------
def create_app(
    handler: BatchHandler,
    settings: ServeSettings,
    *,
    index: EmbeddingIndex | None = None,
    collection: Collection | None = None,
    thumbnails: ThumbnailCache | None = None,
) -> FastAPI:
    """The ASGI application. It starts ``handler`` when the server starts and stops it on shutdown.

    ``index``: the embedding folder to search (None: ``/search`` answers 404); ``collection``: the files
    ``/files`` and ``/thumbnails`` may read (None: none); ``thumbnails``: where thumbnails are cached
    (None: ``/thumbnails`` answers 404).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        handler.start()
        try:
            yield
        finally:
            handler.stop()

    app = FastAPI(title="altclip serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.state.batch_handler, app.state.thumbnails = handler, thumbnails
    created = int(time.time())
    search_modality = ("image" if "image" in index.modalities else "text") if index is not None else None

    # errors -----------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = sorted(e.errors(), key=lambda error: -len(error.get("loc", ())))  # the most precise first
        message, param = _validation_message(errors[0]) if errors else ("invalid request", None)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = f"not found: {request.url.path}" if e.detail == "Not Found" else str(e.detail)
            return error_response(404, message, code="not_found")
        if e.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, e: Overloaded) -> JSONResponse:
        return error_response(503, str(e), code="overloaded", type="server_error")

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    # helpers ----------------------------------------------------------------------------------
    def check_model(model: str) -> None:
        if model != settings.model_id:
            raise APIError(404, f"the model {model!r} is not served here; this server serves {settings.model_id!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    def decode(source: Any, name: str, param: str) -> Image.Image:
        """One image through the package's loader; APIError 400 naming ``name`` when it cannot be read."""
        try:
            return load_image(source, allow_urls=settings.allow_url_fetch, max_image_pixels=settings.max_image_pixels)
        except (UnreadableImageError, ValueError, OSError) as e:
            raise APIError(400, f"{name} is not a readable image: {e}", param=param, code="invalid_image") from e

    def decode_inputs(inputs: list[str]) -> list[Image.Image]:
        images = []
        for i, text in enumerate(inputs):
            head = text[:8].lower()
            if head.startswith(("http://", "https://")) and not settings.allow_url_fetch:
                raise APIError(400, f"input[{i}] is a URL, and this server does not fetch URLs (the operator can "
                                    "allow it with --allow-url-fetch); send the image as a data: URI",
                               param="input", code="url_fetch_disabled")
            if not head.startswith(("data:", "http://", "https://")):
                raise APIError(400, f"input[{i}] is neither a data: URI nor an http(s) URL; with modality 'image', "
                                    "each input is an image as data:image/<type>;base64,<data>", param="input")
            images.append(decode(text, f"input[{i}]", "input"))
        return images

    def check_k(k: int) -> None:
        if not 1 <= k <= settings.max_k:
            raise APIError(400, f"k must be between 1 and {settings.max_k}; got {k}", param="k")

    def require_index() -> EmbeddingIndex:
        if index is None:
            raise APIError(404, "no embedding folder is served: start the server as altclip serve DIR", code="no_index")
        return index

    def hit_json(hit: Hit) -> dict[str, Any]:
        link = collection.link(hit.row) if collection is not None else None
        url = hit.metadata.get("url")
        remote = url if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        return {
            "rank": hit.rank, "score": hit.score, "row": hit.row, "metadata": _jsonable_metadata(hit.metadata),
            "file": f"/files/{quote(link)}" if link else remote,
            "thumbnail": f"/thumbnails/{quote(link)}" if link and thumbnails is not None else remote,
        }

    async def search_response(query: np.ndarray, k: int, about: dict[str, Any]) -> JSONResponse:
        hits = await run_in_threadpool(require_index().search, query, k, modality=search_modality)
        return JSONResponse({**about, "k": k, "modality": search_modality, "results": [hit_json(h) for h in hits[0]]})

    def served_file(path: str) -> Path:
        if collection is None:
            raise APIError(404, f"not found: {path}", code="not_found")
        try:
            return collection.resolve(path)
        except NotInCollection:
            raise APIError(404, f"not found: {path} is not a file of the indexed collection", code="not_found") from None

    # OpenAI-compatible API ---------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {"id": settings.model_id, "object": "model", "created": created, "owned_by": "altclip-adapters"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> dict[str, Any]:
        check_model(model)
        return model_card()

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        check_model(body.model)
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
        empty = next((i for i, text in enumerate(inputs) if not text), None)
        if empty is not None:
            raise APIError(400, f"input[{empty}] is an empty string", param="input")
        if body.modality == "text":
            vectors, tokens = await handler.embed_texts(inputs)
        else:
            vectors, tokens = await handler.embed_images(await run_in_threadpool(decode_inputs, inputs)), 0
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _embedding_json(v, body.encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    # search -----------------------------------------------------------------------------------
    @app.get("/search")
    async def search_text(q: Annotated[str, Query(description="the query, any language")],
                          k: Annotated[int, Query()] = 10) -> JSONResponse:
        require_index()
        check_k(k)
        if not q.strip():
            raise APIError(400, "the query q is empty", param="q")
        vectors, _ = await handler.embed_texts([q])
        return await search_response(vectors, k, {"query": q})

    @app.post("/search")
    async def search_image(image: Annotated[UploadFile, File(description="the query image")],
                           k: Annotated[int, Form()] = 10) -> JSONResponse:
        require_index()
        check_k(k)
        data = await image.read()
        name = f"the uploaded file {image.filename!r}" if image.filename else "the uploaded file"
        if not data:
            raise APIError(400, f"{name} is empty", param="image", code="invalid_image")
        picture = await run_in_threadpool(decode, data, name, "image")
        return await search_response(await handler.embed_images([picture]), k, {"image": image.filename})

    # the collection's files and the page -------------------------------------------------------
    @app.get("/files/{path:path}")
    async def file(path: str) -> FileResponse:
        return FileResponse(served_file(path))

    @app.get("/thumbnails/{path:path}")
    async def thumbnail(path: str) -> FileResponse:
        if thumbnails is None:
            raise APIError(404, "thumbnails are not served", code="not_found")
        source = served_file(path)
        try:
            made = await run_in_threadpool(thumbnails.get, source)
        except (ValueError, OSError) as e:
            raise APIError(404, f"no thumbnail: {path} is not a readable image ({e})", code="not_found") from e
        return FileResponse(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", headers={"Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; script-src 'self'")})

    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    return app
