"""How the API runs blocking work without letting one kind of request starve the others.

Submissions (``POST /v1/jobs``, the MinIO hook) do the slow part of the API's work: they check
an upload, write it and the job record to S3 and create a Prefect flow run. They run in worker
threads under their own :class:`SubmissionGate` (``MRDIFF_MAX_CONCURRENT_SUBMISSIONS`` at once),
not under the shared thread limiter, so a burst of uploads queues politely while status reads
and result downloads keep their threads; and the Prefect server (SQLite under ``mrdiff up``) never
sees more concurrent flow-run creations than the gate admits.

:func:`preload_heavy_modules` imports, once at start-up, what the request path would otherwise
import on its first call (Prefect's deployment client: tens of seconds on a busy machine, during
which every early request would wait on the import lock).
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

HEAVY_MODULES = ("prefect.deployments", "prefect.client.orchestration")


class SubmissionGate:
    """At most ``limit`` submissions in worker threads at once; the rest wait in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._limiter: anyio.CapacityLimiter | None = None

    def open(self) -> None:
        """Create the limiter in the running event loop (at application start-up)."""
        self._limiter = anyio.CapacityLimiter(self.limit)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread, once the gate admits it."""
        if self._limiter is None:
            self.open()
        return await anyio.to_thread.run_sync(
            functools.partial(function, *args), limiter=self._limiter
        )


def preload_heavy_modules(names: tuple[str, ...] = HEAVY_MODULES) -> float:
    """Import ``names`` now; returns the seconds it took."""
    started = time.perf_counter()
    for name in names:
        importlib.import_module(name)
    return time.perf_counter() - started
