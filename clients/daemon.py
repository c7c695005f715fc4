"""Start a real `xed serve` as a child process and know when it is ready.

Readiness is the daemon's own sd_notify READY=1, received on a datagram socket we pass
as NOTIFY_SOCKET: the same signal systemd waits for, so no polling and no sleeps.
Used by the demo, the benchmarks, the scenario runner and the tests.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from protocols.cli import EX_CONFIG, EX_NOPERM, EX_SOFTWARE, EX_UNAVAILABLE

from .device import Device

# what a child's exit status already says, passed on as the command's own
_PASSED_ON = (EX_UNAVAILABLE, EX_NOPERM, EX_CONFIG)


class Child(Protocol):
    """What of `subprocess.Popen` a started daemon is used through."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


# how a daemon may be started other than by `python -m xed`: given `xed`'s arguments, the
# environment, the log file, the descriptor limit and whether in a session of its own
Spawn = Callable[[list[str], Mapping[str, str], Path, "int | None", bool], Child]


class DaemonFailed(RuntimeError):
    """A daemon (or aux driver) we started did not come up; `status` is the exit status
    a command reports for it: the child's own when it exited with a sysexits code
    (69 no daemon behind it, 77, 78...), else 70 (EX_SOFTWARE)."""

    def __init__(self, message: str, status: int = EX_SOFTWARE) -> None:
        super().__init__(message)
        self.status = status


class DaemonProcess:
    def __init__(
        self,
        socket_path: Path | None = None,
        config: Path | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = 30.0,
        own_session: bool = False,
        nofile: int | None = None,
        env: Mapping[str, str] | None = None,
        entry: tuple[str, ...] = ("-m", "xed"),
        spawn: Spawn | None = None,
    ) -> None:
        """`entry`: what the interpreter runs, before `serve` and its options (a test
        may run `-c CODE` that adjusts the daemon and then calls `xed.cli.main`).
        `spawn`: starts `xed serve ...` in place of `subprocess.Popen` (the test suite
        forks its daemons from a process that has imported xed once); only with the
        default entry."""
        self._tmp = tempfile.TemporaryDirectory(prefix="xed-")
        tmp = Path(self._tmp.name)
        self.socket_path = socket_path or tmp / "xed.sock"
        self.log_path = log_path or tmp / "daemon.log"
        self._args = [sys.executable, *entry, "serve", "--socket", str(self.socket_path)]
        if config is not None:
            self._args += ["--config", str(config)]
        self._args += list(extra_args)
        self._ready_timeout = ready_timeout
        # A daemon normally runs apart from the programs that use it (systemd gives a unit
        # its own session and cgroup; another terminal, its own session). With the
        # kernel's autogroup, a session is what the scheduler shares CPU time between, so
        # the load tool starts its daemon in a session of its own, as a deployment would.
        self._own_session = own_session
        # a descriptor limit of its own (soft and hard), so that tests and the chaos
        # load reach the daemon's limit quickly; None inherits ours
        self._nofile = nofile
        self._env = os.environ if env is None else env  # the daemon's, NOTIFY_SOCKET aside
        self._spawn = spawn if entry == ("-m", "xed") else None
        self.proc: Child | None = None
        self.name = "the xed daemon"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DaemonProcess:
        notify_path = Path(self._tmp.name) / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        notify.bind(str(notify_path))
        notify.settimeout(self._ready_timeout)
        env = dict(self._env, NOTIFY_SOCKET=str(notify_path))
        if self._spawn is not None:
            self.proc = self._spawn(
                self._args[3:], env, self.log_path, self._nofile, self._own_session
            )
        else:
            self.proc = self._popen(env)
        try:
            self._wait_ready(notify)
        except BaseException:
            self.stop()
            raise
        finally:
            notify.close()
        return self

    def _popen(self, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                self._args,
                stdin=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=self._own_session,
                preexec_fn=self._limit_nofile if self._nofile else None,
            )

    def _wait_ready(self, notify: socket.socket) -> None:
        """Until READY=1 comes; DaemonFailed at once if the process exits first (with
        the last line it wrote), or after the ready timeout."""
        assert self.proc is not None
        deadline = time.monotonic() + self._ready_timeout
        try:
            exited = os.pidfd_open(self.proc.pid)
        except ProcessLookupError:  # exited and reaped already (by a spawner, its parent)
            raise self._exited_early() from None
        try:
            while True:
                left = deadline - time.monotonic()
                readable, _, _ = select.select([notify.fileno(), exited], [], [], max(left, 0))
                if notify.fileno() in readable:
                    if "READY=1" in notify.recv(4096).decode().split("\n"):
                        return
                elif exited in readable:
                    raise self._exited_early()
                elif left <= 0:
                    raise DaemonFailed(f"{self.name}: no READY=1 in {self._ready_timeout:g} s")
        finally:
            os.close(exited)

    def _exited_early(self) -> DaemonFailed:
        """The process exited before READY=1: its status and the last line it wrote."""
        assert self.proc is not None
        status = self.proc.wait()
        return DaemonFailed(
            f"{self.name} exited with status {status} before it was ready: {self._last_words()}",
            status if status in _PASSED_ON else EX_SOFTWARE,
        )

    def _last_words(self) -> str:
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "it said nothing"

    def _limit_nofile(self) -> None:
        assert self._nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self._nofile, self._nofile))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait; returns the exit status."""
        if self.proc is None:
            return 0
        status = self.proc.poll()
        if status is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                status = self.proc.wait()
        return status

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def open_fds(self) -> int:
        """How many descriptors the daemon holds (from /proc)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.socket_path}>"


@contextlib.contextmanager
def daemon_at(
    socket_path: Path | None, own_session: bool = False
) -> Iterator[tuple[Path, DaemonProcess | None]]:
    """The daemon listening at `socket_path` (None: ours to start); without a path, a
    fresh daemon logging warnings only, stopped on exit. What a tool's `--socket` means."""
    if socket_path is not None:
        check_daemon(socket_path)
        yield socket_path, None
        return
    daemon = DaemonProcess(extra_args=("--log-level", "warning"), own_session=own_session)
    try:
        daemon.start()
        yield daemon.socket_path, daemon
    finally:
        daemon.cleanup()


def check_daemon(socket_path: Path) -> None:
    """Connect and say HELLO once, so a tool given a socket nobody serves says so (the
    library's error names the path and what to check) before it starts anything."""
    Device.open(socket_path).close()


class AuxDriverProcess(DaemonProcess):
    """`xec ib serve`, the IB-like aux driver, in front of the daemon at `daemon_socket`;
    ready (READY=1) once it serves its verbs socket (`socket_path`)."""

    def __init__(
        self,
        daemon_socket: Path,
        socket_path: Path | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(socket_path=socket_path, log_path=log_path)
        self.socket_path = socket_path or Path(self._tmp.name) / "verbs.sock"
        self._args = [
            sys.executable, "-m", "clients", "ib", "serve",
            "--socket", str(self.socket_path), "--daemon", str(daemon_socket), *extra_args,
        ]  # fmt: skip
        self.name = "the IB-like aux driver"
