"""The Ray actor that holds the models and reconstructs one slice per call.

:class:`ReconActor` is a plain class; :class:`~services.workers.pool.WorkerPool` turns it into
a Ray actor with the CPU/GPU allotment, restarts and retries it needs. Its constructor builds
one :class:`services.recon.engine.ReconEngine` (loading the models once, up front, unless
``preload=False``) and sets torch's thread count to the actor's CPU allotment, so that actors
sharing a node do not oversubscribe its cores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from services.workers.errors import WorkerError


class ActorInfo(NamedTuple):
    """Who an actor is and what it runs on."""

    pid: int
    device: str
    threads: int
    model_versions: dict[str, str]


def pick_device(use_gpu: bool) -> str:
    """``"cuda"`` when this actor was given a GPU and torch sees one, else ``"cpu"``."""
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


class ReconActor:
    """Reconstruction worker: one engine, loaded once, reused for every slice sent to it."""

    def __init__(
        self,
        threads: int = 1,
        prior_path: str | Path | None = None,
        use_gpu: bool = False,
        preload: bool = True,
    ) -> None:
        import torch

        from services.recon.engine import ReconEngine

        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)
        self.device = pick_device(use_gpu)
        self.engine = ReconEngine(prior_path=prior_path, device=self.device, threads=self.threads)
        self._model_versions: dict[str, str] = dict(self.engine.model_versions()) if preload else {}

    def info(self) -> ActorInfo:
        """Pid, device, threads and the sha256 of the models loaded so far."""
        return ActorInfo(os.getpid(), self.device, self.threads, dict(self._model_versions))

    def model_versions(self) -> dict[str, str]:
        """Name -> sha256 of the engine's models (loads them if not loaded yet)."""
        self._model_versions = dict(self.engine.model_versions())
        return dict(self._model_versions)

    def reconstruct(
        self, index: int, kspace: np.ndarray, mask: np.ndarray, multicoil: bool, options: Any
    ) -> tuple[int, Any]:
        """Reconstruct one slice; returns ``(index, SliceResult)``."""
        return index, self.engine.reconstruct_slice(kspace, mask, multicoil, options)

    def anomaly(self, index: int, image: np.ndarray, options: Any) -> tuple[int, Any]:
        """Anomaly map of one reconstructed slice; returns ``(index, AnomalyResult)``."""
        anomaly_slice = getattr(self.engine, "anomaly_slice", None)
        if anomaly_slice is None:
            raise WorkerError("this ReconEngine has no anomaly_slice (anomaly maps unavailable)")
        return index, anomaly_slice(image, options)
