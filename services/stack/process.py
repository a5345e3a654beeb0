"""Start, watch and stop one long-running process of the local stack.

Each process runs in its own session (``start_new_session=True``), so Ctrl-C in the terminal
reaches only the supervisor, which then stops its children in order, and a detached stack
survives the command that started it. Stopping signals the group leader first (Ray's
``ray start --block`` drains its node on SIGTERM; a ``prefect worker`` ignores the first
SIGTERM, so a second one follows), then whatever is left of that process group. Processes are
only ever signalled by the ids recorded when they were started, after checking that the pid
still belongs to the same process (its start time), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ReadyCheck = Callable[[], bool]
START_HEADER = "--- mrdiff up: starting"
"""Written to a process's log before each start (see :func:`start_process`)."""
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one process of the stack and how to tell it is ready."""

    name: str
    argv: Sequence[str]
    ready: ReadyCheck
    urls: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_timeout: float = 90.0
    stop_timeout: float = 30.0
    ports: tuple[int, ...] = ()
    """Loopback ports it listens on; taken ports make ``mrdiff up`` stop before starting it."""
    start_attempts: int = 1
    """Starts tried before giving up (for processes whose start is racy on a busy machine)."""


@dataclass(frozen=True)
class RunningProcess:
    """A started process, as recorded in the stack's state file."""

    name: str
    pid: int
    start_ticks: int | None
    argv: tuple[str, ...]
    log: str
    urls: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "argv": list(self.argv),
            "log": self.log,
            "urls": self.urls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RunningProcess:
        ticks = data.get("start_ticks")
        argv = data.get("argv", [])
        urls = data.get("urls", {})
        return cls(
            name=str(data["name"]),
            pid=int(str(data["pid"])),
            start_ticks=int(str(ticks)) if ticks is not None else None,
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            log=str(data.get("log", "")),
            urls={str(k): str(v) for k, v in urls.items()} if isinstance(urls, dict) else {},
        )


class ProcessStartError(RuntimeError):
    """A stack process exited or never became ready."""


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are space separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(process: RunningProcess) -> bool:
    """True when the recorded process still runs (and is the same process, not a reused pid)."""
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if _is_zombie(process.pid):
        return False
    ticks = process_start_ticks(process.pid)
    return process.start_ticks is None or ticks is None or ticks == process.start_ticks


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")


def start_process(
    spec: ProcessSpec, log_dir: Path
) -> tuple[RunningProcess, subprocess.Popen[bytes]]:
    """Start ``spec`` in a new session; stdout and stderr go to ``<log_dir>/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    env = {**os.environ, **spec.env}
    with log_path.open("ab") as log:
        command = " ".join(spec.argv).replace("\n", "\\n")  # one line: see log_says
        log.write(f"\n{START_HEADER} {spec.name}: {command}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
        )
    running = RunningProcess(
        name=spec.name,
        pid=popen.pid,
        start_ticks=process_start_ticks(popen.pid),
        argv=tuple(spec.argv),
        log=str(log_path),
        urls=dict(spec.urls),
    )
    return running, popen


def wait_until_ready(
    spec: ProcessSpec, popen: subprocess.Popen[bytes], running: RunningProcess
) -> None:
    """Poll ``spec.ready`` until it holds; raise :class:`ProcessStartError` if the process dies."""
    deadline = time.monotonic() + spec.ready_timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise ProcessStartError(
                f"{spec.name} exited with code {popen.returncode}; last lines of {running.log}:\n"
                + log_tail(Path(running.log))
            )
        if spec.ready():
            return
        time.sleep(0.5)
    raise ProcessStartError(
        f"{spec.name} not ready after {spec.ready_timeout:.0f} s; see {running.log}:\n"
        + log_tail(Path(running.log))
    )


def start_until_ready(
    spec: ProcessSpec,
    log_dir: Path,
    on_start: Callable[[RunningProcess, subprocess.Popen[bytes]], None] | None = None,
    on_retry: Callable[[ProcessStartError], None] | None = None,
) -> tuple[RunningProcess, subprocess.Popen[bytes]]:
    """Start ``spec`` and wait until it is ready, up to ``spec.start_attempts`` times.

    ``on_start`` hears of every process started (to record it before waiting); a failed
    attempt is stopped before the next one, which ``on_retry`` hears of. Raises the last
    :class:`ProcessStartError`.
    """
    attempts_left = max(1, spec.start_attempts)
    while True:
        attempts_left -= 1
        running, popen = start_process(spec, log_dir)
        if on_start is not None:
            on_start(running, popen)
        try:
            wait_until_ready(spec, popen, running)
            return running, popen
        except ProcessStartError as error:
            if attempts_left == 0:
                raise
            stop_process(running, spec.stop_timeout)
            if on_retry is not None:
                on_retry(error)


def stop_process(process: RunningProcess, timeout: float = 30.0) -> None:
    """Stop a started process: SIGTERM to it (twice if needed), then its group, then SIGKILL."""
    if not is_alive(process):
        _reap(process.pid)
        _signal_group(process.pid, signal.SIGKILL)
        return
    for attempt in range(2):
        _signal(process.pid, signal.SIGTERM)
        if _wait_gone(process, timeout if attempt == 0 else 5.0):
            break
    # Whatever the leader left behind in its group (or the leader itself if it ignored us).
    _signal_group(process.pid, signal.SIGTERM)
    time.sleep(0.5)
    _signal_group(process.pid, signal.SIGKILL)
    _reap(process.pid)


def _wait_gone(process: RunningProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(process.pid)
        if not is_alive(process):
            return True
        time.sleep(0.2)
    return False


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process (no-op for other processes)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    """Signal the process group this stack created for one process (its leader's pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def http_ok(url: str, timeout: float = 2.0) -> ReadyCheck:
    """A readiness check: ``url`` answers with a success status (redirects followed)."""

    def check() -> bool:
        try:
            with _DIRECT.open(url, timeout=timeout) as response:
                return int(response.status) < 400
        except (OSError, ValueError):  # HTTPError (4xx/5xx) is an OSError too
            return False

    return check


def http_json(url: str, timeout: float = 2.0) -> object:
    """The JSON document at ``url``, or None when it does not answer with one."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def tcp_open(host: str, port: int, timeout: float = 1.0) -> ReadyCheck:
    """A readiness check: something accepts TCP connections on ``host:port``."""

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    return check


def console_script(name: str) -> str:
    """A console script installed beside this interpreter (the project's venv)."""
    return str(Path(sys.executable).with_name(name))


def log_says(path: Path, text: str) -> ReadyCheck:
    """A readiness check: ``text`` is in the log ``path`` since the process was last started.

    Only the part after the last :data:`START_HEADER` counts, so a line from an earlier run in
    the same (appended) log does not make a new start look ready.
    """

    def check() -> bool:
        try:
            log = path.read_text(errors="replace")
        except OSError:
            return False
        since_start = log.rpartition(START_HEADER)[2].partition("\n")[2]  # not the argv
        return text in since_start

    return check


def all_of(*checks: ReadyCheck) -> ReadyCheck:
    """A readiness check that holds when every one of ``checks`` holds."""
    return lambda: all(check() for check in checks)
