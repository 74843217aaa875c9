"""Ray's overhead: the same images, the same worker (one model, the same CPUs), with and without Ray, in one run.

    python benchmarks/ray_overhead.py                          # CPU: ViT-B/32 random weights, 1 worker CPU, ~4 min
    python benchmarks/ray_overhead.py --device cuda --shape full --images-per-shard 2048 --shards 8 --cpus 8

Writes ``--shards`` webdataset tars of ``--images-per-shard`` 640x480 JPEGs (smooth random pictures, ~60 KB
each, as img2dataset stores photos) and times, alternating for ``--rounds`` rounds and keeping each one's best:

- ``Embedder.images``: the single-process pipeline over the same JPEGs as files (the reference);
- local job: ``altclip embed SHARDS --out DIR`` without Ray (:func:`altclip_adapters.bulk.run`: read each tar,
  embed, write clip-retrieval's layout);
- Ray job: the same job on a local Ray (``altclip embed ... --ray``: :func:`altclip_adapters.ray.run`, one actor);
- Ray Data: ``read_webdataset(decoder=None)`` + :func:`altclip_adapters.ray.add_embeddings` (one actor).

Each line prints images/s and its ratio to ``Embedder.images``; the Ray lines also print their steady rate
(from the first shard or batch out to the last, leaving out the actor's start: a new process importing torch
and loading the model, paid once per actor per run) and the end-to-end rate (everything after ``ray.init``).
The worker runs ``--cpus`` torch threads in every case (Ray reserves them for the actor); Ray's own
processes get the rest of the machine. Target: Ray's steady rate within 10% of the local job's.
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

from altclip_adapters.bulk import ShardEmbedder, run as run_here
from altclip_adapters.pipeline import Embedder
from altclip_adapters.shards import ShardSource
from altclip_adapters.tiny import make_checkpoint


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
    parser.add_argument("--shape", default="b32", choices=["tiny", "b32", "full"], help="random checkpoint (b32: ViT-B/32 at 224)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--images-per-shard", type=int, default=48)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs (torch threads, or decoding workers on cuda) of the worker")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint and the shards here (default: a temporary folder)")
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
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}; "
          f"model: random {args.shape}; {count} JPEGs 640x480 in {len(tars)} tars; worker: {args.cpus} CPU(s), "
          f"batch {args.batch_size}, {args.device}", flush=True)

    embedder = Embedder.from_pretrained(checkpoint, device=args.device, **options)
    embedder.images(files[: args.batch_size])  # warm

    def reference() -> float:
        start = time.perf_counter()
        embedder.images(files)
        return count / (time.perf_counter() - start)

    def steady(times: list[float], rows: list[int], start: float) -> tuple[float, float]:
        """(steady rate: rows after the first arrival / time from first to last arrival, end-to-end rate); with
        one arrival only, both are the end-to-end rate."""
        e2e = sum(rows) / (times[-1] - start)
        return (sum(rows[1:]) / (times[-1] - times[0]) if len(times) > 1 else e2e), e2e

    def local_job() -> tuple[float, float]:
        out = Path(tempfile.mkdtemp(dir=work))
        worker = ShardEmbedder(embedder, out, model=str(checkpoint), modalities=("image",), dtype="float16")
        times, rows, start = [], [], time.perf_counter()
        run_here(worker, sources, lambda r: (times.append(time.perf_counter()), rows.append(r.rows)))
        shutil.rmtree(out)
        return steady(times, rows, start)

    def ray_job() -> tuple[float, float]:
        from altclip_adapters.ray import run

        out = Path(tempfile.mkdtemp(dir=work))
        times, rows, start = [], [], time.perf_counter()
        run(sources, out, model=str(checkpoint), model_reference=str(checkpoint), modalities=("image",),
            dtype="float16", actors=1, num_gpus=1 if gpu else 0, num_cpus=args.cpus, embedder_kwargs=options,
            on_report=lambda r: (times.append(time.perf_counter()), rows.append(r.rows)))
        shutil.rmtree(out)
        return steady(times, rows, start)

    def ray_data() -> tuple[float, float]:
        from altclip_adapters.ray import add_embeddings

        start = time.perf_counter()
        ds = ray.data.read_webdataset([str(t) for t in tars], decoder=None)
        ds = add_embeddings(ds, model=str(checkpoint), column="jpg", batch_size=args.batch_size, actors=1,
                            num_gpus=1 if gpu else 0, num_cpus=None if gpu else args.cpus, num_workers=0)
        times, rows = [], []
        for batch in ds.iter_batches(batch_size=args.batch_size, batch_format="numpy"):
            times.append(time.perf_counter())
            rows.append(len(batch["embedding"]))
        return steady(times, rows, start)

    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    best: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for name, measure in (("Embedder.images", reference), ("local job", local_job), ("Ray job", ray_job),
                              ("Ray Data add_embeddings", ray_data)):
            result = measure()
            result = result if isinstance(result, tuple) else (result, result)
            best[name] = [max(a, b) for a, b in zip(best.get(name, [0.0, 0.0]), result)]
            print(f"  round {round_ + 1}: {name}: {result[0]:.2f} img/s steady, {result[1]:.2f} end-to-end", flush=True)
    ray.shutdown()
    base = best["Embedder.images"][0]
    print(f"\n{'line':<26} {'steady img/s':>12} {'vs Embedder':>11} {'end-to-end img/s':>16} {'vs Embedder':>11}")
    for name, (rate, e2e) in best.items():
        print(f"{name:<26} {rate:>12.2f} {rate / base:>10.3f}x {e2e:>16.2f} {e2e / base:>10.3f}x")
    overhead = 1 - best["Ray job"][0] / best["local job"][0]
    print(f"\nRay job steady rate vs local job: {best['Ray job'][0] / best['local job'][0]:.3f}x "
          f"(overhead {overhead:+.1%}; target <= 10%)")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
