"""ANN index against exact search on synthetic clustered embeddings (default: 1M x 768-d).

Writes an embedding folder (float16, clip-retrieval's layout, 100,000 rows a shard) of unit vectors drawn
around ``--clusters`` centres in a random ``--latent``-d subspace plus a little noise in every dimension
(clustered, with a low intrinsic dimension, as image embeddings are), builds its index with
``altclip_adapters.collection.index.build_index`` (autofaiss's choice rules, search parameter tuned for recall), then
times ``--queries`` fresh queries from the same distribution (not in the index) against exact search
(FAISS ``IndexFlatIP`` over the same vectors in float32: BLAS, all cores), alternating the two for a few
rounds and keeping each one's best. Prints build time, index size, recall@k against exact search,
queries/s of each in batch and one query at a time, the ratios, and the peak memory of the process.

    python benchmarks/ann.py                 # 1M vectors: ~1.5 GiB on disk, ~7 GiB of RAM, minutes
    python benchmarks/ann.py --n 100000      # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from altclip_adapters.collection.index import build_index
from altclip_adapters.collection.search import exact_search, open_index, recall_at_k
from altclip_adapters.collection.store import EmbeddingWriter, iter_embeddings

SHARD_ROWS = 100_000


class Generator:
    """Unit vectors around fixed cluster centres in a random latent subspace (one seed: one distribution)."""

    def __init__(self, dim: int, latent: int, clusters: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T.astype(np.float32)  # [latent, dim], orthonormal rows
        self.centres = rng.normal(size=(clusters, latent)).astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        z = self.centres[rng.integers(0, len(self.centres), n)] + 0.6 * rng.normal(size=(n, self.basis.shape[0])).astype(np.float32)
        x = z @ self.basis + 0.02 * rng.normal(size=(n, self.basis.shape[1])).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def best_time(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the collection (default: 1,000,000)")
    parser.add_argument("--dim", type=int, default=768, help="dimensions (default: 768, AltCLIP's)")
    parser.add_argument("--latent", type=int, default=64, help="intrinsic dimension of the data (default: 64)")
    parser.add_argument("--clusters", type=int, default=1000, help="cluster centres (default: 1000)")
    parser.add_argument("--queries", type=int, default=1000, help="fresh queries timed in one batch (default: 1000)")
    parser.add_argument("--single", type=int, default=50, help="of which timed one at a time (default: 50)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, best kept (default: 3)")
    parser.add_argument("--max-index-memory-usage", default="4G", help="the index's RAM budget (default: 4G)")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@k the tuning aims at (default: 0.95)")
    parser.add_argument("--workdir", type=Path, help="keep the folder here (reused when it holds --n vectors); "
                        "default: a temporary folder removed at the end")
    args = parser.parse_args()

    import faiss

    print(f"machine: {os.cpu_count()} CPUs, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"numpy {np.__version__}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ann-bench-"))
    folder = work / f"emb-{args.n}x{args.dim}"
    generator = Generator(args.dim, args.latent, args.clusters)
    try:
        have = sum(len(a) for a in iter_embeddings(folder)) if (folder / "img_emb").is_dir() else 0
        if have != args.n:
            shutil.rmtree(folder, ignore_errors=True)
            start, rng = time.perf_counter(), np.random.default_rng(1)
            writer = EmbeddingWriter(folder, model="synthetic", dtype="float16")
            for shard, first in enumerate(range(0, args.n, SHARD_ROWS)):
                rows = min(SHARD_ROWS, args.n - first)
                writer.write_shard(shard, image_embeddings=generator.sample(rows, rng),
                                   metadata=[{"key": f"{first + i:09d}"} for i in range(rows)])
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            print(f"data: {args.n:,} x {args.dim} float16 ({args.clusters} clusters, latent {args.latent}) written in "
                  f"{time.perf_counter() - start:.1f} s, {size / 2**30:.2f} GiB on disk")
        queries = generator.sample(args.queries, np.random.default_rng(2))

        info = build_index(folder, max_index_memory_usage=args.max_index_memory_usage, target_recall=args.target_recall,
                           k=args.k, rebuild=True)["image"]
        tuned = info["recall_at_k"]
        measured = (f"tuned recall@{tuned['k']} {tuned['recall']:.4f} on {tuned['queries']} held-out rows"
                    if tuned["recall"] is not None else f"no recall measured ({tuned['why_none']})")
        print(f"index: {info['index_key']} ({info['index_param'] or 'no parameter'}), built in {info['build_seconds']:.1f} s, "
              f"{info['size_bytes'] / 2**30:.2f} GiB; {measured}")
        if info["note"]:
            print(f"note: {info['note']}")

        start = time.perf_counter()
        exact = faiss.IndexFlatIP(args.dim)
        for array in iter_embeddings(folder):
            for block in range(0, len(array), SHARD_ROWS):
                rows = np.asarray(array[block : block + SHARD_ROWS], dtype=np.float32)
                exact.add(rows / np.linalg.norm(rows, axis=1, keepdims=True))  # renormalised in float32, as the index's rows
        print(f"exact: IndexFlatIP over the same vectors in float32, {exact.ntotal * args.dim * 4 / 2**30:.2f} GiB, "
              f"loaded in {time.perf_counter() - start:.1f} s")
        index = open_index(folder)
        ann = faiss.read_index(str(folder / info["index_path"]))  # what EmbeddingIndex searches, tuned as it is
        if info["index_param"]:
            faiss.ParameterSpace().set_index_parameters(ann, info["index_param"])

        truth = exact.search(queries, args.k)[1]
        np.testing.assert_array_equal(truth[:20], exact_search(list(iter_embeddings(folder)), queries[:20], args.k, unit=True)[1])
        ids = ann.search(queries, args.k)[1]  # FAISS ids: shard << 32 | row in shard; shards of SHARD_ROWS rows here
        found = np.where(ids < 0, -1, (ids >> 32) * SHARD_ROWS + (ids & 0xFFFFFFFF))
        recall = recall_at_k(found, truth)
        api = index.search(queries[:1], args.k)[0]
        assert [h.row for h in api] == found[0].tolist() and api[0].metadata["key"] == f"{found[0][0]:09d}"

        one = queries[: args.single]
        times = {"exact batch": [], "ann batch": [], "exact single": [], "ann single": [], "api batch": []}
        for _ in range(args.rounds):  # alternate, so that other work on the machine hurts both alike
            times["exact batch"].append(best_time(lambda: exact.search(queries, args.k), 1))
            times["ann batch"].append(best_time(lambda: ann.search(queries, args.k), 1))
            times["api batch"].append(best_time(lambda: index.search(queries, args.k), 1))
            times["exact single"].append(best_time(lambda: [exact.search(q[None], args.k) for q in one], 1))
            times["ann single"].append(best_time(lambda: [ann.search(q[None], args.k) for q in one], 1))
        best = {name: min(values) for name, values in times.items()}
        qps = {name: (args.queries if "batch" in name else args.single) / best[name] for name in best}
        print(f"recall@{args.k} of the index against exact search, {args.queries} fresh queries: {recall:.4f}")
        print(f"  {'':<34}{'exact (IndexFlatIP)':>22}{'index':>16}{'index/exact':>14}")
        for mode, label in (("batch", f"batch of {args.queries}, queries/s"), ("single", f"one at a time ({args.single}), queries/s")):
            print(f"  {label:<34}{qps['exact ' + mode]:>22,.1f}{qps['ann ' + mode]:>16,.1f}"
                  f"{qps['ann ' + mode] / qps['exact ' + mode]:>13.1f}x")
        print(f"  {'EmbeddingIndex.search (+ metadata), batch':<34}{'':>22}{qps['api batch']:>16,.1f}")
        print(f"peak memory of this process: {peak_gib():.2f} GiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
