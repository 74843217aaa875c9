"""FAISS indexes over an embedding folder (the layout of :mod:`altclip_adapters.collection.store`), and search.

``build_index(DIR)`` writes ``DIR/image.index`` and ``DIR/text.index`` (with ``DIR/image.json`` /
``DIR/text.json`` describing each), the names and place clip-retrieval uses (``clip_retrieval/clip_index.py``).

An index is tied to the shards it was built from (``store.shards``: a shard is the unit of change of an
embedding folder). FAISS ids are ``shard_id << 32 | row_in_shard`` (``add_with_ids``; an ``IndexIDMap``
around the kinds that keep no ids), so adding or removing a shard never renumbers the others; the json
records, per shard, the stat fingerprint and row count the index holds, and the model. (clip-retrieval's
back end reads ids as row numbers, so it cannot serve these indexes: the price of updates.) Readers
(:class:`EmbeddingIndex`) compare that record with the folder: rows of shards the index does not hold are
searched exactly and merged with the index's hits, ids of shards changed or removed since are dropped, and
an index that is foreign (other model, replaced file) or unreadable is not used; each case is one warning
naming ``altclip index DIR``. ``build_index`` on a folder whose index is behind applies the difference
without retraining, or rebuilds by the rule in :func:`_drift`.

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
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from altclip_adapters.atomic import atomic_path, write_json
from altclip_adapters.collection.store import EMBEDDING_DIRS, MODALITIES, ShardFiles, _stat_token, check_modality, folder_modalities, read_manifest, shards

if TYPE_CHECKING:
    import faiss
    import pyarrow as pa

METRICS = ("ip", "l2")
BLOCK_ROWS = 65536  # rows per block when streaming the embeddings (adding, exact search)
METADATA_CACHE_SHARDS = 8  # metadata tables of this many shards stay in memory for the hits that follow
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("FAISS indexes need faiss: pip install 'altclip-adapters[index]'") from e
    return faiss


def index_path(folder: str | Path, modality: str) -> Path:
    """``DIR/image.index`` or ``DIR/text.index`` (clip-retrieval's names)."""
    return Path(folder) / f"{check_modality(modality)}.index"


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
            block = _unit(block) if unit else np.asarray(block, dtype=np.float32)
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


def _unit(block: np.ndarray) -> np.ndarray:
    """float32 copy of ``block`` [rows, dim] with each row renormalised in float32 (float16 rows are off
    unit length by up to ~1e-3: their scores would print above 1)."""
    block = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms > 0, norms, 1)


def _faiss_message(error: Exception) -> str:
    """FAISS's exception text without its C++ location prefix (``Error in ... at file.cpp:66: Error: '...' failed:``)."""
    text = " ".join(str(error).split())
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", text)


# shards and ids -----------------------------------------------------------------------------------
ID_SHIFT = 32  # the FAISS id of a row: shard_id << ID_SHIFT | row within its shard
INFO_FORMAT = 2  # DIR/<modality>.json records the shards (fingerprint, rows) the index holds


def row_ids(shard_id: int, rows: int) -> np.ndarray:
    """FAISS ids (int64 [rows]) of the rows of shard ``shard_id``: ``shard_id << 32 | row_in_shard``."""
    return (np.int64(shard_id) << ID_SHIFT) | np.arange(rows, dtype=np.int64)


def current_shards(folder: str | Path, modality: str) -> list[ShardFiles]:
    """The complete shards of ``modality`` (``store.shards``); ``[]`` when the folder holds that modality
    but no row of it (every shard was empty). FileNotFoundError when it does not hold ``modality``."""
    folder = Path(folder)
    held = folder_modalities(folder)
    if modality not in held:
        raise FileNotFoundError(
            f"{folder} has no {modality} embeddings"
            + (f"; it holds {' and '.join(held)} embeddings" if held else " (no img_emb/*.npy or text_emb/*.npy)")
        )
    if not any((folder / EMBEDDING_DIRS[modality]).glob("*.npy")):
        return []
    return shards(folder, modality)


