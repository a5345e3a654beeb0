"""Prometheus metrics of the API: requests, latencies, jobs by state, slices processed.

Request counters and latency histograms are recorded by an ASGI middleware labelled with the
route *template* (``/v1/jobs/{job_id}``), never the raw path, so job ids do not explode the label
set. Jobs by state and slices processed are read from the job records (the source of truth) at
scrape time through :class:`JobCountsCollector` (``Storage.job_counts``), cached for a few
seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.storage import JobCounts, JobState

log = logging.getLogger("mrdiff.api")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class JobCountsCollector(Collector):
    """Reads :class:`JobCounts` through ``read_counts`` at most every ``ttl_seconds``."""

    def __init__(self, read_counts: Callable[[], JobCounts], ttl_seconds: float = 5.0) -> None:
        self.read_counts = read_counts
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, JobCounts] | None = None

    def counts(self) -> JobCounts | None:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.ttl_seconds:
                try:
                    self._cached = (now, self.read_counts())
                except Exception as error:  # a scrape must not fail because S3 is down
                    log.warning("job statistics unavailable: %s", error)
                    return self._cached[1] if self._cached else None
            return self._cached[1]

    def collect(self) -> Iterable[Metric]:
        counts = self.counts()
        if counts is None:
            return
        jobs = GaugeMetricFamily(
            "mrdiff_jobs", "Jobs by state (from the job records)", labels=["state"]
        )
        for state in JobState:
            jobs.add_metric([state.value], counts.by_state.get(state, 0))
        yield jobs
        yield CounterMetricFamily(
            "mrdiff_slices_processed",
            "Slices finished across all jobs",
            value=counts.slices_processed,
        )


class ApiMetrics:
    """The API's own registry (one per app, so several apps in one process never collide)."""

    def __init__(self, read_counts: Callable[[], JobCounts] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mrdiff_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mrdiff_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if read_counts is not None:
            self.registry.register(JobCountsCollector(read_counts))


class MetricsMiddleware:
    """Count requests and time them, labelled by route template and status code."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
