"""Ray's overhead: the same images, the same worker (one model, the same CPUs), with and without Ray, in one run.

    python benchmarks/ray_overhead.py          # CPU: ViT-B/32 random weights, 96 JPEGs, 1 worker CPU, ~8 min on 2 cores
    python benchmarks/ray_overhead.py --device cuda --shape full --shards 8 --images-per-shard 2048 \
        --cpus 12 --batch-size 256 --rounds 2

Writes ``--shards`` webdataset tars of ``--images-per-shard`` 640x480 JPEGs (smooth random pictures, ~40 KB
each, as img2dataset stores photos) and times, alternating for ``--rounds`` rounds and keeping each one's best:

- ``Embedder.images``: the single-process pipeline over the same JPEGs as files (the reference);
- local job: ``altclip embed SHARDS --out DIR`` without Ray (:func:`altclip_adapters.collection.worker.run`: read each tar,
  embed, write clip-retrieval's layout);
- Ray job: the same job on a local Ray (``altclip embed ... --ray``: :func:`altclip_adapters.collection.ray.run`, one actor);
- Ray Data: ``read_webdataset(decoder=None)`` + :func:`altclip_adapters.collection.ray.add_embeddings` (one actor).

Each line prints images/s and its ratio to ``Embedder.images``. The jobs print two rates: over the workers'
window (from the first shard's start to the last shard's end, as the workers' reports say: what a long run
sustains, leaving out the actor's start, a new process importing torch and loading the model once per actor
per run) and end to end (everything after ``ray.init``, that start included). The worker runs ``--cpus``
torch threads in every case (Ray reserves them for the actor); Ray's own processes get the rest of the
machine. Target: the Ray job's rate within 10% of the local job's, and of ``Embedder.images``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from altclip_adapters.collection.worker import ShardEmbedder
from altclip_adapters.collection.worker import run as run_here
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.shards import ShardSource
from altclip_adapters.model.tiny import make_checkpoint


def jpeg(seed: int) -> bytes:
    """A 640x480 JPEG of a smooth random picture (bicubic upsampled noise), quality 90."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((640, 480), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_inputs(folder: Path, shards: int, per_shard: int) -> tuple[list[Path], list[Path]]:
    """(tars, JPEG files): the same images as webdataset shards and as files."""
    import tarfile

    files, tars = [], []
    (folder / "files").mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        tars.append(folder / f"{s:05d}.tar")
        with tarfile.open(tars[-1], "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                data = jpeg(i)
                files.append(folder / "files" / f"{i:09d}.jpg")
                files[-1].write_bytes(data)
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return tars, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", default="b32", choices=["tiny", "b32", "full"], help="random checkpoint (b32: ViT-B/32 at 224)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--images-per-shard", type=int, default=24)
    parser.add_argument(
        "--cpus", type=int, default=1, help="CPUs (torch threads, or decoding workers on cuda) of the worker"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds; each measure goes first in one of every 4"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the checkpoint and the shards here (default: a temporary folder)"
    )
    args = parser.parse_args()

    import ray

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"checkpoint-{args.shape}"
    if not (checkpoint / "config.json").is_file():
        make_checkpoint(checkpoint, args.shape)
    inputs = work / f"inputs-{args.shards}x{args.images_per_shard}"
    if not inputs.is_dir():
        write_inputs(inputs, args.shards, args.images_per_shard)
    tars = sorted(inputs.glob("*.tar"))
    files = sorted((inputs / "files").glob("*.jpg"))
    count = len(files)
    sources = [ShardSource(i, "tar", str(t)) for i, t in enumerate(tars)]
    gpu = args.device == "cuda"
    options = dict(batch_size=args.batch_size, num_workers=args.cpus if gpu else 0)
    if not gpu:
        torch.set_num_threads(args.cpus)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"ray {ray.__version__}; "
        f"model: random {args.shape}; {count} JPEGs 640x480 in {len(tars)} tars; worker: {args.cpus} CPU(s), "
        f"batch {args.batch_size}, {args.device}",
        flush=True,
    )

    embedder = Embedder.from_pretrained(checkpoint, device=args.device, **options)
    embedder.images(files[: args.batch_size])  # warm

    def reference() -> float:
        start = time.perf_counter()
        embedder.images(files)
        return count / (time.perf_counter() - start)

    def window(reports) -> tuple[float, float]:
        """(rate over the workers' window: rows / (last shard finished - first shard started), end-to-end rate)."""
        rows = sum(r.rows for r in reports)
        first, last = min(r.started for r in reports), max(r.finished for r in reports)
        return rows / (last - first), rows

    def local_job() -> tuple[float, float]:
        out = Path(tempfile.mkdtemp(dir=work))
        worker = ShardEmbedder(embedder, out, model=str(checkpoint), modalities=("image",), dtype="float16")
        start = time.perf_counter()
        rate, rows = window(run_here(worker, sources))
        elapsed = time.perf_counter() - start
        shutil.rmtree(out)
        return rate, rows / elapsed

    def ray_job() -> tuple[float, float]:
        from altclip_adapters.collection.ray import run

        out = Path(tempfile.mkdtemp(dir=work))
        start = time.perf_counter()
        reports = run(
            sources,
            out,
            model=str(checkpoint),
            modalities=("image",),
            dtype="float16",
            actors=1,
            num_gpus=1 if gpu else 0,
            num_cpus=args.cpus,
            embedder_kwargs=options,
        )
        elapsed = time.perf_counter() - start
        shutil.rmtree(out)
        rate, rows = window(reports)
        return rate, rows / elapsed

    def ray_data() -> tuple[None, float]:
        from altclip_adapters.collection.ray import add_embeddings

        start = time.perf_counter()
        ds = ray.data.read_webdataset([str(t) for t in tars], decoder=None)
        ds = add_embeddings(
            ds,
            model=str(checkpoint),
            column="jpg",
            batch_size=args.batch_size,
            actors=1,
            num_gpus=1 if gpu else 0,
            num_cpus=None if gpu else args.cpus,
            num_workers=0,
        )
        rows = sum(len(batch["embedding"]) for batch in ds.iter_batches(batch_size=None, batch_format="numpy"))
        return None, rows / (time.perf_counter() - start)

    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    best: dict[str, list[float | None]] = {
        name: [None, None] for name in ("Embedder.images", "local job", "Ray job", "Ray Data add_embeddings")
    }
    measures = [
        ("Embedder.images", reference),
        ("local job", local_job),
        ("Ray job", ray_job),
        ("Ray Data add_embeddings", ray_data),
    ]
    for round_ in range(args.rounds):
        for name, measure in measures[round_ % 4 :] + measures[: round_ % 4]:  # each goes first in some round
            result = measure()
            result = result if isinstance(result, tuple) else (result, result)
            best[name] = [None if r is None else max(r, b or 0.0) for r, b in zip(result, best[name])]
            steady = "-" if result[0] is None else f"{result[0]:.2f}"
            print(
                f"  round {round_ + 1}: {name}: {steady} img/s in the workers' window, {result[1]:.2f} end-to-end",
                flush=True,
            )
    ray.shutdown()
    base = best["Embedder.images"][0]
    print(f"\n{'line':<26} {'window img/s':>12} {'vs Embedder':>11} {'end-to-end img/s':>16} {'vs Embedder':>11}")
    for name, (rate, e2e) in best.items():
        window_cells = f"{'-':>12} {'-':>11}" if rate is None else f"{rate:>12.2f} {rate / base:>10.3f}x"
        print(f"{name:<26} {window_cells} {e2e:>16.2f} {e2e / base:>10.3f}x")
    ratio = best["Ray job"][0] / best["local job"][0]
    print(f"\nRay job vs local job, workers' window: {ratio:.3f}x (overhead {1 - ratio:+.1%}; target <= 10%)")
    print(f"Ray job vs Embedder.images, workers' window: {best['Ray job'][0] / base:.3f}x")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
