"""A real local S3 server (nanio, from PyPI) for development, demos and tests.

:func:`start_local_s3` runs ``python -m nanio serve`` on loopback with its objects under
``settings.s3_data_dir`` and the access keys of ``settings`` (passed through the environment,
never on the command line), and waits until the server answers a signed request with those
keys. ``detach=True`` leaves it running after this process exits (``mrdiff up``) and writes a
pid file that :func:`stop_local_s3` uses (``mrdiff down``). :class:`InProcessS3Server` serves
the same nanio app from a thread of the current process, for tests that want no subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.settings import Settings
from services.storage.errors import StorageError
from services.storage.objects import make_minio_client

LOOPBACK = "127.0.0.1"
PID_FILE_NAME = "nanio.pid.json"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _answers_with_keys(settings: Settings) -> bool:
    """True when the server at ``settings.s3_endpoint`` accepts a request signed with its keys."""
    try:
        make_minio_client(settings).list_buckets()
    except Exception:
        return False
    return True


def _split_endpoint(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.s3_endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise StorageError(f"s3_endpoint {settings.s3_endpoint!r} has no port")
    return host, int(port)


@dataclass
class LocalS3Server:
    """A nanio server process started by :func:`start_local_s3`."""

    settings: Settings
    data_dir: Path
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """``host:port`` of the server (what ``Settings.s3_endpoint`` expects)."""
        return self.settings.s3_endpoint

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``timeout``); forget its pid file."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
        else:
            _terminate_pid(self.pid, timeout)
        (self.data_dir / PID_FILE_NAME).unlink(missing_ok=True)

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_local_s3(
    settings: Settings,
    *,
    data_dir: Path | None = None,
    detach: bool = False,
    wait_seconds: float = 30.0,
) -> LocalS3Server:
    """Start nanio on the loopback address and port of ``settings.s3_endpoint``.

    Raises :class:`StorageError` if the port is taken, the server exits early or does not
    answer within ``wait_seconds``.
    """
    host, port = _split_endpoint(settings)
    if host not in {LOOPBACK, "localhost"}:
        raise StorageError(f"the local S3 server only binds loopback, not {host!r}")
    if port_is_open(LOOPBACK, port):
        raise StorageError(f"port {port} is already in use; pick another MRDIFF_S3_ENDPOINT")
    folder = (data_dir or settings.s3_data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / "nanio.log"
    environment = {
        **os.environ,
        "NANIO_ACCESS_KEY": settings.s3_access_key,
        "NANIO_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
    }
    for inherited in ("NANIO_OPTIONS_FILE", "NANIO_HOST", "NANIO_PORT", "NANIO_DATA_DIR"):
        environment.pop(inherited, None)
    command = [
        sys.executable,
        "-m",
        "nanio",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--data-dir",
        str(folder),
        "--region",
        settings.s3_region,
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=detach,
        )
    server = LocalS3Server(settings, folder, process.pid, log_path, process)
    deadline = time.monotonic() + wait_seconds
    while not (port_is_open(LOOPBACK, port) and _answers_with_keys(settings)):
        if process.poll() is not None:
            raise StorageError(
                f"nanio exited with code {process.returncode}; see {log_path}: {_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise StorageError(f"nanio did not answer on {host}:{port} in {wait_seconds} s")
        time.sleep(0.1)
    if detach:
        document = {"pid": process.pid, "endpoint": settings.s3_endpoint, "command": command}
        (folder / PID_FILE_NAME).write_text(json.dumps(document))
    return server


def stop_local_s3(settings: Settings, data_dir: Path | None = None, timeout: float = 10.0) -> bool:
    """Stop a detached server started for ``settings``; False if none was running."""
    folder = (data_dir or settings.s3_data_dir).resolve()
    pid_file = folder / PID_FILE_NAME
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return False
    running = _is_our_nanio(pid, folder)
    if running:
        _terminate_pid(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return running


def _is_our_nanio(pid: int, folder: Path) -> bool:
    """True when ``pid`` is alive and is a nanio serving ``folder`` (guards against pid reuse)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid file
    return b"nanio" in arguments and str(folder).encode() in arguments


def _terminate_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


class InProcessS3Server:
    """nanio served by uvicorn from a background thread of this process (for tests).

    Use as a context manager; it binds ``127.0.0.1`` on the port of ``settings.s3_endpoint``.
    """

    def __init__(self, settings: Settings, data_dir: Path | None = None) -> None:
        import uvicorn
        from nanio.app import build_app
        from nanio.auth.credentials import StaticCredentialResolver
        from nanio.config import Settings as NanioSettings

        _, port = _split_endpoint(settings)
        self.settings = settings
        self.data_dir = (data_dir or settings.s3_data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        credentials = StaticCredentialResolver(
            {settings.s3_access_key: settings.s3_secret_key.get_secret_value()}
        )
        app = build_app(
            NanioSettings(
                data_dir=self.data_dir,
                host=LOOPBACK,
                port=port,
                region=settings.s3_region,
                credentials=credentials,
                access_log=False,
                log_level="warning",
            )
        )
        config = uvicorn.Config(
            app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="nanio", daemon=True)

    def start(self, wait_seconds: float = 15.0) -> InProcessS3Server:
        """Start serving and wait until it answers a signed request."""
        self._thread.start()
        deadline = time.monotonic() + wait_seconds
        while not (self._server.started and _answers_with_keys(self.settings)):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StorageError(f"in-process nanio did not start on {self.settings.s3_endpoint}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> InProcessS3Server:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
