"""``altclip embed ... --out DIR``: an embedding folder in clip-retrieval's layout, shard by shard, in this
process or on Ray (``--ray [ADDRESS]``). The run itself is :func:`altclip_adapters.collection.run.embed_folder`;
this module parses its options and prints what it reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altclip_adapters.cli._common import CLIError, Interrupted, embedder_options, natural_int, positive_int, warn

if TYPE_CHECKING:
    from altclip_adapters.collection.run import Outcome, Progress

STORE_DTYPES = ("float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of folder output, shard inputs and Ray (added to ``altclip embed``)."""
    from altclip_adapters.collection.plan import MODALITY_CHOICES
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


def embed(args: argparse.Namespace, out: Path, *, store_dtype: str, name: str | None = None) -> Outcome:
    """Bring the embedding folder ``out`` up to date with ``args.paths``
    (:func:`altclip_adapters.collection.run.embed_folder`), printing as it goes (stderr): what changed, a progress
    bar, what was skipped, the time per stage. ``name`` is how messages call the output (default: the folder).
    Raises Interrupted (Ctrl-C, SIGTERM) once embedding began, after the finished batches are saved."""
    from altclip_adapters.collection.run import embed_folder
    from altclip_adapters.collection.worker import stage_summary
    from altclip_adapters.extras import MissingExtra

    if args.ray and Path(args.ray).exists():
        raise CLIError(
            f"--ray took {args.ray} as the cluster's address: write --ray=ADDRESS, or put --ray after the paths"
        )
    printer = _Printer(name or str(out), args.quiet)
    try:
        outcome = embed_folder(
            args.paths, out, model=args.model, modalities=args.modality, shard_size=args.shard_size,
            store_dtype=store_dtype, distributor=None if args.ray is None else args.ray or "ray", actors=args.actors,
            cpus_per_actor=args.cpus_per_actor, on_progress=printer, **embedder_options(args),
        )
    except KeyboardInterrupt:
        if printer.bar is None:  # before any embedding: nothing to count
            raise
        total = f"{printer.total:,}" if printer.total is not None else "the"
        raise Interrupted(
            f"interrupted: {printer.done:,} of {total} items embedded are kept in {printer.name}; "
            "run the same command to resume"
        ) from None
    except MissingExtra as e:
        raise CLIError(str(e)) from None
    finally:
        printer.close()
    if outcome.plan.todo:
        warn(f"time per stage: {stage_summary(outcome.reports)}")
    return outcome


class _Printer:
    """``on_progress`` of a folder run: its lines (stderr, ``altclip: ...``) and its progress bar (none with
    ``quiet``); ``done`` counts the items embedded, saved batches included, of ``total``."""

    def __init__(self, name: str, quiet: bool):
        self.name, self.quiet = name, quiet
        self.bar: Any = None  # a tqdm bar once embedding starts
        self.done = 0
        self.total: int | None = None

    def __call__(self, event: Progress) -> None:
        if event.event == "planned" and (plan := event.plan) is not None:
            for note in event.warnings:
                warn(note)
            if plan.previous:
                warn(f"{plan.summary()} ({count(plan.kept, 'shard')} of {self.name} kept as they are)")
            for target, sources in plan.merge.items():
                warn(f"compacting {count(len(sources), 'small shard')} into shard {target}")
        elif event.event == "started":
            from tqdm import tqdm

            self.total = event.total
            self.bar = tqdm(total=event.total, unit="item", disable=self.quiet, file=sys.stderr)
        elif event.event == "items":
            self.done += event.items
            self.bar.update(event.items)
        elif event.event == "shard":
            self.bar.clear()
            for message in event.warnings:
                warn(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_outcome(outcome: Outcome) -> None:
    """CLIError when shards could not be read or were read only partly (after the summary is printed)."""
    if outcome.unwritten:
        raise CLIError(
            f"{len(outcome.unwritten)} of {len(outcome.reports)} shards could not be read (listed above); "
            "rerun the same command to retry them"
        )
    if incomplete := outcome.incomplete:
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
    outcome = embed(args, out, store_dtype=args.store_dtype)
    if not outcome.plan.todo:
        if not outcome.plan.changes:
            kept = outcome.plan.kept
            print(f"nothing to do: {f'all {kept:,} shards are' if kept != 1 else 'its one shard is'} already in {out}")
        else:
            print(f"updated {out}: {outcome.plan.summary()}")
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
