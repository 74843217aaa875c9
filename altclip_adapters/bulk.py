"""A bulk embedding run into an embedding folder (clip-retrieval's layout, :mod:`altclip_adapters.store`),
shard by shard: input shard ``i`` (:mod:`altclip_adapters.shards`) becomes output shard ``i``.

As in clip-retrieval's inference (reader -> mapper -> writer, with a distributor that only decides where
a worker runs), :class:`ShardEmbedder` reads one input shard, embeds it and writes its output shard; the
same worker runs in this process (:func:`run`) or in Ray actors (:func:`altclip_adapters.ray.run`).
Each output shard is written atomically by the one call that embedded it, so a retried or repeated call
leaves every item in the folder exactly once, and a rerun skips the shards already written.

The folder also gets ``altclip_inputs.json``: the fingerprint of the input of every shard (a file's
path, or the hash of a chunk's items); a rerun over other inputs is refused instead of mixing them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_json
from .shards import ShardSource

if TYPE_CHECKING:
    from .pipeline import Embedder

INPUTS_FILE = "altclip_inputs.json"
MODALITY_CHOICES = ("image", "text", "both")


@dataclass
class ShardReport:
    """What happened to one shard: ``rows`` written, ``skipped`` (one message per sample left out:
    unreadable image, no caption, bad json), ``missing_images`` (img2dataset rows without an image),
    ``error`` (why reading stopped early, e.g. a truncated tar, or why the shard could not be read at all),
    ``written`` (False when the input could not be opened: nothing was written, a rerun tries it again),
    the ``worker`` (host:pid) that did it, and when (``started``, ``finished``: Unix time in seconds, the
    worker's clock)."""

    shard_id: int
    name: str
    rows: int
    skipped: list[str] = field(default_factory=list)
    missing_images: int = 0
    error: str | None = None
    written: bool = True
    worker: str = ""
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def modalities(sources: Sequence[ShardSource], requested: str | None = None) -> tuple[str, ...]:
    """The modalities a run embeds: ``requested`` (``image``, ``text`` or ``both``), or by default what the
    inputs hold (image files: image; text lines: text; tars and parquet: both when the first shard has
    captions, else image). Raises ValueError for a request the inputs cannot satisfy."""
    kind = sources[0].kind
    if requested is not None and requested not in MODALITY_CHOICES:
        raise ValueError(f"modality must be one of {', '.join(MODALITY_CHOICES)}; got {requested!r}")
    if kind in ("images", "texts"):
        held = ("image",) if kind == "images" else ("text",)
        if requested not in (None, held[0]):
            raise ValueError(
                f"{'image files' if kind == 'images' else 'text lines'} give {held[0]} embeddings only; "
                f"--modality {requested} needs webdataset or parquet shards with images and captions"
            )
        return held
    if requested is None:
        return ("image", "text") if sources[0].has_captions() else ("image",)
    return ("image", "text") if requested == "both" else (requested,)


def pending(folder: str | Path, sources: Sequence[ShardSource], *, model: str, dtype: str) -> list[ShardSource]:
    """The shards of ``sources`` not yet written to ``folder`` (creating it), after checking that the folder
    holds ``model``'s embeddings in ``dtype`` (ValueError otherwise) and that every shard already written
    came from the same input (ValueError naming the first that did not); records the inputs' fingerprints."""
    from .store import EmbeddingWriter

    writer = EmbeddingWriter(folder, model=model, dtype=dtype)
    done = writer.done_shards()
    path = Path(folder) / INPUTS_FILE
    recorded = json.loads(path.read_text(encoding="utf-8"))["shards"] if path.is_file() else {}
    current = {str(s.shard_id): s.fingerprint() for s in sources}
    for shard_id in sorted(done):
        before, now = recorded.get(str(shard_id)), current.get(str(shard_id))
        if before is not None and now is not None and before != now:
            raise ValueError(
                f"{folder} holds shard {shard_id} made from other input ({before}; now {now}): "
                "rerun with the same inputs and --shard-size, or write to a new folder"
            )
    write_json(path, {"shards": {**recorded, **current}})
    return [s for s in sources if s.shard_id not in done]


class ShardEmbedder:
    """Reads, embeds and writes whole shards: ``worker(source) -> ShardReport``.

    ``embedder`` makes the embeddings; ``folder`` is the embedding folder, written through
    :class:`altclip_adapters.store.EmbeddingWriter` with ``model`` (what the folder records: a registry
    name, hub id or absolute folder) and ``dtype`` (``float16`` or ``float32``). ``modalities`` is
    ``("image",)``, ``("text",)`` or ``("image", "text")``: with both, the caption embeddings come from the
    same read of the shard, and a sample whose image is unreadable or that has no caption is left out
    whole (both files of a shard keep the same rows). An input file that cannot be opened or parsed at all
    is reported (``written=False``) instead of raised; an error while writing (a full disk) is raised.
    """

    def __init__(
        self, embedder: Embedder, folder: str | Path, *, model: str, modalities: Sequence[str], dtype: str = "float16"
    ):
        from .store import EmbeddingWriter

        if not modalities or set(modalities) - {"image", "text"}:
            raise ValueError(f"modalities must be image, text or both; got {modalities!r}")
        self.embedder = embedder
        self.writer = EmbeddingWriter(folder, model=model, dtype=dtype)
        self.modalities = tuple(modalities)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, source: ShardSource) -> ShardReport:
        import numpy as np

        started = time.time()
        try:
            shard = source.read()
        except (OSError, ValueError) as e:  # one unreadable input file does not stop a run over many
            return ShardReport(
                source.shard_id,
                source.name,
                0,
                error=f"{source.name}: not written: {e}",
                written=False,
                worker=self.worker,
                started=started,
                finished=time.time(),
            )
        report = ShardReport(
            source.shard_id,
            source.name,
            0,
            list(shard.skipped),
            shard.missing_images,
            shard.error,
            worker=self.worker,
            started=started,
        )
        samples = shard.samples
        where = (lambda s: f"{source.path}:{s.key}: ") if source.path else (lambda s: "")  # file paths name themselves
        if "text" in self.modalities:
            report.skipped += [f"{where(s)}no caption" for s in samples if s.caption is None]
            samples = [s for s in samples if s.caption is not None]
        if "image" in self.modalities:
            report.skipped += [f"{where(s)}no image" for s in samples if s.image is None]
            samples = [s for s in samples if s.image is not None]
        dim = self.embedder.model.config.projection_dim
        arrays = {}
        if "image" in self.modalities:
            images = np.zeros((len(samples), dim), np.float32)
            readable = np.zeros(len(samples), bool)
            for batch in self.embedder.iter_images([s.image for s in samples]) if samples else ():
                images[batch.indices] = batch.embeddings.numpy()
                readable[batch.indices] = True
                report.skipped += [f"{where(samples[i])}{message}" for i, message in batch.errors]
            samples = [s for s, ok in zip(samples, readable) if ok]
            arrays["image_embeddings"] = images[readable]
        if "text" in self.modalities:
            texts = self.embedder.texts([s.caption for s in samples]) if samples else np.zeros((0, dim), np.float32)
            arrays["text_embeddings"] = np.asarray(texts, np.float32)
        self.writer.write_shard(source.shard_id, metadata=[s.metadata for s in samples], **arrays)
        report.rows = len(samples)
        report.finished = time.time()
        return report


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
