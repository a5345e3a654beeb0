"""Process supervision behind `mrdiff up` / `down` / `status`, with small real processes."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from services.settings import load_settings
from services.stack.components import COMPONENTS, Component, StackPlan
from services.stack.demo import wait_for_jobs
from services.stack.process import (
    START_HEADER,
    ProcessSpec,
    RunningProcess,
    http_ok,
    is_alive,
    log_says,
    start_process,
    start_until_ready,
    stop_process,
    tcp_open,
)
from services.stack.ray_head import announce_agent_port, ray_head_spec
from services.stack.supervisor import Stack, StackError
from services.storage.local_server import free_port
from services.storage.storage import Storage

STUBBORN = """
import signal, time
seen = []
signal.signal(signal.SIGTERM, lambda *_: seen.append(1))  # like `prefect worker`: ignore once
print("ready", flush=True)
while len(seen) < 2:
    time.sleep(0.05)
"""


def web_server(name: str, port: int) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready=http_ok(f"http://127.0.0.1:{port}/"),
        urls={name: f"http://127.0.0.1:{port}/"},
        ports=(port,),
        ready_timeout=20.0,
        stop_timeout=5.0,
    )


def web_component(name: str, port: int) -> Component:
    return lambda _plan: web_server(name, port)


def plan(tmp_path: Path) -> StackPlan:
    return StackPlan.from_settings(load_settings(data_dir=tmp_path))


def test_stop_sends_a_second_sigterm_to_a_process_that_ignores_the_first(tmp_path: Path) -> None:
    spec = ProcessSpec("stubborn", [sys.executable, "-c", STUBBORN], ready=lambda: True)
    running, popen = start_process(spec, tmp_path)
    deadline = time.monotonic() + 10
    while "ready" not in Path(running.log).read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.getpgid(running.pid) == running.pid  # its own process group and session
    stop_process(running, timeout=1.0)
    assert popen.wait(5) == 0  # it exited by itself after the second SIGTERM
    assert not is_alive(running)


def test_a_reused_pid_is_not_mistaken_for_the_recorded_process(tmp_path: Path) -> None:
    spec = ProcessSpec(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], ready=lambda: True
    )
    running, popen = start_process(spec, tmp_path)
    try:
        assert is_alive(running)
        other = RunningProcess(
            running.name, running.pid, (running.start_ticks or 0) + 1, running.argv, running.log, {}
        )
        assert not is_alive(other)
    finally:
        popen.send_signal(signal.SIGKILL)
        popen.wait(5)


def test_up_status_down(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    stack = Stack(plan(tmp_path), [web_component(f"web{i}", port) for i, port in enumerate(ports)])
    started = stack.up(echo=lambda line: None)
    try:
        assert [p.name for p in started] == ["web0", "web1"]
        assert stack.is_up()
        assert [(row.name, row.running, row.ready) for row in stack.status()] == [
            ("web0", True, True),
            ("web1", True, True),
        ]
        again = stack.up(echo=lambda line: None)
        assert [p.pid for p in again] == [p.pid for p in started]  # nothing started twice
    finally:
        stopped = stack.down(echo=lambda line: None)
    assert stopped == ["web1", "web0"]  # reverse order
    assert not any(tcp_open("127.0.0.1", port)() for port in ports)
    assert not stack.state_path.exists()
    assert not stack.is_up()


def test_a_failing_process_rolls_back_what_this_up_started(tmp_path: Path) -> None:
    port = free_port()
    broken = ProcessSpec(
        "broken",
        [sys.executable, "-c", "raise SystemExit('no config')"],
        ready=lambda: False,
        ready_timeout=20.0,
    )
    stack = Stack(plan(tmp_path), [lambda p: web_server("web", port), lambda p: broken])
    with pytest.raises(StackError, match="broken exited with code 1"):
        stack.up(echo=lambda line: None)
    assert not tcp_open("127.0.0.1", port)()
    assert stack.recorded() == []


def test_a_taken_port_stops_up_before_starting(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        stack = Stack(plan(tmp_path), [lambda p: web_server("web", port)])
        with pytest.raises(StackError, match=f"port {port} .* is taken"):
            stack.up(echo=lambda line: None)


def test_watch_reports_a_process_that_died(tmp_path: Path) -> None:
    port = free_port()
    stack = Stack(plan(tmp_path), [lambda p: web_server("web", port)])
    (running,) = stack.up(echo=lambda line: None)
    try:
        os.kill(running.pid, signal.SIGKILL)
        reason = stack.watch(poll_seconds=0.1)
        assert reason is not None and reason.startswith("web (pid")
    finally:
        stack.down(echo=lambda line: None)


def test_the_demo_stops_waiting_when_a_stack_process_dies(tmp_path: Path) -> None:
    no_jobs_yet = SimpleNamespace(jobs=SimpleNamespace(find_by_processing_key=lambda *_: None))
    port = free_port()
    stack = Stack(plan(tmp_path), [lambda p: web_server("web", port)])
    (running,) = stack.up(echo=lambda line: None)
    try:
        os.kill(running.pid, signal.SIGKILL)
        with pytest.raises(StackError, match=r"stack broke .* web \(pid"):
            wait_for_jobs(
                cast(Storage, no_jobs_yet),
                {"study": "key"},
                timeout=600.0,
                on_update=lambda jobs: None,
                stack_failure=stack.failure,
                poll_seconds=0.1,
            )
    finally:
        stack.down(echo=lambda line: None)


def test_default_components_stay_on_loopback(tmp_path: Path) -> None:
    stack_plan = plan(tmp_path)
    specs = [spec for spec in (component(stack_plan) for component in COMPONENTS) if spec]
    names = [spec.name for spec in specs]
    assert names[:4] == ["s3", "prefect", "ray", "pipelines"]
    for spec in specs:
        argv = " ".join(spec.argv)
        assert "0.0.0.0" not in argv
        assert all("127.0.0.1" in url for url in spec.urls.values() if "://" in url)
    environment = stack_plan.environment()
    assert environment["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert environment["PREFECT_HOME"].startswith(str(tmp_path))
    assert (stack_plan.ray_token_path.stat().st_mode & 0o777) == 0o600


def test_external_services_are_not_started(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        s3_endpoint="minio.example.org:9000",
        prefect_api_url="http://prefect.example.org:4200/api",
        ray_address="ray.example.org:6379",
    )
    stack_plan = StackPlan.from_settings(settings)
    names = [spec.name for spec in (c(stack_plan) for c in COMPONENTS) if spec]
    assert "s3" not in names and "prefect" not in names and "ray" not in names
    assert "pipelines" in names


RACY = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():  # the first start fails, like a Ray head whose raylet gave up
    marker.write_text("tried")
    sys.exit(3)
print("Ray runtime started.", flush=True)
time.sleep(60)
"""


