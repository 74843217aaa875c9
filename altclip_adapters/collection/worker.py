"""A bulk embedding run into an embedding folder (clip-retrieval's layout, :mod:`altclip_adapters.collection.store`),
shard by shard, incremental: a rerun over changed inputs embeds only what is new or changed.

As in clip-retrieval's inference (reader -> mapper -> writer, with a distributor that only decides where
a worker runs), :class:`ShardEmbedder` reads one input shard, embeds it and writes its output shard; the
same worker runs in this process (:func:`run`) or in Ray actors (:func:`altclip_adapters.collection.ray.run`).

The run's state lives beside the shards, in ``DIR/altclip_run/`` (no reader of the layout looks there):

- ``shards/NNNNNN.json``: the record of output shard N, written (atomically) right after its files: the
  identity of each input item it came from (:class:`altclip_adapters.collection.shards.Inputs`: a file's absolute path
  with its size and modification time, or a text line), which item each row came from, whether the input
  was read whole, and the shard's :class:`ShardReport` (per-stage timings included).
- ``partial/NNNNNN.npz``: the finished batches of a shard not yet written, saved on Ctrl-C, SIGTERM and
  every :data:`SAVE_ITEMS` items or :data:`SAVE_SECONDS` seconds; the next run reuses them bit for bit.

:func:`update` compares the records with the inputs of a new run: items unchanged stay where they are;
shards holding removed or changed items are rewritten without those rows (:func:`altclip_adapters.collection.store.keep_rows`:
nothing is re-embedded) or deleted when nothing of them is left; new and changed items go to new shards.
A shard whose files disagree with its record is redone under its own number; one that has no record (a run
stopped between writing its files and its record) or whose record cannot be read is deleted and its items
embedded again as new ones (one line each).
Every state file is written through :mod:`altclip_adapters.atomic`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altclip_adapters.atomic import write_json, write_with
from altclip_adapters.collection.shards import Inputs, ShardSource
from altclip_adapters.collection.store import Modality, check_modality, shard_name

if TYPE_CHECKING:
    import numpy as np

    from altclip_adapters.inference.embedder import Embedder

MODALITY_CHOICES = ("image", "text", "both")
RUN_DIR = "altclip_run"
RECORD_FORMAT = 1
STAGES = ("read", "decode", "embed", "write")  # per-stage seconds in every report
SAVE_ITEMS, SAVE_SECONDS = 4096, 60.0  # a shard in progress keeps at most this much unsaved work
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
    saved batches that could not be reused, the reader's notes on metadata and captions), ``timings`` (seconds per stage: :data:`STAGES`), the ``worker``
    (host:pid) that did it, and when (``started``, ``finished``: Unix time in seconds, the worker's clock)."""

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


# the run's state: records and saved batches -----------------------------------------------------------------
def _record_path(folder: Path, shard_id: int) -> Path:
    return folder / RUN_DIR / "shards" / f"{shard_name(shard_id)}.json"


def _partial_path(folder: Path, shard_id: int) -> Path:
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


