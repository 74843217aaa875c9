"""Search over an embedding folder: :func:`open_index` gives an :class:`EmbeddingIndex`, whose ``search`` uses the
FAISS index :mod:`altclip_adapters.collection.index` built where it is sound and :func:`exact_search` for the rest.

An index records the shards it holds (``DIR/<modality>.json``, :mod:`altclip_adapters.collection.index_files`); a
reader compares that record with the folder: rows of shards the index does not hold are searched exactly and merged
with the index's hits, ids of shards changed or removed since are dropped, and an index that is foreign (other
model, replaced file) or unreadable is not used; each case is one warning naming ``altclip index DIR``. Hits are
rescored exactly from the stored rows, so a score is the same number whichever way its row was found.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from altclip_adapters.collection.index_files import (
    ID_SHIFT,
    METRICS,
    UnusableIndex,
    current_shards,
    diff_shards,
    folder_model,
    index_path,
    info_path,
    load_index,
    row_ids,
)
from altclip_adapters.collection.store import (
    EMBEDDING_DIRS,
    MODALITIES,
    ShardFiles,
    _stat_token,
    folder_modalities,
    read_manifest,
)
from altclip_adapters.extras import require

if TYPE_CHECKING:
    import pyarrow as pa

BLOCK_ROWS = 65536  # rows per block when streaming the embeddings (adding, exact search)
METADATA_CACHE_SHARDS = 8  # metadata tables of this many shards stay in memory for the hits that follow


# exact search ---------------------------------------------------------------------------------
def exact_search(
    embeddings: Sequence[np.ndarray],
    queries: np.ndarray,
    k: int,
    *,
    metric: str = "ip",
    exclude: np.ndarray | None = None,
    unit: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of the concatenation of ``embeddings`` (arrays [rows, dim], any float dtype,
    memory-mapped ones streamed in blocks) for ``queries`` float32 [n, dim].

    Returns (scores float32 [n, k], rows int64 [n, k]), best first: inner products for ``"ip"``,
    squared L2 distances for ``"l2"`` (FAISS's conventions); rows -1 and scores -inf (ip) or +inf (l2)
    past the end of a small collection. ``exclude`` (int [n]) leaves out one row per query; ``unit=True``
    renormalises each stored row in float32 first (stored float16 rows are unit length only to ~1e-3).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2'; got {metric!r}")
    queries = np.asarray(queries, dtype=np.float32)
    n = len(queries)
    best = np.full((n, k), -np.inf, np.float32)  # higher is better: ip, or -distance
    rows = np.full((n, k), -1, np.int64)
    offset = 0
    for array in embeddings:
        for start in range(0, len(array), BLOCK_ROWS):
            block = array[start : start + BLOCK_ROWS]
            block = unit_rows(block) if unit else np.asarray(block, dtype=np.float32)
            scores = queries @ block.T
            if metric == "l2":
                scores = 2 * scores - (block * block).sum(1)[None, :] - (queries * queries).sum(1)[:, None]
            if exclude is not None:
                hit = (exclude >= offset + start) & (exclude < offset + start + len(block))
                scores[hit, exclude[hit] - offset - start] = -np.inf
            ids = np.broadcast_to(np.arange(offset + start, offset + start + len(block)), scores.shape)
            if scores.shape[1] > k:
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
            merged, merged_ids = np.concatenate([best, scores], 1), np.concatenate([rows, ids], 1)
            keep = np.argpartition(-merged, k - 1, axis=1)[:, :k]
            best, rows = np.take_along_axis(merged, keep, 1), np.take_along_axis(merged_ids, keep, 1)
        offset += len(array)
    order = np.argsort(-best, axis=1, kind="stable")
    best, rows = np.take_along_axis(best, order, 1), np.take_along_axis(rows, order, 1)
    rows[~np.isfinite(best)] = -1
    return (best if metric == "ip" else -best), rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true k nearest rows (``truth`` [n, k]) that ``found`` [n, >=k] holds."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist())]))


def unit_rows(block: np.ndarray) -> np.ndarray:
    """float32 copy of ``block`` [rows, dim] with each row renormalised in float32 (float16 rows are off
    unit length by up to ~1e-3: their scores would print above 1)."""
    block = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms > 0, norms, 1)


# search over a folder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One search result: ``rank`` (1 = best), ``score`` (inner product = cosine similarity for the
    ``ip`` metric; squared L2 distance for ``l2``), ``row`` (the row number in the folder: shards in
    reading order) and that row's ``metadata`` (column -> value, from the metadata parquet)."""

    rank: int
    score: float
    row: int
    metadata: dict[str, Any]


