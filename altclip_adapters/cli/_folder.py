"""``altclip embed ... --out DIR``: an embedding folder in clip-retrieval's layout, shard by shard, in this
process or on Ray (``--ray [ADDRESS]``). The run itself is :mod:`altclip_adapters.bulk` /
:func:`altclip_adapters.ray.run`; this module parses, prints and sizes the Ray actors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    CLIError,
    Interrupted,
    check_model,
    embedder_options,
    load_embedder,
    model_reference,
    natural_int,
    positive_int,
    warn,
)

STORE_DTYPES = ("float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of folder output, shard inputs and Ray (added to ``altclip embed``)."""
    from ..bulk import MODALITY_CHOICES
    from ..shards import SHARD_SIZE

    p.epilog += (
        "\n\nembedding folders (clip-retrieval's layout: img_emb/, text_emb/, metadata/), resumable by shard:\n"
        "  altclip embed photos/ --out photos-emb    # --out without a suffix: a folder, 10,000 images a shard\n"
        "  altclip embed 'shards/{00000..00099}.tar' --out laion-emb    # webdataset: each sample's image and caption\n"
        "  altclip embed img2dataset-out/*.parquet --out emb --ray    # on a local Ray; --ray=auto joins a cluster"
    )
    group = p.add_argument_group("folder output (--out DIR), shard inputs and Ray")
    group.add_argument(
        "--modality",
        choices=MODALITY_CHOICES,
        help="what to embed from .tar/.parquet shards (default: both when they have captions, else image)",
    )
    group.add_argument(
        "--shard-size",
        type=positive_int,
        default=SHARD_SIZE,
        help="images or text lines per output shard, for file and .txt inputs",
    )
    group.add_argument(
        "--store-dtype", choices=STORE_DTYPES, default="float16", help="how DIR's .npy files store the embeddings"
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: --ray=ADDRESS (auto, ray://head:10001), or a local one when bare "
        "(default: no Ray, one process)",
    )
    group.add_argument(
        "--actors", type=positive_int, help="Ray actors, one model each (default: one per GPU of the cluster, else 1)"
    )
    group.add_argument(
        "--cpus-per-actor",
        type=natural_int,
        help="CPUs each Ray actor reserves (default: the cluster's CPUs less one, shared among the actors, "
        "at most 8 per GPU actor)",
    )


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1."""
    return f"{n} {noun}{'s' * (n != 1)}"


def is_folder(out: Path) -> bool:
    """Whether ``--out`` names an embedding folder: an existing folder, or a name without a suffix."""
    return out.is_dir() or not out.suffix


def run(args: argparse.Namespace, out: Path) -> None:
    from ..bulk import ShardEmbedder, modalities, pending
    from ..bulk import run as run_here
    from ..shards import plan

    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder for --out does not exist: {out.parent}")
    if args.ray and Path(args.ray).exists():
        raise CLIError(
            f"--ray took {args.ray} as the cluster's address: write --ray=ADDRESS, or put --ray after the paths"
        )
    sources = plan(args.paths, shard_size=args.shard_size)
    check_model(args.model)
    embedded = modalities(sources, args.modality)
    reference = model_reference(args.model)
    todo = pending(out, sources, model=reference, dtype=args.store_dtype)
    if not todo:
        print(f"nothing to do: all {len(sources)} shards are already in {out}")
        return
    if len(todo) < len(sources):
        warn(f"resuming: {len(sources) - len(todo)} of {len(sources)} shards already in {out}")
    totals = {"rows": 0, "skipped": 0, "missing": 0, "broken": 0, "unwritten": 0, "shards": 0}

    from tqdm import tqdm

    with tqdm(total=len(todo), unit="shard", disable=args.quiet, file=sys.stderr) as bar:

        def on_report(report) -> None:
            bar.clear()
            for message in report.skipped:
                warn(f"skipped: {message}")
            if report.error:
                warn(report.error)
            totals["rows"] += report.rows
            totals["skipped"] += len(report.skipped)
            totals["missing"] += report.missing_images
            totals["broken"] += bool(report.error) and report.written
            totals["unwritten"] += not report.written
            totals["shards"] += 1
            bar.update(1)

        try:
            if args.ray is None:
                worker = ShardEmbedder(
                    load_embedder(args.model, args), out, model=reference, modalities=embedded, dtype=args.store_dtype
                )
                run_here(worker, todo, on_report)
            else:
                _run_on_ray(args, out, todo, reference, embedded, on_report)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: {len(sources) - len(todo) + totals['shards'] - totals['unwritten']} of {len(sources)} "
                f"shards written in {out}; "
                "run the same command to resume"
            ) from None
    notes = (
        [f"{count(totals['skipped'], 'unreadable or incomplete sample')} skipped (listed above)"]
        if totals["skipped"]
        else []
    )
    notes += (
        [f"{count(totals['missing'], 'row')} without an image (failed downloads) left out"] if totals["missing"] else []
    )
    notes += (
        [f"{count(totals['broken'], 'truncated shard')} (listed above) written up to the break"]
        if totals["broken"]
        else []
    )
    written = totals["shards"] - totals["unwritten"]
    rows = count(totals["rows"], " and ".join(embedded) + " embedding row")
    print(f"wrote {rows} in {count(written, 'shard')} to {out}" + "".join(f"; {note}" for note in notes))
    if totals["unwritten"]:
        raise CLIError(
            f"{totals['unwritten']} of {len(sources)} shards could not be read (listed above); "
            "rerun the same command to retry them"
        )


def _run_on_ray(args: argparse.Namespace, out: Path, todo, reference: str, embedded, on_report) -> None:
    """Size the actors from the cluster's resources and run :func:`altclip_adapters.ray.run`."""
    try:
        import ray
    except ImportError as e:
        raise CLIError("--ray needs Ray Data: pip install 'altclip-adapters[ray]'") from e
    from .. import ray as altclip_ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray or None)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command's own bar counts shards
    context.print_on_execution_start = False
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        gpu = gpus > 0 and not (args.device or "").startswith("cpu")
        actors = args.actors or (gpus if gpu else 1)
        spare = max(1, cpus - 1) // actors  # one CPU stays free for Ray Data's own tasks
        num_cpus = args.cpus_per_actor if args.cpus_per_actor is not None else max(1, min(8, spare) if gpu else spare)
        if actors * max(num_cpus, 1) > cpus:
            raise CLIError(
                f"{actors} actors x {num_cpus} CPUs need more than the cluster's {cpus} CPUs: "
                "lower --actors or --cpus-per-actor"
            )
        options = embedder_options(args)
        options.pop("device")
        if gpu and options.get("num_workers") is None:
            options["num_workers"] = num_cpus  # decoding processes inside each GPU actor
        altclip_ray.run(
            todo,
            out,
            model=reference,
            model_reference=reference,
            modalities=embedded,
            dtype=args.store_dtype,
            actors=actors,
            num_gpus=1 if gpu else 0,
            num_cpus=num_cpus,
            embedder_kwargs=options,
            on_report=on_report,
        )
    finally:
        if started:
            ray.shutdown()
