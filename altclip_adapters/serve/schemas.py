"""The request and response schemas of the server (what ``/docs`` shows): OpenAI's for embeddings and models
(``openai/types/embedding_create_params.py``, ``create_embedding_response.py``), the package's own for search,
health and admin."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


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

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """An optional field sent as null takes its default, as OpenAI's API does (LiteLLM and other gateways send
        ``"encoding_format": null``, ``"dimensions": null``, ``"user": null``); a null ``model`` or ``input`` is
        still a missing argument."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in ("model", "input")}
        return data

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


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32, as the openai client decodes it


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "altclip-adapters"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchHit(BaseModel):
    rank: int
    score: float
    row: int
    metadata: dict[str, Any]
    file: str | None  # /files/... for a served local file, the row's http(s) url, else null
    thumbnail: str | None


class SearchResponse(BaseModel):
    query: str | None = None
    image: str | None = None
    k: int
    modality: str
    results: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    model: str
    checked_s_ago: float | None  # seconds since the last forward pass that succeeded
    problems: list[str]


class Reloaded(BaseModel):
    folder: str  # the folder's name (no path of the server's disk)
    counts: dict[str, int]  # modality -> rows
