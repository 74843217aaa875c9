"""OpenAI's error shape, shared by every answer of the server that is not a success.

``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}`` (the body the OpenAI API
returns and the openai client reads into ``APIStatusError.body``).
"""

from __future__ import annotations

from typing import Any


def error_body(message: str, *, param: str | None = None, code: str | None = None,
               type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error answered with HTTP ``status`` and :func:`error_body`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, param=param, code=code, type=type)
