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

from ._embedder import Embedder


class AltCLIPEmbedding(MultiModalEmbedding):
    """A LlamaIndex ``MultiModalEmbedding`` for AltCLIP, usable as both ``embed_model`` and ``image_embed_model``.

    ``model_name`` is a registry name (``"AltCLIP"``, ``"AltCLIP-m18"``), a hub id or a checkpoint folder. Texts
    and images (paths or ``BytesIO``, as ``ImageNode.resolve_image()`` gives) are encoded ``embed_batch_size`` at a
    time; vectors have unit length; texts past ``context_length`` tokens (default 77) are truncated.
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
        **kwargs,
    ):
        embedder = Embedder(model_name, device=device, dtype=dtype, context_length=context_length)
        super().__init__(
            model_name=str(model_name),
            device=str(embedder.model.device),
            context_length=embedder.processor.context_length,
            **kwargs,
        )
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "AltCLIPEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.embed_texts([query], batch_size=1)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.embed_texts([text], batch_size=1)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embedder.embed_texts(texts, batch_size=self.embed_batch_size)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._embedder.embed_images([img_file_path], batch_size=1)[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._embedder.embed_images(img_file_paths, batch_size=self.embed_batch_size)

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
