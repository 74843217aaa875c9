"""The worker of a bulk embedding run into an embedding folder (clip-retrieval's layout,
:mod:`altclip_adapters.collection.store`): read -> embed -> write one shard.

As in clip-retrieval's inference (reader -> mapper -> writer, with a distributor that only decides where
a worker runs), :class:`ShardEmbedder` reads one input shard, embeds it and writes its output shard and
its record (:mod:`altclip_adapters.collection.plan`); the same worker runs in this process (:func:`run`) or in
Ray actors (:func:`altclip_adapters.collection.ray.run`). :func:`altclip_adapters.collection.run.embed_folder`
plans a whole run and picks the distributor.

The finished batches of a shard not yet written are saved in ``DIR/altclip_run/partial/NNNNNN.npz`` on
Ctrl-C, SIGTERM (made one by ``embed_folder``) and every :data:`SAVE_ITEMS` items or :data:`SAVE_SECONDS`
seconds; the next run reuses them bit for bit. Every state file is written through :mod:`altclip_adapters.atomic`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from altclip_adapters.atomic import write_json, write_with
from altclip_adapters.collection.plan import FILE_KINDS, RECORD_FORMAT, STAGES, ShardReport, partial_path, record_path
from altclip_adapters.collection.shards import Sample, Shard, ShardSource
from altclip_adapters.collection.store import check_modality

if TYPE_CHECKING:
    import numpy as np

    from altclip_adapters.inference.embedder import Embedder

SAVE_ITEMS, SAVE_SECONDS = 4096, 60.0  # a shard in progress keeps at most this much unsaved work


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
    ``progress(n)``, when given, is called as each batch of ``n`` items is done (and once with the items
    reused from saved batches). The report's per-stage seconds (:data:`STAGES`) come from the worker's own
    calls and the embedder's image batches (:attr:`ImageBatch.decode_seconds`, ``embed_seconds``); the embedder
    itself is left as it is, so one embedder may serve several workers and threads.

    Finished batches are saved (``altclip_run/partial/``) on any exception (Ctrl-C included) and every
    :data:`SAVE_ITEMS` items or :data:`SAVE_SECONDS` seconds, and reused by the next call for the same shard;
    after the shard's files, its record is written (:mod:`altclip_adapters.collection.plan`).
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
        self.dim = embedder.model.config.projection_dim
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
        samples = self._samples(source, shard, report)
        partial = partial_path(self.folder, source.shard_id)
        saved, note = _Saved.load(partial, source, self.dim, self.modalities)
        report.notes += [note] if note else []
        report.resumed = saved.count(self.modalities[0])
        arrays, readable = self._embed(source, [s for _, s in samples], saved, partial, report)
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
        write_json(record_path(self.folder, source.shard_id), {**record, "report": report.to_dict()})
        partial.unlink(missing_ok=True)
        return report

    def _samples(self, source: ShardSource, shard: Shard, report: ShardReport) -> list[tuple[int, Sample]]:
        """(item position for image files and text lines, sample) of the samples to embed; those without a
        caption (when captions are embedded) or an image go to ``report.skipped``."""
        report.skipped, report.missing_images, report.error = list(shard.skipped), shard.missing_images, shard.error
        report.notes += shard.notes
        samples = list(enumerate(shard.samples))
        report.items = len(samples) if source.kind in FILE_KINDS else len(source.items)
        where = (lambda s: f"{source.path}:{s.key}: ") if source.path else (lambda s: "")  # file paths name themselves
        if "text" in self.modalities:
            report.skipped += [f"{where(s)}{'blank' if isinstance(s.metadata.get('caption'), str) else 'no'} caption"
                               for _, s in samples if s.caption is None]
            samples = [(i, s) for i, s in samples if s.caption is not None]
        if "image" in self.modalities:
            report.skipped += [f"{where(s)}no image" for _, s in samples if s.image is None]
            samples = [(i, s) for i, s in samples if s.image is not None]
        return samples

    def _embed(
        self, source: ShardSource, samples: list[Sample], saved: _Saved, partial: Path, report: ShardReport
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(embeddings per modality: ``image_embeddings``, ``text_embeddings``, float32 [rows, dim] of the
        readable samples; whether each sample is readable: bool [len(samples)]). Saves the finished batches now
        and then, and on any exception before it propagates."""
        import numpy as np

        last_save = [time.monotonic(), saved.count(self.modalities[0])]

        def batch_done(modality: str, count: int) -> None:
            if self.progress is not None and modality == self.modalities[0]:
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
                arrays["image_embeddings"], readable = self._embed_images(source, samples, saved, report, batch_done)
            if "text" in self.modalities:
                captions = [s.caption for s, ok in zip(samples, readable) if ok]
                arrays["text_embeddings"] = self._embed_texts(captions, saved, report, batch_done)
        except BaseException:  # Ctrl-C, SIGTERM (made one by embed_folder), a failing disk: keep what is done
            try:
                saved.save(partial, source)
            except OSError:
                pass
            raise
        return arrays, readable

    def _embed_images(
        self, source: ShardSource, samples: list[Sample], saved: _Saved, report: ShardReport, batch_done
    ) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [readable, dim] embeddings, bool [len(samples)] readable) of the samples' images, the saved
        ones reused; decoding and embedding seconds are the batches' own."""
        import numpy as np

        done = set(saved.done["image"].tolist()) | {i for i, _ in saved.errors["image"]}
        todo = [i for i in range(len(samples)) if i not in done]
        for batch in self.embedder.iter_images([samples[i].image for i in todo]) if todo else ():
            report.timings["decode"] += batch.decode_seconds
            report.timings["embed"] += batch.embed_seconds
            errors = [(todo[j], message) for j, message in batch.errors]
            saved.add("image", [todo[j] for j in batch.indices], batch.embeddings.numpy(), errors)
            batch_done("image", len(batch.indices) + len(batch.errors))
        images = np.zeros((len(samples), self.dim), np.float32)
        images[saved.done["image"]] = saved.embeddings["image"]
        readable = np.zeros(len(samples), bool)
        readable[saved.done["image"]] = True
        for i, message in sorted(saved.errors["image"]):
            report.skipped.append(f"{source.path + ':' + samples[i].key + ': ' if source.path else ''}{message}")
        return images[readable], readable

    def _embed_texts(self, captions: list[str], saved: _Saved, report: ShardReport, batch_done) -> np.ndarray:
        """float32 [len(captions), dim] embeddings of ``captions``, the saved ones reused."""
        import numpy as np

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
        texts = np.zeros((len(captions), self.dim), np.float32)
        texts[saved.done["text"]] = saved.embeddings["text"]
        return texts


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