def test_a_start_that_fails_is_tried_again_and_ready_comes_from_the_new_log(
    tmp_path: Path,
) -> None:
    spec = ProcessSpec(
        "racy",
        [sys.executable, "-c", RACY, str(tmp_path / "marker")],
        ready=log_says(tmp_path / "racy.log", "Ray runtime started."),
        ready_timeout=30.0,
        stop_timeout=5.0,
        start_attempts=2,
    )
    retried: list[Exception] = []
    started: list[int] = []
    running, _ = start_until_ready(
        spec, tmp_path, on_start=lambda r, _: started.append(r.pid), on_retry=retried.append
    )
    try:
        assert [str(error).split(";")[0] for error in retried] == ["racy exited with code 3"]
        assert len(started) == 2 and started[-1] == running.pid and is_alive(running)
    finally:
        stop_process(running, timeout=5.0)
    log = tmp_path / "racy.log"
    log.write_text(log.read_text() + f"\n{START_HEADER} racy: again\n")
    assert not log_says(log, "Ray runtime started.")()  # an earlier run's line does not count


def test_the_ray_head_chooses_every_port_and_waits_for_its_node(tmp_path: Path) -> None:
    spec = ray_head_spec(
        free_port(), cpus=2, temp_dir=tmp_path / "ray", log_dir=tmp_path, lean=True
    )
    argv = list(spec.argv)
    flags = (
        "--node-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--ray-client-server-port",
    )
    ports = [int(argv[argv.index(flag) + 1]) for flag in flags]
    assert len(set(ports)) == len(ports) and not {52365, 10001} & set(ports)
    assert "--no-monitor" in argv and argv[argv.index("--include-dashboard") + 1] == "false"
    assert spec.start_attempts > 1
    assert not spec.ready()  # nothing runs: no "Ray runtime started." and no raylet to help
    assert not announce_agent_port(tmp_path / "ray", 1234)
