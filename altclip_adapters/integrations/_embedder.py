"""Batched, L2-normalised AltCLIP embeddings of texts and images, shared by the LangChain and LlamaIndex backends."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch
from PIL import Image

from ..core import AltCLIP
from ..processor import AltCLIPProcessor, ImageInput, as_list, load_image

ImageLike = ImageInput | IO[bytes]  # paths, PIL images, uint8 arrays, or open binary files such as BytesIO


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pil(image: ImageLike, index: int) -> Image.Image:
    """An upright RGB image from anything :func:`~altclip_adapters.images.load_image` takes (paths, bytes,
    BytesIO, data URIs, URLs, PIL images, uint8 arrays), by its rules; errors name the image's position."""
    try:
        return load_image(image)
    except (ValueError, TypeError) as e:  # a missing file's FileNotFoundError names it already
        raise type(e)(f"image {index}: {e}") from e


class Embedder:
    """One AltCLIP model turned into lists of floats: texts and images, in batches, unit length, no grad.

    ``model`` is a registry name, hub id or checkpoint folder, or an ``AltCLIP`` already loaded (moved to
    ``device``/``dtype`` when given). Calls from several threads are safe: one batch runs at a time.
    """

    def __init__(
        self,
        model: str | Path | AltCLIP = "AltCLIP",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        context_length: int | None = None,
    ):
        if isinstance(model, AltCLIP):
            if model.processor is None:
                raise ValueError("the AltCLIP model has no processor; load it with AltCLIP.from_pretrained")
            model = model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
        else:
            model = AltCLIP.from_pretrained(model, device=device or default_device(), dtype=dtype)
        self.model = model.eval()
        processor = model.processor
        context_length = context_length or processor.context_length
        self.processor = AltCLIPProcessor(processor.tokenizer, processor.image_transform, context_length)
        self._lock = threading.Lock()

    def embed_texts(self, texts: Sequence[str], *, batch_size: int) -> list[list[float]]:
        """One unit vector per text; texts longer than ``processor.context_length`` tokens are truncated.
        An empty list gives ``[]``; TypeError for anything but a list of strings."""
        texts = as_list(texts, "texts")
        check_batch_size(batch_size)
        out = []
        for start in range(0, len(texts), batch_size):
            with self._lock, torch.inference_mode():
                tokens = self.processor.tokenize(texts[start : start + batch_size])
                tokens = {k: v.to(self.model.device) for k, v in tokens.items()}
                out += self.model.encode_text(**tokens, normalize=True).float().tolist()
        return out

    def embed_images(self, images: Sequence[ImageLike], *, batch_size: int) -> list[list[float]]:
        """One unit vector per image (file path, BytesIO, PIL image or uint8 array); ``[]`` for none."""
        images = as_list(images, "images")
        check_batch_size(batch_size)
        transform = self.processor.image_transform
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = torch.stack([transform(_pil(image, start + i)) for i, image in enumerate(batch)])
            with self._lock, torch.inference_mode():
                pixels = pixels.to(self.model.device, self.model.dtype)
                out += self.model.encode_image(pixels, normalize=True).float().tolist()
        return out


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return batch_size
