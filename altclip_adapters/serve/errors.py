"""OpenAI's error shape, shared by every answer of the server that is not a success, and the exception
handlers that produce it.

``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}`` (the body the OpenAI API
returns and the openai client reads into ``APIStatusError.body``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


def error_body(message: str, *, param: str | None = None, code: str | None = None,
               type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error answered with HTTP ``status`` and :func:`error_body`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers
        self.body = error_body(message, param=param, code=code, type=type)


class Overloaded(RuntimeError):
    """The server cannot take the work now (the model's queue is full, or no room in the pixel budget in time):
    answered 503, the client should retry later."""


def validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
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


def install_handlers(app: FastAPI, reject: Any = None) -> None:
    """Every error of ``app`` answered in OpenAI's shape; ``reject(reason)`` (when given) is called with the
    error's code for each refused request (the metrics' rejections by reason)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        if reject is not None:
            reject(body["error"]["code"] or str(status))
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError) -> JSONResponse:
        return answer(e.status, e.body, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError) -> JSONResponse:
        errors = sorted(e.errors(), key=lambda error: -len(error.get("loc", ())))  # the most precise first
        message, param = validation_message(errors[0]) if errors else ("invalid request", None)
        return answer(400, error_body(message, param=param, code="invalid_value"))

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = f"not found: {request.url.path}" if e.detail == "Not Found" else str(e.detail)
            return answer(404, error_body(message, code="not_found"))
        if e.status_code == 405:
            return answer(405, error_body(f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"))
        return answer(e.status_code, error_body(str(e.detail)))

    @app.exception_handler(Overloaded)
    async def _overloaded(request, e: Overloaded) -> JSONResponse:
        return answer(503, error_body(str(e), code="overloaded", type="server_error"), {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _server_error(request, e: Exception) -> JSONResponse:
        return answer(500, error_body(f"internal error: {type(e).__name__}: {e}", code="internal_error", type="server_error"))
