"""Fanning a study's slices out to the Ray worker pool, with progress and cancellation.

The pool yields results in completion order; after each slice :class:`SliceProgress` reports
progress (into the job record, at most every ``min_interval`` seconds and always for the last
slice) and asks whether the job may go on. When the job was cancelled, the remaining slices are
abandoned (their Ray calls are cancelled) and :class:`JobCancelledError` is raised, so nothing is
returned, cached or published.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

ProgressSink = Callable[[int, int], bool]
"""``(done, total) -> keep_going``; called after each slice (possibly throttled)."""


class JobCancelledError(Exception):
    """The job's record says ``cancelled``; stop without publishing anything."""


class ComputeRun(NamedTuple):
    """Per-slice results in slice order, and the wall time the fan-out took."""

    results: list[Any]
    wall_seconds: float

    @property
    def compute_seconds(self) -> float:
        """Sum of the per-slice compute time the workers measured."""
        return float(sum(result.seconds for result in self.results))


@dataclass
class SliceProgress:
    """Calls ``sink`` after slices, throttled, and stops the run when it says so."""

    sink: ProgressSink
    total: int
    offset: int = 0
    overall_total: int | None = None
    min_interval: float = 0.2
    _last: float = field(default=float("-inf"), init=False)

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        final = done == self.total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        overall = self.overall_total if self.overall_total is not None else self.total
        if not self.sink(self.offset + done, overall):
            raise JobCancelledError("the job was cancelled")


def collect(stream: Iterator[tuple[int, Any]], count: int, progress: SliceProgress) -> ComputeRun:
    """Drain ``(index, result)`` pairs from the pool into slice order, reporting progress."""
    started = time.perf_counter()
    by_index: dict[int, Any] = {}
    try:
        for index, result in stream:
            by_index[index] = result
            progress(len(by_index))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a generator's finally cancels the slices still in flight
    missing = [index for index in range(count) if index not in by_index]
    if missing:
        raise RuntimeError(f"the worker pool returned no result for slices {missing}")
    return ComputeRun([by_index[index] for index in range(count)], time.perf_counter() - started)


def reconstruct_slices(
    pool: Any,
    kspace: np.ndarray,
    mask: np.ndarray,
    multicoil: bool,
    options: Any,
    progress: SliceProgress,
) -> ComputeRun:
    """Reconstruct every slice of ``kspace`` (S, C, H, W) on the pool."""
    stream = pool.iter_reconstruct(kspace, mask, multicoil, options)
    return collect(stream, int(kspace.shape[0]), progress)


def anomaly_slices(
    pool: Any, images: np.ndarray, options: Any, progress: SliceProgress
) -> ComputeRun:
    """Anomaly maps of every slice of ``images`` (S, H, W) on the pool."""
    stream = pool.iter_anomaly(images, options)
    return collect(stream, int(images.shape[0]), progress)
