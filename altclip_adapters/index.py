"""FAISS indexes over an embedding folder (the layout of :mod:`altclip_adapters.store`), and search.

``build_index(DIR)`` writes ``DIR/image.index`` and ``DIR/text.index`` (with ``DIR/image.json`` /
``DIR/text.json`` describing each), the names and place clip-retrieval uses (``clip_retrieval/clip_index.py``
writes ``<index_folder>/image.index`` and ``image.json``; its back end loads ``<indice_folder>/image.index``,
``text.index`` and ``metadata/*.parquet``), so an embedding folder is also an index folder that
clip-retrieval's back end can serve. Row ``i`` of the index is row ``i`` of the folder (shards in file-name
order).

The index is chosen by autofaiss's rules (autofaiss 2.18, ``external/optimize.py``,
``get_optimal_index_keys_v2``, first choice; autofaiss itself pins numpy < 2, so it is not a dependency):

- fewer than 1,000 vectors: ``Flat`` (exact);
- fewer than 10,000: ``HNSW15``;
- when an HNSW graph fits the memory budget, ``M = floor((budget / (4 n) - d) / 2) >= 8``: ``HNSW{min(M, 32)}``;
- below 1M vectors, ``IVF{c},Flat`` when ``n d 4 + c d 4`` bytes fit the budget, ``c`` the power of two
  nearest ``4 sqrt(n)`` (``get_optimal_nb_clusters``: 16,384 clusters from 1M, 65,536 from 10M, 2^17 from 300M);
- else product quantisation: the largest ``PQ{m}`` (m in 256, 128, ..., 4; m < d) whose codes (m + 8 bytes
  per vector) fit, as ``OPQ{m}_{y},IVF{c}[_HNSW32],PQ{m}x8`` with ``y = (min(d // m, 6) + 1) m``
  (``get_optimal_quantization``; the coarse quantiser is an HNSW graph from 1,000 clusters).

IVF indexes train on ``min(n, 100 c)`` sampled vectors, at least ``31 c`` when ``current_memory_available``
is short (``get_optimal_train_size``). Search parameters (``efSearch`` for HNSW; ``nprobe``, with
``efSearch = 2 nprobe`` and ``ht = 2048`` for the quantised families, as autofaiss sets them) are then tuned
for recall rather than autofaiss's speed target: the smallest value whose recall@k against exact search
reaches ``target_recall``, measured with the collection's last rows (up to ``tune_queries``, at most a
tenth) as queries: they are added to the index only after tuning, so they are held-out queries from the
collection's own distribution (queries of the other modality, text for images, differ more: the measured
recall is an estimate, recorded in the json).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_path, write_json
from .store import MODALITIES, folder_modalities, iter_embeddings, read_embeddings, read_manifest, read_metadata

if TYPE_CHECKING:
    import faiss
    import pyarrow as pa

METRICS = ("ip", "l2")
BLOCK_ROWS = 65536  # rows per block when streaming the embeddings (adding, exact search)
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("FAISS indexes need faiss: pip install 'altclip-adapters[index]'") from e
    return faiss


def index_path(folder: str | Path, modality: str) -> Path:
    """``DIR/image.index`` or ``DIR/text.index`` (clip-retrieval's names)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text'; got {modality!r}")
    return Path(folder) / f"{modality}.index"


def info_path(folder: str | Path, modality: str) -> Path:
    """``DIR/image.json`` or ``DIR/text.json``: how the index was chosen, tuned and measured."""
    return index_path(folder, modality).with_suffix(".json")


# choice of index (autofaiss's rules) --------------------------------------------------------------
def parse_memory(text: str) -> int:
    """Bytes in a memory string such as ``"4G"``, ``"512MB"``, ``"1.5T"``: binary units (K = 1024), as
    autofaiss's ``cast_memory_to_bytes`` reads them. ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGTP])B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (examples: 4G, 512M, 1.5T)")
    return int(float(match.group(1)) * 1024 ** "BKMGTP".index(match.group(2).upper()))


def nb_clusters(count: int) -> int:
    """autofaiss's first choice of IVF cluster count for ``count`` vectors (``get_optimal_nb_clusters``)."""
    if count < 1_000_000:
        return 2 ** round(math.log2(4 * math.sqrt(count)))
    if count < 10_000_000:
        return 16_384
    return 65_536 if count < 300_000_000 else 2**17


def choose_index_key(
    count: int,
    dim: int,
    max_index_memory_usage: str = "4G",
    *,
    flat_threshold: int = 1000,
    quantization_threshold: int = 10000,
) -> str:
    """The FAISS ``index_factory`` key for ``count`` vectors of ``dim`` dimensions within a memory budget:
    autofaiss 2.18's ``get_optimal_index_keys_v2`` first choice (rules in the module docstring).
    Raises ValueError when even the smallest product quantisation does not fit."""
    if count < flat_threshold:
        return "Flat"
    if count < quantization_threshold:
        return "HNSW15"
    budget = parse_memory(max_index_memory_usage)
    m_hnsw = math.floor((budget / (4 * count) - dim) / 2)
    if m_hnsw >= 8:
        return f"HNSW{min(m_hnsw, 32)}"
    clusters = nb_clusters(count)
    if count < 1_000_000 and (count + clusters) * dim * 4 <= budget:
        return f"IVF{clusters},Flat"
    ratio = 4.0 * count * dim / budget
    for m in (256, 128, 64, 48, 32, 24, 16, 8, 4):
        if m < dim and 4 * dim / (m + 8) >= ratio:
            y = (min(dim // m, 6) + 1) * m
            coarse = f"IVF{clusters}" if clusters < 1000 else f"IVF{clusters}_HNSW32"
            return f"OPQ{m}_{y},{coarse},PQ{m}x8"
    raise ValueError(
        f"{count} vectors of {dim} dimensions do not fit in {max_index_memory_usage} even with PQ4 "
        f"({12 * count} bytes at least): raise --max-index-memory-usage"
    )


def _train_size(count: int, dim: int, clusters: int, current_memory_available: str) -> int:
    """autofaiss's ``get_optimal_train_size``: 100 points per cluster, fewer (at least 31) when the
    float32 sample would not fit ``current_memory_available``."""
    per_cluster = max(min(parse_memory(current_memory_available) / (clusters * dim * 4), 100.0), 31.0)
    return min(round(per_cluster * clusters), count)


def _search_params(index_key: str) -> list[str]:
    """Candidate search-parameter strings, fastest (lowest recall) first; ``[""]`` for an index without
    one (Flat, or a user's key of another family)."""
    ivf = re.search(r"IVF(\d+)", index_key)
    if ivf:
        clusters = int(ivf.group(1))
        probes = sorted({p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                                     1536, 2048, 3072, 4096, 6144) if p <= clusters} | {min(clusters, 6144)})
        hnsw, pq = "_HNSW" in index_key, "PQ" in index_key
        return [f"nprobe={p}" + (f",efSearch={2 * p}" if hnsw else "") + (",ht=2048" if pq else "") for p in probes]
    if "HNSW" in index_key:
        return [f"efSearch={ef}" for ef in _EF_SEARCH]
    return [""]


# exact search ---------------------------------------------------------------------------------
def exact_search(
    embeddings: Sequence[np.ndarray],
    queries: np.ndarray,
    k: int,
    *,
    metric: str = "ip",
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of the concatenation of ``embeddings`` (arrays [rows, dim], any float dtype,
    memory-mapped ones streamed in blocks) for ``queries`` float32 [n, dim].

    Returns (scores float32 [n, k], rows int64 [n, k]), best first: inner products for ``"ip"``,
    squared L2 distances for ``"l2"`` (FAISS's conventions); rows -1 and scores -inf (ip) or +inf (l2)
    past the end of a small collection. ``exclude`` (int [n]) leaves out one row per query.
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
            block = np.asarray(array[start : start + BLOCK_ROWS], dtype=np.float32)
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


# build --------------------------------------------------------------------------------------------
def _gather(arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """float32 copies of the global ``rows`` (sorted) of the concatenated ``arrays``."""
    out, offset = [], 0
    for array in arrays:
        here = rows[(rows >= offset) & (rows < offset + len(array))] - offset
        if len(here):
            out.append(np.asarray(array[here], dtype=np.float32))
        offset += len(array)
    return np.concatenate(out)


def _slices(arrays: list[np.ndarray], start: int, stop: int) -> list[np.ndarray]:
    """Views of the global rows ``start:stop`` of the concatenated ``arrays``."""
    out, offset = [], 0
    for array in arrays:
        lo, hi = max(start - offset, 0), min(stop - offset, len(array))
        if lo < hi:
            out.append(array[lo:hi])
        offset += len(array)
    return out


def _add(index: faiss.Index, arrays: list[np.ndarray]) -> None:
    for array in arrays:
        for block in range(0, len(array), BLOCK_ROWS):
            index.add(np.asarray(array[block : block + BLOCK_ROWS], dtype=np.float32))


def _tune(index: faiss.Index, key: str, indexed: list[np.ndarray], queries: np.ndarray, *, k: int,
          target_recall: float, metric: str) -> tuple[str, float]:
    """(parameter string, its recall@k): the first of ``_search_params`` whose recall@k on ``queries``
    (rows not in the index yet) against exact search over ``indexed`` reaches ``target_recall``
    (binary search; recall grows with each parameter), else the last one."""
    faiss = _faiss()
    truth = exact_search(indexed, queries, k, metric=metric)[1]
    space = faiss.ParameterSpace()

    def recall(param: str) -> float:
        space.set_index_parameters(index, param)
        return recall_at_k(index.search(queries, k)[1], truth)

    candidates = _search_params(key)
    lo, hi = 0, len(candidates) - 1
    best, best_recall = candidates[hi], recall(candidates[hi])
    while lo < hi and best_recall >= target_recall:
        mid = (lo + hi) // 2
        value = recall(candidates[mid])
        if value >= target_recall:
            hi, best, best_recall = mid, candidates[mid], value
        else:
            lo = mid + 1
    space.set_index_parameters(index, best)
    return best, best_recall


def build_index(
    folder: str | Path,
    *,
    modality: str | None = None,
    max_index_memory_usage: str = "4G",
    current_memory_available: str = "16G",
    metric: str = "ip",
    index_key: str | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    tune_queries: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Build and save the FAISS index of each modality (``modality=None``: every one the folder holds).

    ``max_index_memory_usage``: the budget the index must fit in RAM (chooses the index; module
    docstring); ``current_memory_available``: bounds the IVF training sample; ``metric``: ``"ip"``
    (inner product = cosine on the normalised rows) or ``"l2"``; ``index_key``: a FAISS
    ``index_factory`` key instead of the rules; ``target_recall``, ``k``, ``tune_queries``: the search
    parameter is the smallest reaching recall@k >= target_recall on that many held-out rows (module
    docstring); ``seed``: the IVF training sample.

    Writes ``DIR/<modality>.index`` and ``DIR/<modality>.json`` atomically and returns, per modality,
    the json's content: ``index_key``, ``index_param``, ``metric``, ``count``, ``dim``,
    ``recall_at_k`` ({k, recall (1.0 for Flat; None when the collection is too small to hold rows out),
    queries}), ``build_seconds``, ``size_bytes``, ``index_path``, ``chosen_by``.
    Raises ImportError without faiss, FileNotFoundError when the folder has no such embeddings,
    ValueError for bad arguments or a budget too small for any index.
    """
    faiss = _faiss()
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2'; got {metric!r}")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    folder = Path(folder)
    modalities = [modality] if modality else folder_modalities(folder)
    if not modalities:
        raise FileNotFoundError(f"{folder} holds no embeddings (img_emb/*.npy or text_emb/*.npy)")
    results = {}
    for name in modalities:
        start = time.perf_counter()
        arrays = list(iter_embeddings(folder, name))
        count, dim = sum(map(len, arrays)), arrays[0].shape[1]
        key = index_key or choose_index_key(count, dim, max_index_memory_usage)
        index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
        rng = np.random.default_rng(seed)
        if not index.is_trained:
            ivf = re.search(r"IVF(\d+)", key)
            size = _train_size(count, dim, int(ivf.group(1)), current_memory_available) if ivf else count
            index.train(_gather(arrays, np.sort(rng.choice(count, size=size, replace=False))))
        held_out = min(tune_queries, count // 10) if key != "Flat" else 0  # the last rows: queries to tune and measure
        indexed = _slices(arrays, 0, count - held_out)
        _add(index, indexed)
        param, recall, tune_k = "", 1.0 if key == "Flat" else None, min(k, count - held_out)
        if held_out and tune_k:
            queries = np.concatenate([np.asarray(a, dtype=np.float32) for a in _slices(arrays, count - held_out, count)])
            param, recall = _tune(index, key, indexed, queries, k=tune_k, target_recall=target_recall, metric=metric)
        _add(index, _slices(arrays, count - held_out, count))
        path = index_path(folder, name)
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        info = {
            "index_key": key, "index_param": param, "metric": metric, "count": count, "dim": dim,
            "recall_at_k": {"k": tune_k, "recall": None if recall is None else round(recall, 4), "queries": held_out},
            "build_seconds": round(time.perf_counter() - start, 2), "size_bytes": path.stat().st_size,
            "index_path": path.name,
            "chosen_by": "index_key argument" if index_key else "autofaiss 2.18 get_optimal_index_keys_v2",
        }
        write_json(info_path(folder, name), info)
        results[name] = info
    return results


# search -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One search result: ``rank`` (1 = best), ``score`` (inner product = cosine similarity for the
    ``ip`` metric; squared L2 distance for ``l2``), ``row`` (the row number in the folder) and that
    row's ``metadata`` (column -> value, from the metadata parquet)."""

    rank: int
    score: float
    row: int
    metadata: dict[str, Any]


class EmbeddingIndex:
    """Search over an embedding folder: its FAISS index per modality when built, else exact search
    over the stored embeddings (loaded into memory as float32; no faiss needed then).

    Attributes: ``folder``, ``model`` (what to embed queries with, from ``altclip.json``), ``dim``,
    ``modalities``. Indexes and metadata load on first use; ``search`` and ``metadata`` may be called
    from several threads.
    """

    def __init__(self, folder: str | Path, *, model: str | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no such embedding folder: {self.folder}")
        manifest = read_manifest(self.folder) if model is None or (self.folder / "altclip.json").is_file() else {}
        self.model: str = model or manifest["model"]
        self.modalities: list[str] = folder_modalities(self.folder)
        if not self.modalities:
            raise FileNotFoundError(f"{self.folder} holds no embeddings (img_emb/*.npy or text_emb/*.npy)")
        shapes = {m: [a.shape for a in iter_embeddings(self.folder, m)] for m in self.modalities}
        self._counts = {m: sum(s[0] for s in shape) for m, shape in shapes.items()}
        self.dim: int = manifest.get("dim") or shapes[self.modalities[0]][0][1]
        self._lock = threading.Lock()
        self._searchers: dict[str, tuple[Any, str]] = {}  # modality -> (faiss index or float32 array, metric)
        self._metadata: pa.Table | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{self._counts[m]} {m}" for m in self.modalities)
        return f"EmbeddingIndex({str(self.folder)!r}, model={self.model!r}, dim={self.dim}, {counts})"

    def count(self, modality: str = "image") -> int:
        """Number of ``modality`` embeddings (rows) in the folder."""
        self._check_modality(modality)
        return self._counts[modality]

    def info(self, modality: str = "image") -> dict[str, Any]:
        """The ``DIR/<modality>.json`` written by :func:`build_index`, or ``{"index_key": "exact",
        "metric": "ip", "count": N}`` when no index was built (searches are exact)."""
        self._check_modality(modality)
        path = info_path(self.folder, modality)
        if index_path(self.folder, modality).is_file() and path.is_file():
            return json.loads(path.read_text())
        return {"index_key": "exact", "metric": "ip", "count": self._counts[modality]}

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"modality must be one of {', '.join(self.modalities)} (what {self.folder} holds); got {modality!r}")

    def _searcher(self, modality: str) -> tuple[Any, str]:
        with self._lock:
            if modality not in self._searchers:
                info = self.info(modality)
                if info["index_key"] == "exact":
                    self._searchers[modality] = (read_embeddings(self.folder, modality)[0], "ip")
                else:
                    faiss = _faiss()
                    index = faiss.read_index(str(index_path(self.folder, modality)))
                    if index.ntotal != self._counts[modality]:
                        raise ValueError(
                            f"{index_path(self.folder, modality)} holds {index.ntotal} vectors but the folder has "
                            f"{self._counts[modality]} {modality} embeddings: rebuild it with altclip index {self.folder}"
                        )
                    if info.get("index_param"):
                        faiss.ParameterSpace().set_index_parameters(index, info["index_param"])
                    self._searchers[modality] = (index, info["metric"])
            return self._searchers[modality]

    def _table(self) -> pa.Table:
        with self._lock:
            if self._metadata is None:
                self._metadata = read_metadata(self.folder, self.modalities[0])
            return self._metadata

    def metadata(self, row: int, modality: str = "image") -> dict[str, Any]:
        """The metadata of row ``row`` (0-based) as a dict; IndexError outside the collection."""
        self._check_modality(modality)
        if not 0 <= row < self._counts[modality]:
            raise IndexError(f"row {row} is outside 0..{self._counts[modality] - 1}")
        return self._table().slice(row, 1).to_pylist()[0]

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
        searcher, metric = self._searcher(modality)
        if isinstance(searcher, np.ndarray):
            scores, rows = exact_search([searcher], queries, k, metric=metric)
        else:
            scores, rows = searcher.search(queries, k)
        table = self._table()
        found = rows[rows >= 0]
        metas = iter(table.take(found).to_pylist()) if len(found) else iter(())
        return [
            [Hit(rank, float(s), int(r), next(metas)) for rank, (s, r) in enumerate(zip(qs, qr), 1) if r >= 0]
            for qs, qr in zip(scores.tolist(), rows.tolist())
        ]


def open_index(folder: str | Path, *, model: str | None = None) -> EmbeddingIndex:
    """An :class:`EmbeddingIndex` over ``folder``. ``model`` overrides the sidecar's (needed for a folder
    written by clip-retrieval, which has no ``altclip.json``). Raises FileNotFoundError for a folder
    without embeddings or (without ``model``) without ``altclip.json``."""
    return EmbeddingIndex(folder, model=model)
