"""The one way this package writes a file: to a hidden temporary file beside the target, flushed to disk, given
the mode a plain ``open()`` gives (0o666 less the umask), then renamed over the target.

A reader sees the old file or the new one, never part of one; a run stopped at any moment (Ctrl-C, SIGTERM,
SIGKILL, a full disk) leaves the target as it was and at most a hidden ``.NAME.*.tmp`` beside it, which no
reader's glob (``*.npy``, ``*.parquet``, ``*.json``, ``*.index``) matches. Every exception removes the temporary
file. Imports nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (reading the umask means setting it;
    pip does the same)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def honour_umask(path: str | Path) -> None:
    """Give a file some library wrote (safetensors 0.8 writes 0600 whatever the umask) the mode ``open()`` gives."""
    os.chmod(path, file_mode())


@contextmanager
def atomic_path(path: str | Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that writes to a file name (``faiss.write_index``);
    when the block ends without an exception, the file is fsynced, given ``file_mode()`` and renamed to ``path``.

    ``exclusive=True`` never replaces an existing ``path`` (a hard link, atomic): raises FileExistsError when it
    exists, so of several writers racing for one file the first wins. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, exclusive: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` in ``mode`` (``"wb"`` or ``"w"``, text as UTF-8) and yield it;
    on a clean exit it becomes ``path`` atomically (see :func:`atomic_path`)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w'; got {mode!r}")
    with atomic_path(path, exclusive=exclusive) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()


def write_bytes(path: str | Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", exclusive=exclusive) as f:
        f.write(data)


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any], *, exclusive: bool = False) -> None:
    """Call ``write(binary_file)`` (``pq.write_table``; for ``.npy`` use ``store.save_npy``, since ``np.save`` on a real
    file writes past Python and a full disk goes unnoticed) on a temporary file that becomes ``path``."""
    with atomic_write(path, "wb", exclusive=exclusive) as f:
        write(f)


def write_json(path: str | Path, obj: Any, *, exclusive: bool = False) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    with atomic_write(path, "w", exclusive=exclusive) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
