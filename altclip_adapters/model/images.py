"""The one loader through which every image enters the package, with one set of rules.

``load_image`` turns any supported input into an upright 8-bit RGB PIL image: every encoded form (path, bytes,
file object, ``data:`` URI, URL) is turned upright by its EXIF orientation, while a PIL image or array the caller
decoded is used as given; alpha is dropped and the stored colours kept; 16-bit samples keep their high byte; an
encoded image over ``max_image_pixels`` (read from its header, before any pixel is decoded) is unreadable; a
multi-frame file gives its first frame; any failure to open or decode one image is an ``UnreadableImageError``
naming it. Formats are Pillow's, plus HEIF/HEIC through pillow-heif (extra ``heif``). The rules in full, and why
each is what it is (transformers' decoding, OpenAI CLIP's and open_clip's): docs/core.md, "Image rules".
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import sys
import urllib.parse
from typing import IO, TYPE_CHECKING, Union

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # numpy and torch are imported where needed: the CLI reads this module's settings cheaply
    import numpy as np
    import torch

ImageInput = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], "np.ndarray", "torch.Tensor"]

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
"""Where plain PIL refuses an image (2 x its default ``Image.MAX_IMAGE_PIXELS``): 108 MP phone photos load,
a 14,000 x 13,000 PNG does not. About 540 MB once decoded to RGB."""

URL_TIMEOUT_S = 30
MAX_URL_BYTES = 100_000_000  # a larger download is refused before it fills memory

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HEIF_SUFFIXES = (".heic", ".heics", ".heif", ".heifs", ".hif")  # pillow-heif's registered extensions
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
HEIF_HINT = "HEIF/HEIC photos need the pillow-heif plugin: pip install 'altclip-adapters[heif]'"
EXIF_ORIENTATION = 0x0112


class UnreadableImageError(ValueError):
    """One image that cannot be opened or decoded; the message names its source (path, URL, ...)."""


def load_image(
    image: ImageInput,
    *,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    allow_urls: bool = True,
    draft: int | None = None,
) -> Image.Image:
    """An upright 8-bit RGB PIL image from any supported input, by the package's one set of image rules.

    Args:
        image: a file path (``str`` or ``os.PathLike``), ``bytes`` / ``bytearray`` / ``memoryview`` of an encoded
            file, a binary file object (``BytesIO``, an open file), a ``data:`` URI, an ``http(s)://`` URL, a PIL
            image, or a uint8 ``numpy`` array / ``torch`` tensor of shape HxW, HxWxC or CxHxW with C in 1, 3, 4
            (a 4th channel is alpha, dropped).
        max_image_pixels: the largest width x height read from an encoded form, checked on the header before
            decoding; ``None`` for no limit. PIL's own limit is not changed for the rest of the process.
        allow_urls: whether an ``http(s)://`` URL may be fetched (30 s timeout, 100 MB cap).
        draft: decode JPEGs at the coarsest DCT scale (1/2, 1/4 or 1/8, libjpeg's reduced decoding through
            ``PIL.Image.draft``) that keeps the shortest edge at least ``draft`` pixels, for callers that
            downscale anyway; an approximation of the full decode, so off (None) by default.

    Returns:
        A PIL image in mode RGB; an RGB PIL image given is returned as it is (not copied).

    Raises:
        UnreadableImageError: (a ``ValueError``) any failure to open or decode the image, over
            ``max_image_pixels``, or a HEIF file without pillow-heif; the message names the source.
        FileNotFoundError: a path that does not exist.
        TypeError: an unsupported input type or array dtype.
        ValueError: an array of unsupported shape, a URL when ``allow_urls`` is false, or a ``max_image_pixels``
            that is not a positive integer or None.
    """
    check_max_image_pixels(max_image_pixels)
    if isinstance(image, Image.Image):
        return _convert(image, describe(image))
    if _is_array(image):
        return _convert(_from_array(image), describe(image))
    source, file, owned = _open_source(image, allow_urls)
    try:
        return _decode(file, source, max_image_pixels, draft)
    finally:
        if owned:
            file.close()


def register_plugins() -> bool:
    """Register the optional Pillow plugins that are installed (pillow-heif's HEIF/HEIC opener), once per
    process; called by every decode, so callers need not.

    Returns:
        Whether HEIF files can be read (pillow-heif is installed).
    """
    global _heif
    if _heif is None:
        try:
            import pillow_heif
        except ImportError:
            _heif = False
        else:
            pillow_heif.register_heif_opener()
            _heif = True
    return _heif


_heif: bool | None = None


def image_suffixes() -> frozenset[str]:
    """The file suffixes (lower case, with the dot) that name images: every extension Pillow registers for a
    format it can decode (after :func:`register_plugins`; not its save-only formats such as PDF, nor its stub
    formats that need a handler of their own such as HDF5 and WMF), plus the HEIF suffixes when pillow-heif is
    missing, so that such files are found and reported as needing it rather than left out unseen."""
    from PIL import ImageFile

    register_plugins()
    Image.init()
    readable = {
        format
        for format, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }
    if "JPEG" in readable:
        readable.add("MPO")  # multi-picture JPEGs: JPEG's opener returns them
    suffixes = {ext.lower() for ext, format in Image.registered_extensions().items() if format in readable}
    return frozenset(suffixes | set(HEIF_SUFFIXES))


def needs_plugin(header: bytes) -> str | None:
    """What to install to read a file that starts with ``header`` (its first 16 bytes or more), when Pillow
    cannot read it only because an optional plugin is missing; else None."""
    if header[4:8] == b"ftyp" and header[8:12] in HEIF_BRANDS and not register_plugins():
        return HEIF_HINT
    return None


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) in pixels of the image file ``path`` as stored (before EXIF orientation), from its header
    alone; None when it is not a file or not an image Pillow (with :func:`register_plugins`) can open."""
    try:
        with open(path, "rb") as file, _open(file) as header:
            return header.size
    except Exception:  # noqa: BLE001 (whatever the reason, there is no size to give)
        return None


def check_max_image_pixels(max_image_pixels: int | None) -> int | None:
    """``max_image_pixels`` itself when it is a positive integer or None.

    Raises:
        ValueError: anything else (a bool, a float, zero or less).
    """
    if max_image_pixels is not None and (
        isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1
    ):
        raise ValueError(f"max_image_pixels must be a positive integer or None; got {max_image_pixels!r}")
    return max_image_pixels


def is_one_image(item: object) -> bool:
    """Whether ``item`` is one image input (a string, path, bytes, file, PIL image or array), not a list of them."""
    return isinstance(item, (Image.Image, str, os.PathLike, bytes, bytearray, memoryview)) or _is_array(item) or hasattr(item, "read")


def describe(image: object) -> str:
    """A short name for one image input, for error messages: its path or URL, or its kind and size."""
    if isinstance(image, Image.Image):
        return f"PIL image {image.width}x{image.height} ({image.mode})"
    if _is_array(image):
        return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"{type(image).__name__} ({_size(len(image))})"
    if isinstance(image, str) and image[:5].lower() == "data:":
        return f"data URI ({_size(len(image))})"
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        return text if len(text) <= 200 else text[:197] + "..."
    name = getattr(image, "name", None)
    return f"file {name}" if isinstance(name, str) else type(image).__name__


def jpeg_orientation(data: bytes, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> int | None:
    """Whether torchvision's ``decode_jpeg`` (nvJPEG on a GPU) may decode ``data``, and how to turn it upright.

    Those are the files it decodes to ``load_image``'s pixels once :func:`orient` is applied: whole YCbCr or
    greyscale JPEGs within the pixel limit. Reads the header only.

    Args:
        data: the encoded file.
        max_image_pixels: as in :func:`load_image`.

    Returns:
        The EXIF orientation (1-8; 1 when the tag is absent or invalid), or None for anything that must go through
        :func:`load_image`: CMYK, other formats, too large, unreadable, or not ending with the JPEG end marker (a
        truncated file, which a lenient decoder might fill in, or a motion photo's appended video).
    """
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    try:
        with _open(io.BytesIO(data)) as header:
            pixels = header.width * header.height
            if header.format != "JPEG" or header.mode not in ("RGB", "L"):
                return None
            if max_image_pixels is not None and pixels > max_image_pixels:
                return None
            orientation = header.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 (whatever the header's problem, load_image reports it)
        return None
    return orientation if orientation in range(1, 9) else 1


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """What ``PIL.ImageOps.exif_transpose`` does to a PIL image, on a tensor on any device.

    Args:
        pixels: [..., H, W], any dtype.
        orientation: the EXIF orientation, 1-8 (any other value leaves the pixels as they are).

    Returns:
        The pixels upright: [..., H, W], or [..., W, H] for orientations 5-8.
    """
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip((-2, -1))
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return pixels.rot90(-1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip((-2, -1))
    if orientation == 8:
        return pixels.rot90(1, (-2, -1))
    return pixels


def _is_tensor(image: object) -> bool:
    torch = sys.modules.get("torch")  # a tensor cannot exist unless torch is imported
    return torch is not None and isinstance(image, torch.Tensor)


def _is_array(image: object) -> bool:
    numpy = sys.modules.get("numpy")  # likewise for numpy arrays
    return (numpy is not None and isinstance(image, numpy.ndarray)) or _is_tensor(image)


def _size(count: int) -> str:
    return f"{count} B" if count < 1000 else f"{count / 1e3:.1f} kB" if count < 1e6 else f"{count / 1e6:.1f} MB"


def _from_array(image) -> Image.Image:
    """A PIL image of a uint8 array or tensor: HxW, HxWxC or CxHxW, C in 1, 3, 4."""
    import numpy as np

    array = image.detach().cpu().numpy() if _is_tensor(image) else image
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must hold uint8 pixels (0-255); got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))):
        raise ValueError(f"image arrays must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels; got shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _open_source(image: object, allow_urls: bool) -> tuple[str, IO[bytes], bool]:
    """(description, seekable binary file, whether that file is ours to close) of an encoded image."""
    source = describe(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return source, io.BytesIO(image), True
    if isinstance(image, str) and image[:5].lower() == "data:":
        return source, io.BytesIO(_data_uri_bytes(image, source)), True
    if isinstance(image, str) and image[:8].lower().startswith(("http://", "https://")):
        if not allow_urls:
            raise ValueError(f"image URLs are not fetched here: {source}")
        return source, io.BytesIO(_fetch(image, source)), True
    if isinstance(image, (str, os.PathLike)):
        try:
            return source, open(image, "rb"), True  # closed by load_image
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image file not found: {source}") from e
        except OSError as e:
            raise UnreadableImageError(f"cannot read {source} as an image: {e.strerror or e}") from e
    if isinstance(image, io.TextIOBase):
        raise TypeError(f"image files must be opened in binary mode ('rb'); got a text file ({source})")
    if hasattr(image, "read"):
        try:
            if image.seekable():
                return source, image, False
            return source, io.BytesIO(image.read()), True
        except Exception as e:
            raise UnreadableImageError(f"cannot read {source} as an image: {e}") from e
    raise TypeError(
        f"expected an image (file path, bytes, binary file, data: URI, URL, PIL image, or uint8 array/tensor); "
        f"got {type(image).__name__}"
    )


def _data_uri_bytes(uri: str, source: str) -> bytes:
    """The payload of an RFC 2397 ``data:[<type>][;base64],<data>`` URI."""
    header, comma, payload = uri.partition(",")
    if not comma:
        raise UnreadableImageError(f"{source} has no ',' between its header and its data")
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload.strip(), validate=True)
        return urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as e:
        raise UnreadableImageError(f"{source} is not valid base64: {e}") from e


def _fetch(url: str, source: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "altclip-adapters"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            data = response.read(MAX_URL_BYTES + 1)
    except Exception as e:
        raise UnreadableImageError(f"cannot fetch {source}: {e}") from e
    if len(data) > MAX_URL_BYTES:
        raise UnreadableImageError(f"{source} is over {MAX_URL_BYTES:,} bytes")
    return data


def _open(file: IO[bytes]) -> Image.Image:
    """``Image.open`` (header only), with PIL's decompression-bomb refusal replaced by the caller's
    ``max_image_pixels`` check: past PIL's limit, the same plugin search runs without PIL's check."""
    register_plugins()
    try:
        return Image.open(file)
    except Image.DecompressionBombError:
        pass
    Image.init()
    file.seek(0)
    prefix = file.read(16)
    for format in Image.ID:
        factory, accept = Image.OPEN[format]
        accepted = accept(prefix) if accept else True
        if accepted and not isinstance(accepted, str):
            file.seek(0)
            try:
                return factory(file, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


def _decode(file: IO[bytes], source: str, max_image_pixels: int | None, draft: int | None = None) -> Image.Image:
    try:
        image = _open(file)
        pixels = image.width * image.height
        if max_image_pixels is not None and pixels > max_image_pixels:
            raise UnreadableImageError(
                f"{source} has {pixels:,} pixels, over the limit of {max_image_pixels:,}; "
                "raise max_image_pixels / --max-image-pixels to read it"
            )
        if draft is not None and image.format == "JPEG":
            shortest = min(image.size)
            scale = next(s for s in (8, 4, 2, 1) if -(-shortest // s) >= draft or s == 1)
            image.draft(image.mode, (image.width // scale, image.height // scale))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _convert(image, source)
    except UnreadableImageError:
        raise
    except UnidentifiedImageError as e:
        file.seek(0)
        reason = needs_plugin(file.read(16)) or "not a format Pillow recognises"
        raise UnreadableImageError(f"cannot read {source} as an image: {reason}") from e
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, DecompressionBombError...)
        raise UnreadableImageError(f"cannot read {source} as an image: {type(e).__name__}: {e}") from e


def _convert(image: Image.Image, source: str) -> Image.Image:
    """8-bit RGB by the module's rules (16-bit high byte, alpha dropped)."""
    try:
        if image.mode == "RGB":
            image.load()
            return image
        if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
            import numpy as np

            samples = np.asarray(image)
            image = Image.fromarray((np.clip(samples, 0, 65535) >> 8).astype(np.uint8))
        if "transparency" in image.info:  # via RGBA: the same colours, without PIL's warning for palette alpha
            image = image.convert("RGBA")
        return image.convert("RGB")
    except Exception as e:
        raise UnreadableImageError(f"cannot read {source} as an image: {type(e).__name__}: {e}") from e