@dataclass
class _Part:
    """One shard's rows as the index sees them: memory-mapped embeddings and their FAISS ids."""

    shard: ShardFiles
    array: np.ndarray
    ids: np.ndarray


def _parts(shard_list: list[ShardFiles]) -> list[_Part]:
    return [_Part(s, np.load(s.embeddings, mmap_mode="r"), row_ids(s.shard_id, s.rows)) for s in shard_list]


def _slices(parts: list[_Part], start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(embeddings view, ids view) of the global rows ``start:stop`` of the concatenated ``parts``."""
    out, offset = [], 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(stop - offset, len(part.array))
        if lo < hi:
            out.append((part.array[lo:hi], part.ids[lo:hi]))
        offset += len(part.array)
    return out


def _gather(arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Unit float32 copies of the global ``rows`` (sorted, unique) of the concatenated ``arrays``."""
    out, offset = [], 0
    for array in arrays:
        here = rows[(rows >= offset) & (rows < offset + len(array))] - offset
        if len(here):
            out.append(_unit(array[here]))
        offset += len(array)
    return np.concatenate(out)


def _add(index: faiss.Index, pieces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for array, ids in pieces:
        for block in range(0, len(array), BLOCK_ROWS):
            index.add_with_ids(_unit(array[block : block + BLOCK_ROWS]), np.ascontiguousarray(ids[block : block + BLOCK_ROWS]))


# build --------------------------------------------------------------------------------------------
def _new_index(dim: int, key: str, metric: str, count: int) -> faiss.Index:
    """An empty index of ``key`` that takes ids (``add_with_ids``): IVF families store ids themselves,
    the others are wrapped in ``IndexIDMap``. ValueError naming the problem when FAISS refuses the key or
    an IVF has more lists than there are rows to train it."""
    faiss = _faiss()
    for graph in re.finditer(r"(HNSW|NSG)(\d+)", key):  # FAISS aborts the process on a graph of fewer links
        if int(graph.group(2)) < 2:
            raise ValueError(f"{key}: {graph.group(0)} has {graph.group(2)} links per node; a graph needs at least 2 (e.g. HNSW32)")
    try:
        index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    except RuntimeError as e:
        raise ValueError(
            f"FAISS cannot make an index of key {key!r} ({_faiss_message(e)}); examples of keys: Flat, HNSW32, "
            "IVF1024,Flat, OPQ64_256,IVF1024,PQ64x8 (the FAISS wiki's 'The index factory')"
        ) from None
    ivf = re.search(r"IVF(\d+)", key)
    if ivf and int(ivf.group(1)) > count:
        raise ValueError(
            f"{key} has {int(ivf.group(1)):,} lists but there are {count:,} rows to train them: use at most "
            f"IVF{2 ** int(math.log2(max(count // 39, 1)))},Flat (39 rows a list, as FAISS asks), or leave out --index-key"
        )
    inner = index.index if isinstance(index, faiss.IndexPreTransform) else index  # OPQ, PCA: the index after them
    return index if isinstance(inner, (faiss.IndexIVF, faiss.IndexIDMap)) else faiss.IndexIDMap(index)


def recall_with_ties(found_scores: np.ndarray, truth_scores: np.ndarray, metric: str = "ip", *, epsilon: float = 1e-5) -> float:
    """Recall@k where ties count: the mean fraction of the ``k`` found rows per query whose exact score
    (``found_scores`` [n, k]) is as good as the query's k-th exact score (``truth_scores`` [n, k], best
    first) within ``epsilon`` (ann-benchmarks' rule). With identical vectors in the collection any k of the
    tied rows are right answers, which the set rule (:func:`recall_at_k`) counts as misses."""
    kth = truth_scores[:, -1:]
    good = found_scores >= kth - epsilon if metric == "ip" else found_scores <= kth + epsilon
    return float(np.mean(good.sum(1) / truth_scores.shape[1]))


def _tune(index: faiss.Index, key: str, indexed: list[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, *, k: int,
          target_recall: float, metric: str) -> tuple[str, float]:
    """(parameter string, its recall@k with ties counted): the first of ``_search_params`` whose recall on
    ``queries`` (rows not in the index yet) against exact search over ``indexed`` reaches ``target_recall``
    (binary search; recall grows with each parameter), else the last one."""
    faiss = _faiss()
    arrays = [a for a, _ in indexed]
    truth = exact_search(arrays, queries, k, metric=metric, unit=True)[0]
    all_ids = np.concatenate([i for _, i in indexed])
    order = np.argsort(all_ids, kind="stable")
    space = faiss.ParameterSpace()

    def recall(param: str) -> float:
        space.set_index_parameters(index, param)
        ids = index.search(queries, k)[1]
        rows = order[np.searchsorted(all_ids, ids, sorter=order).clip(0, len(order) - 1)]
        unique, inverse = np.unique(rows, return_inverse=True)
        vectors = _gather(arrays, unique)[inverse.reshape(rows.shape)]  # [n, k, dim]
        scores = np.einsum("nkd,nd->nk", vectors, queries)
        if metric == "l2":
            scores = ((vectors - queries[:, None, :]) ** 2).sum(-1)
        scores[ids < 0] = -np.inf if metric == "ip" else np.inf
        return recall_with_ties(scores, truth, metric)

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


def _build_full(parts: list[_Part], key: str, *, metric: str, current_memory_available: str, target_recall: float,
                k: int, tune_queries: int, seed: int) -> tuple[faiss.Index, dict[str, Any]]:
    """A new index of ``key`` over every row of ``parts``, tuned (module docstring): (index, the json's
    tuning fields)."""
    count, dim = sum(len(p.array) for p in parts), parts[0].array.shape[1]
    index = _new_index(dim, key, metric, count)
    if not index.is_trained:
        ivf = re.search(r"IVF(\d+)", key)
        size = _train_size(count, dim, int(ivf.group(1)), current_memory_available) if ivf else count
        sample = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
        try:
            index.train(_gather([p.array for p in parts], sample))
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot train {key} on {size:,} rows: {_faiss_message(e)}") from None
    held_out = min(tune_queries, count // 10) if key != "Flat" else 0  # the last rows: queries to tune and measure
    indexed = _slices(parts, 0, count - held_out)
    tune_k = min(k, count - held_out)
    param, recall = "", None
    why = "Flat is exact search: nothing to tune" if key == "Flat" else f"{count} rows are too few to hold a tenth out as queries"
    try:
        _add(index, indexed)
        if held_out and tune_k:
            queries = np.concatenate([_unit(a) for a, _ in _slices(parts, count - held_out, count)])
            param, recall = _tune(index, key, indexed, queries, k=tune_k, target_recall=target_recall, metric=metric)
            why = None
        _add(index, _slices(parts, count - held_out, count))
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build {key} over {count:,} rows: {_faiss_message(e)}") from None
    measured = {"k": tune_k, "recall": None if recall is None else round(recall, 4), "queries": held_out if recall is not None else 0}
    if why:
        measured["why_none"] = why
    return index, {"index_key": key, "index_param": param, "recall_at_k": measured, "trained_rows": count}


def _fallback_key(count: int) -> str:
    """The IVF key tried when an HNSW graph misses the target recall (identical vectors break its graph;
    IVF lists hold duplicates side by side): autofaiss's cluster count, at most one list per 39 rows."""
    return f"IVF{min(nb_clusters(count), 2 ** int(math.log2(max(count // 39, 1))))},Flat"


def _write(folder: Path, modality: str, index: faiss.Index, info: dict[str, Any]) -> dict[str, Any]:
    """Write the index, then its json (which records the index file's size and mtime, so an index file
    replaced or copied without its json is not trusted)."""
    faiss = _faiss()
    path = index_path(folder, modality)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    info = {**info, "size_bytes": path.stat().st_size, "index_path": path.name, "index_file": _stat_token(path)}
    write_json(info_path(folder, modality), info)
    return info


class _Unusable(Exception):
    """An index that cannot be trusted for this folder: corrupt, foreign, or from an older format."""


def _folder_model(folder: Path) -> str | None:
    return read_manifest(folder).get("model") if (folder / "altclip.json").is_file() else None


def _load(folder: Path, modality: str, *, model: str | None, dim: int) -> tuple[dict[str, Any], faiss.Index]:
    """(json, index) of ``modality``'s index; _Unusable naming why it cannot serve this folder."""
    path, meta = index_path(folder, modality), info_path(folder, modality)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as e:
        raise _Unusable(f"{meta} cannot be read ({e})") from None
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT or not isinstance(info.get("shards"), dict):
        raise _Unusable(f"{meta} records no shards (an index from an older altclip-adapters or another tool)")
    if info.get("metric") not in METRICS or not isinstance(info.get("index_param", ""), str) or not all(
        sid.isdigit() and isinstance(rec, dict) and type(rec.get("rows")) is int and isinstance(rec.get("fingerprint"), str)
        for sid, rec in info["shards"].items()
    ):
        raise _Unusable(f"{meta} is damaged (a metric, search parameter or shard record of the wrong form)")
    if info.get("model") != model or info.get("dim") != dim:
        raise _Unusable(f"{path} was built from {info.get('dim')}-d embeddings of {info.get('model')}, "
                        f"not this folder's {dim}-d embeddings of {model}")
    if not path.is_file() or info.get("index_file") != _stat_token(path):
        raise _Unusable(f"{path} is not the file {meta.name} describes (replaced, truncated or copied since)")
    try:
        index = _faiss().read_index(str(path))
    except RuntimeError as e:
        raise _Unusable(f"{path} cannot be read by FAISS ({_faiss_message(e)})") from None
    held = sum(r["rows"] for r in info["shards"].values())
    if index.d != dim or index.ntotal != held:
        raise _Unusable(f"{path} holds {index.ntotal} {index.d}-d vectors; {meta.name} says {held} {dim}-d ones")
    try:
        if info.get("index_param"):
            _faiss().ParameterSpace().set_index_parameters(index, info["index_param"])
    except RuntimeError as e:
        raise _Unusable(f"{meta} names a search parameter FAISS refuses ({_faiss_message(e)})") from None
    return info, index


@dataclass(frozen=True)
class _Diff:
    """How the shards an index holds compare with the folder's: ``held`` (same fingerprint), ``dropped``
    (changed or removed since: their ids must go), ``missing`` (new or changed: not in the index)."""

    held: list[int]
    dropped: list[int]
    missing: list[ShardFiles]


def _diff(info: dict[str, Any], current: list[ShardFiles]) -> _Diff:
    now = {s.shard_id: s for s in current}
    recorded = {int(sid): rec for sid, rec in info["shards"].items()}
    held = sorted(sid for sid, rec in recorded.items() if sid in now and now[sid].fingerprint == rec.get("fingerprint"))
    return _Diff(held, sorted(recorded.keys() - set(held)), [s for s in current if s.shard_id not in set(held)])


def _drift(info: dict[str, Any], count: int, rule_key: str | None, index_key: str | None, metric: str) -> str | None:
    """Why an index must be rebuilt from scratch rather than updated, or None. The rule: another metric or
    ``--index-key``; autofaiss's rules now choose another key (the collection changed size class); or the
    collection is more than twice, or less than half, the rows the index was built (trained, tuned) on."""
    trained = int(info.get("trained_rows") or 0)
    if info.get("metric") != metric:
        return f"metric {metric} asked, the index has {info.get('metric')}"
    if index_key and index_key != info.get("index_key"):
        return f"--index-key {index_key} asked, the index is {info.get('index_key')}"
    if not index_key and info.get("rule_key") and info["rule_key"] != rule_key:
        return f"the rules choose {rule_key} for {count:,} rows, the index was built as {info['rule_key']}"
    if count > 2 * trained:
        return f"{count:,} rows is more than twice the {trained:,} it was built on"
    if 2 * count < trained:
        return f"{count:,} rows is less than half the {trained:,} it was built on"
    return None


def _update(folder: Path, modality: str, index: faiss.Index, info: dict[str, Any], diff: _Diff,
            current: list[ShardFiles], start: float) -> dict[str, Any] | str:
    """Remove the dropped shards' ids and add the missing shards' rows without retraining: the new json, or
    why FAISS could not (HNSW cannot remove ids): the caller rebuilds."""
    removed = sum(int(info["shards"][str(s)]["rows"]) for s in diff.dropped)
    try:
        if diff.dropped:
            index.remove_ids(np.concatenate([row_ids(s, int(info["shards"][str(s)]["rows"])) for s in diff.dropped]))
        _add(index, [(p.array, p.ids) for p in _parts(diff.missing)])
    except RuntimeError as e:  # remove_ids not implemented (HNSW, refine wrappers), or an add FAISS refuses (NSG)
        return f"{info['index_key']} cannot be updated in place: {_faiss_message(e)}"
    added = sum(s.rows for s in diff.missing)
    action = (f"updated without retraining: +{added:,} rows from {len(diff.missing)} new or changed shard(s), "
              f"-{removed:,} rows of {len(diff.dropped)} changed or removed shard(s)")
    info = {**info, "count": sum(s.rows for s in current), "action": action,
            "shards": {str(s.shard_id): {"rows": s.rows, "fingerprint": s.fingerprint} for s in current},
            "build_seconds": round(time.perf_counter() - start, 2)}
    return _write(folder, modality, index, info)


def _build_one(folder: Path, modality: str, *, max_index_memory_usage: str, current_memory_available: str,
               metric: str, index_key: str | None, target_recall: float, k: int, tune_queries: int, seed: int,
               rebuild: bool) -> dict[str, Any]:
    start = time.perf_counter()
    current = current_shards(folder, modality)
    count = sum(s.rows for s in current)
    if not count:
        raise ValueError(f"{folder} holds no {modality} rows (every shard altclip embed wrote there was empty): nothing to index")
    parts = _parts(current)
    dim, model = parts[0].array.shape[1], _folder_model(folder)
    rule_key = None if index_key else choose_index_key(count, dim, max_index_memory_usage)
    why = "--rebuild" if rebuild else "no index yet"
    if not rebuild and index_path(folder, modality).is_file():
        try:
            info, index = _load(folder, modality, model=model, dim=dim)
        except _Unusable as e:
            why = str(e)
        else:
            diff = _diff(info, current)
            why = _drift(info, count, rule_key, index_key, metric)
            if why is None and not diff.dropped and not diff.missing:
                return {**info, "action": "up to date: nothing to do"}
            if why is None:
                updated = _update(folder, modality, index, info, diff, current, start)
                if isinstance(updated, dict):
                    return updated
                why = updated
    key = index_key or rule_key
    tuning = {"metric": metric, "current_memory_available": current_memory_available, "target_recall": target_recall,
              "k": k, "tune_queries": tune_queries, "seed": seed}
    index, fields = _build_full(parts, key, **tuning)
    reached = fields["recall_at_k"]["recall"]
    note = None
    if reached is not None and reached < target_recall and not index_key and "HNSW" in key and "IVF" not in key:
        fallback = _fallback_key(count)
        index2, fields2 = _build_full(parts, fallback, **tuning)
        reached2 = fields2["recall_at_k"]["recall"]
        note = (f"{key} reached recall@{fields['recall_at_k']['k']} {reached:.3f} at its largest {fields['index_param']} "
                f"(below the target {target_recall}: identical vectors, e.g. placeholder images, break an HNSW graph); "
                f"{fallback} reached {reached2:.3f}")
        if reached2 > reached:
            index, fields = index2, fields2
    elif reached is not None and reached < target_recall:
        note = (f"{key} reached recall@{fields['recall_at_k']['k']} {reached:.3f} at its largest {fields['index_param']}, "
                f"below the target {target_recall}")
    info = {
        "format": INFO_FORMAT, "model": model, "dim": dim, "metric": metric, **fields, "rule_key": rule_key,
        "count": count, "ids": "shard_id << 32 | row_in_shard",
        "shards": {str(s.shard_id): {"rows": s.rows, "fingerprint": s.fingerprint} for s in current},
        "chosen_by": "index_key argument" if index_key else "autofaiss 2.18 get_optimal_index_keys_v2",
        "note": note, "action": f"built from scratch ({why})",
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    return _write(folder, modality, index, info)


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
    rebuild: bool = False,
) -> dict[str, dict[str, Any]]:
    """Build, or bring up to date, the FAISS index of each modality (``modality=None``: every one the folder holds).

    FAISS ids are ``shard_id << 32 | row_in_shard``; the json records the shards the index holds (stat
    fingerprint and rows, from ``store.shards``) and the model. When an index exists and is sound, only the
    difference is applied, without retraining: the ids of changed or removed shards are removed
    (``remove_ids``; HNSW cannot, so it is rebuilt) and the rows of new or changed shards added
    (``add_with_ids``). It is rebuilt from scratch instead (the ``_drift`` rule) when the metric or
    ``index_key`` differ, autofaiss's rules now choose another key, or the rows are more than twice or less
    than half those it was built on (a key given once through ``index_key`` is kept by later calls without
    one); ``rebuild=True`` always rebuilds.

    ``max_index_memory_usage``: the budget the index must fit in RAM (chooses the index; module
    docstring); ``current_memory_available``: bounds the IVF training sample; ``metric``: ``"ip"``
    (inner product = cosine on the normalised rows) or ``"l2"``; ``index_key``: a FAISS
    ``index_factory`` key instead of the rules; ``target_recall``, ``k``, ``tune_queries``: the search
    parameter is the smallest reaching recall@k >= target_recall (ties counted: :func:`recall_with_ties`) on
    that many held-out rows; when an HNSW graph cannot reach it, an IVF index is tried and the better kept,
    and ``note`` says what each reached; ``seed``: the IVF training sample.

    Writes ``DIR/<modality>.index`` and ``DIR/<modality>.json`` atomically and returns, per modality,
    the json's content: ``format``, ``model``, ``dim``, ``metric``, ``index_key``, ``index_param``,
    ``recall_at_k`` ({k, recall, queries}; recall None with ``why_none`` when nothing was measured),
    ``trained_rows``, ``rule_key``, ``count``, ``ids``, ``shards``, ``chosen_by``, ``note``, ``action``
    (what this call did, one line), ``build_seconds``, ``size_bytes``, ``index_path``, ``index_file``.
    Raises ImportError without faiss, FileNotFoundError when the folder has no such embeddings,
    ValueError for bad arguments, a key FAISS refuses, a folder of 0 rows or a budget too small for any index.
    """
    _faiss()
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2'; got {metric!r}")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    folder = Path(folder)
    modalities = [modality] if modality else folder_modalities(folder)
    if not modalities:
        raise FileNotFoundError(f"{folder} holds no embeddings (img_emb/*.npy or text_emb/*.npy)")
    return {
        name: _build_one(folder, name, max_index_memory_usage=max_index_memory_usage,
                         current_memory_available=current_memory_available, metric=metric, index_key=index_key,
                         target_recall=target_recall, k=k, tune_queries=tune_queries, seed=seed, rebuild=rebuild)
        for name in modalities
    }


# search -------------------------------------------------------------------------------------------
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
    ``altclip_adapters.collection.index`` logger), one line naming ``altclip index DIR``, and never answers for rows it
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
        arrays = [_unit(np.load(s.embeddings, mmap_mode="r")) for s in shard_list]
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
            _faiss()
            info, index = _load(self.folder, modality, model=_folder_model(self.folder), dim=self.dim)
        except (_Unusable, ImportError) as e:
            self._on_warning(f"{e}; searching {modality} embeddings exactly: rebuild the index with {rebuild}")
            return _Searcher("ip", None, exact=(loaded := self._load_exact(current))[0], exact_ids=loaded[1])
        diff = _diff(info, current)
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
        import pyarrow.parquet as pq

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
        import pyarrow.parquet as pq

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
        import pyarrow.parquet as pq

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
        vectors = _unit(searcher.held[shard_id][wanted])[np.searchsorted(wanted, rows[hit])]
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
