"""Fast embedding of many texts and images with one AltCLIP model.

Texts are batched by length (each batch padded only to its own longest text). Images are decoded,
resized and cropped to uint8 in DataLoader workers, copied through pinned memory, and normalised
on the device; ``decode_on_device=True`` decodes JPEG files with torchvision on the device instead
(nvJPEG on a GPU). The vision MLPs' quick_gelu is folded into a single SiLU (the core's
``encode_image`` already runs the last block on the class token only). On a GPU the model runs in
bf16 by default; ``compile=True`` (or a ``torch.compile`` mode such as ``"reduce-overhead"``,
which records CUDA graphs) compiles the towers, image batches keeping one fixed shape; on a CPU
``int8=True`` stores the weights in int8: with OpenVINO, NNCF weight compression (cosine to fp32 >= 0.9997 at
BAAI/AltCLIP's widths); with torch, a dynamically quantised int8 Linear (not recommended: text cosine 0.945).
``runtime`` picks what runs the towers (:mod:`altclip_adapters.inference.runtimes`): on a CPU with bf16 the default is
OpenVINO when the extra is installed, each tower at bf16 where this checkpoint keeps its fidelity there.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from altclip_adapters.model.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_image_pixels, jpeg_orientation, orient
from altclip_adapters.model.processor import ImageInput, ImageTransform, as_list
from altclip_adapters.inference.runtimes import OpenVINOTowers, resolve_runtime

if TYPE_CHECKING:  # the core imports transformers and timm (seconds): loaded with the model, not with this module
    from altclip_adapters.model.core import AltCLIP

JPEG_SUFFIXES = {".jpg", ".jpeg"}


@dataclass
class ImageBatch:
    """Embeddings of the readable images of one batch: their positions in the input, and the
    unreadable ones as (position, message). ``decode_seconds``: how long the caller waited for the batch's
    pixels (DataLoader workers' decoding, or this process's; JPEG decoding on the device included);
    ``embed_seconds``: its forward pass (:meth:`Embedder.encode_pixels`). Wall-clock seconds, measured by
    :meth:`Embedder.iter_images` for this batch alone (bulk runs sum them per stage)."""

    indices: list[int]
    embeddings: torch.Tensor
    errors: list[tuple[int, str]] = field(default_factory=list)
    exceptions: list[Exception] = field(default_factory=list, repr=False)  # what raised each error, in that order
    decode_seconds: float = 0.0
    embed_seconds: float = 0.0


class _ImageItems(Dataset):
    """Resized and cropped uint8 pixels of each item, or the reason it cannot be read (any exception: one
    unreadable image must not stop a bulk run); with ``raw_jpegs``, the undecoded bytes and EXIF orientation
    of each plain JPEG file instead (decoded later on the device; CMYK JPEGs and other files go through
    ``load_image``)."""

    def __init__(
        self,
        items: Sequence[ImageInput],
        transform: ImageTransform,
        raw_jpegs: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.items = items
        self.transform = transform
        self.raw_jpegs = raw_jpegs
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, Exception | None]:
        """(position, pixels [3, H, W] or JPEG bytes [N], EXIF orientation of those bytes, error)."""
        item = self.items[index]
        try:
            if self.raw_jpegs and isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in JPEG_SUFFIXES:
                data = Path(item).read_bytes()
                orientation = jpeg_orientation(data, max_image_pixels=self.max_image_pixels)
                if orientation is not None:
                    return index, torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation, None
            return index, self.transform.uint8(item, max_image_pixels=self.max_image_pixels), 1, None
        except Exception as e:  # noqa: BLE001 (reported as this item's error)
            return index, None, 1, e


def _collate(batch: list[tuple[int, torch.Tensor | None, int, Exception | None]]):
    """(positions and stacked pixels of the decoded items, positions and (bytes, EXIF orientation) of the raw
    JPEGs, errors)."""
    decoded = [(i, data) for i, data, _, _ in batch if data is not None and data.ndim == 3]
    raw = [(i, (data, orientation)) for i, data, orientation, _ in batch if data is not None and data.ndim == 1]
    errors = [(i, error) for i, data, _, error in batch if data is None]
    pixels = torch.stack([p for _, p in decoded]) if decoded else None
    return [i for i, _ in decoded], pixels, [i for i, _ in raw], [jpeg for _, jpeg in raw], errors


def default_device() -> torch.device:
    """cuda when torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is an integer of at least 1; ValueError naming it otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return batch_size


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list; TypeError naming the first item that is not a string (or the container)."""
    texts = as_list(texts, "texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
    return texts


QUICK_GELU = 1.702  # quick_gelu(x) = x * sigmoid(1.702 x)


@torch.no_grad()
def fuse_quick_gelu(model: AltCLIP) -> AltCLIP:
    """Rewrite each vision MLP ``fc2(quick_gelu(fc1(x)))`` as ``fc2'(silu(fc1'(x)))``, in place, for inference.

    ``x * sigmoid(1.702 x) = silu(1.702 x) / 1.702``: fc1's weight and bias take the factor 1.702 and
    fc2's weight its inverse, so one activation kernel replaces three. Models with another vision
    activation are returned unchanged.
    """
    if model.config.vision.act != "quick_gelu":
        return model
    for block in model.vision.vit.blocks:
        mlp = block.mlp
        if isinstance(mlp.act, nn.SiLU):
            continue
        for param, factor in ((mlp.fc1.weight, QUICK_GELU), (mlp.fc1.bias, QUICK_GELU), (mlp.fc2.weight, 1 / QUICK_GELU)):
            param.copy_(param.float() * factor)  # in float32 whatever the model's dtype
        mlp.act = nn.SiLU()
    return model


def quantize_int8(model: AltCLIP) -> AltCLIP:
    """Replace every ``nn.Linear`` with a dynamically quantised int8 one, in place (CPU only).

    Uses ``torch.ao.quantization.quantize_dynamic``, which torch marks deprecated in favour of
    torchao but still ships and runs; its deprecation notices are silenced here.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(model.float().cpu(), {nn.Linear}, dtype=torch.qint8, inplace=True)


