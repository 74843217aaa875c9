"""AltCLIP on Ray Data (extra ``ray``): embeddings as a column of a Dataset, and bulk runs on a cluster.

- :class:`AltCLIPEmbedder` is a callable class for ``Dataset.map_batches`` (Ray Data's batch-inference
  pattern: ``__init__`` loads the model once per actor, ``__call__`` maps a batch dict to a batch dict).
  Image columns may hold encoded bytes (``read_binary_files``, ``read_parquet``, ``read_webdataset(...,
  decoder=None)``), file paths, or uint8 arrays (``read_images``); text columns strings (or UTF-8 bytes).
  Every image goes through the package's one image loader (via :class:`~altclip_adapters.inference.embedder.Embedder`).
  ``read_images`` decodes by itself (a palette PNG as its indices, a 16-bit PNG as uint16, no EXIF
  orientation): with ``include_paths=True``, a row's array is replaced by its file (``path`` column) read
  by the loader, when that file exists here and has the array's size; any other array is used only when it
  can be a picture (uint8, HxW or HxWxC with C in 1, 3, 4), else the row gets an error.
  An unreadable item never fails the job: its row gets NaN embeddings and the reason in the error column
  (an empty string for the rows embedded: a string column in every block, which Arrow keeps as it is).
- :func:`add_embeddings` is the one call: ``add_embeddings(ds, model="AltCLIP")`` returns ``ds`` with an
  ``embedding`` column (float32 ``[dim]`` per row, L2-normalised) and an ``error`` column ("" when fine).
- :func:`run` runs a bulk job's shards (:class:`~altclip_adapters.collection.worker.ShardEmbedder`; what
  ``embed_folder(..., distributor="ray")`` and ``altclip embed --ray`` run): one Ray Data task per input shard on
  an actor pool, each actor embedding whole shards and writing their output shards itself.

Fault tolerance is Ray Data's: actors of ``map_batches`` are created with ``max_restarts=-1`` and
``max_task_retries=-1`` (``ray/data/_internal/execution/operators/actor_pool_map_operator.py``), so an
actor whose process dies is restarted and its unfinished task rerun; shard writes are atomic, so a rerun
shard is written once. Resources: a GPU actor (``num_gpus=1``) also reserves a CPU; on a node, leave CPUs
free for the read tasks that feed the actors, or the job waits for them forever.

``import altclip_adapters.collection.ray`` imports nothing heavy; Ray is imported by the functions that use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altclip_adapters.collection.plan import ShardReport
from altclip_adapters.collection.shards import ShardSource
from altclip_adapters.collection.store import check_modality
from altclip_adapters.collection.worker import ShardEmbedder

if TYPE_CHECKING:
    import numpy as np
    import ray.data

DEFAULT_COLUMNS = {"image": "image", "text": "text"}


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError("altclip_adapters.collection.ray needs Ray Data: pip install 'altclip-adapters[ray]'") from e
    return ray


def _embedder(model: str, device: str | None, num_threads: int | None, kwargs: dict[str, Any]):
    """An :class:`~altclip_adapters.inference.embedder.Embedder` for an actor: ``num_threads`` torch threads (the
    CPUs Ray reserved), the device Ray gave it."""
    import torch

    from altclip_adapters.inference.embedder import Embedder

    if num_threads:
        torch.set_num_threads(max(1, int(num_threads)))  # a fractional CPU still runs one thread
    return Embedder.from_pretrained(model, device=device, **kwargs)


class AltCLIPEmbedder:
    """A callable class for ``Dataset.map_batches``: adds embeddings of one column to each batch.

    Args:
        model: registry name (``AltCLIP``, ``AltCLIP-m9``, ``AltCLIP-m18``), hub id or local folder,
            loaded once per actor.
        modality: ``"image"`` or ``"text"``.
        column: the input column (default ``"image"`` or ``"text"``).
        output_column: the column added for float32 ``[rows, projection_dim]`` embeddings (L2-normalised; NaN
            for an unreadable row).
        error_column: the column added for the reason a row could not be embedded ("" for the rows embedded).
        device: ``"cuda"`` or ``"cpu"`` (default: cuda when the actor sees a GPU).
        num_threads: torch CPU threads (default: torch's own choice).
        **embedder_kwargs: passed to :class:`~altclip_adapters.inference.embedder.Embedder` (``dtype``,
            ``batch_size``, ``int8``, ``compile``, ``num_workers``...); on a GPU, bf16 by default.

    ``__call__(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` returns the batch with the two
    columns added; KeyError names a missing input column.
    """

    def __init__(
        self,
        model: str,
        *,
        modality: str = "image",
        column: str | None = None,
        output_column: str = "embedding",
        error_column: str = "error",
        device: str | None = None,
        num_threads: int | None = None,
        **embedder_kwargs: Any,
    ):
        self.modality = check_modality(modality)
        self.column = column or DEFAULT_COLUMNS[modality]
        self.output_column = output_column
        self.error_column = error_column
        self.embedder = _embedder(model, device, num_threads, embedder_kwargs)
        self.dim = self.embedder.model.config.projection_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        if self.column not in batch:
            raise KeyError(f"the batch has no column {self.column!r}; its columns: {', '.join(batch)}")
        values = list(batch[self.column])
        if self.modality == "image" and "path" in batch:
            values = [_file_of(value, path) for value, path in zip(values, batch["path"])]
        out = np.full((len(values), self.dim), np.nan, np.float32)
        errors = np.full(len(values), "", object)
        if self.modality == "text":
            texts, positions = [], []
            for i, value in enumerate(values):
                try:
                    texts.append(value.decode("utf-8") if isinstance(value, bytes) else value)
                except UnicodeDecodeError as e:
                    errors[i] = f"the text is not UTF-8: {e}"
                    continue
                if not isinstance(texts[-1], str):
                    errors[i] = f"expected a string; got {type(value).__name__}"
                    texts.pop()
                    continue
                positions.append(i)
            if texts:
                for indices, embeddings in self.embedder.iter_texts(texts):
                    out[[positions[j] for j in indices]] = embeddings.numpy()
        elif values:
            for image_batch in self.embedder.iter_images(values):
                out[image_batch.indices] = image_batch.embeddings.numpy()
                for i, message in image_batch.errors:
                    errors[i] = message
        return {**batch, self.output_column: out, self.error_column: errors}


def _file_of(value: Any, path: Any) -> Any:
    """``path`` when ``value`` is the array ``read_images(..., include_paths=True)`` decoded from that file
    (it exists on this machine and its header gives the array's height and width, as HxW[xC] or CxHxW), so
    that the loader reads it by its own rules; else ``value``."""
    import numpy as np

    from altclip_adapters.model.images import header_size

    if not isinstance(value, np.ndarray) or value.ndim not in (2, 3) or not isinstance(path, str):
        return value
    size = header_size(path)
    shape = value.shape  # HxW, HxWxC, or CxHxW (a ragged batch of Ray's gives a 2-D picture as 1xHxW)
    sizes = {(shape[1], shape[0])} | ({(shape[2], shape[1])} if value.ndim == 3 else set())
    return path if size is not None and size in sizes else value


def add_embeddings(
    ds: ray.data.Dataset,
    *,
    model: str,
    modality: str = "image",
    column: str | None = None,
    output_column: str = "embedding",
    error_column: str = "error",
    batch_size: int = 64,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    actors: int = 1,
    compute: Any = None,
    **embedder_kwargs: Any,
) -> ray.data.Dataset:
    """``ds`` with an embedding column added by :class:`AltCLIPEmbedder` actors (see it for the columns).

    ``num_gpus=1``: one GPU per actor (bf16 unless ``dtype=`` says otherwise); else CPU actors with
    ``num_cpus`` CPUs each (default 1) and as many torch threads. ``actors`` sets a fixed pool size
    (``ray.data.ActorPoolStrategy(size=actors)``); ``compute`` replaces it with any strategy, e.g.
    ``ActorPoolStrategy(min_size=1, max_size=8)``. Keep ``actors * num_cpus`` below the cluster's CPUs: the
    read tasks need CPUs too. Rows with an unreadable item keep NaN embeddings and an error; drop them with
    ``ds.filter(lambda row: not row["error"])``; when chaining calls (images, then captions), give each its
    own ``output_column`` and ``error_column``. The Dataset is lazy: nothing runs until it is consumed.
    """
    ray = _import_ray()
    options, num_cpus = resources(num_gpus, num_cpus)
    gpu = "num_gpus" in options
    return ds.map_batches(
        AltCLIPEmbedder,
        fn_constructor_kwargs=dict(
            model=model,
            modality=modality,
            column=column,
            output_column=output_column,
            error_column=error_column,
            device="cuda" if gpu else "cpu",
            num_threads=None if gpu else num_cpus,
            batch_size=batch_size,
            **embedder_kwargs,
        ),
        batch_size=batch_size,
        compute=compute or ray.data.ActorPoolStrategy(size=actors),
        **options,
    )


def resources(num_gpus: float, num_cpus: float | None) -> tuple[dict[str, float], float | None]:
    """(the resource keywords of ``map_batches``, the CPUs each actor gets): ``num_gpus > 0`` asks for GPUs (and
    ``num_cpus`` when given); otherwise CPUs only, 1 by default (``num_gpus=0`` would still be read as a GPU request)."""
    gpu = bool(num_gpus and num_gpus > 0)
    if not gpu and num_cpus is None:
        num_cpus = 1
    found = {"num_gpus": num_gpus} if gpu else {}
    return found | ({"num_cpus": num_cpus} if num_cpus is not None else {}), num_cpus


class _ShardActor:
    """The Ray actor of :func:`run`: a :class:`~altclip_adapters.collection.worker.ShardEmbedder` per actor; one input
    shard per row in (``shard_id``, ``kind``, ``path``, ``items``, ``keys``, ``tokens``), one JSON report per
    row out."""

    def __init__(
        self,
        model: str,
        folder: str,
        *,
        modalities: Sequence[str],
        dtype: str,
        device: str,
        num_threads: int | None,
        embedder_kwargs: dict[str, Any],
    ):
        embedder = _embedder(model, device, num_threads, embedder_kwargs)
        self.worker = ShardEmbedder(embedder, folder, model=model, modalities=modalities, dtype=dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        reports = []
        columns = zip(batch["shard_id"], batch["kind"], batch["path"], batch["items"], batch["keys"], batch["tokens"])
        for shard_id, kind, path, items, keys, tokens in columns:
            source = ShardSource(int(shard_id), str(kind), None if path is None else str(path), tuple(map(str, items)),
                                 tuple(map(str, keys)), tuple(map(str, tokens)))
            reports.append(json.dumps(self.worker(source).to_dict(), ensure_ascii=False))
        return {"report": np.array(reports, dtype=object)}


def run(
    sources: Sequence[ShardSource],
    folder: str | Path,
    *,
    model: str,
    modalities: Sequence[str],
    dtype: str = "float16",
    actors: int = 1,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    embedder_kwargs: dict[str, Any] | None = None,
    on_report: Callable[[ShardReport], None] | None = None,
) -> list[ShardReport]:
    """Embed ``sources`` into the embedding folder ``folder`` on the Ray cluster this process is connected
    to (``ray.init`` first): ``actors`` actors, each with ``num_gpus`` GPUs (bf16 there by default) or
    ``num_cpus`` CPUs (default 1), each holding one model and embedding one shard at a time; ``folder`` must
    be reachable at the same path from every node (a shared file system). ``model`` is what the actors load
    and what the folder records (a registry name, hub id or absolute folder). Returns one report per shard
    (also given to ``on_report`` as each arrives, in completion order). The shards' records and saved
    batches are those of an in-process run (:mod:`altclip_adapters.collection.plan`), so either kind of run resumes
    and updates the other's folder.
    """
    ray = _import_ray()
    if not sources:
        return []
    options, num_cpus = resources(num_gpus, num_cpus)
    gpu = "num_gpus" in options
    rows = [{"shard_id": s.shard_id, "kind": s.kind, "path": s.path, "items": list(s.items), "keys": list(s.keys),
             "tokens": list(s.tokens)} for s in sources]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ShardActor,
        fn_constructor_kwargs={
            "model": model,
            "folder": str(Path(folder).resolve()),
            "modalities": tuple(modalities),
            "dtype": dtype,
            "device": "cuda" if gpu else "cpu",
            "num_threads": None if gpu else num_cpus,
            "embedder_kwargs": dict(embedder_kwargs or {}),
        },
        batch_size=1,
        # one shard in flight per actor: a lost or slow actor holds back one shard, not a queue of them
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        **options,
    )
    reports = []
    for row in ds.iter_rows():
        reports.append(ShardReport(**json.loads(row["report"])))
        if on_report is not None:
            on_report(reports[-1])
    return reports
