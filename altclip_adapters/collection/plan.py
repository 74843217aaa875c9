"""What an incremental run into an embedding folder (clip-retrieval's layout, :mod:`altclip_adapters.collection.store`)
must do: the run's records, and the plan (:func:`update`) that brings the folder up to date with new inputs.

The run's state lives beside the shards, in ``DIR/altclip_run/`` (no reader of the layout looks there):

- ``shards/NNNNNN.json``: the record of output shard N, written (atomically) right after its files: the
  identity of each input item it came from (:class:`altclip_adapters.collection.shards.Inputs`: a file's absolute path
  with its size and modification time, or a text line), which item each row came from, whether the input
  was read whole, and the shard's :class:`ShardReport` (per-stage timings included).
- ``partial/NNNNNN.npz``: the finished batches of a shard not yet written (see
  :mod:`altclip_adapters.collection.worker`); the next run reuses them bit for bit.

:func:`update` compares the records with the inputs of a new run: items unchanged stay where they are;
shards holding removed or changed items are rewritten without those rows
(:func:`altclip_adapters.collection.store.keep_rows`: nothing is re-embedded) or deleted when nothing of them is
left; new and changed items go to new shards.
A shard whose files disagree with its record is redone under its own number; one that has no record (a run
stopped between writing its files and its record) or whose record cannot be read is deleted and its items
embedded again as new ones (one line each). Many small shards left by many small updates are compacted
(:data:`COMPACT_AT`). :func:`apply` carries out everything but the embedding.
Every state file is written through :mod:`altclip_adapters.atomic`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from altclip_adapters.atomic import write_json
from altclip_adapters.collection.shards import Inputs, ShardSource
from altclip_adapters.collection.store import Modality, check_modality, shard_name

MODALITY_CHOICES = ("image", "text", "both")
RUN_DIR = "altclip_run"
RECORD_FORMAT = 1
STAGES = ("read", "decode", "embed", "write")  # per-stage seconds in every report
COMPACT_AT = 8  # this many shards of image files or text lines under half --shard-size are merged into full ones
FILE_KINDS = ("tar", "parquet")  # one input file, one shard, one item
NOUNS = {"tar": "tar files", "parquet": "parquet files", "images": "images", "texts": "text lines"}


@dataclass
class ShardReport:
    """What happened to one shard: ``rows`` written, ``skipped`` (one message per sample left out:
    unreadable image, no caption, bad json), ``missing_images`` (img2dataset rows without an image),
    ``error`` (why reading stopped early, e.g. a truncated tar, or why the shard could not be read at all),
    ``written`` (False when the input could not be opened: nothing was written, a rerun tries it again),
    ``items`` (input items it covered: images, text lines, or samples of a tar or parquet file),
    ``resumed`` (of those, how many came from batches saved by an interrupted run), ``notes`` (one line each:
    saved batches that could not be reused, the reader's notes on metadata and captions), ``timings``
    (seconds per stage: :data:`STAGES`), the ``worker`` (host:pid) that did it, and when (``started``,
    ``finished``: Unix time in seconds, the worker's clock)."""

    shard_id: int
    name: str
    rows: int
    skipped: list[str] = field(default_factory=list)
    missing_images: int = 0
    error: str | None = None
    written: bool = True
    items: int = 0
    resumed: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    worker: str = ""
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def warnings(self) -> list[str]:
        """The lines a run reports for this shard, in order: its notes, ``skipped: ...`` per sample left out,
        and its error."""
        return [*self.notes, *(f"skipped: {m}" for m in self.skipped), *([self.error] if self.error else [])]


def modalities(kind: str, has_captions: Callable[[], bool], requested: str | None = None) -> tuple[Modality, ...]:
    """The modalities a run over inputs of ``kind`` embeds: ``requested`` (``image``, ``text`` or ``both``), or
    by default what the inputs hold (image files: image; text lines: text; tars and parquet: both when
    ``has_captions()`` (asked of the first shard), else image). ValueError for a request the inputs cannot satisfy."""
    if requested is not None and requested not in MODALITY_CHOICES:
        raise ValueError(f"modality must be one of {', '.join(MODALITY_CHOICES)}; got {requested!r}")
    if kind in ("images", "texts"):
        held: Modality = "image" if kind == "images" else "text"
        if requested not in (None, held):
            raise ValueError(
                f"{'image files' if kind == 'images' else 'text lines'} give {held} embeddings only; "
                f"--modality {requested} needs webdataset or parquet shards with images and captions"
            )
        return (held,)
    if requested is None:
        return ("image", "text") if has_captions() else ("image",)
    return ("image", "text") if requested == "both" else (check_modality(requested),)


# the run's records ------------------------------------------------------------------------------------------
def record_path(folder: Path, shard_id: int) -> Path:
    """Where shard ``shard_id``'s record lives."""
    return folder / RUN_DIR / "shards" / f"{shard_name(shard_id)}.json"


def partial_path(folder: Path, shard_id: int) -> Path:
    """Where the finished batches of shard ``shard_id`` are saved while it is not yet written."""
    return folder / RUN_DIR / "partial" / f"{shard_name(shard_id)}.npz"


def read_records(folder: str | Path) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """(record of each shard, shard ids whose record cannot be read) of an embedding folder's run state."""
    records, bad = {}, []
    for path in sorted((Path(folder) / RUN_DIR / "shards").glob("*.json")):
        if not path.stem.isdigit():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
                raise ValueError("not a shard record")
            records[int(path.stem)] = record
        except (OSError, ValueError):
            bad.append(int(path.stem))
    return records, bad


def rows_by_key(folder: str | Path) -> dict[str, tuple[int, int]]:
    """``{item key: (shard id, row)}`` of the items of image-file and text-line runs that have a row."""
    out = {}
    for shard_id, record in read_records(folder)[0].items():
        for row, item in enumerate(record["row_items"]):
            out[record["keys"][item]] = (shard_id, row)
    return out


# the plan ---------------------------------------------------------------------------------------------------
@dataclass
class Update:
    """What a run over new inputs does to a folder (see :func:`update`): ``todo`` (shards to embed), ``kind``
    (of the inputs: a key of :data:`NOUNS`), ``keep`` (shard id -> rows to keep, for shards that lost items),
    ``drop`` (shards to delete), ``counts`` (items: ``new``, ``changed``, ``removed``, ``unchanged``), ``kept``
    (shards left as they are), ``merge`` (new shard id -> the small unchanged shards compacted into it, in
    order), ``incomplete`` (recorded shards whose input was read only partly and has not changed since),
    ``notes`` (state discarded, one line each), and whether the folder held a previous run (``previous``)."""

    todo: list[ShardSource]
    kind: str = "images"
    keep: dict[int, list[int]] = field(default_factory=dict)
    drop: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("new", "changed", "removed", "unchanged"), 0))
    kept: int = 0
    merge: dict[int, list[int]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    previous: bool = False
    _records: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """``12 new, 3 changed, 2 removed, 9,983 unchanged images``."""
        c = self.counts
        return (f"{c['new']:,} new, {c['changed']:,} changed, {c['removed']:,} removed, {c['unchanged']:,} unchanged "
                f"{NOUNS[self.kind]}")

    @property
    def changes(self) -> bool:
        return bool(self.todo or self.keep or self.drop or self.merge)


def _check_files(folder: Path, shard_id: int, record: dict[str, Any]) -> bool:
    """Whether shard ``shard_id``'s files hold the rows its record says (file headers only)."""
    from altclip_adapters.collection.store import shard_rows

    try:
        rows = shard_rows(folder, shard_id)
    except (OSError, ValueError):
        return False
    expected = {m: record["rows"] for m in record["modalities"]} if record["rows"] else {}
    return rows == expected | {"metadata": record["rows"]}


class _Matcher:
    """Matches recorded items against the new inputs, shard by shard: an item stays when its key is among the
    inputs with the same token and no earlier shard claimed it (a key recorded twice: a stop between a merge
    and its deletions); counts the removed and remembers the changed."""

    def __init__(self, inputs: Inputs, counts: dict[str, int]):
        self.current = {key: (i, token) for i, (key, token) in enumerate(zip(inputs.keys, inputs.tokens))}
        self.counts = counts
        self.claimed: set[str] = set()
        self.changed: set[str] = set()

    def match(self, record: dict[str, Any]) -> list[bool]:
        """Per item of ``record``: whether it stays."""
        current, claimed = self.current, self.claimed
        keys = record["keys"]
        ok = [k in current and current[k][1] == t and k not in claimed for k, t in zip(keys, record["tokens"])]
        for key, good in zip(keys, ok):
            if good:
                continue
            if key not in current:
                self.counts["removed"] += 1
            elif key not in claimed:
                self.changed.add(key)
        self.counts["unchanged"] += sum(ok)
        claimed.update(k for k, good in zip(keys, ok) if good)
        return ok


def update(folder: str | Path, inputs: Inputs, *, shard_size: int) -> Update:
    """What to do to ``folder`` so that it holds the embeddings of exactly ``inputs`` (see the module
    docstring); changes nothing (:func:`apply` does). New shards are numbered after the highest kept one.

    Raises ValueError when the folder holds shards without any run record (written by another tool or an
    older altclip-adapters) or embeddings of another kind of input (e.g. text lines, now images).
    """
    from altclip_adapters.collection.store import shard_ids

    folder = Path(folder)
    on_disk = shard_ids(folder)
    records, bad = read_records(folder)
    if on_disk and not (folder / RUN_DIR).is_dir():
        raise ValueError(
            f"{folder} holds shards without altclip's run records (written by another tool or an older "
            "altclip-adapters): write to a new folder"
        )
    plan = Update([], inputs.kind, previous=bool(records or bad or on_disk))
    for shard_id in bad:
        plan.notes.append(f"shard {shard_id}: its record cannot be read (a damaged file); the shard is redone")
    for shard_id in sorted(on_disk - records.keys() - set(bad)):
        plan.notes.append(f"shard {shard_id} has no record (a run stopped while writing it); the shard is redone")
    plan.drop += sorted(set(bad) | (on_disk - records.keys()))
    matcher = _Matcher(inputs, plan.counts)
    redo: list[ShardSource] = []
    for shard_id in sorted(records):
        if records[shard_id]["kind"] != inputs.kind:
            raise ValueError(
                f"{folder} holds embeddings of {NOUNS[records[shard_id]['kind']]}; these inputs are "
                f"{NOUNS[inputs.kind]}: write to a new folder"
            )
        redo += _plan_shard(plan, folder, shard_id, records[shard_id], matcher, inputs)
    positions = [i for i, key in enumerate(inputs.keys) if key not in matcher.claimed]
    plan.counts["changed"] = len(matcher.changed)
    plan.counts["new"] = len(positions) - len(matcher.changed)
    taken = [s for s in records if s not in plan.drop] + [s.shard_id for s in redo]
    next_id = _plan_compaction(plan, records, inputs.kind, shard_size, max(taken, default=-1) + 1)
    plan.todo = redo + inputs.shards(positions, next_id, shard_size)
    return plan


def _plan_shard(
    plan: Update, folder: Path, shard_id: int, record: dict[str, Any], matcher: _Matcher, inputs: Inputs
) -> list[ShardSource]:
    """Plan what happens to recorded shard ``shard_id``: kept, dropped, cut down to the rows that stay, or (its
    files disagree with its record) redone whole under its own number with what stays of it: the shards to
    embed again."""
    keys, tokens = record["keys"], record["tokens"]
    ok = matcher.match(record)
    if not _check_files(folder, shard_id, record):
        plan.notes.append(f"shard {shard_id}'s files do not match its record (a run stopped while changing it); "
                          "the shard is redone")
        plan.drop.append(shard_id)
        positions = [matcher.current[k][0] for k, good in zip(keys, ok) if good]
        return inputs.shards(positions, shard_id, len(positions) or 1)
    if all(ok):
        plan.kept += 1
        if not record["complete"]:
            plan.incomplete.append(record["report"]["name"])
    elif not any(ok):
        plan.drop.append(shard_id)
    else:  # image files or text lines: keep the rows of the items that stay
        renumber = {j: n for n, j in enumerate(j for j, good in enumerate(ok) if good)}
        rows = [r for r, j in enumerate(record["row_items"]) if ok[j]]
        plan.keep[shard_id] = rows
        plan._records[shard_id] = {
            **record,
            "keys": [k for k, good in zip(keys, ok) if good],
            "tokens": [t for t, good in zip(tokens, ok) if good],
            "row_items": [renumber[j] for j in record["row_items"] if ok[j]],
            "rows": len(rows),
        }
    return []


def _plan_compaction(plan: Update, records: dict[int, dict[str, Any]], kind: str, shard_size: int, next_id: int) -> int:
    """Once :data:`COMPACT_AT` unchanged shards of image files or text lines hold under half ``shard_size`` items
    each (what many small updates leave), plan to merge them, in shard order, into new shards of at most
    ``shard_size`` items numbered from ``next_id`` (``plan.merge``); returns the next free shard id."""
    if kind in FILE_KINDS:
        return next_id
    gone = set(plan.drop) | set(plan.keep)
    small = [s for s in sorted(records) if s not in gone and len(records[s]["keys"]) < shard_size / 2]
    if len(small) < COMPACT_AT:
        return next_id
    groups: list[list[int]] = [[]]
    for shard_id in small:
        size = len(records[shard_id]["keys"])
        if groups[-1] and sum(len(records[s]["keys"]) for s in groups[-1]) + size > shard_size:
            groups.append([])
        groups[-1].append(shard_id)
    for group in (g for g in groups if len(g) > 1):
        plan.merge[next_id] = group
        plan._records[next_id] = _merged_record(next_id, [records[s] for s in group])
        plan.kept -= len(group)
        next_id += 1
    return next_id


def _merged_record(shard_id: int, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The record of a shard made of ``parts``' rows, in order."""
    row_items, offset = [], 0
    for part in parts:
        row_items += [offset + j for j in part["row_items"]]
        offset += len(part["keys"])
    rows = sum(part["rows"] for part in parts)
    name = f"shard {shard_id} (compacted from shards {', '.join(str(p['shard_id']) for p in parts)})"
    return {**parts[0], "shard_id": shard_id, "keys": [k for p in parts for k in p["keys"]],
            "tokens": [t for p in parts for t in p["tokens"]], "row_items": row_items, "rows": rows,
            "complete": all(p["complete"] for p in parts), "report": ShardReport(shard_id, name, rows).to_dict()}


def apply(folder: str | Path, plan: Update) -> None:
    """Delete, rewrite and merge the shards ``plan`` says (files first, then the record; a merged shard is
    recorded before its sources are deleted: a run stopped in between leaves rows twice, and the next
    :func:`update` drops the later copy), and forget saved batches of shards the plan does not embed."""
    from altclip_adapters.collection.store import delete_shard, keep_rows, merge_shards

    folder = Path(folder)
    for shard_id in plan.drop:
        delete_shard(folder, shard_id)
        record_path(folder, shard_id).unlink(missing_ok=True)
    for shard_id, rows in plan.keep.items():
        keep_rows(folder, shard_id, rows)
        write_json(record_path(folder, shard_id), plan._records[shard_id])
    for target, sources in plan.merge.items():
        merge_shards(folder, sources, target)
        write_json(record_path(folder, target), plan._records[target])
        for shard_id in sources:
            delete_shard(folder, shard_id)
            record_path(folder, shard_id).unlink(missing_ok=True)
    todo = {s.shard_id for s in plan.todo}
    for path in (folder / RUN_DIR / "partial").glob("*.npz"):
        if not path.stem.isdigit() or int(path.stem) not in todo:
            path.unlink(missing_ok=True)
