"""``GET /metrics`` in Prometheus' text format through ``prometheus-client`` (the ``serve`` extra): requests by
route and status, latency, batch sizes, queue depth, items embedded by modality, rejected requests by reason.

Each application has its own registry (several servers can share a process: tests, notebooks). Routes are
labelled by their template (``/files/{path:path}``), never by the requested path, so label sets stay bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MISSING = "metrics need prometheus-client (the serve extra): pip install 'altclip-adapters[serve]', or pass --no-metrics"


class Metrics:
    """The server's collectors in one ``prometheus_client.CollectorRegistry``. ``queue_depth``: called at each
    scrape (the batch handler's pending items). Raises ImportError with :data:`MISSING` without the library."""

    def __init__(self, queue_depth: Callable[[], float]):
        try:
            import prometheus_client as prom
        except ImportError as e:
            raise ImportError(MISSING) from e
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("altclip_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = prom.Histogram("altclip_request_seconds", "Time to answer a request", ["route"], registry=self.registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_size = prom.Histogram("altclip_batch_items", "Items in one forward pass", ["modality"], registry=self.registry,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048))
        self.items = prom.Counter("altclip_embedded_items", "Items embedded", ["modality"], registry=self.registry)
        self.rejected = prom.Counter("altclip_rejected_requests", "Requests refused, by reason (the error code)", ["reason"],
                                     registry=self.registry)
        depth = prom.Gauge("altclip_queue_depth", "Items waiting for or in the forward pass", registry=self.registry)
        depth.set_function(queue_depth)

    def batch(self, modality: str, items: int) -> None:
        """One forward pass of ``items`` items of ``modality`` (the batch handler's ``on_batch``)."""
        self.batch_size.labels(modality).observe(items)
        self.items.labels(modality).inc(items)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the text format."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """A pure ASGI middleware recording each HTTP request's route template, status and latency in ``metrics``."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, recorded = time.perf_counter(), 500, False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                route = getattr(scope.get("route"), "path", None) or "other"
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)

        async def send_and_see(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte leaves: a client that has its answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            record()  # a request that ended without a complete response
