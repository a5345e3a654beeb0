"""``mrdiff up`` / ``down`` / ``status``: start the processes in order, stop them in reverse.

State lives in ``<data_dir>/stack/state.json`` (pids, start times, logs, URLs), written after
each process becomes ready, so ``mrdiff down`` also cleans up after an ``up`` that failed half
way or a supervisor that was killed. A lock file serialises concurrent ``up``/``down``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from services.settings import Settings, get_settings
from services.stack.components import COMPONENTS, Component, StackPlan
from services.stack.process import (
    ProcessSpec,
    ProcessStartError,
    RunningProcess,
    is_alive,
    log_tail,
    start_until_ready,
    stop_process,
    tcp_open,
)

Echo = Callable[[str], None]
STATE_FILE = "state.json"


class StackError(RuntimeError):
    """The stack could not be brought up (a process failed, a port is taken)."""


class ComponentStatus(NamedTuple):
    """One process of the stack as ``mrdiff status`` shows it."""

    name: str
    pid: int | None
    running: bool
    ready: bool
    urls: dict[str, str]
    log: str | None


class Stack:
    """The local stack described by ``plan`` and ``components``."""

    def __init__(self, plan: StackPlan, components: Sequence[Component] = COMPONENTS) -> None:
        self.plan = plan
        self.components = tuple(components)
        self._children: list[object] = []  # Popen handles of processes started by this object

    # -- state file -----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.plan.state_dir / STATE_FILE

    def recorded(self) -> list[RunningProcess]:
        """Processes the state file lists (alive or not)."""
        try:
            document = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [RunningProcess.from_json(item) for item in document.get("processes", [])]

    def _record(self, processes: Sequence[RunningProcess]) -> None:
        self.plan.state_dir.mkdir(parents=True, exist_ok=True)
        document = {
            "processes": [process.to_json() for process in processes],
            "environment": self.plan.environment(),
            "research_use_only": "research use only, not for diagnosis",
        }
        temp = self.state_path.with_suffix(".tmp")
        temp.write_text(json.dumps(document, indent=1))
        os.replace(temp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.plan.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.plan.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- specs ----------------------------------------------------------------------------------
    def specs(self) -> list[ProcessSpec]:
        """The processes to run (external services left out), in start order."""
        found = [component(self.plan) for component in self.components]
        environment = self.plan.environment()
        return [
            dataclasses.replace(spec, env={**environment, **spec.env})
            for spec in found
            if spec is not None
        ]

    # -- up / down / status ---------------------------------------------------------------------
    def up(self, echo: Echo = print) -> list[RunningProcess]:
        """Start every process that is not running yet; return all of them (ready)."""
        with self._locked():
            alive = {p.name: p for p in self.recorded() if is_alive(p)}
            processes: list[RunningProcess] = []
            started: list[RunningProcess] = []
            for spec in self.specs():
                if spec.name in alive:
                    processes.append(alive[spec.name])
                    continue
                taken = [port for port in spec.ports if tcp_open("127.0.0.1", port)()]
                if taken:
                    raise StackError(
                        f"{spec.name}: port {', '.join(map(str, taken))} on 127.0.0.1 is taken "
                        "by another program; stop it or change the settings"
                    )
                echo(f"starting {spec.name} ...")
                clock = time.monotonic()

                def record(running: RunningProcess, popen: object) -> None:
                    """Record each attempt before waiting on it, so `down` can stop it."""
                    for stale in [p for p in started if p.name == running.name]:
                        processes.remove(stale)
                        started.remove(stale)
                    self._children.append(popen)
                    processes.append(running)
                    started.append(running)
                    self._record(processes)

                def retry(error: ProcessStartError, name: str = spec.name) -> None:
                    echo(f"{name} did not start ({str(error).splitlines()[0]}); trying again")

                try:
                    start_until_ready(spec, self.plan.log_dir, on_start=record, on_retry=retry)
                except ProcessStartError as error:
                    echo(f"{spec.name} failed; stopping what this command started")
                    for process in reversed(started):
                        stop_process(process, _stop_timeout(self.specs(), process.name))
                    self._record([p for p in processes if p not in started])
                    raise StackError(str(error)) from None
                echo(f"{spec.name} ready in {time.monotonic() - clock:.1f} s")
            self._record(processes)
            return processes

    def down(self, echo: Echo = print) -> list[str]:
        """Stop every recorded process, last started first; returns the names stopped."""
        with self._locked():
            recorded = self.recorded()
            specs = self.specs()
            stopped = []
            for process in reversed(recorded):
                if is_alive(process):
                    echo(f"stopping {process.name} (pid {process.pid}) ...")
                    stopped.append(process.name)
                stop_process(process, _stop_timeout(specs, process.name))
            self.state_path.unlink(missing_ok=True)
            return stopped

    def status(self) -> list[ComponentStatus]:
        """Every configured process: recorded pid, alive, answering."""
        recorded = {p.name: p for p in self.recorded()}
        rows = []
        for spec in self.specs():
            process = recorded.get(spec.name)
            running = process is not None and is_alive(process)
            rows.append(
                ComponentStatus(
                    name=spec.name,
                    pid=process.pid if process else None,
                    running=running,
                    ready=spec.ready(),
                    urls=dict(spec.urls),
                    log=process.log if process else None,
                )
            )
        return rows

    def client_settings(self) -> Settings:
        """Settings of a client of this stack: this process joins its S3, Prefect and Ray."""
        os.environ.update(self.plan.environment())
        get_settings.cache_clear()
        return get_settings()

    def is_up(self) -> bool:
        """True when every configured process runs and answers."""
        return all(row.running and row.ready for row in self.status())

    def failure(self) -> str | None:
        """Why the stack is broken (a recorded process exited, with its last log lines), or None."""
        for process in self.recorded():
            if not is_alive(process):
                return (
                    f"{process.name} (pid {process.pid}) exited; last lines of "
                    f"{process.log}:\n{log_tail(Path(process.log))}"
                )
        return None

    def watch(self, poll_seconds: float = 1.0) -> str | None:
        """Block while the stack runs; returns why it stopped (None: ``mrdiff down`` did it)."""
        while True:
            if not self.state_path.exists():
                return None
            reason = self.failure()
            if reason is not None:
                return reason
            time.sleep(poll_seconds)


def _stop_timeout(specs: Sequence[ProcessSpec], name: str) -> float:
    return next((spec.stop_timeout for spec in specs if spec.name == name), 30.0)