@dataclass
class Update:
    """What a run over new inputs does to a folder (see :func:`update`): ``todo`` (shards to embed), ``keep``
    (shard id -> rows to keep, for shards that lost items), ``drop`` (shards to delete), ``counts`` (items:
    ``new``, ``changed``, ``removed``, ``unchanged``), ``kept`` (shards left as they are), ``merge`` (new shard
    id -> the small unchanged shards compacted into it, in order), ``incomplete``
    (recorded shards whose input was read only partly and has not changed since), ``notes`` (state discarded,
    one line each), and whether the folder held a previous run (``previous``)."""

    todo: list[ShardSource]
    keep: dict[int, list[int]] = field(default_factory=dict)
    drop: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("new", "changed", "removed", "unchanged"), 0))
    kept: int = 0
    merge: dict[int, list[int]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    previous: bool = False
    _records: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def summary(self, kind: str) -> str:
        """``12 new, 3 changed, 2 removed, 9,983 unchanged images``."""
        c = self.counts
        return f"{c['new']:,} new, {c['changed']:,} changed, {c['removed']:,} removed, {c['unchanged']:,} unchanged {NOUNS[kind]}"

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
    plan = Update([], previous=bool(records or bad or on_disk))
    for shard_id in bad:
        plan.notes.append(f"shard {shard_id}: its record cannot be read (a damaged file); the shard is redone")
    for shard_id in sorted(on_disk - records.keys() - set(bad)):
        plan.notes.append(f"shard {shard_id} has no record (a run stopped while writing it); the shard is redone")
    plan.drop += sorted(set(bad) | (on_disk - records.keys()))
    current = {key: (i, token) for i, (key, token) in enumerate(zip(inputs.keys, inputs.tokens))}
    claimed: set[str] = set()
    changed: set[str] = set()
    redo: list[ShardSource] = []
    for shard_id in sorted(records):
        record = records[shard_id]
        if record["kind"] != inputs.kind:
            raise ValueError(
                f"{folder} holds embeddings of {NOUNS[record['kind']]}; these inputs are {NOUNS[inputs.kind]}: "
                "write to a new folder"
            )
        keys, tokens = record["keys"], record["tokens"]
        ok = [k in current and current[k][1] == t and k not in claimed for k, t in zip(keys, tokens)]
        for key, good in zip(keys, ok):
            if good:
                continue
            if key not in current:
                plan.counts["removed"] += 1
            elif key not in claimed:
                changed.add(key)
        plan.counts["unchanged"] += sum(ok)
        claimed.update(k for k, good in zip(keys, ok) if good)
        if not _check_files(folder, shard_id, record):  # redone whole, under its own number, with what stays of it
            plan.notes.append(f"shard {shard_id}'s files do not match its record (a run stopped while changing it); "
                              "the shard is redone")
            plan.drop.append(shard_id)
            positions = [current[k][0] for k, good in zip(keys, ok) if good]
            redo += inputs.shards(positions, shard_id, len(positions) or 1)
        elif all(ok):
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
    positions = [i for i, key in enumerate(inputs.keys) if key not in claimed]
    plan.counts["changed"] = len(changed)
    plan.counts["new"] = len(positions) - len(changed)
    taken = [s for s in records if s not in plan.drop] + [s.shard_id for s in redo]
    next_id = _plan_compaction(plan, records, inputs.kind, shard_size, max(taken, default=-1) + 1)
    plan.todo = redo + inputs.shards(positions, next_id, shard_size)
    return plan


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
        if groups[-1] and sum(len(records[s]["keys"]) for s in groups[-1]) + len(records[shard_id]["keys"]) > shard_size:
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
    report = ShardReport(shard_id, f"shard {shard_id} (compacted from shards {', '.join(str(p['shard_id']) for p in parts)})", rows)
    return {**parts[0], "shard_id": shard_id, "keys": [k for p in parts for k in p["keys"]],
            "tokens": [t for p in parts for t in p["tokens"]], "row_items": row_items, "rows": rows,
            "complete": all(p["complete"] for p in parts), "report": report.to_dict()}


def apply(folder: str | Path, plan: Update) -> None:
    """Delete, rewrite and merge the shards ``plan`` says (files first, then the record; a merged shard is
    recorded before its sources are deleted: a run stopped in between leaves rows twice, and the next
    :func:`update` drops the later copy), and forget saved batches of shards the plan does not embed."""
    from altclip_adapters.collection.store import delete_shard, keep_rows, merge_shards

    folder = Path(folder)
    for shard_id in plan.drop:
        delete_shard(folder, shard_id)
        _record_path(folder, shard_id).unlink(missing_ok=True)
    for shard_id, rows in plan.keep.items():
        keep_rows(folder, shard_id, rows)
        write_json(_record_path(folder, shard_id), plan._records[shard_id])
    for target, sources in plan.merge.items():
        merge_shards(folder, sources, target)
        write_json(_record_path(folder, target), plan._records[target])
        for shard_id in sources:
            delete_shard(folder, shard_id)
            _record_path(folder, shard_id).unlink(missing_ok=True)
    todo = {s.shard_id for s in plan.todo}
    for path in (folder / RUN_DIR / "partial").glob("*.npz"):
        if not path.stem.isdigit() or int(path.stem) not in todo:
            path.unlink(missing_ok=True)


# the worker ------------------------------------------------------------------------------------------------
class _Saved:
    """The finished batches of one shard in progress, per modality: positions (into that modality's sample
    list), their embeddings (float32 [n, dim]) and the positions that could not be read (with the reason)."""

    def __init__(self, dim: int, modalities: Sequence[str]):
        import numpy as np

        self.done = {m: np.zeros(0, np.int64) for m in modalities}
        self.embeddings = {m: np.zeros((0, dim), np.float32) for m in modalities}
        self.errors: dict[str, list[tuple[int, str]]] = {m: [] for m in modalities}

    def add(self, modality: str, positions: Sequence[int], embeddings: np.ndarray, errors=()) -> None:
        import numpy as np

        self.done[modality] = np.concatenate([self.done[modality], np.asarray(positions, np.int64)])
        self.embeddings[modality] = np.concatenate([self.embeddings[modality], embeddings.astype(np.float32)])
        self.errors[modality] += [(int(i), str(m)) for i, m in errors]

    def count(self, modality: str) -> int:
        return len(self.done[modality]) + len(self.errors[modality])

    def save(self, path: Path, source: ShardSource) -> None:
        import numpy as np

        arrays = {"keys": np.array(source.keys, dtype=str), "tokens": np.array(source.tokens, dtype=str)}
        for m in self.done:
            arrays |= {f"{m}_done": self.done[m], f"{m}_embeddings": self.embeddings[m],
                       f"{m}_errors": np.array(json.dumps(self.errors[m], ensure_ascii=False))}
        write_with(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path, source: ShardSource, dim: int, modalities: Sequence[str]) -> tuple[_Saved, str | None]:
        """The batches saved for ``source`` (none when there is no file), and a note when a file was discarded.
        Image files whose size or modification time changed since lose their saved rows (and, as batches
        must stay aligned for bit-equal results, so does everything saved after them)."""
        import numpy as np

        saved = cls(dim, modalities)
        if not path.is_file():
            return saved, None
        try:
            with np.load(path, allow_pickle=False) as data:
                if list(data["keys"]) != list(source.keys):
                    return saved, f"{source.name}: saved batches of other inputs discarded"
                unchanged = np.array([a == b for a, b in zip(data["tokens"], source.tokens)], bool)
                for m in modalities:
                    done, emb = data[f"{m}_done"], data[f"{m}_embeddings"]
                    errors = json.loads(str(data[f"{m}_errors"]))
                    if emb.shape[1:] != (dim,) or len(done) != len(emb):
                        raise ValueError("shapes do not match")
                    saved.add(m, done, emb, errors)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # JSONDecodeError is a ValueError
            return cls(dim, modalities), f"{source.name}: saved batches unreadable ({e}); they are redone"
        if source.kind in ("images", "texts") and not unchanged.all():
            first = int(np.argmin(unchanged))
            for m in modalities:  # keep what comes before the first changed item: whole batches, still aligned
                keep = saved.done[m] < first
                saved.done[m], saved.embeddings[m] = saved.done[m][keep], saved.embeddings[m][keep]
                saved.errors[m] = [(i, msg) for i, msg in saved.errors[m] if i < first]
        elif not unchanged.all():
            return cls(dim, modalities), f"{source.name}: its input changed; saved batches discarded"
        return saved, None


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += time.perf_counter() - start


class ShardEmbedder:
    """Reads, embeds and writes whole shards: ``worker(source) -> ShardReport``.

    ``embedder`` makes the embeddings; ``folder`` is the embedding folder, written through
    :class:`altclip_adapters.collection.store.EmbeddingWriter` with ``model`` (what the folder records: a registry
    name, hub id or absolute folder) and ``dtype`` (``float16`` or ``float32``). ``modalities`` is
    ``("image",)``, ``("text",)`` or ``("image", "text")``: with both, the caption embeddings come from the
    same read of the shard, and a sample whose image is unreadable or that has no caption is left out
    whole (both files of a shard keep the same rows). An input file that cannot be opened or parsed at all
    is reported (``written=False``) instead of raised; an error while writing (a full disk) is raised.
    ``progress(n)``, when given, is called as each batch of ``n`` items is done.

    Finished batches are saved (``altclip_run/partial/``) on any exception (Ctrl-C included) and every
    :data:`SAVE_ITEMS` items or :data:`SAVE_SECONDS` seconds, and reused by the next call for the same shard;
    after the shard's files, its record is written (module docstring).
    """

    def __init__(
        self,
        embedder: Embedder,
        folder: str | Path,
        *,
        model: str,
        modalities: Sequence[str],
        dtype: str = "float16",
        progress: Callable[[int], None] | None = None,
    ):
        from altclip_adapters.collection.store import EmbeddingWriter

        if not modalities:
            raise ValueError("modalities must be image, text or both; got none")
        self.modalities = tuple(check_modality(m) for m in modalities)
        self.embedder = embedder
        self.writer = EmbeddingWriter(folder, model=model, dtype=dtype)
        self.folder = Path(folder)
        self.progress = progress
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, source: ShardSource) -> ShardReport:
        report = ShardReport(source.shard_id, source.name, 0, worker=self.worker, started=time.time())
        try:
            with _timed(report.timings, "read"):
                shard = source.read()
        except (OSError, ValueError) as e:  # one unreadable input file does not stop a run over many
            report.error, report.written, report.finished = f"{source.name}: not written: {e}", False, time.time()
            return report
        report.skipped, report.missing_images, report.error = list(shard.skipped), shard.missing_images, shard.error
        report.notes += shard.notes
        samples = list(enumerate(shard.samples))  # (item position for image files and text lines, sample)
        report.items = len(samples) if source.kind in FILE_KINDS else len(source.items)
        where = (lambda s: f"{source.path}:{s.key}: ") if source.path else (lambda s: "")  # file paths name themselves
        if "text" in self.modalities:
            report.skipped += [f"{where(s)}{'blank' if isinstance(s.metadata.get('caption'), str) else 'no'} caption"
                               for _, s in samples if s.caption is None]
            samples = [(i, s) for i, s in samples if s.caption is not None]
        if "image" in self.modalities:
            report.skipped += [f"{where(s)}no image" for _, s in samples if s.image is None]
            samples = [(i, s) for i, s in samples if s.image is not None]
        dim = self.embedder.model.config.projection_dim
        partial = _partial_path(self.folder, source.shard_id)
        saved, note = _Saved.load(partial, source, dim, self.modalities)
        report.notes += [note] if note else []
        report.resumed = saved.count(self.modalities[0])
        arrays = self._embed(source, [s for _, s in samples], saved, partial, report)
        readable = arrays.pop("_readable")
        samples = [pair for pair, ok in zip(samples, readable) if ok]
        with _timed(report.timings, "write"):
            self.writer.write_shard(source.shard_id, metadata=[s.metadata for _, s in samples], **arrays)
            record = {
                "format": RECORD_FORMAT, "shard_id": source.shard_id, "kind": source.kind, "path": source.path,
                "keys": list(source.keys), "tokens": list(source.tokens),
                "row_items": [i if source.kind not in FILE_KINDS else 0 for i, _ in samples],
                "rows": len(samples), "modalities": list(self.modalities), "complete": shard.error is None,
            }
            report.rows, report.finished = len(samples), time.time()
            write_json(_record_path(self.folder, source.shard_id), {**record, "report": report.to_dict()})
            partial.unlink(missing_ok=True)
        return report

    def _embed(self, source: ShardSource, samples: list, saved: _Saved, partial: Path, report: ShardReport) -> dict:
        """Embeddings of ``samples`` per modality (``image_embeddings``, ``text_embeddings``: float32 [rows, dim]
        of the readable samples) and ``_readable`` (bool per sample); unreadable images go to ``report.skipped``."""
        import numpy as np

        dim = self.embedder.model.config.projection_dim
        last_save = [time.monotonic(), saved.count(self.modalities[0])]
        first = self.modalities[0]

        def batch_done(modality: str, count: int) -> None:
            if self.progress is not None and modality == first:
                self.progress(count)
            done = saved.count(modality)
            if done - last_save[1] >= SAVE_ITEMS or time.monotonic() - last_save[0] > SAVE_SECONDS:
                saved.save(partial, source)
                last_save[:] = [time.monotonic(), done]

        if self.progress is not None and report.resumed:
            self.progress(report.resumed)
        readable = np.ones(len(samples), bool)
        arrays = {}
        try:
            if "image" in self.modalities:
                images = np.zeros((len(samples), dim), np.float32)
                for batch in self._image_batches(source, samples, saved, report):
                    saved.add("image", batch.indices, batch.embeddings.numpy(), batch.errors)
                    batch_done("image", len(batch.indices) + len(batch.errors))
                images[saved.done["image"]] = saved.embeddings["image"]
                readable[:] = False
                readable[saved.done["image"]] = True
                for i, message in sorted(saved.errors["image"]):
                    report.skipped.append(f"{source.path + ':' + samples[i].key + ': ' if source.path else ''}{message}")
                arrays["image_embeddings"] = images[readable]
            if "text" in self.modalities:
                captions = [s.caption for s, ok in zip(samples, readable) if ok]
                texts = np.zeros((len(captions), dim), np.float32)
                done = set(saved.done["text"].tolist())
                todo = [i for i in range(len(captions)) if i not in done]
                with _timed(report.timings, "decode"):  # tokenizing
                    batches = self.embedder.iter_texts([captions[i] for i in todo]) if todo else iter(())
                while True:
                    with _timed(report.timings, "embed"):
                        positions, embeddings = next(batches, (None, None))
                    if positions is None:
                        break
                    saved.add("text", [todo[j] for j in positions], embeddings.numpy())
                    batch_done("text", len(positions))
                texts[saved.done["text"]] = saved.embeddings["text"]
                arrays["text_embeddings"] = texts
        except BaseException:  # Ctrl-C, SIGTERM (made one by the CLI), a failing disk: keep what is done
            try:
                saved.save(partial, source)
            except OSError:
                pass
            raise
        return arrays | {"_readable": readable}

    def _image_batches(self, source: ShardSource, samples: list, saved: _Saved, report: ShardReport):
        """The image batches still to do, positions mapped back to ``samples``; decoding and embedding timed
        apart (the embedder's ``encode_pixels`` is timed while the batches run)."""
        done = set(saved.done["image"].tolist()) | {i for i, _ in saved.errors["image"]}
        todo = [i for i in range(len(samples)) if i not in done]
        if not todo:
            return
        embedder, encode = self.embedder, self.embedder.encode_pixels
        embed_time = [0.0]

        def timed_encode(pixels):
            start = time.perf_counter()
            try:
                return encode(pixels)
            finally:
                embed_time[0] += time.perf_counter() - start

        embedder.encode_pixels = timed_encode
        try:
            batches = embedder.iter_images([samples[i].image for i in todo])
            while True:
                start, embed_time[0] = time.perf_counter(), 0.0
                batch = next(batches, None)
                report.timings["embed"] += embed_time[0]
                report.timings["decode"] += time.perf_counter() - start - embed_time[0]
                if batch is None:
                    return
                batch.indices = [todo[j] for j in batch.indices]
                batch.errors = [(todo[j], message) for j, message in batch.errors]
                yield batch
        finally:
            del embedder.encode_pixels  # the class's method again


def run(
    worker: Callable[[ShardSource], ShardReport],
    sources: Sequence[ShardSource],
    on_report: Callable[[ShardReport], None] | None = None,
) -> list[ShardReport]:
    """Run ``worker`` over ``sources`` in this process, in order; ``on_report`` sees each report as it comes."""
    reports = []
    for source in sources:
        reports.append(worker(source))
        if on_report is not None:
            on_report(reports[-1])
    return reports


def stage_summary(reports: Sequence[ShardReport]) -> str:
    """``read 1.2 s, decode 3.4 s, embed 10.1 s, write 0.3 s``: the stages' seconds summed over ``reports``."""
    return ", ".join(f"{stage} {sum(r.timings.get(stage, 0.0) for r in reports):.1f} s" for stage in STAGES)
