"""Which FAISS index an embedding folder gets, by autofaiss's rules; standard library only (``altclip index``
checks its arguments with :func:`parse_memory` before importing numpy or faiss).

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
recall is an estimate, recorded in the json). :mod:`altclip_adapters.collection.index` builds and tunes.
"""

from __future__ import annotations

import math
import re

_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


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


def train_size(count: int, dim: int, clusters: int, current_memory_available: str) -> int:
    """autofaiss's ``get_optimal_train_size``: 100 points per cluster, fewer (at least 31) when the
    float32 sample would not fit ``current_memory_available``."""
    per_cluster = max(min(parse_memory(current_memory_available) / (clusters * dim * 4), 100.0), 31.0)
    return min(round(per_cluster * clusters), count)


def search_params(index_key: str) -> list[str]:
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


def fallback_key(count: int) -> str:
    """The IVF key tried when an HNSW graph misses the target recall (identical vectors break its graph;
    IVF lists hold duplicates side by side): autofaiss's cluster count, at most one list per 39 rows."""
    return f"IVF{min(nb_clusters(count), 2 ** int(math.log2(max(count // 39, 1))))},Flat"
