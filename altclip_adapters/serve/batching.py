"""Dynamic batching: concurrent requests share one forward pass of the model.

The shape follows infinity-emb's ``BatchHandler`` (``infinity_emb/inference/batch_handler.py``): the HTTP
layer validates a request and prepares its items (texts tokenised, images decoded, resized and cropped:
:mod:`.prepare`, in the request's thread pool, so a bad input fails its own request only), hands them over and
awaits a future; one worker thread owns the model, takes what is queued, runs it through
:class:`~altclip_adapters.inference.embedder.Embedder` (token ids padded per length-sorted batch, pixels normalised on
the device) and resolves the futures. When a shared forward pass raises, each of its requests is run again
alone, so that only the request that makes the model fail gets the error.

The worker gathers requests of one modality until ``max_batch_size`` items are waiting or ``max_wait``
seconds have passed since the first of them arrived (bounded batch, bounded wait). Requests that arrive
while a forward pass runs queue up and form the next batch, so under load batches fill without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from altclip_adapters.serve.errors import Overloaded

if TYPE_CHECKING:
    from altclip_adapters.inference.embedder import Embedder


class _Stopped(Exception):
    """stop() was called: the worker finishes the batch it holds and exits."""


@dataclass
class _Job:
    modality: str  # "text": items are token id lists; "image": uint8 pixels [3, H, W]
    items: list[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued: float = field(default_factory=time.monotonic)


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand ``result`` (or ``error``) to the job's future on its event loop (a cancelled request is skipped)."""

    def settle() -> None:
        if not job.future.done():
            job.future.set_exception(error) if error is not None else job.future.set_result(result)

    job.loop.call_soon_threadsafe(settle)


class BatchHandler:
    """Gathers the items of concurrent requests into shared forward passes of one :class:`Embedder`.

    ``max_batch_size``: most items gathered before a forward pass starts (a larger request is run whole,
    in the embedder's own ``batch_size`` chunks); ``max_wait``: seconds the first waiting request waits
    for others; ``max_pending``: most items waiting at once (more raise :class:`Overloaded`).
    The embedder should be built with ``num_workers=0``: images reach it decoded, resized and cropped.

    Use as ``handler.start()`` ... ``await handler.embed_tokens([[0, 9, 2]])`` ... ``handler.stop()``.
    Results are float32 numpy arrays [n, D], L2-normalised (the embedder's output), in input order.
    """

    def __init__(self, embedder: Embedder, *, max_batch_size: int = 64, max_wait: float = 0.005, max_pending: int = 65536):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1; got {max_batch_size}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds; got {max_wait}")
        self.embedder = embedder
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.dim: int = embedder.model.config.projection_dim
        self.batches = 0  # forward-pass rounds started so far, and the items in them (for logs and tests)
        self.items = 0
        self.last_success: float | None = None  # time.monotonic() of the last forward pass that succeeded
        self.last_failure: tuple[float, str] | None = None  # (when, what) of the last request the model failed
        self.on_batch: Callable[[str, int], None] | None = None  # called with (modality, items) after each batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._deferred: collections.deque[_Job] = collections.deque()  # taken out while gathering the other modality
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Items queued or in the forward pass now (the queue depth)."""
        return self._pending

    # requests (awaited on the event loop) ------------------------------------------------------------
    async def embed_tokens(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings float32 [n, D] of texts already tokenised (:func:`.prepare.tokenize`: ids within the
        vocabulary, at most the context length each)."""
        return await self._submit("text", [list(i) for i in ids])

    async def embed_pixels(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Embeddings float32 [n, D] of resized and centre-cropped uint8 pixels [3, H, W] (:func:`.prepare.pixels`)."""
        return await self._submit("image", list(pixels))

    async def _submit(self, modality: str, items: list[Any]) -> np.ndarray:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the batch handler is not running: call start() first")
        with self._lock:
            if self._pending + len(items) > self.max_pending:
                raise Overloaded(f"{self._pending} items are waiting for the model (at most {self.max_pending}): retry later")
            self._pending += len(items)
        loop = asyncio.get_running_loop()
        job = _Job(modality, list(items), loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    # the model side -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread that owns the model."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._work, name="altclip-batch-handler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the requests already queued, then stop the worker thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _next(self, modality: str | None, timeout: float | None) -> _Job | None:
        """The next job (of ``modality`` when given; others are deferred); None on timeout.
        Raises _Stopped when stop() was called."""
        for i, job in enumerate(self._deferred):
            if modality is None or job.modality == modality:
                del self._deferred[i]
                return job
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait is None or wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if job is None:
                raise _Stopped
            if modality is None or job.modality == modality:
                return job
            self._deferred.append(job)

    def _gather(self) -> list[_Job]:
        """One batch: the first job waiting, then jobs of its modality until ``max_batch_size`` items
        wait or ``max_wait`` seconds passed since the first job was queued."""
        first = self._next(None, None)
        batch, size = [first], len(first.items)
        deadline = first.queued + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self._next(first.modality, max(deadline - time.monotonic(), 0.0))
            except _Stopped:
                self._queue.put(None)  # stop after this batch
                break
            if job is None:
                break
            batch.append(job)
            size += len(job.items)
        return batch

    def _forward(self, modality: str, items: list[Any]) -> np.ndarray:
        """Embeddings float32 [n, D] of one batch's items."""
        if modality == "text":
            out = np.empty((len(items), self.dim), np.float32)
            for positions, features in self.embedder.iter_tokens(items):
                out[positions] = features.numpy()
            return out
        step = self.embedder.batch_size
        chunks = [self.embedder.encode_pixels(torch.stack(items[i : i + step])) for i in range(0, len(items), step)]
        return torch.cat(chunks).numpy()

    def _settle(self, job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        """Release ``job``'s items from the pending count, then resolve its future. In this order: a client that
        sends its next request as soon as it has an answer must find the count already lowered (else a
        spurious :class:`Overloaded`)."""
        with self._lock:
            self._pending -= len(job.items)
        _resolve(job, result, error)

    def _run(self, batch: list[_Job]) -> None:
        """One shared forward pass for ``batch``; when it raises, each job alone (only the faulty one fails).
        ``on_batch`` is called before any future resolves, so a client that has its answer sees the metrics."""
        items = [item for job in batch for item in job.items]
        try:
            embeddings = self._forward(batch[0].modality, items)
        except Exception as e:  # noqa: BLE001 - the requests get the error, the worker lives on
            if len(batch) == 1:
                self.last_failure = (time.monotonic(), f"{type(e).__name__}: {e}")
                self._settle(batch[0], error=e)
                return
            for job in batch:
                self._run([job])
            return
        self.last_success = time.monotonic()
        if self.on_batch is not None:
            self.on_batch(batch[0].modality, len(items))
        start = 0
        for job in batch:
            self._settle(job, embeddings[start : start + len(job.items)])
            start += len(job.items)

    def _work(self) -> None:
        while True:
            try:
                batch = self._gather()
            except _Stopped:
                break
            self.batches += 1
            self.items += sum(len(job.items) for job in batch)
            self._run(batch)
        for job in self._deferred:
            self._settle(job, error=RuntimeError("the server is shutting down"))
