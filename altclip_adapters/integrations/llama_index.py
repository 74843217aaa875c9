"""AltCLIP as a LlamaIndex multi-modal embedding model: texts and images in one multilingual vector space."""

from __future__ import annotations

import asyncio

import torch

try:
    from llama_index.core.base.embeddings.base import Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.embeddings import MultiModalEmbedding
    from llama_index.core.schema import ImageType
except ImportError as e:
    raise ImportError(
        "altclip_adapters.integrations.llama_index needs LlamaIndex: pip install 'altclip-adapters[llama-index]'"
    ) from e

from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.model.processor import DEFAULT_CONTEXT_LENGTH
from altclip_adapters.integrations._embedder import image_vectors, load_embedder, text_vectors


class AltCLIPEmbedding(MultiModalEmbedding):
    """A LlamaIndex ``MultiModalEmbedding`` for AltCLIP, usable as both ``embed_model`` and ``image_embed_model``.

    Texts and images (paths or ``BytesIO``, as ``ImageNode.resolve_image()`` gives) are encoded
    ``embed_batch_size`` at a time; vectors have unit length. Async calls, which LlamaIndex runs concurrently, each
    run in a worker thread and share the one model safely.

    Args:
        model_name: a registry name (``"AltCLIP"``, ``"AltCLIP-m18"``), a hub id or a checkpoint folder.
        device: where the model runs (default: a GPU when there is one).
        dtype: as ``Embedder``'s (default: bf16 on a GPU, else the runtime's).
        context_length: the text token cap (default 77, at most 512): longer texts are truncated.
        runtime: ``"torch"``, ``"openvino"`` or ``"auto"`` (see :class:`altclip_adapters.inference.embedder.Embedder`).
        **kwargs (Any): LlamaIndex's own fields (``embed_batch_size``: 1 to 2048, default 32; ``callback_manager``...).

    Raises:
        ValueError: a field out of bounds (pydantic's ``ValidationError``), or as ``Embedder``.
        FileNotFoundError: the checkpoint cannot be had (see ``AltCLIP.from_pretrained``).
    """

    model_name: str = Field(default="AltCLIP", description="Registry name, hub id or checkpoint folder.")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="Texts or images per forward pass.")
    device: str = Field(description="Where the model runs.")
    context_length: int = Field(description="Token limit per text; longer texts are truncated.")
    _embedder: Embedder = PrivateAttr()

    def __init__(
        self,
        model_name: str = "AltCLIP",
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        context_length: int | None = None,
        runtime: str | None = None,
        **kwargs,
    ):
        # pydantic checks the fields first (embed_batch_size's bounds), then the model loads with them
        super().__init__(
            model_name=str(model_name), device=str(device or "cpu"), context_length=context_length or DEFAULT_CONTEXT_LENGTH, **kwargs
        )
        self._embedder = load_embedder(
            model_name, batch_size=self.embed_batch_size, device=device, dtype=dtype, context_length=context_length, runtime=runtime
        )
        self.device, self.context_length = str(self._embedder.device), self._embedder.context_length

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this class under."""
        return "AltCLIPEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return text_vectors(self._embedder, [query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return text_vectors(self._embedder, [text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return text_vectors(self._embedder, texts)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return image_vectors(self._embedder, [img_file_path])[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return image_vectors(self._embedder, img_file_paths)

    # LlamaIndex gathers async batches concurrently: each runs in a worker thread, the embedder serialises them
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)
