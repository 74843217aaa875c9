"""AltCLIP as a LangChain embedding model, for texts and images in one multilingual vector space."""

from __future__ import annotations

from pathlib import Path

import torch

try:
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
except ImportError as e:
    raise ImportError(
        "altclip_adapters.integrations.langchain needs LangChain: pip install 'altclip-adapters[langchain]'"
    ) from e

from altclip_adapters.model.core import AltCLIP
from altclip_adapters.integrations._embedder import ImageLike, image_vectors, load_embedder, text_vectors


class AltCLIPEmbeddings(Embeddings):
    """A ``langchain_core`` ``Embeddings`` for AltCLIP: ``embed_documents`` / ``embed_query`` for texts (any of
    AltCLIP's languages), ``embed_image(uris=...)`` for images, as multimodal vector stores call it.

    Vectors have unit length (cosine similarity is their dot product); texts and images are encoded in batches,
    without gradients.

    Args:
        model: a registry name (``"AltCLIP"``, ``"AltCLIP-m18"``), a hub id, a checkpoint folder or a loaded
            ``AltCLIP`` (which stays on its device unless ``device`` is given).
        device: where the model runs (default: a GPU when there is one).
        batch_size: texts or images per forward pass.
        dtype: as ``Embedder``'s (default: bf16 on a GPU, else the runtime's).
        context_length: the text token cap (default 77, at most 512): longer texts are truncated.
        runtime: ``"torch"``, ``"openvino"`` or ``"auto"`` (see :class:`altclip_adapters.inference.embedder.Embedder`).

    Raises:
        ValueError: a bad ``batch_size`` or ``context_length`` (before the model loads), or as ``Embedder``.
        FileNotFoundError: the checkpoint cannot be had (see ``AltCLIP.from_pretrained``).
    """

    def __init__(
        self,
        model: str | Path | AltCLIP = "AltCLIP",
        device: str | torch.device | None = None,
        batch_size: int = 32,
        *,
        dtype: torch.dtype | None = None,
        context_length: int | None = None,
        runtime: str | None = None,
    ):
        self._embedder = load_embedder(
            model, batch_size=batch_size, device=device, dtype=dtype, context_length=context_length, runtime=runtime
        )
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector (``projection_dim`` floats, unit length) per text, in order; ``[]`` for no texts.

        Raises:
            TypeError: ``texts`` is not a list of strings.
        """
        return text_vectors(self._embedder, texts)

    def embed_query(self, text: str) -> list[float]:
        """The vector (``projection_dim`` floats, unit length) of one text."""
        return text_vectors(self._embedder, [text])[0]

    def embed_image(self, uris: list[ImageLike]) -> list[list[float]]:
        """One vector (``projection_dim`` floats, unit length) per image, in order; ``[]`` for none.

        Args:
            uris: file paths (also ``BytesIO``, PIL images or uint8 arrays), as multimodal stores pass them.

        Raises:
            UnreadableImageError: (a ``ValueError``) the first image that cannot be decoded, named.
            FileNotFoundError: a path that does not exist.
        """
        return image_vectors(self._embedder, uris)

    async def aembed_image(self, uris: list[ImageLike]) -> list[list[float]]:
        """``embed_image`` in a worker thread."""
        return await run_in_executor(None, self.embed_image, uris)