class Embedder:
    """An AltCLIP model prepared (in place: activations fused, cast or quantised) for bulk
    embedding; returns float32 CPU tensors, L2-normalised by default. Images are read by
    :func:`altclip_adapters.model.images.load_image`'s rules; an encoded image over ``max_image_pixels``
    (None: no limit) is unreadable. Texts are truncated at ``context_length`` tokens (default: the
    processor's, 77). ``runtime``: ``"torch"``, ``"openvino"`` or ``"auto"`` (None: ``$ALTCLIP_RUNTIME``, else
    auto; see :mod:`altclip_adapters.inference.runtimes`); ``self.runtime`` says which runs, ``self.precision`` at which
    precision, ``self.fidelity`` the least cosine to f32 OpenVINO measured for it per tower (empty on torch).
    Calls from several threads are safe: one forward pass runs at a time.

    Raises ValueError for a model without processor, a bad ``batch_size`` or ``context_length``, int8 off the
    CPU, an unknown runtime or OpenVINO with a torch-only option; ImportError when OpenVINO is asked for and
    not installed."""

    def __init__(
        self,
        model: AltCLIP,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        int8: bool = False,
        compile: bool | str = False,
        decode_on_device: bool = False,
        batch_size: int = 256,
        num_workers: int | None = None,
        normalize: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        context_length: int | None = None,
        runtime: str | None = None,
    ):
        if model.processor is None:
            raise ValueError("the model has no processor attached: load it with AltCLIP.from_pretrained")
        self.batch_size = check_batch_size(batch_size)
        self.device = torch.device(device) if device is not None else default_device()
        self.runtime = resolve_runtime(runtime, self.device, prefer_torch=bool(compile) or dtype is not None)
        if self.runtime == "openvino" and (compile or dtype not in (None, torch.float32, torch.bfloat16)):
            raise ValueError("runtime 'openvino' takes no compile (a torch option); its dtype is fp32 or bf16")
        if int8 and self.runtime == "openvino" and dtype is not None:
            raise ValueError("int8 on OpenVINO keeps its own precisions (int8 weights, bf16 activations): give no dtype")
        if int8 and self.runtime == "torch":
            if self.device.type != "cpu" or dtype not in (None, torch.float32):
                raise ValueError("int8 dynamic quantisation runs on the CPU in float32 only")
            model = quantize_int8(fuse_quick_gelu(model))
        elif self.runtime == "openvino":  # the weights stay float32; dtype picks the inference precision
            model = fuse_quick_gelu(model).to(self.device, torch.float32)
        else:
            dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
            model = fuse_quick_gelu(model).to(self.device, dtype)
        self.model = model.eval()
        self.processor = model.processor
        self.context_length = self.processor._check_context_length(context_length or self.processor.context_length)
        self.compile = bool(compile)
        self.decode_on_device = decode_on_device
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.num_workers = num_workers if num_workers is not None else (min(16, cpus) if self.device.type == "cuda" else 0)
        self.normalize = normalize
        self.max_image_pixels = check_max_image_pixels(max_image_pixels)
        self._lock = threading.Lock()
        if self.runtime == "openvino":
            precision = "int8" if int8 else {None: None, torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
            towers = OpenVINOTowers(model, precision)
            self.precision, self.fidelity = towers.precision, towers.fidelity
            self._encode_text, self._encode_image = towers.encode_text, towers.encode_image
            return
        self.precision, self.fidelity = "int8" if int8 else str(self.model.dtype).removeprefix("torch."), {}
        mode = compile if isinstance(compile, str) else None
        self._encode_text = torch.compile(model.encode_text, dynamic=True, mode=mode) if compile else model.encode_text
        self._encode_image = torch.compile(model.encode_image, mode=mode) if compile else model.encode_image

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> Embedder:
        """Load a registry name, hub id or local folder (see :meth:`AltCLIP.from_pretrained`) and prepare it."""
        from altclip_adapters.model.core import AltCLIP

        return cls(AltCLIP.from_pretrained(name_or_path), **kwargs)

    # texts -------------------------------------------------------------------------------------
    def iter_texts(self, texts: Sequence[str], *, context_length: int | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(positions, embeddings) per batch, longest texts first; each batch is padded to its own longest text.
        An empty list yields nothing; TypeError (raised at once) for anything but a list of strings."""
        texts = check_texts(texts)
        length = context_length or self.context_length
        ids = self.processor.tokenizer(texts, truncation=True, max_length=length)["input_ids"] if texts else []
        return self.iter_tokens(ids)

    def iter_tokens(self, ids: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """:meth:`iter_texts` for texts already tokenized (one list of token ids per text, no padding)."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pad = self.model.config.text.pad_token_id
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            lengths = [len(ids[i]) for i in positions]
            input_ids = torch.tensor([list(ids[i]) + [pad] * (lengths[0] - n) for i, n in zip(positions, lengths)])
            mask = (torch.arange(lengths[0]) < torch.tensor(lengths)[:, None]).long()
            with self._lock, torch.inference_mode():
                features = self._encode_text(input_ids.to(self.device), mask.to(self.device), normalize=self.normalize)
            yield positions, features.float().cpu()

    def texts(self, texts: Sequence[str], *, context_length: int | None = None) -> torch.Tensor:
        """Embeddings [N, projection_dim] float32 of ``texts``, in input order ([0, projection_dim] for none)."""
        texts = check_texts(texts)
        out = torch.empty(len(texts), self.model.config.projection_dim)
        for positions, features in self.iter_texts(texts, context_length=context_length):
            out[positions] = features
        return out

    # images ------------------------------------------------------------------------------------
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, projection_dim] (float32, CPU) of pixels already resized and cropped
        (``processor.image_transform.uint8``): uint8 [N, 3, H, W] on any device, N at most ``batch_size``."""
        if pixels.shape[0] > self.batch_size:
            raise ValueError(f"{pixels.shape[0]} images in one call; at most batch_size={self.batch_size}")
        pixels = pixels.to(self.device, non_blocking=True)
        count = pixels.shape[0]
        if self.compile and count < self.batch_size:  # one fixed shape for the compiled graph
            pixels = torch.cat([pixels, pixels.new_zeros((self.batch_size - count, *pixels.shape[1:]))])
        values = self.processor.image_transform.normalize(pixels).to(self.model.dtype)
        with self._lock, torch.inference_mode():
            features = self._encode_image(values, normalize=self.normalize)
        return features[:count].float().cpu()

    def _decode_jpegs(self, items: Sequence[ImageInput], indices: list[int], jpegs: list[tuple[torch.Tensor, int]]):
        """(positions, resized and cropped uint8 pixels on the device, errors) of raw JPEG files given as
        (bytes, EXIF orientation), turned upright (nvJPEG ignores the tag, so it is applied here on every
        device); a file the device's decoder rejects goes through the CPU loader instead."""
        from torchvision.io import ImageReadMode, decode_jpeg  # torchvision.io costs seconds to import: only here

        transform = self.processor.image_transform
        data = [one for one, _ in jpegs]
        try:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # a batch fails as a whole: find the culprits one by one
            images = []
            for one in data:
                try:
                    images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    images.append(None)
        positions, pixels, errors = [], [], []
        for index, image, (_, orientation) in zip(indices, images, jpegs):
            try:
                if image is None:
                    pixels.append(transform.uint8(items[index], max_image_pixels=self.max_image_pixels).to(self.device))
                else:
                    pixels.append(transform.resize_crop(orient(image, orientation)))
                positions.append(index)
            except Exception as e:  # noqa: BLE001 (reported as this item's error)
                errors.append((index, e))
        return positions, pixels, errors

    def iter_images(self, images: Sequence[ImageInput]) -> Iterator[ImageBatch]:
        """One :class:`ImageBatch` per batch, in input order, with its decoding and forward seconds; unreadable
        images are reported, not raised. An empty list yields nothing; TypeError for anything but a list."""
        images = as_list(images, "images")
        if not images:
            return
        start = time.perf_counter()  # the first batch's wait includes starting the workers
        loader = DataLoader(
            _ImageItems(images, self.processor.image_transform, self.decode_on_device, self.max_image_pixels),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        for indices, pixels, jpeg_indices, jpegs, errors in loader:
            if jpegs:
                decoded, jpeg_pixels, failed = self._decode_jpegs(images, jpeg_indices, jpegs)
                parts = [pixels.to(self.device, non_blocking=True)] if pixels is not None else []
                parts += [torch.stack(jpeg_pixels)] if jpeg_pixels else []
                indices, errors = indices + decoded, sorted(errors + failed, key=lambda error: error[0])
                pixels = torch.cat(parts) if parts else None
            messages, exceptions = [(i, str(e)) for i, e in errors], [e for _, e in errors]
            decoded = time.perf_counter()
            if pixels is None:
                empty = torch.empty(0, self.model.config.projection_dim)
                yield ImageBatch([], empty, messages, exceptions, decode_seconds=decoded - start)
            else:
                order = sorted(range(len(indices)), key=indices.__getitem__)
                embeddings = self.encode_pixels(pixels)[order]
                yield ImageBatch([indices[i] for i in order], embeddings, messages, exceptions,
                                 decode_seconds=decoded - start, embed_seconds=time.perf_counter() - decoded)
            start = time.perf_counter()  # the caller's time between batches is not the batch's

    def images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Embeddings [N, projection_dim] float32 of ``images``, in input order ([0, projection_dim] for none);
        raises the first unreadable image's error: FileNotFoundError naming a missing file, ValueError /
        TypeError prefixed with its position (``image 3: ...``)."""
        images = as_list(images, "images")
        out = torch.empty(len(images), self.model.config.projection_dim)
        for batch in self.iter_images(images):
            if batch.errors:
                (index, message), error = batch.errors[0], batch.exceptions[0]
                if isinstance(error, (ValueError, TypeError)):
                    raise type(error)(f"image {index}: {message}") from error
                raise error
            out[batch.indices] = batch.embeddings
        return out
