"""``altclip embed ... --out DIR``: an embedding folder in clip-retrieval's layout, shard by shard, in this
process or on Ray (``--ray [ADDRESS]``). The run itself is :mod:`altclip_adapters.collection.worker` /
:func:`altclip_adapters.collection.ray.run`; this module parses, prints and sizes the Ray actors."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from altclip_adapters.cli._common import CLIError, Interrupted, check_model, embedder_options, load_embedder, model_reference, natural_int, positive_int, warn

if TYPE_CHECKING:
    from altclip_adapters.collection.worker import ShardReport, Update
    from altclip_adapters.collection.shards import Inputs

STORE_DTYPES = ("float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of folder output, shard inputs and Ray (added to ``altclip embed``)."""
    from altclip_adapters.collection.worker import MODALITY_CHOICES
    from altclip_adapters.collection.shards import SHARD_SIZE

    p.epilog += (
        "\n\nembedding folders (clip-retrieval's layout: img_emb/, text_emb/, metadata/):\n"
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
    return f"{n:,} {noun}{'s' * (n != 1)}"


def is_folder(out: Path) -> bool:
    """Whether ``--out`` names an embedding folder: an existing folder, or a name without a suffix."""
    return out.is_dir() or not out.suffix


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what Slurm, Kubernetes and ``timeout`` send) raises KeyboardInterrupt, so a
    run stopped either way keeps its finished batches (main thread only; elsewhere nothing changes)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Outcome:
    """What a folder run did: its ``inputs``, the modalities ``embedded``, the ``plan`` it followed and the
    reports of the shards it embedded."""

    inputs: Inputs
    embedded: tuple[str, ...]
    plan: Update
    reports: list[ShardReport] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(len(r.skipped) if key == "skipped" else getattr(r, key) for r in self.reports)


def embed_folder(args: argparse.Namespace, out: Path, *, dtype: str, name: str | None = None) -> Outcome:
    """Bring the embedding folder ``out`` up to date with ``args.paths`` (see :mod:`altclip_adapters.collection.worker`),
    in this process or on Ray, holding the folder's lock; prints what changed, what was skipped and the time
    per stage (stderr). ``name`` is how messages call the output (default: the folder). Raises Interrupted
    (Ctrl-C, SIGTERM) after saving the finished batches."""
    from tqdm import tqdm

    from altclip_adapters.collection.worker import ShardEmbedder, apply, stage_summary, update
    from altclip_adapters.collection.worker import modalities as find_modalities
    from altclip_adapters.collection.worker import run as run_here
    from altclip_adapters.collection.shards import collect
    from altclip_adapters.collection.store import EmbeddingWriter, lock

    if args.ray and Path(args.ray).exists():
        raise CLIError(
            f"--ray took {args.ray} as the cluster's address: write --ray=ADDRESS, or put --ray after the paths"
        )
    inputs = collect(args.paths)
    check_model(args.model)
    embedded = find_modalities(inputs.kind, lambda: inputs.shards([0], 0, 1)[0].has_captions(), args.modality)
    reference = model_reference(args.model)
    EmbeddingWriter(out, model=reference, dtype=dtype)  # creates the folder; refuses another model or dtype
    name = name or str(out)
    with lock(out), sigterm_as_interrupt():
        plan = update(out, inputs, shard_size=args.shard_size)
        outcome = Outcome(inputs, embedded, plan)
        for note in plan.notes:
            warn(note)
        if plan.previous:
            warn(f"{plan.summary(inputs.kind)} ({count(plan.kept, 'shard')} of {name} kept as they are)")
        for target, sources in plan.merge.items():
            warn(f"compacting {count(len(sources), 'small shard')} into shard {target}")
        apply(out, plan)
        if not plan.todo:
            return outcome
        items = sum(len(s.keys) for s in plan.todo) if inputs.kind not in ("tar", "parquet") else None
        done = [0]  # items embedded (a disabled bar counts nothing)
        embedder = load_embedder(args.model, args) if args.ray is None else None  # a model that fails: no bar drawn
        with tqdm(total=items, unit="item", disable=args.quiet, file=sys.stderr) as bar:

            def progress(n: int) -> None:
                done[0] += n
                bar.update(n)

            def on_report(report) -> None:
                bar.clear()
                for message in [*report.notes, *(f"skipped: {m}" for m in report.skipped)]:
                    warn(message)
                if report.error:
                    warn(report.error)
                if args.ray is not None:
                    progress(report.items)
                outcome.reports.append(report)

            try:
                if embedder is not None:
                    worker = ShardEmbedder(embedder, out, model=reference, modalities=embedded, dtype=dtype,
                                           progress=progress)
                    run_here(worker, plan.todo, on_report)
                else:
                    _run_on_ray(args, out, plan.todo, reference, embedded, dtype, on_report)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted: {done[0]:,} of {f'{items:,}' if items is not None else 'the'} items embedded are kept in "
                    f"{name}; run the same command to resume"
                ) from None
        warn(f"time per stage: {stage_summary(outcome.reports)}")
    return outcome


