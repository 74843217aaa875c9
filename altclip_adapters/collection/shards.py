"""The input shards of a bulk embedding run: webdataset tars, img2dataset parquet files, and chunks of
image files or text lines.

A run is a list of :class:`ShardSource` (small, picklable: what a Ray task is sent); ``source.read()``
returns the shard's :class:`Sample` list. Input shard ``i`` becomes output shard ``i`` of the embedding
folder (:mod:`altclip_adapters.collection.store`), so a rerun skips the shards already written.

Formats, as img2dataset (``img2dataset/writer.py``) writes them:

- webdataset tar: the files of one sample share a key (``000000123.jpg``, ``.txt``, ``.json``; the key
  is the name up to its first dot, webdataset's ``base_plus_ext``) and are contiguous. The image is the
  member with an image suffix, the caption the ``.txt``, and the ``.json`` fields (``key``, ``url``,
  ``width``, ...) become metadata. Streamed with the standard library's ``tarfile``, member by member
  (webdataset's own iterator neither says which member broke nor notices a file cut at a block boundary);
  a truncated or corrupt tar yields the samples before the break and :attr:`Shard.error` says where it
  broke (the sample being read there is dropped).
- img2dataset parquet (``--output_format parquet``): one row per sample, the encoded image in a binary
  column named after the encode format (``jpg``, ``png`` or ``webp``), the caption in ``txt``, then
  ``key``, ``url``, ``caption``, ``status``, ``error_message``, ``width``, ... Rows without image bytes
  (failed downloads: ``status`` is not ``success``) are counted in :attr:`Shard.missing_images`. The
  metadata-only parquet img2dataset writes beside each tar has no image column and is refused.

Standard library at import time; webdataset and pyarrow are imported when a shard is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from altclip_adapters.collection.inputs import find_images, read_text_lines

SHARD_SIZE = 10_000  # items per output shard for file and text-line inputs (img2dataset's default shard size)
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg")  # img2dataset's encode formats, in its preference order
KINDS = ("tar", "parquet", "images", "texts")
# how a truncated or corrupt tar stream breaks; an OSError (a failing disk or mount) is raised instead, so the
# shard is not written and a rerun retries it
TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error)
SKIPPED_MEMBERS = r"__[^/]*__($|/)"  # webdataset's meta members (``tar_file_iterator``'s ``skip_meta``)


@dataclass
class Sample:
    """One item of a shard: ``image`` (encoded bytes, a file path, or None), ``caption`` (or None) and
    ``metadata`` (the row written to the embedding folder's metadata parquet)."""

    key: str
    image: bytes | str | None
    caption: str | None
    metadata: dict[str, Any]


@dataclass
class Shard:
    """The samples of one input shard. ``error`` (or None) says why reading stopped before the end;
    ``skipped`` names the samples left out as unreadable; ``missing_images`` counts the rows that hold
    no image at all (img2dataset's failed downloads); ``notes`` says, once per kind and shard, where a
    sample was kept with something changed (metadata stored by :mod:`altclip_adapters.collection._metadata`'s rules, a
    caption that is not UTF-8 decoded with replacement characters): shard, sample key and field."""

    samples: list[Sample]
    error: str | None = None
    skipped: list[str] = field(default_factory=list)
    missing_images: int = 0
    notes: list[str] = field(default_factory=list)
    _noted: set[str] = field(default_factory=set, repr=False, compare=False)
    _columns: set[str] = field(default_factory=set, repr=False, compare=False)

    def note(self, kind: str, message: str) -> None:
        """Record ``message`` unless a note of the same ``kind`` (e.g. a field name) was recorded before."""
        if kind not in self._noted:
            self._noted.add(kind)
            self.notes.append(message)


@dataclass(frozen=True)
class ShardSource:
    """What one input shard is: a ``tar`` or ``parquet`` file (``path``), or a chunk of ``images`` (file
    paths) or ``texts`` (lines) held in ``items``. ``keys`` and ``tokens`` are its items' identities (see
    :class:`Inputs`; one of each for a tar or parquet file: the file's), what the run records for each shard
    so that a rerun knows what changed."""

    shard_id: int
    kind: str
    path: str | None = None
    items: tuple[str, ...] = field(default=(), repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """How reports name the shard: its file, or its first item and size."""
        if self.path is not None:
            return self.path
        return f"shard {self.shard_id} ({len(self.items)} {self.kind} from {self.items[0]})"

    def fingerprint(self) -> str:
        """A short description that changes when the shard's input does: the hash of its kind, items and their
        identities (a file's path, size and modification time). Saved batches of the shard are reused only
        under the same fingerprint."""
        text = "\n".join([self.kind, str(self.path), *self.items, *self.keys, *self.tokens])
        size = 1 if self.path is not None else len(self.items)
        return f"{size} {self.kind} sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def has_captions(self) -> bool:
        """Whether the shard's samples carry captions, judged from its first sample (tar) or its columns
        (parquet) without reading it all; always True for text lines, False for image files."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return bool({"txt", "caption"} & set(pq.read_schema(self.path).names))
        if self.kind == "tar":
            from webdataset.tariterators import base_plus_ext

            first, suffixes = None, set()
            try:
                with tarfile.open(self.path, mode="r|") as archive:
                    for member in archive:
                        prefix, suffix = base_plus_ext(member.name)
                        if not member.isreg() or prefix is None or re.match(SKIPPED_MEMBERS, member.name):
                            continue
                        if first not in (None, prefix):
                            break
                        first = prefix
                        suffixes.add(suffix.lower())
            except TAR_ERRORS:  # judged on what could be read; read() reports the break
                pass
            return "txt" in suffixes
        return self.kind == "texts"

    def read(self) -> Shard:
        """The shard's samples (see the module docstring); OSError/ValueError when a file cannot be opened
        at all (a tar truncated part-way is not an error: see :attr:`Shard.error`)."""
        if self.kind == "tar":
            return read_tar(self.path)
        if self.kind == "parquet":
            return read_parquet(self.path)
        if self.kind == "images":
            return Shard([Sample(p, p, None, {"image_path": p}) for p in self.items])
        if self.kind == "texts":
            return Shard([Sample(str(i), None, t, {"caption": t}) for i, t in enumerate(self.items)])
        raise ValueError(f"unknown shard kind {self.kind!r}; expected one of {', '.join(KINDS)}")


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """``patterns`` with brace ranges expanded (``shards/{00000..00099}.tar``, as webdataset and
    img2dataset write them), in order. Raises FileNotFoundError naming the expanded paths that do not exist."""
    from braceexpand import braceexpand

    paths = [p for pattern in patterns for p in braceexpand(str(pattern))]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing[:3])}{more}")
    return paths


def file_token(path: str | os.PathLike) -> str:
    """``"size:mtime_ns"`` of a file: what identifies its content between runs (a file rewritten in place, cut
    short or re-downloaded gets another token). OSError when it cannot be stat'ed."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Inputs:
    """Every item of a run, in input order: ``kind`` (one of :data:`KINDS`), ``items`` (file paths or text
    lines), ``keys`` (identities: a file's absolute path; a text line itself, with ``\\x00N`` appended for
    its N-th repeat) and ``tokens`` (a file's :func:`file_token`; "" for a text line)."""

    kind: str
    items: tuple[str, ...]
    keys: tuple[str, ...]
    tokens: tuple[str, ...]

    def shards(self, positions: Sequence[int], first_id: int, shard_size: int) -> list[ShardSource]:
        """The items at ``positions`` as shards numbered from ``first_id``: one per file for tars and parquet,
        else ``shard_size`` items a shard."""
        size = 1 if self.kind in ("tar", "parquet") else shard_size
        out = []
        for n, start in enumerate(range(0, len(positions), size)):
            chunk = positions[start : start + size]
            items = tuple(self.items[i] for i in chunk)
            out.append(ShardSource(
                first_id + n, self.kind, items[0] if size == 1 else None, () if size == 1 else items,
                tuple(self.keys[i] for i in chunk), tuple(self.tokens[i] for i in chunk),
            ))
        return out


def collect(patterns: Sequence[str]) -> Inputs:
    """The items of a run over ``patterns``: ``.tar`` files (webdataset), ``.parquet`` files (img2dataset),
    ``.txt`` files (one text per line, blank lines skipped) or image files and folders (in :func:`find_images`
    order). Raises ValueError for mixed kinds or an empty input; FileNotFoundError for a missing path."""
    paths = expand_paths(patterns)
    suffixes = {Path(p).suffix.lower() for p in paths if not os.path.isdir(p)}
    for suffix, kind in ((".tar", "tar"), (".parquet", "parquet")):
        if suffix in suffixes:
            if suffixes != {suffix} or any(os.path.isdir(p) for p in paths):
                raise ValueError(f"give {suffix} shards alone, not mixed with other files or folders")
            return _files(kind, paths)
    if ".txt" in suffixes:
        if suffixes != {".txt"} or any(os.path.isdir(p) for p in paths):
            raise ValueError("give either .txt files (one text per line) or images and folders, not both")
        lines: list[str] = read_text_lines(paths).lines
        if not lines:
            raise ValueError(f"no text lines in {', '.join(paths)}")
        seen: dict[str, int] = {}
        keys = []
        for line in lines:
            seen[line] = seen.get(line, -1) + 1
            keys.append(line if not seen[line] else f"{line}\x00{seen[line]}")
        return Inputs("texts", tuple(lines), tuple(keys), ("",) * len(lines))
    return _files("images", [str(p) for p in find_images(paths)])


def _files(kind: str, paths: Sequence[str]) -> Inputs:
    return Inputs(kind, tuple(paths), tuple(os.path.abspath(p) for p in paths), tuple(map(file_token, paths)))


def plan(patterns: Sequence[str], *, shard_size: int = SHARD_SIZE) -> list[ShardSource]:
    """The input shards of a fresh run over ``patterns`` (see :func:`collect`): one per ``.tar`` or
    ``.parquet`` file, else ``shard_size`` images or text lines a shard. Shard ids count from 0.

    Raises ValueError for mixed kinds, an empty input or ``shard_size < 1``; FileNotFoundError for a
    missing path.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1; got {shard_size}")
    inputs = collect(patterns)
    return inputs.shards(range(len(inputs.items)), 0, shard_size)


MAX_TEXT_MEMBER_BYTES = 1 << 20  # a .txt or .json member over 1 MiB is not read whole
MAX_MEMBER_BYTES = 1 << 30  # a tar member over 1 GiB is not read: its sample is skipped
MAX_COLUMNS = 512  # a shard's metadata keeps at most this many json field names (the first seen)


def unsafe_name(name: str) -> str | None:
    """Why a sample name from a dataset (a tar member's key, a parquet ``key``) must not become an
    ``image_path``: it is absolute, has a ``..`` component, a backslash or a control character; None for a
    name that stays inside the collection."""
    if "\\" in name:
        return "has a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "has a '..' component"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has control characters"
    return None


def _json_fields(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_TEXT_MEMBER_BYTES:
        raise ValueError(f"{where}: the .json member is over {MAX_TEXT_MEMBER_BYTES:,} bytes")
    try:
        fields = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: the .json member is not valid JSON: {e}") from e
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: the .json member holds a {type(fields).__name__}, not an object")
    return fields


def _sample(shard: Shard, path: str, key: str, image, caption: str | None, fields: dict[str, Any]) -> None:
    """Add the sample ``key`` to ``shard`` (its metadata: ``image_path`` = the key, ``caption``, then
    ``fields``, stored by :mod:`altclip_adapters.collection._metadata`'s rules), or name it in ``shard.skipped`` when its
    key is unsafe. A blank caption (:func:`~altclip_adapters.collection.inputs.is_blank`) is kept in the metadata but
    not as the sample's caption, so it is skipped and counted as a blank text line is."""
    from altclip_adapters.collection.inputs import is_blank
    from altclip_adapters.collection._metadata import metadata_cell

    where = f"{path}:{key}"
    problem = unsafe_name(key)
    if problem:
        shard.skipped.append(
            f"{path}:{key!r}: the sample name {problem}: left out (it would name a file outside the collection)"
        )
        return
    metadata = {"image_path": key, "caption": caption}
    for name, value in fields.items():
        if name in metadata:
            continue
        if name not in shard._columns:
            if len(shard._columns) >= MAX_COLUMNS:
                message = f"{where}: over {MAX_COLUMNS} field names in this shard: {name!r} and later new names left out"
                shard.note("columns", message)
                continue
            shard._columns.add(name)
        metadata[name], change = metadata_cell(name, value)
        if change:
            shard.note(f"field {name}", f"{where}: {change} (the first such value of this shard)")
    text = None if caption is None or is_blank(caption) else caption
    shard.samples.append(Sample(key, image, text, metadata))


def _tar_sample(shard: Shard, path: str, key: str, files: dict[str, bytes], suffixes: frozenset[str]) -> None:
    """Add the sample made of the members of one tar sample (extension -> bytes) to ``shard``: the image is
    the first member whose suffix is one of ``suffixes`` (the loader's); a bad sample is named in
    ``shard.skipped``."""
    where = f"{path}:{key}"
    image = next((data for ext, data in files.items() if f".{ext}" in suffixes), None)
    caption = None
    if "txt" in files:
        from altclip_adapters.collection.inputs import decode_text

        data = files["txt"]
        if len(data) > MAX_TEXT_MEMBER_BYTES:
            shard.note("long caption", f"{where}: the caption (.txt) is over {MAX_TEXT_MEMBER_BYTES:,} bytes: cut")
            data = data[:MAX_TEXT_MEMBER_BYTES]
        caption, problem = decode_text(data)
        if problem:
            shard.note("caption encoding", f"{where}: the caption (.txt) is {problem}")
    try:
        fields = _json_fields(files["json"], where) if "json" in files else {}
    except ValueError as e:
        shard.skipped.append(str(e))
        return
    _sample(shard, path, key, image, caption, fields)


class _Tail:
    """A binary stream read through, remembering how many bytes passed and the last 1024 of them."""

    def __init__(self, stream):
        self.stream = stream
        self.size = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.size += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def ends_with_marker(self) -> bool:
        """Read to the end; whether the stream ended with the end-of-archive marker (two zero 512-byte blocks,
        POSIX ustar). Python's tarfile stops silently when a file ends at a block boundary; a file cut there
        lacks the marker."""
        while self.read(1 << 16):
            pass
        return self.size >= 1024 and self.size % 512 == 0 and self.tail == bytes(1024)


def read_tar(path: str) -> Shard:
    """The samples of a webdataset tar (see the module docstring), in archive order. A sample whose json
    is not an object (or is over :data:`MAX_TEXT_MEMBER_BYTES`) or whose name is unsafe (:func:`unsafe_name`)
    is left out and named in :attr:`Shard.skipped`; a caption that is not UTF-8 is decoded with U+FFFD for
    the bad bytes and noted in :attr:`Shard.notes`; a sample with no image member is kept with ``image=None``. When the archive breaks (a corrupt member,
    or the file ends without the end-of-archive marker), the sample being read there is dropped and
    :attr:`Shard.error` names the shard and the last complete sample."""
    from webdataset.tariterators import base_plus_ext

    from altclip_adapters.model.images import image_suffixes

    shard = Shard([])
    key, files, oversized = None, {}, []
    suffixes = image_suffixes()

    def flush() -> None:
        if oversized:
            shard.skipped.append(f"{path}:{key}: member {oversized[0]} is over {MAX_MEMBER_BYTES:,} bytes: not read")
        else:
            _tar_sample(shard, path, key, files, suffixes)

    with open(path, "rb") as file:
        stream = _Tail(file)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:  # streamed: one member at a time
                for member in archive:
                    prefix, suffix = base_plus_ext(member.name)
                    if not member.isreg() or prefix is None or re.match(SKIPPED_MEMBERS, member.name):
                        continue
                    if prefix != key:
                        if key is not None:
                            flush()  # complete: its members are contiguous and the next one has begun
                        key, files, oversized = prefix, {}, []
                    if member.size > MAX_MEMBER_BYTES:
                        oversized.append(repr(member.name))
                        continue  # the stream skips its data
                    limit = MAX_TEXT_MEMBER_BYTES + 1 if suffix.lower() in ("txt", "json") else -1
                    files[suffix.lower()] = archive.extractfile(member).read(limit)
            reason = None if stream.ends_with_marker() else "the file ends without the end-of-archive marker"
        except TAR_ERRORS as e:
            reason = str(e)
    if reason is None:
        if key is not None:
            flush()
        return shard
    last = (
        f"after {len(shard.samples)} samples (last complete: {shard.samples[-1].key})"
        if shard.samples
        else "before its first sample"
    )
    shard.error = f"{path}: truncated or corrupt {last}: {reason}; the rest of this shard is skipped"
    return shard


def read_parquet(path: str) -> Shard:
    """The samples of an img2dataset parquet file (see the module docstring), in row order: the image from
    the first of the columns :data:`PARQUET_IMAGE_COLUMNS` present, the caption from ``txt`` (else
    ``caption``), the key from ``key`` (else the row number); every other column is metadata, stored by
    :mod:`altclip_adapters.collection._metadata`'s rules (the file's own ``image_path`` and ``caption`` columns give way
    to the key and the caption). A row whose key is unsafe (:func:`unsafe_name`) is left out and named.

    Raises ValueError when the file has no image column (img2dataset's metadata-only parquet beside a tar).
    """
    import pyarrow.parquet as pq

    from altclip_adapters.collection.inputs import decode_text

    table = pq.read_table(path)
    names = table.column_names
    image_column = next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
    if image_column is None:
        raise ValueError(
            f"{path} has no image column ({', '.join(PARQUET_IMAGE_COLUMNS)}): not img2dataset's parquet output "
            "(img2dataset also writes a metadata-only .parquet beside each .tar: give the .tar files instead)"
        )
    caption_column = "txt" if "txt" in names else "caption" if "caption" in names else None
    meta_columns = [c for c in names if c not in (image_column, "txt")]
    images = table.column(image_column).to_pylist()
    captions = table.column(caption_column).to_pylist() if caption_column else [None] * len(images)
    keys = table.column("key").to_pylist() if "key" in names else [str(i) for i in range(len(images))]
    rows = table.select(meta_columns).to_pylist()
    shard = Shard([])
    for key, image, caption, row in zip(keys, images, captions, rows):
        if image is None:
            shard.missing_images += 1
            continue
        if caption is not None and not isinstance(caption, str):
            caption, problem = decode_text(caption) if isinstance(caption, bytes) else (str(caption), None)
            if problem:
                shard.note("caption encoding", f"{path}:{key}: the caption is {problem}")
        _sample(shard, path, str(key), image, caption, row)
    return shard
