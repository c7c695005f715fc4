"""A fork server for the suite's daemons: one process per pytest worker that has imported
the daemon once, and forks a daemon from itself for each test that asks.

Why: the suite starts about 450 daemons, and each `python -m xed serve` spent most of its
~0.3 s to READY=1 importing trio, structlog, attrs and xed, a fifth of the suite's CPU.
A forked child runs the very `xed.cli.main` that `python -m xed serve` runs, as a process
of its own with its own socket, log, environment, descriptor limit and session; only the
imports are shared (copy on write). Tests that are about how a daemon starts (the entry
point, systemd, packaging) start theirs with `subprocess` as before.

The suite's client snippets (conftest's run_client and spawn_client, and the agents
built on them: ~270 processes) are forked the same way: a child runs `python -c CODE
ARGS` as that would, with the pipes the worker made as its stdin, stdout and stderr,
and only the imports of `clients` and `protocols` are spared. What still tells one
from a started `python -c`: its parent is the server, more modules are imported, and
every child shares the server's hash seed (set iteration order is the same in each).

The worker speaks to the server over a SOCK_SEQPACKET pair: a JSON request per daemon;
the answer carries the child's pid and, over SCM_RIGHTS, a pidfd (to signal it without
the risk of a reused pid) and the read end of a pipe on which the server writes the
child's exit status (as `Popen.returncode` gives it) once it has reaped it. A client's
request carries its three stdio descriptors over SCM_RIGHTS.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
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
                message, stdio, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, 3)
                if not message:
                    _end(children)
                    return None
                request = json.loads(message)
                request["stdio"] = stdio
                status_read, status_write = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    return request  # the descriptors above are closed in _become
                pidfd = os.pidfd_open(pid)
                socket.send_fds(channel, [json.dumps(pid).encode()], [pidfd, status_read])
                os.close(status_read)
                for fd in stdio:  # the child's now: the worker sees EOF once it exits
                    os.close(fd)
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
    """In the child: the process `subprocess.Popen` would have started (a daemon's stdin
    from /dev/null and stderr to the log, a client's stdio the worker's pipes; no other
    inherited descriptor, the given environment, limit and session). Returns the
    arguments."""
    if request.get("own_session"):
        os.setsid()
    if request["stdio"]:
        for target, fd in enumerate(request["stdio"]):
            os.dup2(fd, target)
    else:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), 2)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if request.get("nofile"):  # last: the server's descriptors may lie above the new limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.argv[0], *request["args"]]
    return list(request["args"])


def _run_python_c(args: list[str]) -> int:
    """In a client's child: what `python -c CODE ARGS...` does with CODE, in a fresh
    __main__, with streams opened on the new stdio as the interpreter would have
    opened them (unbuffered under PYTHONUNBUFFERED, block-buffered pipes otherwise)."""
    from clients import barrier

    code, *argv = args
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    like = {"encoding": sys.__stdout__.encoding, "errors": sys.__stdout__.errors}
    sys.stdin = _text(0, "rb", **like)
    sys.stdout = _text(1, "wb", 0 if unbuffered else -1, write_through=unbuffered, **like)
    sys.stderr = _text(2, "wb", 0, encoding=like["encoding"], errors="backslashreplace",
                       write_through=True)  # fmt: skip
    sys.argv = ["-c", *argv]
    # -c runs with the working directory first, then $PYTHONPATH, not this file's
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[0:1] = ["", *extra]
    # set by the hook clients.barrier runs before a fork: true of this server, which
    # has forked, and not of a process that has just started
    barrier._forked = False
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<string>", "exec"), main.__dict__)  # noqa: S102 - the test's
    except SystemExit:
        raise
    except BaseException as exc:  # the traceback python -c prints: none of our frames
        assert exc.__traceback__ is not None
        exc = exc.with_traceback(exc.__traceback__.tb_next)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):  # python dies of the SIGINT it was sent
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return 1
    finally:
        sys.stdout.flush()
    return 0


def _main() -> int:
    import clients  # noqa: F401 - and what the suite's client snippets import
    import xed.cli  # everything `xed serve` runs is imported here, once

    channel = socket.socket(fileno=0)
    request = _serve(channel)
    if request is None:
        return 0
    channel.detach()  # its descriptor, 0, becomes /dev/null's in _become
    args = _become(request)
    if request["kind"] == "python":
        return _run_python_c(args)
    return xed.cli.main(args)


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


class ForkedClient(ForkedDaemon):
    """A client snippet forked by the server, with text pipes as `subprocess.Popen(...,
    stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True)` gives: the part of it the suite
    uses (the streams, communicate)."""

    def __init__(self, args: Sequence[str], pid: int, pidfd: int, status: int,
                 pipes: tuple[int, int, int]) -> None:  # fmt: skip
        super().__init__(args, pid, pidfd, status)
        self.stdin: io.TextIOWrapper | None = _text(pipes[0], "wb", closefd=True)
        self.stdout: io.TextIOWrapper | None = _text(pipes[1], "rb", closefd=True)
        self.stderr: io.TextIOWrapper | None = _text(pipes[2], "rb", closefd=True)
        self._output: dict[int, list[bytes]] = {pipes[1]: [], pipes[2]: []}

    def communicate(self, input: str | None = None, timeout: float | None = None,
                    ) -> tuple[str, str]:  # fmt: skip
        """Send `input` and close stdin; read stdout and stderr to their ends and wait,
        all within `timeout` (TimeoutExpired past it; what was read is kept for the
        next call, as Popen keeps it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            self.stdin = None
        open_ends = [fd for fd in self._output if not self._ended(fd)]
        while open_ends:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select(open_ends, [], [], left)
            if not readable:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            for fd in readable:
                chunk = os.read(fd, 1 << 16)
                self._output[fd].append(chunk)
                if not chunk:
                    open_ends.remove(fd)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        out, err = (_universal(b"".join(self._output[fd])) for fd in self._output)
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.stdout = self.stderr = None
        return out, err

    def _ended(self, fd: int) -> bool:
        chunks = self._output[fd]
        return bool(chunks) and not chunks[-1]


class Zygote:
    """The worker's handle on its fork server, started on first use."""

    def __init__(self) -> None:
        self._channel: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one request and its answer at a time

    def spawn(
        self, args: Sequence[str], env: dict[str, str], log: Path, nofile: int | None,
        own_session: bool,
    ) -> ForkedDaemon:  # fmt: skip
        """A daemon running `xed <args>`, as `python -m xed <args>` would."""
        request = {
            "kind": "daemon", "args": list(args), "env": dict(env), "log": str(log),
            "nofile": nofile, "own_session": own_session, "cwd": os.getcwd(),
        }  # fmt: skip
        pid, pidfd, status = self._fork(request, [])
        return ForkedDaemon(["xed", *args], pid, pidfd, status)

    def spawn_python(
        self, code: str, args: Sequence[str], env: dict[str, str], cwd: Path
    ) -> ForkedClient:
        """A client running `python -c CODE ARGS...`, its stdio pipes to us."""
        request = {
            "kind": "python", "args": [code, *args], "env": dict(env), "cwd": str(cwd),
        }  # fmt: skip
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            pid, pidfd, status = self._fork(request, [stdin_r, stdout_w, stderr_w])
        except BaseException:
            _close(stdin_w, stdout_r, stderr_r)
            raise
        finally:
            _close(stdin_r, stdout_w, stderr_w)
        pipes = (stdin_w, stdout_r, stderr_r)
        return ForkedClient(["python", "-c", "...", *args], pid, pidfd, status, pipes)

    def _fork(self, request: dict[str, Any], stdio: list[int]) -> tuple[int, int, int]:
        """Have the server fork a child for `request`: its pid, pidfd and status pipe."""
        with self._lock:
            channel = self._started()
            socket.send_fds(channel, [json.dumps(request).encode()], stdio)
            message, fds, _, _ = socket.recv_fds(channel, 64, 2)
        for fd in fds:  # SCM_RIGHTS gives them inheritable: not for the tests' children
            os.set_inheritable(fd, False)
        pidfd, status = fds
        return json.loads(message), pidfd, status

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


def _text(
    fd: int, mode: str, buffering: int = -1, closefd: bool = False, **text: Any
) -> io.TextIOWrapper:
    """A UTF-8 text stream on `fd`, kept by its owner (a process's sys.std*, a pipe end
    of a ForkedClient) to the end: closing the stream closes `fd` if `closefd`."""
    binary = open(fd, mode, buffering, closefd=closefd)  # noqa: SIM115 - see above
    text.setdefault("encoding", "utf-8")
    return io.TextIOWrapper(binary, **text)  # type: ignore[arg-type]


def _universal(data: bytes) -> str:
    """Decoded with universal newlines, as Popen(text=True) reads."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(_main())
