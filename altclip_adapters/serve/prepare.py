"""The request path's side of batching: each request's inputs checked and turned into what the model reads
(token ids; resized and cropped uint8 pixels) before they are queued, so a bad input fails its own request
with a 400 naming it, never a shared forward pass.

Images are decoded under a :class:`PixelBudget`: the decoded pixels in flight across all requests are bounded,
whatever the number of requests or of images in them (a request waits for room, or gets 503).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from altclip_adapters.model.images import UnreadableImageError, load_image
from altclip_adapters.serve.errors import APIError, Overloaded

if TYPE_CHECKING:
    import torch

    from altclip_adapters.model.processor import AltCLIPProcessor


# texts ------------------------------------------------------------------------------------------------
def check_texts(texts: Sequence[str], max_chars: int) -> None:
    """APIError 400 naming the first input that is empty, longer than ``max_chars`` characters, or not valid
    Unicode (a lone surrogate, which JSON's ``\\ud800`` escapes can carry and no tokenizer takes)."""
    for i, text in enumerate(texts):
        if not text:
            raise APIError(400, f"input[{i}] is an empty string", param="input")
        if len(text) > max_chars:
            raise APIError(400, f"input[{i}] has {len(text):,} characters; this server takes at most {max_chars:,} "
                                "per input (the model reads the first tokens only)", param="input", code="input_too_long")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise APIError(400, f"input[{i}] is not valid Unicode: {e.reason} at character {e.start} "
                                f"({text[e.start]!r})", param="input", code="invalid_unicode") from None


def tokenize(processor: AltCLIPProcessor, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each (checked) text as the model reads them: the checkpoint's tokenizer, truncated to its
    context length, ``<s>`` and ``</s>`` included (what ``usage`` counts)."""
    ids = processor.tokenizer(list(texts), truncation=True, max_length=processor.context_length)["input_ids"]
    vocab = len(processor.tokenizer)
    for i, row in enumerate(ids):
        if not all(0 <= t < vocab for t in row):  # the tokenizer's own output; checked because the model would index with it
            raise APIError(400, f"input[{i}] tokenizes outside the vocabulary", param="input")
    return ids


# images -----------------------------------------------------------------------------------------------
class PixelBudget:
    """At most ``total`` decoded pixels (width x height) in flight at once, shared by every request of one
    event loop. :meth:`hold` waits up to ``timeout`` seconds for room, then raises :class:`Overloaded`.
    An image larger than the whole budget is held alone (the budget is never smaller than the pixel limit)."""

    def __init__(self, total: int, timeout: float = 30.0):
        if total < 1:
            raise ValueError(f"the pixel budget must be positive; got {total}")
        self.total, self.timeout, self.used = total, timeout, 0
        self._room: asyncio.Condition | None = None

    async def run(self, pixels: int, work, *args):
        """``await asyncio.to_thread(work, *args)`` once ``pixels`` fit in the budget; released after."""
        pixels = min(max(pixels, 1), self.total)
        if self._room is None:
            self._room = asyncio.Condition()
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self.used + pixels <= self.total), self.timeout)
            except TimeoutError:
                raise Overloaded(f"the server is decoding {self.used:,} pixels of other requests' images (at most "
                                 f"{self.total:,} at once): retry later") from None
            self.used += pixels
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            async with self._room:
                self.used -= pixels
                self._room.notify_all()


def image_bytes(text: str, i: int, allow_urls: bool) -> str | bytes:
    """The encoded image of ``input[i]`` with modality image: the bytes of a data: URI (or the URL when
    ``allow_urls``). APIError 400 naming the input otherwise."""
    head = text[:8].lower()
    if head.startswith(("http://", "https://")):
        if allow_urls:
            return text
        raise APIError(400, f"input[{i}] is a URL, and this server does not fetch URLs (the operator can allow it "
                            "with --allow-url-fetch); send the image as a data: URI", param="input", code="url_fetch_disabled")
    if not head.startswith("data:"):
        raise APIError(400, f"input[{i}] is neither a data: URI nor an http(s) URL; with modality 'image', each input "
                            "is an image as data:image/<type>;base64,<data>", param="input")
    import base64
    import binascii

    meta, comma, payload = text.partition(",")
    if not comma or not meta.lower().endswith(";base64"):
        raise APIError(400, f"input[{i}] is not a readable image: a data: URI must be data:image/<type>;base64,<data>",
                       param="input", code="invalid_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"input[{i}] is not a readable image: its base64 payload is invalid ({e})",
                       param="input", code="invalid_image") from None


def declared_size(data: str | bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header (nothing decoded); None when the header cannot say."""
    if not isinstance(data, bytes):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - the loader reports the problem with its own message
        return None


def pixels(processor: AltCLIPProcessor, data: str | bytes, name: str, param: str, *, max_image_pixels: int | None,
           allow_urls: bool, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Resized and centre-cropped uint8 pixels [3, H, W] of one encoded image; APIError 400 naming ``name`` when
    it cannot be read.

    Memory stays near the decoded image's own size: JPEGs decode at the reduced DCT scale the crop needs
    (the loader's ``draft``), and an image whose shortest edge is at least 4x the model's resize target is first
    box-reduced by PIL (integer factor, keeping at least 2x the target) before the model's antialiased resize,
    which would otherwise hold a float copy of the full image. Both are approximations of the full-size
    arithmetic for large photos (within a few 8-bit levels); smaller images are processed exactly."""
    import numpy as np
    import torch

    transform = processor.image_transform
    try:
        draft = transform.shortest_edge if size is not None and min(size) >= 2 * transform.shortest_edge else None
        image = load_image(data, allow_urls=allow_urls, max_image_pixels=max_image_pixels, draft=draft)
        factor = min(image.size) // (2 * transform.shortest_edge)
        if factor >= 2:
            image = image.reduce(factor)
        return transform.resize_crop(torch.from_numpy(np.array(image)).permute(2, 0, 1)).contiguous()
    except (UnreadableImageError, ValueError, OSError) as e:
        raise APIError(400, f"{name} is not a readable image: {e}", param=param, code="invalid_image") from e
