"""The submission gate: bounded worker threads for submissions, apart from the shared pool."""

from __future__ import annotations

import threading
import time

import anyio

from services.api.concurrency import SubmissionGate, preload_heavy_modules


def test_gate_admits_at_most_its_limit_and_keeps_order_of_results() -> None:
    gate = SubmissionGate(2)
    guard = threading.Lock()
    running = peak = 0

    def work(index: int) -> int:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return index * 10

    async def main() -> list[int]:
        results: dict[int, int] = {}

        async def one(index: int) -> None:
            results[index] = await gate.run(work, index)

        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(one, index)
        return [results[index] for index in range(6)]

    assert anyio.run(main) == [0, 10, 20, 30, 40, 50]
    assert peak == 2


def test_gate_leaves_the_shared_thread_pool_free() -> None:
    gate = SubmissionGate(1)

    async def main() -> float:
        release = threading.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(gate.run, release.wait, 5.0)
            await anyio.sleep(0.05)
            started = time.perf_counter()
            await anyio.to_thread.run_sync(lambda: None)  # not blocked by the busy gate
            waited = time.perf_counter() - started
            release.set()
        return waited

    assert anyio.run(main) < 1.0


def test_preload_imports_the_named_modules() -> None:
    assert preload_heavy_modules(("json", "csv")) >= 0.0
