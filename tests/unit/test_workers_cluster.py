"""Joining a Ray cluster: an address where nothing answers fails fast instead of hanging."""

from __future__ import annotations

import os
import socket

import pytest

from services.settings import load_settings
from services.storage.local_server import free_port
from services.workers import WorkerError, connect_ray
from services.workers.cluster import gcs_answers


def test_gcs_answers_only_when_something_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert gcs_answers(address, timeout=0.0)
    assert not gcs_answers(address, timeout=0.0)
    assert gcs_answers("auto", timeout=0.0) and gcs_answers("ray://head:10001", timeout=0.0)


def test_joining_an_address_where_nothing_answers_fails_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A head whose start failed used to leave ``ray.init`` (and the flow run) waiting forever."""
    import ray

    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init must not be called without a cluster to join")

    # as in a fresh process, even when this test session is joined to a cluster already
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # connect_ray must not change it either
    settings = load_settings(ray_address=f"127.0.0.1:{free_port()}", ray_auth_mode="token")
    with pytest.raises(WorkerError, match=r"no Ray cluster answers at 127\.0\.0\.1:"):
        connect_ray(settings, connect_timeout=1.0)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
