"""The Ray worker pool a flow run computes on.

:func:`worker_pool` connects to Ray (the cluster at ``settings.ray_address``, else a local one),
starts a :class:`~services.workers.WorkerPool` of :class:`JobActor` and shuts both down after
the run. Benchmarks and tests that keep models loaded across runs lend the flows a pool that is
already warm with :func:`lend_pool`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from services.settings import Settings
from services.workers import ReconActor, WorkerPool, connect_ray, disconnect_ray

_lent_pool: ContextVar[WorkerPool | None] = ContextVar("mrdiff_lent_pool", default=None)


class JobActor(ReconActor):
    """A reconstruction actor that seeds slice ``i`` with ``seed + i``.

    That is the engine's own convention (``ReconEngine.reconstruct_volume``), so a study
    reconstructed by the pipeline matches ``mrdiff reconstruct`` on the same file.
    """

    def reconstruct(
        self, index: int, kspace: np.ndarray, mask: np.ndarray, multicoil: bool, options: Any
    ) -> tuple[int, Any]:
        per_slice = dataclasses.replace(options, seed=int(options.seed) + int(index))
        return super().reconstruct(index, kspace, mask, multicoil, per_slice)


@contextlib.contextmanager
def lend_pool(pool: WorkerPool) -> Iterator[WorkerPool]:
    """Make flows run in this context use ``pool`` (already started) instead of their own."""
    token = _lent_pool.set(pool)
    try:
        yield pool
    finally:
        _lent_pool.reset(token)


@contextlib.contextmanager
def worker_pool(settings: Settings, *, load_prior: bool) -> Iterator[WorkerPool]:
    """A started pool for one flow run: the lent one, or a new one shut down afterwards.

    ``load_prior`` loads the diffusion prior in every actor up front (only for jobs that use
    it, so baseline methods work where no prior weights are installed).
    """
    lent = _lent_pool.get()
    if lent is not None:
        yield lent
        return
    connection = connect_ray(settings)
    pool = WorkerPool.from_settings(settings, actor_class=JobActor, preload_models=load_prior)
    try:
        yield pool.start()
    finally:
        pool.shutdown()
        if connection.started_local:
            disconnect_ray()
