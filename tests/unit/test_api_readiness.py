"""Readiness probes and result display defaults, without servers."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from services.api.readiness import check_prefect, check_ray, ray_endpoint, run_check
from services.api.result_files import default_window
from services.settings import load_settings


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("ray://head.local:10001", ("head.local", 10001)),
        ("ray://head.local", ("head.local", 10001)),
        ("10.0.0.5", ("10.0.0.5", 6379)),
        (None, None),
    ],
)
def test_ray_addresses_are_parsed(address: str | None, expected: tuple[str, int] | None) -> None:
    assert ray_endpoint(address) == expected


def test_ray_check_connects_to_the_configured_address(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = load_settings(data_dir=tmp_path, ray_address=f"127.0.0.1:{port}")
        assert check_ray(settings).ok
    closed = run_check(lambda: check_ray(settings))
    assert not closed.ok and "Error" in closed.detail


def test_prefect_check_fails_clearly_when_nothing_answers(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(data_dir=tmp_path, prefect_api_url=f"http://127.0.0.1:{port}/api")
    result = run_check(lambda: check_prefect(settings))
    assert not result.ok and "ConnectError" in result.detail


def test_default_window_covers_the_bulk_of_the_values() -> None:
    values = np.concatenate([np.linspace(0, 1, 1000), [50.0]]).astype(np.float32)
    width, level = default_window(values)
    assert level - width / 2 == 0.0  # non-negative maps start at zero
    assert 0.99 < level + width / 2 < 50  # the outlier does not set the top
    assert default_window(np.zeros(10, np.float32)) == (1.0, 0.5)
