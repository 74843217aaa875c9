"""``embed_folder``: bring an embedding folder (clip-retrieval's layout, :mod:`altclip_adapters.collection.store`)
up to date with its inputs in one call; what ``altclip embed INPUTS --out DIR`` runs.

A run holds the folder's lock, plans what changed since the last run (:mod:`altclip_adapters.collection.plan`),
deletes, cuts down and compacts the shards the plan says, then embeds the new and changed items shard by shard
with :class:`~altclip_adapters.collection.worker.ShardEmbedder`. As in clip-retrieval's inference, the
distributor only decides where that one worker runs: in this process (``distributor=None``) or in Ray actors
(``"ray"`` or a Ray address), so either kind of run resumes and updates the other's folder. A run stopped any
way (Ctrl-C, SIGTERM, a killed process) keeps its written shards and saved batches; the next call resumes
from them and ends with the bytes an uninterrupted run writes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altclip_adapters.collection.plan import FILE_KINDS, STAGES, ShardReport, Update
from altclip_adapters.collection.shards import SHARD_SIZE, Inputs

if TYPE_CHECKING:
    from altclip_adapters.inference.embedder import Embedder
    from altclip_adapters.model.core import AltCLIP

EVENTS = ("planned", "started", "items", "shard")


@dataclass(frozen=True)
class Progress:
    """One event of :func:`embed_folder`, given to its ``on_progress`` as it happens (in the calling thread).
    ``event`` is one of :data:`EVENTS`:

    - ``"planned"``: the plan is made (``plan``; ``warnings``: its notes on state discarded), before the folder
      changes;
    - ``"started"``: the model is ready and embedding begins, ``total`` items to embed (None for tar and parquet
      inputs: their samples are counted as they are read); only when there is something to embed;
    - ``"items"``: ``items`` more items done (a batch, the batches reused from an interrupted run, or a whole
      shard done on Ray);
    - ``"shard"``: a shard written or found unreadable (``report``; ``warnings``: :meth:`ShardReport.warnings`).
    """

    event: str
    plan: Update | None = None
    total: int | None = None
    items: int = 0
    report: ShardReport | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What :func:`embed_folder` did: the ``folder``; the ``model`` it records (registry name, hub id or absolute
    folder); its ``inputs``; the modalities ``embedded``; the ``plan`` it followed (``plan.counts``: items new,
    changed, removed, unchanged; ``plan.kept``: shards left as they are; ``plan.todo``, ``plan.drop``,
    ``plan.keep``, ``plan.merge``: shards embedded, deleted, cut down, compacted); ``reports``: one per shard
    embedded, in completion order; ``warnings``: every line worth a look, in order (state discarded, samples
    skipped, inputs truncated or unreadable)."""

    folder: Path
    model: str
    inputs: Inputs
    embedded: tuple[str, ...]
    plan: Update
    reports: list[ShardReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage (``read``, ``decode``, ``embed``, ``write``), summed over the shards embedded."""
        return {stage: sum(r.timings.get(stage, 0.0) for r in self.reports) for stage in STAGES}

    def total(self, key: str) -> int:
        """A report field summed over the shards embedded: ``rows``, ``items``, ``resumed``, ``missing_images``,
        or ``skipped`` (samples left out)."""
        return sum(len(r.skipped) if key == "skipped" else getattr(r, key) for r in self.reports)

    @property
    def unwritten(self) -> list[str]:
        """The shards whose input could not be opened at all: nothing written; the next run tries them again."""
        return [r.name for r in self.reports if not r.written]

    @property
    def incomplete(self) -> list[str]:
        """The shards read only partly (a truncated tar), earlier runs' included: written up to the break, and
        redone by the next run once their input is replaced."""
        return self.plan.incomplete + [r.name for r in self.reports if r.error and r.written]


def embed_folder(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | Embedder | AltCLIP | None = None,
    model_name: str | None = None,
    modalities: str | None = None,
    shard_size: int = SHARD_SIZE,
    store_dtype: str = "float16",
    distributor: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    **embedder_options: Any,
) -> Outcome:
    """Bring the embedding folder ``out`` up to date with ``inputs``: embed what is new or changed since the last
    run, drop what is gone, resume what an interrupted run left (see the module docstring).

    Args:
        inputs: image files and folders (searched recursively), ``.txt`` files (one text per line), or webdataset
            ``.tar`` / img2dataset ``.parquet`` shards (brace ranges allowed: ``shards/{00000..00099}.tar``); one
            path or a list of them.
        out: the embedding folder (created when missing).
        model: a registry name, hub id or checkpoint folder; an
            :class:`~altclip_adapters.inference.embedder.Embedder`; or an :class:`~altclip_adapters.model.core.AltCLIP`
            (prepared in place by ``Embedder(model, **embedder_options)``). None: the model ``out`` records, else
            ``"AltCLIP"``.
        model_name: with an Embedder or AltCLIP object, what the folder records as its model (what readers load
            to embed queries); default: the model ``out`` already records.
        modalities: ``"image"``, ``"text"`` or ``"both"`` (from tar and parquet shards); None: what the inputs
            hold (image files: image; text lines: text; shards: both when they have captions).
        shard_size: images or text lines per new output shard (tar and parquet inputs: one shard per file).
        store_dtype: how the folder's ``.npy`` files store the embeddings: ``"float16"`` or ``"float32"``.
        distributor: where the worker runs: None, this process; ``"ray"``, the Ray cluster this process is
            connected to, else a local one; any other string, the address of a Ray cluster (``"auto"``,
            ``"ray://head:10001"``). Every Ray node must see ``out`` at the same path (a shared file system).
        actors: Ray actors, one model each (default: one per GPU of the cluster, else 1).
        cpus_per_actor: CPUs each Ray actor reserves (default: the cluster's CPUs less one, shared among the
            actors, at most 8 per GPU actor).
        on_progress: called with each :class:`Progress` event.
        **embedder_options: ``Embedder``'s keyword arguments (``device``, ``dtype``, ``batch_size``,
            ``num_workers``, ``int8``, ``compile``, ``decode_on_device``, ``max_image_pixels``, ``runtime``),
            with a model name or an AltCLIP; on Ray each actor takes the device Ray gives it.

    Returns:
        An :class:`Outcome`; shards that could not be read, or only partly, are in it (``unwritten``,
        ``incomplete``), not raised.

    Raises:
        ValueError: inputs of mixed kinds or none; a modality the inputs do not hold; a folder holding another
            model's or dtype's embeddings, another kind of input, or shards without run records; an Embedder with
            ``embedder_options``; a model object on Ray, or with neither ``model_name`` nor a recorded model;
            Ray actors needing more CPUs than the cluster has.
        FileNotFoundError: a missing input; a model that is no folder, registry name or hub id.
        OSError: another process is writing the folder (its lock is held); a failing disk.
        MissingExtra: a distributor without Ray Data installed (an ImportError).
        KeyboardInterrupt: Ctrl-C, or SIGTERM when called from the main thread (the previous SIGTERM handler is
            restored after); the shards written and the batches finished are kept for the next call.
    """
    from altclip_adapters.collection.plan import apply, update
    from altclip_adapters.collection.plan import modalities as find_modalities
    from altclip_adapters.collection.shards import collect
    from altclip_adapters.collection.store import EmbeddingWriter, lock

    folder = Path(out)
    found = collect([os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)])
    reference, load = _model(model, folder, model_name, distributor, embedder_options)
    embedded = find_modalities(found.kind, lambda: found.shards([0], 0, 1)[0].has_captions(), modalities)
    EmbeddingWriter(folder, model=reference, dtype=store_dtype)  # creates the folder; refuses another model or dtype
    emit = on_progress or (lambda event: None)
    with lock(folder), _sigterm_as_interrupt():
        plan = update(folder, found, shard_size=shard_size)
        outcome = Outcome(folder, reference, found, embedded, plan, warnings=list(plan.notes))
        emit(Progress("planned", plan=plan, warnings=tuple(plan.notes)))
        apply(folder, plan)
        if not plan.todo:
            return outcome

        def on_report(report: ShardReport) -> None:
            outcome.reports.append(report)
            outcome.warnings.extend(report.warnings())
            emit(Progress("shard", report=report, warnings=tuple(report.warnings())))

        if distributor is None:
            _run_here(outcome, load(), store_dtype, emit, on_report)
        else:
            _run_on_ray(outcome, distributor, embedder_options, (actors, cpus_per_actor), store_dtype, emit, on_report)
    return outcome


def _model(
    model: Any, folder: Path, name: str | None, distributor: str | None, options: dict[str, Any]
) -> tuple[str, Callable[[], Embedder]]:
    """(what the folder records as its model, a function returning the Embedder to run) for ``embed_folder``'s
    ``model``; nothing is loaded yet (a run with nothing to embed loads no model)."""
    if model is None:
        model = _recorded_model(folder) or "AltCLIP"
    if isinstance(model, (str, os.PathLike)):
        from altclip_adapters.model.files import checkpoint_source

        given = os.fspath(model)
        checkpoint_source(given)  # a bad name or path fails now, before anything is changed or loaded
        path = Path(given).expanduser()
        reference = str(path.resolve()) if path.exists() else given  # a local folder: absolute

        def load() -> Embedder:
            from altclip_adapters.inference.embedder import Embedder

            return Embedder.from_pretrained(given, **options)

        return reference, load
    from altclip_adapters.inference.embedder import Embedder

    if distributor is not None:
        raise ValueError("on Ray every actor loads the model itself: give model as a registry name, hub id or folder")
    if isinstance(model, Embedder) and options:
        raise ValueError(f"{', '.join(options)}: options of a new Embedder; this one is made: give them to it")
    reference = name or _recorded_model(folder)
    if reference is None:
        raise ValueError("give model_name (a registry name, hub id or folder: what readers of the folder load to "
                         "embed queries) with a model object")
    return reference, (lambda: model) if isinstance(model, Embedder) else (lambda: Embedder(model, **options))


def _recorded_model(folder: Path) -> str | None:
    """The model the embedding folder ``folder`` records, or None when it records none yet."""
    from altclip_adapters.collection.store import MANIFEST, read_manifest

    return read_manifest(folder)["model"] if (folder / MANIFEST).is_file() else None


def _todo_items(plan: Update) -> int | None:
    """The items the plan embeds: image files or text lines; None for tar and parquet inputs."""
    return sum(len(s.keys) for s in plan.todo) if plan.kind not in FILE_KINDS else None


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what Slurm, Kubernetes and ``timeout`` send) raises KeyboardInterrupt, so a
    run stopped either way keeps its finished batches; the previous handler is restored after. Only in the
    main thread (Python runs signal handlers there); elsewhere nothing changes."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_here(outcome: Outcome, embedder: Embedder, dtype: str, emit, on_report) -> None:
    """The plan's shards embedded by one worker in this process."""
    from altclip_adapters.collection.worker import ShardEmbedder, run

    emit(Progress("started", total=_todo_items(outcome.plan)))
    worker = ShardEmbedder(embedder, outcome.folder, model=outcome.model, modalities=outcome.embedded, dtype=dtype,
                           progress=lambda n: emit(Progress("items", items=n)))
    run(worker, outcome.plan.todo, on_report)


