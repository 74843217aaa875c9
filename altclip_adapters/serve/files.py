"""The image files a server may read for its clients, and their thumbnails (made once, cached on disk).

The servable root is fixed when the server starts (``--image-base``), never derived from metadata: metadata
comes from datasets downloaded from the internet and is untrusted. Only files listed in an embedding folder's
metadata (column ``image_path``) that lie inside that root are served, addressed by their path relative to the
deepest folder holding all of them. A listed path outside the root (``/etc/hostname``, ``../../etc/passwd.jpg``)
is not servable, and is counted for one line at start. A requested path that is not one of the servable
strings (``..``, absolute paths, percent-encoded or other spellings) is not found, and neither is a listed path
whose real location (symlinks resolved) lies outside the served folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from altclip_adapters.atomic import write_bytes
from altclip_adapters.model.images import DEFAULT_MAX_IMAGE_PIXELS, image_suffixes, load_image

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # http://, s3://, ...: not a local file


class NotInCollection(LookupError):
    """The path names no servable file of the collection."""


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class Collection:
    """The local image files of an indexed collection that may be served.

    ``image_paths``: one entry per row of the embedding folder (None, URLs and other non-local entries are
    skipped); relative paths are read relative to ``base``, the servable root: a path that leaves it is never
    served, nor one whose real path (symlinks resolved, on request) leaves the deepest folder holding them all,
    nor one whose suffix names no image format the loader reads (``images.image_suffixes``: a dataset naming
    ``.ssh/id_rsa`` or ``notes.txt`` gets nothing, whatever the base). ``outside`` counts such rows and
    ``first_outside`` names the first.
    """

    def __init__(self, image_paths: Sequence[str | None], *, base: str | Path = "."):
        self.base = os.path.realpath(base)
        suffixes = image_suffixes()
        local, self.outside, self.first_outside = {}, 0, None
        for row, p in enumerate(image_paths):
            if not isinstance(p, str) or not p or _URL.match(p):
                continue
            path = os.path.normpath(os.path.join(self.base, p))
            if "\0" in p or not _inside(path, self.base) or os.path.splitext(p)[1].lower() not in suffixes:
                # symlinks are resolved when a file is asked for
                self.outside += 1
                self.first_outside = self.first_outside or p
                continue
            local[row] = path
        self.root: Path | None = Path(os.path.commonpath([os.path.dirname(p) for p in local.values()])) if local else None
        self._real_root = os.path.realpath(self.root) if self.root else None
        self._links = {row: Path(os.path.relpath(p, self.root)).as_posix() for row, p in local.items()}
        self._rows = {link: row for row, link in self._links.items()}

    def __len__(self) -> int:
        return len(self._links)

    def link(self, row: int) -> str | None:
        """The path (relative to the root, ``/``-separated) by which row ``row``'s file is served; None
        for a row without a local file."""
        return self._links.get(row)

    def resolve(self, link: str) -> Path:
        """The real path of the served file ``link`` (as :meth:`link` gives it). Raises
        :class:`NotInCollection` unless ``link`` is a listed file whose real path is a regular file
        inside the root."""
        if link not in self._rows:
            raise NotInCollection(link)
        real = os.path.realpath(os.path.join(self.root, link))
        if os.path.commonpath([real, self._real_root]) != self._real_root or not os.path.isfile(real):
            raise NotInCollection(link)
        return Path(real)


class ThumbnailCache:
    """JPEG thumbnails (longest side ``size`` px) of image files, made once through the package's image
    loader and kept under ``folder`` (named by a hash of the file's real path, modification time and size,
    so an edited file gets a new one). Safe to call from several threads: each thumbnail is made once.
    """

    def __init__(self, folder: str | Path, *, size: int = 256, quality: int = 85,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        if size < 16:
            raise ValueError(f"thumbnail size must be at least 16 px; got {size}")
        self.folder = Path(folder)
        self.size = size
        self.quality = quality
        self.max_image_pixels = max_image_pixels
        self._locks = [threading.Lock() for _ in range(64)]  # striped: one per hash bucket, bounded memory

    def path(self, image: Path) -> Path:
        """Where the thumbnail of ``image`` (a real path) is cached."""
        stat = image.stat()
        key = hashlib.sha256(f"{image}\0{stat.st_mtime_ns}\0{stat.st_size}\0{self.size}".encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.jpg"

    def get(self, image: Path) -> Path:
        """The cached thumbnail file of ``image``, made now if missing. Raises the loader's
        ``UnreadableImageError`` (a ValueError) for a file that is not a readable image."""
        target = self.path(image)
        with self._locks[int(target.stem[:8], 16) % len(self._locks)]:
            if not target.is_file():
                self._make(image, target)
        return target

    def _make(self, image: Path, target: Path) -> None:
        picture = load_image(image, allow_urls=False, max_image_pixels=self.max_image_pixels)
        picture.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        data = io.BytesIO()
        picture.save(data, "JPEG", quality=self.quality)
        write_bytes(target, data.getvalue())