def check_outcome(outcome: Outcome) -> None:
    """CLIError when shards could not be read or were read only partly (after the summary is printed)."""
    unwritten = sum(not r.written for r in outcome.reports)
    if unwritten:
        raise CLIError(
            f"{unwritten} of {len(outcome.reports)} shards could not be read (listed above); "
            "rerun the same command to retry them"
        )
    incomplete = outcome.plan.incomplete + [r.name for r in outcome.reports if r.error and r.written]
    if incomplete:
        raise CLIError(
            f"{count(len(incomplete), 'shard')} read only partly (truncated input: {', '.join(incomplete[:3])}"
            f"{' ...' if len(incomplete) > 3 else ''}); replace the file and rerun: the rerun redoes it"
        )


def blank_lines(paths) -> int:
    """Blank lines of the ``.txt`` inputs, which are skipped (and counted in the summary), not embedded."""
    from altclip_adapters.collection.inputs import read_text_lines

    return read_text_lines(paths).blank


def run(args: argparse.Namespace, out: Path) -> None:
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder for --out does not exist: {out.parent}")
    outcome = embed_folder(args, out, dtype=args.store_dtype)
    if not outcome.plan.todo:
        if not outcome.plan.changes:
            kept = outcome.plan.kept
            print(f"nothing to do: {f'all {kept:,} shards are' if kept != 1 else 'its one shard is'} already in {out}")
        else:
            print(f"updated {out}: {outcome.plan.summary(outcome.inputs.kind)}")
        return check_outcome(outcome)
    notes = []
    if skipped := outcome.total("skipped"):
        notes.append(f"{count(skipped, 'unreadable or incomplete sample')} skipped (listed above)")
    if missing := outcome.total("missing_images"):
        notes.append(f"{count(missing, 'row')} without an image (failed downloads) left out")
    if broken := sum(bool(r.error) and r.written for r in outcome.reports):
        notes.append(f"{count(broken, 'truncated shard')} (listed above) written up to the break")
    if outcome.inputs.kind == "texts" and (blank := blank_lines(args.paths)):
        notes.append(f"{count(blank, 'blank line')} skipped")
    written = sum(r.written for r in outcome.reports)
    rows = count(outcome.total("rows"), " and ".join(outcome.embedded) + " embedding row")
    print(f"wrote {rows} in {count(written, 'shard')} to {out}" + "".join(f"; {note}" for note in notes))
    check_outcome(outcome)


def _run_on_ray(args: argparse.Namespace, out: Path, todo, reference: str, embedded, dtype: str, on_report) -> None:
    """Size the actors from the cluster's resources and run :func:`altclip_adapters.collection.ray.run`."""
    try:
        import ray
    except ImportError as e:
        raise CLIError("--ray needs Ray Data: pip install 'altclip-adapters[ray]'") from e
    from altclip_adapters.collection import ray as altclip_ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray or None)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command's own bar counts items
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
            modalities=embedded,
            dtype=dtype,
            actors=actors,
            num_gpus=1 if gpu else 0,
            num_cpus=num_cpus,
            embedder_kwargs=options,
            on_report=on_report,
        )
    finally:
        if started:
            ray.shutdown()
