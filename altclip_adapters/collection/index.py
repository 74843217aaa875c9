"""Building and updating the FAISS index of each modality of an embedding folder (the layout of
:mod:`altclip_adapters.collection.store`): :func:`build_index`.

The index is chosen by autofaiss's rules and its search parameter tuned for recall
(:mod:`altclip_adapters.collection.index_rules`); it is written with its json as
:mod:`altclip_adapters.collection.index_files` describes, and searched by :mod:`altclip_adapters.collection.search`.
``build_index`` on a folder whose index is behind applies the difference without retraining, or rebuilds by the
rule in :func:`_drift`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from altclip_adapters.collection.index_files import (
    INFO_FORMAT,
    METRICS,
    ShardDiff,
    UnusableIndex,
    current_shards,
    diff_shards,
    faiss_message,
    folder_model,
    index_path,
    load_index,
    row_ids,
    save_index,
)
from altclip_adapters.collection.index_rules import choose_index_key, fallback_key, search_params, train_size
from altclip_adapters.collection.search import BLOCK_ROWS, exact_search, unit_rows
from altclip_adapters.collection.store import ShardFiles, folder_modalities
from altclip_adapters.extras import require

if TYPE_CHECKING:
    import faiss


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
            out.append(unit_rows(array[here]))
        offset += len(array)
    return np.concatenate(out)


def _add(index: faiss.Index, pieces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for array, ids in pieces:
        for block in range(0, len(array), BLOCK_ROWS):
            index.add_with_ids(unit_rows(array[block : block + BLOCK_ROWS]), np.ascontiguousarray(ids[block : block + BLOCK_ROWS]))


# build --------------------------------------------------------------------------------------------
def _new_index(dim: int, key: str, metric: str, count: int) -> faiss.Index:
    """An empty index of ``key`` that takes ids (``add_with_ids``): IVF families store ids themselves,
    the others are wrapped in ``IndexIDMap``. ValueError naming the problem when FAISS refuses the key or
    an IVF has more lists than there are rows to train it."""
    faiss = require("faiss", "index", "FAISS indexes")
    for graph in re.finditer(r"(HNSW|NSG)(\d+)", key):  # FAISS aborts the process on a graph of fewer links
        if int(graph.group(2)) < 2:
            raise ValueError(f"{key}: {graph.group(0)} has {graph.group(2)} links per node; a graph needs at least 2 (e.g. HNSW32)")
    try:
        index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    except RuntimeError as e:
        raise ValueError(
            f"FAISS cannot make an index of key {key!r} ({faiss_message(e)}); examples of keys: Flat, HNSW32, "
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
    """(parameter string, its recall@k with ties counted): the first of ``search_params`` whose recall on
    ``queries`` (rows not in the index yet) against exact search over ``indexed`` reaches ``target_recall``
    (binary search; recall grows with each parameter), else the last one."""
    faiss = require("faiss", "index", "FAISS indexes")
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

    candidates = search_params(key)
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
    """A new index of ``key`` over every row of ``parts``, tuned by the rules of
    :mod:`altclip_adapters.collection.index_rules`: (index, the json's tuning fields)."""
    count, dim = sum(len(p.array) for p in parts), parts[0].array.shape[1]
    index = _new_index(dim, key, metric, count)
    if not index.is_trained:
        ivf = re.search(r"IVF(\d+)", key)
        size = train_size(count, dim, int(ivf.group(1)), current_memory_available) if ivf else count
        sample = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
        try:
            index.train(_gather([p.array for p in parts], sample))
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot train {key} on {size:,} rows: {faiss_message(e)}") from None
    held_out = min(tune_queries, count // 10) if key != "Flat" else 0  # the last rows: queries to tune and measure
    indexed = _slices(parts, 0, count - held_out)
    tune_k = min(k, count - held_out)
    param, recall = "", None
    why = "Flat is exact search: nothing to tune" if key == "Flat" else f"{count} rows are too few to hold a tenth out as queries"
    try:
        _add(index, indexed)
        if held_out and tune_k:
            queries = np.concatenate([unit_rows(a) for a, _ in _slices(parts, count - held_out, count)])
            param, recall = _tune(index, key, indexed, queries, k=tune_k, target_recall=target_recall, metric=metric)
            why = None
        _add(index, _slices(parts, count - held_out, count))
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build {key} over {count:,} rows: {faiss_message(e)}") from None
    measured = {"k": tune_k, "recall": None if recall is None else round(recall, 4), "queries": held_out if recall is not None else 0}
    if why:
        measured["why_none"] = why
    return index, {"index_key": key, "index_param": param, "recall_at_k": measured, "trained_rows": count}


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


def _update(folder: Path, modality: str, index: faiss.Index, info: dict[str, Any], diff: ShardDiff,
            current: list[ShardFiles], start: float) -> dict[str, Any] | str:
    """Remove the dropped shards' ids and add the missing shards' rows without retraining: the new json, or
    why FAISS could not (HNSW cannot remove ids): the caller rebuilds."""
    removed = sum(int(info["shards"][str(s)]["rows"]) for s in diff.dropped)
    try:
        if diff.dropped:
            index.remove_ids(np.concatenate([row_ids(s, int(info["shards"][str(s)]["rows"])) for s in diff.dropped]))
        _add(index, [(p.array, p.ids) for p in _parts(diff.missing)])
    except RuntimeError as e:  # remove_ids not implemented (HNSW, refine wrappers), or an add FAISS refuses (NSG)
        return f"{info['index_key']} cannot be updated in place: {faiss_message(e)}"
    added = sum(s.rows for s in diff.missing)
    action = (f"updated without retraining: +{added:,} rows from {len(diff.missing)} new or changed shard(s), "
              f"-{removed:,} rows of {len(diff.dropped)} changed or removed shard(s)")
    info = {**info, "count": sum(s.rows for s in current), "action": action,
            "shards": {str(s.shard_id): {"rows": s.rows, "fingerprint": s.fingerprint} for s in current},
            "build_seconds": round(time.perf_counter() - start, 2)}
    return save_index(folder, modality, index, info)


def _build_one(folder: Path, modality: str, *, max_index_memory_usage: str, current_memory_available: str,
               metric: str, index_key: str | None, target_recall: float, k: int, tune_queries: int, seed: int,
               rebuild: bool) -> dict[str, Any]:
    start = time.perf_counter()
    current = current_shards(folder, modality)
    count = sum(s.rows for s in current)
    if not count:
        raise ValueError(f"{folder} holds no {modality} rows (every shard altclip embed wrote there was empty): nothing to index")
    parts = _parts(current)
    dim, model = parts[0].array.shape[1], folder_model(folder)
    rule_key = None if index_key else choose_index_key(count, dim, max_index_memory_usage)
    why = "--rebuild" if rebuild else "no index yet"
    if not rebuild and index_path(folder, modality).is_file():
        try:
            info, index = load_index(folder, modality, model=model, dim=dim)
        except UnusableIndex as e:
            why = str(e)
        else:
            diff = diff_shards(info, current)
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
        fallback = fallback_key(count)
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
    return save_index(folder, modality, index, info)


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

    ``max_index_memory_usage``: the budget the index must fit in RAM (chooses the index:
    :mod:`altclip_adapters.collection.index_rules`); ``current_memory_available``: bounds the IVF training
    sample; ``metric``: ``"ip"`` (inner product = cosine on the normalised rows) or ``"l2"``; ``index_key``: a FAISS
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
    require("faiss", "index", "FAISS indexes")
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



