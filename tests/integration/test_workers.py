"""WorkerPool on a real local Ray cluster: order, progress, engine errors, actor death."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from services.recon.engine import ReconEngine, ReconOptions
from services.recon.errors import InputError
from services.settings import load_settings
from services.workers import RayConnection, ReconActor, WorkerError, WorkerPool

ZERO_FILLED = ReconOptions(method="zero-filled")
SLICES, COILS, SIZE = 8, 1, 32
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # actors import torch; the test machine is busy


class SlowReconActor(ReconActor):
    """A ReconActor that takes a while per slice, so a test can kill it mid-batch."""

    def reconstruct(
        self, index: int, kspace: np.ndarray, mask: np.ndarray, multicoil: bool, options: Any
    ) -> tuple[int, Any]:
        time.sleep(0.4)
        return super().reconstruct(index, kspace, mask, multicoil, options)


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (SLICES, COILS, SIZE, SIZE)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[:, ::2] = True
    mask[:, SIZE // 2 - 2 : SIZE // 2 + 2] = True
    return kspace, mask


def _expected(kspace: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    engine = ReconEngine()
    return [
        engine.reconstruct_slice(kspace[i], mask, False, ZERO_FILLED).reconstruction
        for i in range(kspace.shape[0])
    ]


def test_connect_ray_joined_the_sessions_head_with_its_token(ray_cluster: RayConnection) -> None:
    assert ray.is_initialized()
    assert not ray_cluster.started_local  # joined: leaving it does not stop the head
    assert ray_cluster.auth_mode == "token" and os.environ["RAY_AUTH_MODE"] == "token"
    assert ray_cluster.cpus == 2
    assert ray.get_runtime_context().gcs_address == ray_cluster.address


LOCAL_CLUSTER_SCRIPT = """
import json
from services.settings import load_settings
from services.workers import connect_ray, disconnect_ray
connection = connect_ray(load_settings(environment="development", ray_address=None,
                                       ray_auth_mode=None), num_cpus=1, log_to_driver=False)
