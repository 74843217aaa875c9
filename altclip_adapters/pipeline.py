"""Fast embedding of many texts and images with one AltCLIP model.

Texts are batched by length (each batch padded only to its own longest text). Images are decoded,
resized and cropped to uint8 in DataLoader workers, copied through pinned memory, and normalised
on the device. On a GPU the model runs in bf16 by default; ``compile=True`` adds ``torch.compile``
(image batches keep one fixed shape); on a CPU ``int8=True`` swaps every Linear layer for a
dynamically quantised int8 one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .core.model import AltCLIP
from .processor import ImageInput, ImageTransform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class ImageBatch:
    """Embeddings of the readable images of one batch: their positions in the input, and the
    unreadable ones as (position, message)."""

    indices: list[int]
    embeddings: torch.Tensor
    errors: list[tuple[int, str]] = field(default_factory=list)


class _ImageItems(Dataset):
    """Resized and cropped uint8 pixels of each item, or the reason it cannot be read."""

    def __init__(self, items: Sequence[ImageInput], transform: ImageTransform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform.uint8(self.items[index]), None
        except (OSError, ValueError, TypeError) as e:
            return index, None, str(e)


def _collate(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    ok = [(i, pixels) for i, pixels, _ in batch if pixels is not None]
    errors = [(i, error) for i, pixels, error in batch if pixels is None]
    pixels = torch.stack([p for _, p in ok]) if ok else None
    return [i for i, _ in ok], pixels, errors


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quantize_int8(model: AltCLIP) -> AltCLIP:
    """Replace every ``nn.Linear`` with a dynamically quantised int8 one, in place (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch announces the removal of quantized tensors; they work in this torch
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        return quantize_dynamic(model.float().cpu(), {nn.Linear}, dtype=torch.qint8, inplace=True)


class Embedder:
    """An AltCLIP model prepared for bulk embedding; returns float32 CPU tensors, L2-normalised by default."""

    def __init__(
        self,
        model: AltCLIP,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        int8: bool = False,
        compile: bool = False,
        batch_size: int = 256,
        num_workers: int | None = None,
        normalize: bool = True,
    ):
        if model.processor is None:
            raise ValueError("the model has no processor attached: load it with AltCLIP.from_pretrained")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        if int8:
            if self.device.type != "cpu" or dtype not in (None, torch.float32):
                raise ValueError("int8 dynamic quantisation runs on the CPU in float32 only")
            model = quantize_int8(model)
        else:
            dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
            model = model.to(self.device, dtype)
        self.model = model.eval()
        self.processor = model.processor
        self.compile = compile
        self.batch_size = batch_size
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.num_workers = num_workers if num_workers is not None else (min(16, cpus) if self.device.type == "cuda" else 0)
        self.normalize = normalize
        self._encode_text = torch.compile(model.encode_text, dynamic=True) if compile else model.encode_text
        self._encode_image = torch.compile(model.encode_image) if compile else model.encode_image

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> Embedder:
        """Load a registry name, hub id or local folder (see :meth:`AltCLIP.from_pretrained`) and prepare it."""
        return cls(AltCLIP.from_pretrained(name_or_path), **kwargs)

    # texts -------------------------------------------------------------------------------------
    def iter_texts(self, texts: Sequence[str], *, context_length: int | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(positions, embeddings) per batch, longest texts first; each batch is padded to its own longest text."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("no texts given: pass a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
        length = context_length or self.processor.context_length
        yield from self.iter_tokens(self.processor.tokenizer(list(texts), truncation=True, max_length=length)["input_ids"])

    def iter_tokens(self, ids: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """:meth:`iter_texts` for texts already tokenized (one list of token ids per text, no padding)."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pad = self.model.config.text.pad_token_id
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            longest = len(ids[positions[0]])
            input_ids = torch.full((len(positions), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(positions), longest), dtype=torch.long)
            for row, i in enumerate(positions):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            with torch.inference_mode():
                features = self._encode_text(input_ids.to(self.device), mask.to(self.device), normalize=self.normalize)
            yield positions, features.float().cpu()

    def texts(self, texts: Sequence[str], *, context_length: int | None = None) -> torch.Tensor:
        """Embeddings [N, projection_dim] of ``texts``, in input order."""
        out = torch.empty(len(texts), self.model.config.projection_dim)
        for positions, features in self.iter_texts(texts, context_length=context_length):
            out[positions] = features
        return out

    # images ------------------------------------------------------------------------------------
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        count = pixels.shape[0]
        if self.compile and count < self.batch_size:  # one fixed shape for the compiled graph
            pixels = torch.cat([pixels, pixels.new_zeros((self.batch_size - count, *pixels.shape[1:]))])
        values = self.processor.image_transform.normalize(pixels).to(self.model.dtype)
        with torch.inference_mode():
            features = self._encode_image(values, normalize=self.normalize)
        return features[:count].float().cpu()

    def iter_images(self, images: Sequence[ImageInput]) -> Iterator[ImageBatch]:
        """One :class:`ImageBatch` per batch, in input order; unreadable images are reported, not raised."""
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError("no images given: pass a non-empty list of images or image paths")
        loader = DataLoader(
            _ImageItems(images, self.processor.image_transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        empty = torch.empty(0, self.model.config.projection_dim)
        for indices, pixels, errors in loader:
            yield ImageBatch(indices, self._encode_pixels(pixels) if pixels is not None else empty, errors)

    def images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Embeddings [N, projection_dim] of ``images``, in input order; raises ValueError naming
        the first unreadable image."""
        out = torch.empty(len(images) if isinstance(images, Sequence) else 0, self.model.config.projection_dim)
        for batch in self.iter_images(images):
            if batch.errors:
                raise ValueError(batch.errors[0][1])
            out[batch.indices] = batch.embeddings
        return out


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively (sorted); raises FileNotFoundError
    for a path that does not exist and ValueError when no image is found."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}")
    return found
