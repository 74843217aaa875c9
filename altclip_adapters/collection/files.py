"""Single-file outputs (``altclip embed --out FILE``): ``FILE.npy`` (+ ``FILE.ids.json``) or ``FILE.parquet``; and
:func:`save_npy`, the ``.npy`` writer for these and the shards of :mod:`altclip_adapters.collection.store`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altclip_adapters.atomic import write_json, write_with
from altclip_adapters.extras import require


class _Stream:
    """A file seen only through ``write``: ``np.save`` then writes with Python calls, which raise on a full disk
    (given a real file it writes through a duplicated C ``FILE*`` whose failing flush it ignores, leaving a
    truncated file that the atomic rename would then publish)."""

    def __init__(self, file: Any):
        self.write = file.write


def save_npy(array: np.ndarray) -> Any:
    """A writer for :func:`altclip_adapters.atomic.write_with` that saves ``array`` as ``.npy``, raising OSError
    when the disk is full (see :class:`_Stream`)."""
    return lambda f: np.save(_Stream(f), array)


def write_embedding_file(out: str | Path, ids: Sequence[str], embeddings: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ``embeddings`` (float [N, D]) and their ``ids`` (N strings) to ``out``: ``.npy`` (float32 [N, D])
    with ``<stem>.ids.json`` (``meta`` plus ``"ids"``) beside it, or ``.parquet`` (columns ``id``, ``embedding``;
    ``meta`` as the schema's ``altclip`` metadata). Each file atomically, the ids last for ``.npy``.
    ValueError for another suffix or a row count that differs from the ids'; ImportError (naming the extra)
    without pyarrow."""
    out = Path(out)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids for {len(embeddings)} embedding rows")
    if out.suffix == ".npy":
        write_with(out, save_npy(embeddings))
        write_json(out.with_suffix(".ids.json"), {**meta, "ids": list(ids)})
        return
    if out.suffix != ".parquet":
        raise ValueError(f"{out}: an embedding file is a .npy or .parquet file")
    pa = require("pyarrow", "cli", "Writing .parquet")
    pq = require("pyarrow.parquet", "cli", "Writing .parquet")
    flat = pa.array(embeddings.reshape(-1))
    table = pa.table({"id": pa.array(list(ids), pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])})
    table = table.replace_schema_metadata({"altclip": json.dumps(meta)})
    write_with(out, lambda f: pq.write_table(table, f))


def read_embedding_file(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """(ids, embeddings float32 [N, D], meta) of a file written by :func:`write_embedding_file`.
    FileNotFoundError when it does not exist; ValueError when it is not such a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such index file: {path}")
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".ids.json")
        if not sidecar.is_file():
            raise ValueError(f"{path} has no {sidecar.name} beside it: not an index written by altclip embed")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        return meta.pop("ids"), np.load(path), meta
    if path.suffix != ".parquet":
        raise ValueError(f"{path}: an index is a .npy or .parquet file written by altclip embed")
    pq = require("pyarrow.parquet", "cli", "Reading .parquet")
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if b"altclip" not in metadata or "embedding" not in table.column_names:
        raise ValueError(f"{path} is not an index written by altclip embed (no altclip metadata)")
    column = table.column("embedding").combine_chunks()
    embeddings = np.asarray(column.flatten()).reshape(len(table), column.type.list_size)
    return table.column("id").to_pylist(), embeddings, json.loads(metadata[b"altclip"])