print(json.dumps(connection._asdict()))
disconnect_ray()
"""


@pytest.mark.slow  # a second cluster; this process is already joined to the session's head
def test_connect_ray_without_an_address_starts_a_private_loopback_cluster() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_CLUSTER_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": str(REPO)},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    connection = json.loads(done.stdout.strip().splitlines()[-1])
    assert connection["started_local"] is True
    assert connection["auth_mode"] == "disabled"
    assert connection["cpus"] == 1
    assert connection["address"].startswith("127.0.0.1:")


@pytest.fixture(scope="class")
def zero_filled_pool(ray_cluster: RayConnection) -> Iterator[WorkerPool]:
    """Two plain actors (1 CPU each, the whole test cluster), released after the class."""
    with WorkerPool(2, 1, preload_models=False, start_timeout_seconds=START_TIMEOUT) as pool:
        yield pool


class TestSharedPool:
    """Tests that share one pool; it is shut down before the tests that need the CPUs."""

    def test_pool_returns_every_slice_in_order_with_progress(
        self, zero_filled_pool: WorkerPool
    ) -> None:
        kspace, mask = _volume()
        arrived: list[int] = []
        infos = zero_filled_pool.info()
        assert [info.threads for info in infos] == [1, 1]
        assert {info.device for info in infos} == {"cpu"}
        assert len({info.pid for info in infos}) == 2 and os.getpid() not in {
            info.pid for info in infos
        }
        results = zero_filled_pool.reconstruct(
            kspace, mask, False, ZERO_FILLED, on_result=lambda index, _: arrived.append(index)
        )
        assert sorted(arrived) == list(range(SLICES))
        for result, expected in zip(results, _expected(kspace, mask), strict=True):
            assert result.reconstruction.dtype == np.float32
            np.testing.assert_array_equal(result.reconstruction, expected)

    def test_per_slice_masks_and_generator_order(self, zero_filled_pool: WorkerPool) -> None:
        kspace, mask = _volume(seed=3)
        masks = np.stack([np.roll(mask, shift, axis=1) for shift in range(SLICES)])
        pairs = list(zero_filled_pool.iter_reconstruct(kspace, masks, False, ZERO_FILLED))
        assert sorted(index for index, _ in pairs) == list(range(SLICES))
        engine = ReconEngine()
        for index, result in pairs:
            expected = engine.reconstruct_slice(kspace[index], masks[index], False, ZERO_FILLED)
            np.testing.assert_array_equal(result.reconstruction, expected.reconstruction)

    def test_engine_errors_propagate_without_retry(self, zero_filled_pool: WorkerPool) -> None:
        kspace, mask = _volume()
        before = zero_filled_pool.resubmitted
        with pytest.raises(InputError, match="unknown method"):
            zero_filled_pool.reconstruct(kspace, mask, False, ReconOptions(method="no-such-method"))
        assert zero_filled_pool.resubmitted == before
        with pytest.raises(InputError, match="mask shape"):
            zero_filled_pool.reconstruct(kspace, mask[:4], False, ZERO_FILLED)
        with pytest.raises(InputError, match="slices, coils"):
            zero_filled_pool.reconstruct(kspace[0], mask, False, ZERO_FILLED)


def test_slices_of_a_killed_actor_go_to_the_other_actor_exactly_once(
    ray_cluster: RayConnection,
) -> None:
    kspace, mask = _volume(seed=1)
    pool = WorkerPool(
        2,
        1,
        preload_models=False,
        max_task_retries=0,
        max_restarts=0,
        actor_class=SlowReconActor,
        start_timeout_seconds=START_TIMEOUT,
    )
    with pool:
        victim = pool.actors[0]
        seen: Counter[int] = Counter()
        results: dict[int, Any] = {}
        for index, result in pool.iter_reconstruct(kspace, mask, False, ZERO_FILLED):
            if not seen:
                ray.kill(victim, no_restart=False)  # dies with slices queued on it, for good
            seen[index] += 1
            results[index] = result
        assert pool.resubmitted >= 1
    assert seen == Counter(range(SLICES))
    for index, expected in enumerate(_expected(kspace, mask)):
        np.testing.assert_array_equal(results[index].reconstruction, expected)


@pytest.mark.slow  # waits for Ray to restart the actor (a new process importing torch)
def test_restarted_actor_gets_the_slices_back_exactly_once(ray_cluster: RayConnection) -> None:
    kspace, mask = _volume(seed=2)
    arrived: Counter[int] = Counter()
    pool = WorkerPool(
        1,
        1,
        preload_models=False,
        max_task_retries=0,
        max_restarts=1,
        actor_class=SlowReconActor,
        start_timeout_seconds=START_TIMEOUT,
    )

    def kill_once(index: int, _: Any) -> None:
        arrived[index] += 1
        if sum(arrived.values()) == 1:
            ray.kill(pool.actors[0], no_restart=False)

    with pool:
        results = pool.reconstruct(kspace[:4], mask, False, ZERO_FILLED, on_result=kill_once)
        assert pool.resubmitted >= 1
    assert arrived == Counter(range(4))
    for result, expected in zip(results, _expected(kspace[:4], mask), strict=True):
        np.testing.assert_array_equal(result.reconstruction, expected)


def test_pool_that_cannot_fit_the_cluster_fails_clearly(ray_cluster: RayConnection) -> None:
    pool = WorkerPool(1, 3, preload_models=False, start_timeout_seconds=3)
    with pytest.raises(WorkerError, match="did not start"):
        pool.start()
    assert pool.actors == []


def test_pool_from_settings_takes_the_actor_allotment() -> None:
    settings = load_settings(actors=3, cpus_per_actor=2, gpus_per_actor=0)
    pool = WorkerPool.from_settings(settings, preload_models=False)
    assert (pool.n_actors, pool.cpus_per_actor, pool.gpus_per_actor) == (3, 2, 0)
    assert not pool.preload_models and pool.actors == []