@dataclass
class _Searcher:
    """How one modality is searched: the FAISS index over the shards it holds (``ann``, with the ids of
    changed or removed shards in ``stale``; its hits are rescored exactly from the ``held`` shards' rows),
    and exact search over ``exact`` (unit float32 rows of the shards the index does not hold, ids ``exact_ids``)."""

    metric: str
    ann: Any = None
    held: dict[int, np.ndarray] = field(default_factory=dict)  # shard id -> memory-mapped rows, to rescore the index's hits
    stale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exact: list[np.ndarray] = field(default_factory=list)
    exact_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _stat_signature(folder: Path) -> tuple:
    """Names, sizes and mtimes of every file of the embedding folder that a search depends on (stat only)."""
    entries = []
    for sub in (*EMBEDDING_DIRS.values(), "metadata"):
        try:
            with os.scandir(folder / sub) as it:
                entries += sorted((sub, e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it)
        except FileNotFoundError:
            pass
    for modality in MODALITIES:
        for path in (index_path(folder, modality), info_path(folder, modality)):
            if path.is_file():
                entries.append((path.name, _stat_token(path)))
    return tuple(entries)


class EmbeddingIndex:
    """Search over an embedding folder: per modality its FAISS index when one is built and sound, merged
    with exact search over the shards the index does not hold (added or changed since it was built), else
    exact search over the stored embeddings (loaded into memory as unit float32 rows; no faiss needed then).

    Attributes: ``folder``, ``model`` (what to embed queries with, from ``altclip.json``), ``dim``,
    ``modalities``. Indexes load on first use of a modality: an index that is behind the folder, built from
    other embeddings, or unreadable is reported once through ``on_warning`` (default: the
    ``altclip_adapters.collection.search`` logger), one line naming ``altclip index DIR``, and never answers for rows it
    does not hold. Metadata is read per hit from the shard's parquet. ``search``, ``metadata`` and
    ``column`` may be called from several threads; :meth:`is_current` says whether the folder changed since.
    """

    def __init__(self, folder: str | Path, *, model: str | None = None, on_warning: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no such embedding folder: {self.folder}")
        self._signature = _stat_signature(self.folder)
        manifest = read_manifest(self.folder) if model is None or (self.folder / "altclip.json").is_file() else {}
        self.model: str = model or manifest["model"]
        self.modalities: list[str] = folder_modalities(self.folder)
        if not self.modalities:
            raise FileNotFoundError(f"{self.folder} holds no embeddings (img_emb/*.npy or text_emb/*.npy)")
        self._shards = {m: current_shards(self.folder, m) for m in self.modalities}
        self._counts = {m: sum(s.rows for s in shard_list) for m, shard_list in self._shards.items()}
        self._numbers = {m: np.array([s.shard_id for s in shard_list], np.int64) for m, shard_list in self._shards.items()}
        self._offsets = {m: np.cumsum([0] + [s.rows for s in shard_list])[:-1].astype(np.int64)
                         for m, shard_list in self._shards.items()}  # global row of each shard's first row
        first = next((s for m in self.modalities for s in self._shards[m]), None)
        dim = manifest.get("dim") or (np.load(first.embeddings, mmap_mode="r").shape[1] if first else None)
        if dim is None:
            raise ValueError(f"{self.folder} holds no rows and no altclip.json giving their dimension")
        self.dim: int = int(dim)
        self._on_warning = on_warning or logging.getLogger(__name__).warning
        self._lock = threading.Lock()
        self._searchers: dict[str, _Searcher] = {}
        self._tables: OrderedDict[Path, pa.Table] = OrderedDict()  # a few shards' metadata, most recent last
        self._columns: list[str] | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{self._counts[m]} {m}" for m in self.modalities)
        return f"EmbeddingIndex({str(self.folder)!r}, model={self.model!r}, dim={self.dim}, {counts})"

    def count(self, modality: str = "image") -> int:
        """Number of ``modality`` embeddings (rows) in the folder."""
        self._check_modality(modality)
        return self._counts[modality]

    def is_current(self) -> bool:
        """False once a file of the folder (embeddings, metadata, index, its json) was added, replaced or
        removed since this object was opened: stat calls only, cheap enough to poll before each request.
        Open a new :class:`EmbeddingIndex` to see the change."""
        return _stat_signature(self.folder) == self._signature

    def info(self, modality: str = "image") -> dict[str, Any]:
        """The ``DIR/<modality>.json`` written by :func:`build_index` when an index is built and can be
        read, else ``{"index_key": "exact", "metric": "ip", "count": N}`` (searches are exact)."""
        self._check_modality(modality)
        path = info_path(self.folder, modality)
        if index_path(self.folder, modality).is_file() and path.is_file():
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(info, dict) and "index_key" in info:
                    return info
            except (OSError, UnicodeError, ValueError):
                pass
        return {"index_key": "exact", "metric": "ip", "count": self._counts[modality]}

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"modality must be one of {', '.join(self.modalities)} (what {self.folder} holds); got {modality!r}")

    def _load_exact(self, shard_list: list[ShardFiles]) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = [unit_rows(np.load(s.embeddings, mmap_mode="r")) for s in shard_list]
        ids = np.concatenate([row_ids(s.shard_id, s.rows) for s in shard_list]) if shard_list else np.zeros(0, np.int64)
        return arrays, ids

    def load(self, modalities: Sequence[str] | None = None) -> None:
        """Load the searchers of ``modalities`` (default: every one) now rather than at their first search:
        what a server does at start, so that a warning about its index comes then and the first request
        does not wait. ValueError for a modality the folder does not hold."""
        for modality in modalities or self.modalities:
            self._check_modality(modality)
            self._searcher(modality)

    def _searcher(self, modality: str) -> _Searcher:
        with self._lock:
            if modality not in self._searchers:
                self._searchers[modality] = self._open_searcher(modality)
            return self._searchers[modality]

    def _open_searcher(self, modality: str) -> _Searcher:
        current = self._shards[modality]
        rebuild = f"altclip index {self.folder}"
        if not index_path(self.folder, modality).is_file():
            return _Searcher("ip", None, exact=(loaded := self._load_exact(current))[0], exact_ids=loaded[1])
        try:
            require("faiss", "index", "FAISS indexes")
            info, index = load_index(self.folder, modality, model=folder_model(self.folder), dim=self.dim)
        except (UnusableIndex, ImportError) as e:
            self._on_warning(f"{e}; searching {modality} embeddings exactly: rebuild the index with {rebuild}")
            return _Searcher("ip", None, exact=(loaded := self._load_exact(current))[0], exact_ids=loaded[1])
        diff = diff_shards(info, current)
        stale = (np.concatenate([row_ids(s, int(info["shards"][str(s)]["rows"])) for s in diff.dropped])
                 if diff.dropped else np.zeros(0, np.int64))
        if diff.dropped or diff.missing:
            rows = sum(s.rows for s in diff.missing)
            self._on_warning(
                f"{index_path(self.folder, modality)} is behind the folder: it holds {len(diff.held)} of the folder's "
                f"{len(current)} shards; {len(diff.missing)} new or changed shard(s) ({rows:,} rows) are searched "
                f"exactly and merged, the index's rows of {len(diff.dropped)} changed or removed shard(s) left out: "
                f"update it with {rebuild}"
            )
        arrays, ids = self._load_exact(diff.missing)
        held = {s.shard_id: np.load(s.embeddings, mmap_mode="r") for s in current if s.shard_id in set(diff.held)}
        return _Searcher(info["metric"], index if diff.held else None, held, np.sort(stale), arrays, ids)

    def _rows_of(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """Global rows (reading order) of FAISS ids ``shard_id << 32 | row``."""
        where = np.searchsorted(self._numbers[modality], ids >> ID_SHIFT)
        return self._offsets[modality][where] + (ids & ((1 << ID_SHIFT) - 1))

    def _shard_table(self, shard: ShardFiles) -> pa.Table:
        pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
        with self._lock:
            if shard.metadata in self._tables:
                self._tables.move_to_end(shard.metadata)
                return self._tables[shard.metadata]
        table = pq.read_table(shard.metadata)
        with self._lock:
            self._tables[shard.metadata] = table
            while len(self._tables) > METADATA_CACHE_SHARDS:
                self._tables.popitem(last=False)
        return table

    def column_names(self, modality: str = "image") -> list[str]:
        """Every metadata column of the folder (the union over its shards, first-seen order; parquet
        footers only)."""
        self._check_modality(modality)
        pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
        if self._columns is None:
            names: dict[str, None] = {}
            for shard in self._shards[modality]:
                names.update(dict.fromkeys(pq.read_schema(shard.metadata).names))
            self._columns = list(names)
        return self._columns

    def _row_metadata(self, modality: str, rows: list[int]) -> list[dict[str, Any]]:
        """Metadata dicts of global ``rows`` (any order), reading only the shards they fall in: one
        ``take`` per shard."""
        names = self.column_names(modality)
        by_shard: dict[int, list[tuple[int, int]]] = {}  # shard index -> (position in rows, row within shard)
        for position, row in enumerate(rows):
            where = int(np.searchsorted(self._offsets[modality], row, side="right")) - 1
            by_shard.setdefault(where, []).append((position, row - int(self._offsets[modality][where])))
        out: list[dict[str, Any]] = [{}] * len(rows)
        for where, wanted in by_shard.items():
            table = self._shard_table(self._shards[modality][where])
            for (position, _), found in zip(wanted, table.take([w for _, w in wanted]).to_pylist()):
                out[position] = {name: found.get(name) for name in names}
        return out

    def metadata(self, row: int, modality: str = "image") -> dict[str, Any]:
        """The metadata of row ``row`` (0-based) as a dict (every column of the folder; None where its shard
        has none); read from that row's shard only. IndexError outside the collection."""
        self._check_modality(modality)
        if not 0 <= row < self._counts[modality]:
            raise IndexError(f"row {row} is outside 0..{self._counts[modality] - 1}")
        return self._row_metadata(modality, [int(row)])[0]

    def column(self, name: str, modality: str = "image") -> list:
        """Metadata column ``name`` for every row, in row order (pyarrow ``columns=[name]``: the other
        columns are not read); None for the rows of shards without that column. KeyError when no shard has it."""
        self._check_modality(modality)
        pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
        if name not in self.column_names(modality):
            raise KeyError(f"{self.folder} has no metadata column {name!r} (it has {', '.join(self.column_names(modality))})")
        values: list = []
        for shard in self._shards[modality]:
            if name in pq.read_schema(shard.metadata).names:
                values += pq.read_table(shard.metadata, columns=[name]).column(name).to_pylist()
            else:
                values += [None] * shard.rows
        return values

    def search(self, queries: np.ndarray, k: int, *, modality: str = "image") -> list[list[Hit]]:
        """The ``k`` nearest ``modality`` rows to each query, best first: one list of :class:`Hit` per
        query row (fewer than ``k`` when the collection is smaller).

        ``queries``: float32 [n, dim], L2-normalised like the stored rows (from the model ``self.model``).
        Raises ValueError for a wrong shape or dim, non-finite values, ``k < 1`` or an unknown modality.
        """
        self._check_modality(modality)
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must be a 2-d array [n, {self.dim}] (the folder holds {self.dim}-d embeddings of "
                f"{self.model}); got shape {queries.shape}"
            )
        if not np.isfinite(queries).all():
            raise ValueError("queries hold NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self._counts[modality])
        if k == 0:
            return [[] for _ in queries]
        searcher = self._searcher(modality)
        scores, ids = _merged_search(searcher, queries, k)
        found = ids >= 0
        rows = np.full(ids.shape, -1, np.int64)
        rows[found] = self._rows_of(modality, ids[found])
        metas = iter(self._row_metadata(modality, rows[found].tolist()))
        return [
            [Hit(rank, float(s), int(r), next(metas)) for rank, (s, r) in enumerate(zip(qs, qr), 1) if r >= 0]
            for qs, qr in zip(scores.tolist(), rows.tolist())
        ]


def _rescore(searcher: _Searcher, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact scores [n, k] of the index's hits ``ids`` (-1: none; any score there) from the stored rows,
    renormalised in float32: the same numbers exact search gives, whatever the index stores (PQ codes, PCA)."""
    scores = np.zeros(ids.shape, np.float32)
    shard_ids, rows = ids >> ID_SHIFT, ids & ((1 << ID_SHIFT) - 1)
    for shard_id in np.unique(shard_ids[ids >= 0]).tolist():
        hit = (ids >= 0) & (shard_ids == shard_id)
        wanted = np.unique(rows[hit])  # sorted: one pass over the memory map
        vectors = unit_rows(searcher.held[shard_id][wanted])[np.searchsorted(wanted, rows[hit])]
        asked = queries[np.nonzero(hit)[0]]
        scores[hit] = np.einsum("nd,nd->n", vectors, asked) if searcher.metric == "ip" else ((vectors - asked) ** 2).sum(1)
    return scores


def _merged_search(searcher: _Searcher, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, FAISS ids) [n, k], best first: the index's hits (stale ids dropped, rescored exactly) merged
    with exact search over the shards it does not hold; ids -1 past the end."""
    sign = 1.0 if searcher.metric == "ip" else -1.0  # sort key: higher is better
    keys, ids = [], []
    if searcher.ann is not None and searcher.ann.ntotal:
        found = searcher.ann.search(queries, min(k + len(searcher.stale), searcher.ann.ntotal))[1]
        bad = (found < 0) | np.isin(found, searcher.stale)
        keys.append(np.where(bad, -np.inf, sign * _rescore(searcher, queries, np.where(bad, -1, found))))
        ids.append(np.where(bad, -1, found))
    if searcher.exact:
        scores, rows = exact_search(searcher.exact, queries, k, metric=searcher.metric)
        keys.append(np.where(rows < 0, -np.inf, sign * scores))
        ids.append(np.where(rows < 0, -1, searcher.exact_ids[rows.clip(0)]))
    key, found = np.concatenate(keys, 1), np.concatenate(ids, 1)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    key, found = np.take_along_axis(key, order, 1), np.take_along_axis(found, order, 1)
    found[~np.isfinite(key)] = -1
    return sign * key, found


def open_index(folder: str | Path, *, model: str | None = None, on_warning: Callable[[str], None] | None = None) -> EmbeddingIndex:
    """An :class:`EmbeddingIndex` over ``folder``. ``model`` overrides the sidecar's (needed for a folder
    written by clip-retrieval, which has no ``altclip.json``); ``on_warning`` receives the one-line warnings
    about an index that is behind, foreign or unreadable (default: this module's logger). Raises
    FileNotFoundError for a folder without embeddings or (without ``model``) without ``altclip.json``."""
    return EmbeddingIndex(folder, model=model, on_warning=on_warning)
