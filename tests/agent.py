"""Agents: client processes of their own that run a test's snippets, so that one test can
play several processes (B, C, ...) against one daemon or several.

Descriptors travel between the test and an agent over a Unix SOCK_SEQPACKET connection of
their own, with SCM_RIGHTS (clients.fdpass): the daemon is not involved in that hop.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from conftest import spawn_client

from clients import fdpass
from clients.daemon import DaemonProcess

# The agent connects back to the test over an abstract-namespace SOCK_SEQPACKET socket
# (argv[0] names it) and then runs one snippet per stdin line. A snippet finds the
# descriptors the test sent with it in `fds`, sets `result` (JSON-able) and may put
# descriptors in `send` to hand them to the test. Names persist between snippets.
AGENT = r"""
import os, socket, traceback
from clients import fdpass
from protocols import Op, messages as m
from protocols.constants import *

peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
peer.connect("\0" + argv[0])


def errno_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


ns = dict(globals())
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = json.loads(line)
    ns["fds"] = fdpass.recv_fds(peer)[1] if cmd["fds"] else []
    ns["result"] = None
    ns["send"] = []
    try:
        exec(cmd["code"], ns)
        reply = {"result": ns["result"], "sent": bool(ns["send"])}
    except Exception:
        reply = {"error": traceback.format_exc(), "sent": False}
    if reply["sent"]:
        fdpass.send_fds(peer, b"fds", ns["send"])
        for fd in ns["send"]:
            os.close(fd)
    print(json.dumps(reply), flush=True)
"""


class Agent:
    """A client process of its own, connected to `socket_path`, running snippets."""

    _names = itertools.count()

    def __init__(self, socket_path: Path) -> None:
        name = f"xed-dma-buf-test-{os.getpid()}-{next(self._names)}"
        self.killed = False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            listener.bind("\0" + name)
            listener.listen(1)
            listener.settimeout(30)
            self.proc = spawn_client(socket_path, AGENT, name)
            try:
                self.sock, _ = listener.accept()
            except OSError:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
                raise AssertionError(f"agent did not connect:\n{err}") from None
        finally:
            listener.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, code: str, fds: Sequence[int] = ()) -> None:
        """Send a snippet (and copies of `fds`) without waiting for its answer."""
        assert self.proc.stdin is not None
        if fds:
            fdpass.send_fds(self.sock, b"fds", fds)
        command = {"code": textwrap.dedent(code), "fds": bool(fds)}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def wait(self) -> tuple[Any, list[int]]:
        """The answer to the snippet started last: its result and the descriptors it sent."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"agent died:\n{err}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"agent snippet failed:\n{reply['error']}")
        received = fdpass.recv_fds(self.sock)[1] if reply["sent"] else []
        return reply["result"], received

    def run_fds(self, code: str, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        self.start(code, fds)
        return self.wait()

    def run(self, code: str, fds: Sequence[int] = ()) -> Any:
        result, received = self.run_fds(code, fds)
        for fd in received:
            os.close(fd)
        assert not received, "the snippet sent descriptors nobody asked for"
        return result

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.killed = True
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        """End the agent (EOF on its stdin) and check it exited cleanly."""
        if self.proc.poll() is None:
            try:
                _, err = self.proc.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
        else:
            _, err = self.proc.communicate(timeout=30)
        self.sock.close()
        if not self.killed:
            assert self.proc.returncode == 0, f"agent failed:\n{err}"


def agent_pool() -> Iterator[Callable[[DaemonProcess], Agent]]:
    """A factory of agents connected to a daemon, for a fixture: ended and checked after."""
    started: list[Agent] = []

    def make(daemon: DaemonProcess) -> Agent:
        agent = Agent(daemon.socket_path)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