def _size_actors(
    resources: dict[str, float], device: Any = None, actors: int | None = None, cpus_per_actor: int | None = None
) -> tuple[int, int, int]:
    """(actors, GPUs per actor: 0 or 1, CPUs per actor) for a cluster with ``resources``
    (``ray.cluster_resources()``): GPU actors when the cluster has GPUs and ``device`` is not a CPU, one per GPU
    by default (else 1); each with the cluster's CPUs less one (left to Ray Data's read tasks) shared among the
    actors, at most 8 for a GPU actor. ValueError when the actors need more CPUs than the cluster has."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    gpu = gpus > 0 and not str(device or "").startswith("cpu")
    actors = actors or (gpus if gpu else 1)
    spare = max(1, cpus - 1) // actors
    num_cpus = cpus_per_actor if cpus_per_actor is not None else max(1, min(8, spare) if gpu else spare)
    if actors * max(num_cpus, 1) > cpus:
        raise ValueError(f"{actors} actors x {num_cpus} CPUs need more than the cluster's {cpus} CPUs: "
                         "lower the actors or the CPUs per actor")
    return actors, int(gpu), num_cpus


def _run_on_ray(outcome: Outcome, distributor: str, options: dict[str, Any], sizing: tuple, dtype: str, emit,
                on_report) -> None:
    """The plan's shards embedded by Ray actors (:func:`altclip_adapters.collection.ray.run`), sized by
    :func:`_size_actors`, on the cluster this process is connected to, else the one ``distributor`` names
    (started here, and shut down after)."""
    from altclip_adapters.extras import require

    require("ray.data", "ray", "embed_folder on Ray")
    import ray

    from altclip_adapters.collection import ray as altclip_ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=None if distributor == "ray" else distributor)
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = False  # on_progress counts the items
    try:
        actors, gpus, num_cpus = _size_actors(ray.cluster_resources(), options.get("device"), *sizing)
        options = {key: value for key, value in options.items() if key != "device"}
        if gpus and options.get("num_workers") is None:
            options["num_workers"] = num_cpus  # decoding processes inside each GPU actor

        def shard_done(report: ShardReport) -> None:
            on_report(report)
            emit(Progress("items", items=report.items))

        emit(Progress("started", total=_todo_items(outcome.plan)))
        altclip_ray.run(outcome.plan.todo, outcome.folder, model=outcome.model, modalities=outcome.embedded,
                        dtype=dtype, actors=actors, num_gpus=gpus, num_cpus=num_cpus, embedder_kwargs=options,
                        on_report=shard_done)
    finally:
        context.enable_progress_bars, context.print_on_execution_start = shown
        if started:
            ray.shutdown()
