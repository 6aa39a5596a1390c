"""The app's own Prometheus metrics, beside Ray Serve's (`ray_serve_*`): requests and latency per
route and status, the model version each replica serves, and the size of each embed batch.

Ray exports them from every node's metrics agent (prefixed `ray_`); they are created in the replica
process on first use, as Ray's metric objects must be.
"""

from __future__ import annotations

import functools
import time

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


@functools.cache
def _requests() -> tuple[metrics.Counter, metrics.Histogram]:
    tags = ("route", "method", "status")
    return (metrics.Counter("jepa_requests", description="HTTP requests answered by the app", tag_keys=tags),
            metrics.Histogram("jepa_request_latency_ms", description="Time from request to response start (ms)",
                              boundaries=LATENCY_BOUNDARIES_MS, tag_keys=tags))


@functools.cache
def batch_sizes() -> metrics.Histogram:
    return metrics.Histogram("jepa_embed_batch_size", description="Clips per /v1/embed forward pass",
                             boundaries=BATCH_BOUNDARIES)


@functools.cache
def _model_version() -> metrics.Gauge:
    return metrics.Gauge("jepa_model_version", description="Model version served (1 per replica and version)",
                         tag_keys=("model", "version"))


def record_model_version(name: str, version: str) -> None:
    """A gauge at 1 per (model, version) a replica serves: a mix of versions shows as two series.
    The gauge object lives as long as the process (a collected metric stops being exported)."""
    _model_version().set(1, tags={"model": name, "version": str(version)})


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by route template (`/v1/embed`, not
    the raw path, so unknown paths cannot blow up the series count) and status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, latency_ms = time.perf_counter(), 500, None

        async def timed_send(message):
            nonlocal status, latency_ms
            if message["type"] == "http.response.start":
                status, latency_ms = message["status"], 1000 * (time.perf_counter() - t0)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            tags = {"route": route, "method": scope.get("method", ""), "status": str(status)}
            counter, latency = _requests()
            counter.inc(tags=tags)
            latency.observe(latency_ms if latency_ms is not None else 1000 * (time.perf_counter() - t0), tags=tags)
