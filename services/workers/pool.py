"""A pool of :class:`~services.workers.actor.ReconActor` that spreads a volume's slices.

Each actor keeps ``in_flight_per_actor`` slices queued (one running, the next waiting), so the
volume streams through the pool in small batches and no actor idles between slices. Results
are keyed by slice index: each index is outstanding on at most one actor at a time, so every
slice arrives exactly once, and :meth:`WorkerPool.reconstruct` returns them in slice order.

Actor death is survived at two levels. Ray restarts a dead actor (``max_restarts``; the new
actor loads the models again) and retries the calls it was running (``max_task_retries``).
When a call still fails because its actor died or is unreachable, the pool resubmits that
slice to another actor and sends the died actor no more work until a probe call shows it is
back (so slices do not queue behind a restart; ``ActorUnavailableError`` means "restarting,
ask again", ``ActorDiedError`` means gone for good); a slice that has lost
``max_attempts_per_slice`` actors is reported as a :class:`WorkerError` rather than retried
forever, and so is a volume whose actors are all gone for good. Errors raised by the
reconstruction itself (bad input, :class:`~services.recon.errors.InputError`) are not retried:
they propagate with their own type.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from services.settings import Settings
from services.workers.actor import ActorInfo, ReconActor
from services.workers.errors import WorkerError

log = logging.getLogger(__name__)
ResultCallback = Callable[[int, Any], None]
PROBE_INTERVAL_SECONDS = 0.5


def _death_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

    return (RayActorError, ObjectLostError, WorkerCrashedError)


class WorkerPool:
    """``n_actors`` reconstruction actors with ``cpus_per_actor`` CPUs (and torch threads) each."""

    def __init__(
        self,
        n_actors: int = 1,
        cpus_per_actor: int = 1,
        *,
        gpus_per_actor: float | None = None,
        prior_path: str | Path | None = None,
        preload_models: bool = True,
        max_restarts: int = 3,
        max_task_retries: int = 2,
        max_attempts_per_slice: int = 4,
        in_flight_per_actor: int = 2,
        start_timeout_seconds: float = 300.0,
        actor_class: type = ReconActor,
    ) -> None:
        if n_actors < 1 or cpus_per_actor < 1 or in_flight_per_actor < 1:
            raise ValueError("n_actors, cpus_per_actor and in_flight_per_actor must be >= 1")
        self.n_actors = n_actors
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.prior_path = None if prior_path is None else str(prior_path)
        self.preload_models = preload_models
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.max_attempts_per_slice = max(1, max_attempts_per_slice)
        self.in_flight_per_actor = in_flight_per_actor
        self.start_timeout_seconds = start_timeout_seconds
        self.actor_class = actor_class
        self.actors: list[Any] = []
        self.resubmitted = 0  # slices sent to another actor after theirs died (cumulative)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerPool:
        """A pool sized by ``settings.actors``, ``cpus_per_actor``, ``gpus_per_actor``."""
        arguments: dict[str, Any] = {
            "n_actors": settings.actors,
            "cpus_per_actor": settings.cpus_per_actor,
            "gpus_per_actor": settings.gpus_per_actor,
            "prior_path": settings.prior_path,
        }
        arguments.update(overrides)
        return cls(**arguments)

    # -- lifecycle ----------------------------------------------------------------------------
    def _gpus(self) -> float:
        import ray

        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        available = float(ray.cluster_resources().get("GPU", 0.0))
        return min(1.0, available / self.n_actors) if available > 0 else 0.0

    def start(self) -> WorkerPool:
        """Create the actors and wait until each has built its engine (and loaded models)."""
        import ray

        if self.actors:
            return self
        if not ray.is_initialized():
            raise WorkerError("Ray is not connected; call services.workers.connect_ray first")
        gpus = self._gpus()
        remote_class: Any = ray.remote(self.actor_class).options(
            num_cpus=self.cpus_per_actor,
            num_gpus=gpus,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
        )
        self.actors = [
            remote_class.remote(
                threads=self.cpus_per_actor,
                prior_path=self.prior_path,
                use_gpu=gpus > 0,
                preload=self.preload_models,
            )
            for _ in range(self.n_actors)
        ]
        try:
            ray.get(
                [actor.info.remote() for actor in self.actors], timeout=self.start_timeout_seconds
            )
        except ray.exceptions.GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            self.shutdown()
            raise WorkerError(
                f"{self.n_actors} actor(s) with {self.cpus_per_actor} CPU(s) each did not start "
                f"in {self.start_timeout_seconds} s (cluster has {cpus} CPUs)"
            ) from None
        except _death_errors() as error:
            self.shutdown()
            raise WorkerError(f"reconstruction actors failed to start: {error}") from error
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self) -> None:
        """Kill the pool's actors (and only them)."""
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def info(self) -> list[ActorInfo]:
        """:class:`ActorInfo` of every actor."""
        import ray

        return list(ray.get([actor.info.remote() for actor in self._started()]))

    def model_versions(self) -> dict[str, str]:
        """Name -> sha256 of the models the actors run (for job records, processing keys)."""
        import ray

        return dict(ray.get(self._started()[0].model_versions.remote()))

    def _started(self) -> list[Any]:
        if not self.actors:
            self.start()
        return self.actors

    # -- work ---------------------------------------------------------------------------------
    def iter_reconstruct(
        self, kspace: np.ndarray, mask: np.ndarray, multicoil: bool, options: Any
    ) -> Iterator[tuple[int, Any]]:
        """Reconstruct every slice of ``kspace`` ``(S, C, H, W)``; yields ``(index, SliceResult)``.

        Results come in completion order, each index exactly once. ``mask`` is ``(H, W)`` for
        all slices or ``(S, H, W)`` per slice.
        """
        kspace = np.asarray(kspace)
        if kspace.ndim != 4:
            from services.recon.errors import InputError

            raise InputError(f"k-space must be (slices, coils, H, W), got shape {kspace.shape}")
        masks = _per_slice_masks(np.asarray(mask), kspace.shape[0], kspace.shape[-2:])

        def payload(index: int) -> tuple[Any, ...]:
            return (kspace[index], masks[index], bool(multicoil))

        return self._run("reconstruct", kspace.shape[0], payload, options)

    def reconstruct(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        multicoil: bool,
        options: Any,
        on_result: ResultCallback | None = None,
    ) -> list[Any]:
        """Reconstruct every slice; calls ``on_result(index, result)`` as each one arrives.

        Returns the ``SliceResult`` list in slice order.
        """
        return self._collect(
            self.iter_reconstruct(kspace, mask, multicoil, options),
            np.asarray(kspace).shape[0],
            on_result,
        )

    def iter_anomaly(self, images: np.ndarray, options: Any) -> Iterator[tuple[int, Any]]:
        """Anomaly maps of every slice of ``images`` ``(S, H, W)``; yields ``(index, result)``."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3:
            from services.recon.errors import InputError

            raise InputError(f"images must be (slices, H, W), got shape {images.shape}")
        return self._run("anomaly", images.shape[0], lambda index: (images[index],), options)

    def anomaly(
        self, images: np.ndarray, options: Any, on_result: ResultCallback | None = None
    ) -> list[Any]:
        """Anomaly maps of every slice, in slice order."""
        return self._collect(
            self.iter_anomaly(images, options), np.asarray(images).shape[0], on_result
        )

    @staticmethod
    def _collect(
        results: Iterator[tuple[int, Any]], count: int, on_result: ResultCallback | None
    ) -> list[Any]:
        by_index: dict[int, Any] = {}
        for index, result in results:
            by_index[index] = result
            if on_result is not None:
                on_result(index, result)
        return [by_index[index] for index in range(count)]

    def _run(
        self,
        method: str,
        count: int,
        payload: Callable[[int], tuple[Any, ...]],
        options: Any,
    ) -> Iterator[tuple[int, Any]]:
        """Dispatch ``count`` slices of ``method`` over the actors; yield results as they land."""
        import ray
        from ray.exceptions import ActorUnavailableError

        actors = list(self._started())
        death_errors = _death_errors()
        options_ref = ray.put(options)
        waiting: deque[int] = deque(range(count))
        attempts = [0] * count
        load = [0] * len(actors)
        up = set(range(len(actors)))  # actors that take work; the others are being probed
        pending: dict[Any, tuple[int, int]] = {}  # slice call -> (slice index, actor slot)
        probes: dict[Any, int] = {}  # info() call on a died actor -> its slot
        probe_again_at: dict[int, float] = {}  # restarting actor -> when to probe it again
        delivered: set[int] = set()

        def submit() -> None:
            while waiting:
                free = [slot for slot in up if load[slot] < self.in_flight_per_actor]
                if not free:
                    return
                slot = min(free, key=lambda s: (load[s], s))
                index = waiting.popleft()
                attempts[index] += 1
                ref = getattr(actors[slot], method).remote(index, *payload(index), options_ref)
                pending[ref] = (index, slot)
                load[slot] += 1

        def actor_died(slot: int) -> None:
            """Stop sending work to ``slot`` until a probe shows Ray restarted it."""
            if slot in up:
                up.discard(slot)
                probes[actors[slot].info.remote()] = slot

        def send_due_probes() -> float | None:
            """Probe restarting actors whose turn has come; seconds until the next one."""
            now = time.monotonic()
            for slot, due in list(probe_again_at.items()):
                if due <= now:
                    del probe_again_at[slot]
                    probes[actors[slot].info.remote()] = slot
            return max(0.0, min(probe_again_at.values()) - now) if probe_again_at else None

        try:
            submit()
            while pending or (waiting and (probes or probe_again_at)):
                next_probe_in = send_due_probes()
                if not pending and not probes:
                    time.sleep(next_probe_in or 0.0)
                    continue
                ready, _ = ray.wait([*pending, *probes], num_returns=1, timeout=next_probe_in)
                for ref in ready:
                    if ref in probes:
                        slot = probes.pop(ref)
                        try:
                            ray.get(ref)
                            up.add(slot)
                            log.info("actor %d is back", slot)
                        except ActorUnavailableError:  # still restarting
                            probe_again_at[slot] = time.monotonic() + PROBE_INTERVAL_SECONDS
                        except death_errors:
                            log.warning("actor %d is gone for good", slot)
                        continue
                    index, slot = pending.pop(ref)
                    load[slot] -= 1
                    try:
                        returned_index, result = ray.get(ref)
                    except death_errors as error:
                        if attempts[index] >= self.max_attempts_per_slice:
                            raise WorkerError(
                                f"slice {index} lost its worker {attempts[index]} times: {error}"
                            ) from error
                        log.warning("actor %d died on slice %d; resubmitting", slot, index)
                        self.resubmitted += 1
                        actor_died(slot)
                        waiting.appendleft(index)
                        continue
                    if returned_index != index or index in delivered:
                        raise WorkerError(f"slice {index} came back twice or mislabelled")
                    delivered.add(index)
                    yield index, result
                submit()
            if waiting:
                raise WorkerError(f"all actors died; {len(waiting)} slice(s) left undone")
        finally:
            for ref in [*pending, *probes]:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
        if len(delivered) != count:
            raise WorkerError(f"{count - len(delivered)} slice(s) were never computed")


def _per_slice_masks(mask: np.ndarray, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """``(S, H, W)`` boolean masks from a shared ``(H, W)`` or ``(W,)`` mask or per-slice masks."""
    from services.recon.errors import InputError

    mask = mask.astype(bool)
    height, width = shape
    if mask.shape == (width,):
        mask = np.broadcast_to(mask[None, :], (height, width))
    if mask.shape == (height, width):
        return np.broadcast_to(mask, (count, height, width))
    if mask.shape == (count, height, width):
        return mask
    raise InputError(f"mask shape {mask.shape} fits neither (H, W) nor (slices, H, W)")
