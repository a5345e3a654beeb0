"""Collecting slice results from the worker pool: order, progress, cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import pytest

from pipelines.compute import JobCancelledError, SliceProgress, collect


class Result(NamedTuple):
    seconds: float


def stream(order: list[int], closed: list[bool]) -> Iterator[tuple[int, Result]]:
    try:
        for index in order:
            yield index, Result(seconds=0.5)
    finally:
        closed.append(True)


def test_results_come_back_in_slice_order_with_progress() -> None:
    calls: list[tuple[int, int]] = []
    progress = SliceProgress(
        lambda done, total: calls.append((done, total)) is None, 4, min_interval=0.0
    )
    run = collect(stream([2, 0, 3, 1], []), 4, progress)
    assert [r.seconds for r in run.results] == [0.5] * 4
    assert run.compute_seconds == 2.0
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_progress_is_throttled_but_the_last_slice_always_reported() -> None:
    calls: list[int] = []
    progress = SliceProgress(lambda done, total: calls.append(done) is None, 5, min_interval=60)
    collect(stream([0, 1, 2, 3, 4], []), 5, progress)
    assert calls == [1, 5]


def test_offset_progress_for_a_second_pass() -> None:
    calls: list[tuple[int, int]] = []
    progress = SliceProgress(
        lambda d, t: calls.append((d, t)) is None, 2, offset=2, overall_total=4, min_interval=0.0
    )
    collect(stream([0, 1], []), 2, progress)
    assert calls == [(3, 4), (4, 4)]


def test_cancellation_stops_and_closes_the_stream() -> None:
    closed: list[bool] = []
    progress = SliceProgress(lambda done, total: done < 2, 4, min_interval=0.0)
    with pytest.raises(JobCancelledError):
        collect(stream([0, 1, 2, 3], closed), 4, progress)
    assert closed == [True]


def test_a_missing_slice_is_an_error() -> None:
    progress = SliceProgress(lambda done, total: True, 3, min_interval=0.0)
    with pytest.raises(RuntimeError, match=r"slices \[1\]"):
        collect(stream([0, 2], []), 3, progress)
