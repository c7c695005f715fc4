"""A fork server for the suite's daemons: one process per pytest worker that has imported
the daemon once, and forks a daemon from itself for each test that asks.

Why: the suite starts about 450 daemons, and each `python -m xed serve` spent most of its
~0.3 s to READY=1 importing trio, structlog, attrs and xed, a fifth of the suite's CPU.
A forked child runs the very `xed.cli.main` that `python -m xed serve` runs, as a process
of its own with its own socket, log, environment, descriptor limit and session; only the
imports are shared (copy on write). Tests that are about how a daemon starts (the entry
point, systemd, packaging) start theirs with `subprocess` as before.

The worker speaks to the server over a SOCK_SEQPACKET pair: a JSON request per daemon;
the answer carries the child's pid and, over SCM_RIGHTS, a pidfd (to signal it without
the risk of a reused pid) and the read end of a pipe on which the server writes the
child's exit status (as `Popen.returncode` gives it) once it has reaped it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_MAX_MESSAGE = 1 << 20


# --- the server (the forked children continue from `_serve`'s return) ------------------


def _serve(channel: socket.socket) -> dict[str, Any] | None:
    """Fork a child per request; report each child's exit. Returns None in the server
    when the worker is gone (its daemons are ended first), and the request in each
    child."""
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, write end of its status)
    while True:
        readable, _, _ = select.select([channel, *children], [], [])
        for ready in readable:
            if ready is channel:
                message = channel.recv(_MAX_MESSAGE)
                if not message:
                    _end(children)
                    return None
                request = json.loads(message)
                status_read, status_write = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    return request  # the descriptors above are closed in _become
                pidfd = os.pidfd_open(pid)
                socket.send_fds(channel, [json.dumps(pid).encode()], [pidfd, status_read])
                os.close(status_read)
                children[pidfd] = (pid, status_write)
            else:
                pid, status_write = children.pop(ready)
                _, status = os.waitpid(pid, 0)
                os.write(status_write, str(os.waitstatus_to_exitcode(status)).encode())
                os.close(status_write)
                os.close(ready)


def _end(children: dict[int, tuple[int, int]]) -> None:
    """The worker is gone: no daemon of its outlives it (as none would be left running
    by a worker that stopped them), nor is any left a zombie."""
    for pidfd, (pid, _) in children.items():
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitpid(pid, 0)


def _become(request: dict[str, Any]) -> list[str]:
    """In the child: the process `subprocess.Popen` would have started (stdin from
    /dev/null, stderr to the log, no other inherited descriptor, the given environment,
    limit and session). Returns the daemon's arguments."""
    if request["own_session"]:
        os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), 2)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if request["nofile"]:  # last: the server's descriptors may lie above the new limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.argv[0], *request["args"]]
    return list(request["args"])


def _main() -> int:
    import xed.cli  # everything `xed serve` runs is imported here, once

    channel = socket.socket(fileno=0)
    request = _serve(channel)
    if request is None:
        return 0
    channel.detach()  # its descriptor, 0, becomes /dev/null's in _become
    return xed.cli.main(_become(request))


# --- the worker's side ------------------------------------------------------------------


class ForkedDaemon:
    """The part of `subprocess.Popen` that `DaemonProcess` and the tests use, for a
    daemon forked by the server (its parent, which reaps it)."""

    def __init__(self, args: Sequence[str], pid: int, pidfd: int, status: int) -> None:
        self.args = list(args)
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._status = status

    def poll(self) -> int | None:
        self._collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._collect(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def _collect(self, timeout: float | None) -> bool:
        """The exit status, if the server reports it within `timeout`: whether it has."""
        if self.returncode is None:
            readable, _, _ = select.select([self._status], [], [], timeout)
            if not readable:
                return False
            status = os.read(self._status, 64)
            if not status:  # the server is gone without telling: it ended its children
                raise RuntimeError(f"the fork server ended before daemon {self.pid} did")
            self.returncode = int(status)
            os.close(self._status)
            os.close(self._pidfd)
        return True

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self.returncode is None:
            os.close(self._status)
            os.close(self._pidfd)


class Zygote:
    """The worker's handle on its fork server, started on first use."""

    def __init__(self) -> None:
        self._channel: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def spawn(
        self, args: Sequence[str], env: dict[str, str], log: Path, nofile: int | None,
        own_session: bool,
    ) -> ForkedDaemon:  # fmt: skip
        """A daemon running `xed <args>`, as `python -m xed <args>` would."""
        channel = self._started()
        request = {
            "args": list(args), "env": dict(env), "log": str(log), "nofile": nofile,
            "own_session": own_session, "cwd": os.getcwd(),
        }  # fmt: skip
        channel.send(json.dumps(request).encode())
        message, fds, _, _ = socket.recv_fds(channel, 64, 2)
        for fd in fds:  # SCM_RIGHTS gives them inheritable: not for the tests' children
            os.set_inheritable(fd, False)
        pidfd, status = fds
        return ForkedDaemon(["xed", *args], json.loads(message), pidfd, status)

    def _started(self) -> socket.socket:
        if self._channel is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._server = subprocess.Popen([sys.executable, __file__], stdin=theirs)
            theirs.close()
            self._channel = ours
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            assert self._server is not None
            self._channel.close()  # the server sees the end and returns
            self._server.wait(10)
            self._channel = None


if __name__ == "__main__":
    sys.exit(_main())
