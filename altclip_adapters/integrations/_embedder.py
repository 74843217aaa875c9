"""What the LangChain and LlamaIndex backends share: a :class:`~altclip_adapters.inference.embedder.Embedder` built from a
name or a loaded model, and its unit vectors as lists of floats."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

from altclip_adapters.inference.embedder import Embedder, check_batch_size
from altclip_adapters.model.processor import ImageInput

if TYPE_CHECKING:
    from altclip_adapters.model.core import AltCLIP

ImageLike = ImageInput | IO[bytes]  # paths, PIL images, uint8 arrays, or open binary files such as BytesIO


def load_embedder(
    model: str | Path | AltCLIP,
    *,
    batch_size: int,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    context_length: int | None = None,
    runtime: str | None = None,
) -> Embedder:
    """The pipeline's ``Embedder`` for a registry name, hub id, checkpoint folder or loaded ``AltCLIP`` (which
    stays on its device unless ``device`` is given), images read in the calling thread; raises as ``Embedder``
    and ``AltCLIP.from_pretrained`` do."""
    check_batch_size(batch_size)  # before the model loads
    if isinstance(model, (str, Path)):
        from altclip_adapters.model.core import AltCLIP  # transformers and timm: with the model, not on import

        model = AltCLIP.from_pretrained(model)
    else:
        device = device if device is not None else model.device
    return Embedder(
        model, device=device, dtype=dtype, batch_size=batch_size, context_length=context_length, runtime=runtime, num_workers=0
    )


def text_vectors(embedder: Embedder, texts: Sequence[str]) -> list[list[float]]:
    """One unit vector per text; ``[]`` for none; TypeError for anything but a list of strings."""
    return embedder.texts(texts).tolist()


def image_vectors(embedder: Embedder, images: Sequence[ImageLike]) -> list[list[float]]:
    """One unit vector per image; ``[]`` for none; the first unreadable image raises (see ``Embedder.images``)."""
    return embedder.images(images).tolist()
