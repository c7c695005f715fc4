"""What the debugger's tests (tests/test_debugger*.py) share: the target processes and
the state they set up, the debugger's fixtures and its helpers, and the target that runs as
uid 65534. Kept out of the test modules so that each of them stays about one thing.

Targets are separate client processes ("targets") that run the snippets the test sends
them over stdin and answer one JSON line each; the debugger is the test process (or, for
the uid rules, a child forked from it that drops to uid 65534).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import spawn_client

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Event, EventMessage, Op
from protocols import messages as m
from protocols.constants import PAGE_SIZE

BO_VA = 0x1_0000_0000  # the target's BO (BO_SIZE) and, right after it, its userptr
BO_SIZE = 2 * PAGE_SIZE
UP_VA = BO_VA + BO_SIZE
HOST_SIZE = 32 * 1024
NULL_VA = 0x4_0000_0000  # a NULL binding
HOLE_VA = 0x7_0000_0000  # nothing bound
MAX_ACCESS = 32 * 1024
EVENT_WAIT = 10.0  # s: an upper bound for an event to come, never an expectation

BO_PATTERN = bytes(i % 251 for i in range(BO_SIZE))
HOST_PATTERN = bytes((i * 7 + 3) % 253 for i in range(HOST_SIZE))

# Runs one snippet per stdin line in a namespace that persists, answering
# {"result": ...} or {"error": ...}: the end of every process script below.
SNIPPETS = r"""
ns = dict(globals())
while True:
    line = sys.stdin.readline()
    if not line:
        break
    ns["result"] = None
    try:
        exec(json.loads(line), ns)
        reply = {"result": ns["result"]}
    except Exception:
        reply = {"error": traceback.format_exc()}
    print(json.dumps(reply), flush=True)
"""

# A target: connects (conftest's spawn_client does), says who it is, then runs snippets.
TARGET = (
    r"""
import mmap, os, traceback
from clients.host_memory import HostMemory
from protocols import Op, messages as m
from protocols.constants import *
BO_VA, BO_SIZE, UP_VA, HOST_SIZE, NULL_VA = (int(v) for v in argv[1:6])
print(json.dumps({"pid": os.getpid(), "client_id": dev.client_id}), flush=True)
"""
    + SNIPPETS
)

# The usual target state: a VM with a BO at BO_VA and host memory bound right after it
# at UP_VA (back to back), both holding known patterns, and a NULL binding at NULL_VA.
SETUP = """
vm = dev.vm_create()
bo = dev.gem_create(BO_SIZE)
cpu = dev.mmap_bo(bo)
cpu[0:BO_SIZE] = bytes(i % 251 for i in range(BO_SIZE))
dev.vm_bind(vm, bo, BO_VA)
hm = dev.host_memory(HOST_SIZE)
hm[0:HOST_SIZE] = bytes((i * 7 + 3) % 253 for i in range(HOST_SIZE))
dev.vm_bind_userptr(vm, hm, 0, UP_VA, HOST_SIZE)
dev.vm_bind_ops(vm, [m.DrmXeVmBindOp(range=PAGE_SIZE, addr=NULL_VA,
                                     op=DRM_XE_VM_BIND_OP_MAP, flags=DRM_XE_VM_BIND_FLAG_NULL)])
result = {"vm": vm, "bo": bo, "host": hm.base}
"""


class Target:
    """A client process of its own, connected to the daemon, running the test's snippets."""

    def __init__(self, socket_path: Path, proc: subprocess.Popen[str] | None = None) -> None:
        self.socket_path = socket_path
        geometry = (BO_VA, BO_SIZE, UP_VA, HOST_SIZE, NULL_VA)
        if proc is None:
            proc = spawn_client(socket_path, TARGET, str(socket_path), *map(str, geometry))
        self.proc = proc
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"target did not start:\n{err}")
        hello = json.loads(line)
        self.pid: int = hello["pid"]
        self.client_id: int = hello["client_id"]
        self.vm = 0
        self.bo = 0
        self.host = 0

    def start(self, code: str) -> None:
        """Send a snippet without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(textwrap.dedent(code)) + "\n")
        self.proc.stdin.flush()

    def wait(self) -> Any:
        """The answer to the snippet started last."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"target died:\n{err}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"target snippet failed:\n{reply['error']}")
        return reply["result"]

    def run(self, code: str) -> Any:
        self.start(code)
        return self.wait()

    def setup(self) -> Target:
        """The usual state (SETUP): remember its VM, BO handle and host memory address."""
        state = self.run(SETUP)
        self.vm, self.bo, self.host = state["vm"], state["bo"], state["host"]
        return self

    def exit(self) -> None:
        """End the target (EOF on stdin: it returns and exits) and check it exited cleanly."""
        if self.proc.poll() is None or self.proc.stdin is not None:
            try:
                _, err = self.proc.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
            assert self.proc.returncode == 0, f"target failed:\n{err}"
            self.proc.stdin = None


@pytest.fixture
def targets() -> Iterator[Callable[[DaemonProcess], Target]]:
    """Start targets on a daemon; each is ended (and checked) after the test."""
    started: list[Target] = []

    def make(daemon: DaemonProcess) -> Target:
        target = Target(daemon.socket_path)
        started.append(target)
        return target

    yield make
    for target in started:
        target.exit()


@pytest.fixture
def dbg(daemon: DaemonProcess) -> Iterator[Device]:
    """A debugger connection (the test process) to the shared daemon."""
    device = Device.open(daemon.socket_path, role="debugger")
    yield device
    device.close()


def errno_of(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno a refused call raised (fails the test if it succeeded)."""
    with pytest.raises(XeError) as info:
        call(*args, **kwargs)
    assert info.value.errno is not None
    return info.value.errno


def access(
    dbg: Device, client_id: int, vm: int, addr: int, length: int = 0, data: bytes = b""
) -> m.XedDebugVmAccessReply:
    """DEBUG_VM_ACCESS as sent; the whole reply (data and retries)."""
    args = m.XedDebugVmAccess(
        client_id=client_id, vm_id=vm, addr=addr, length=length, write=int(bool(data)), data=data
    )
    reply: m.XedDebugVmAccessReply = dbg.ioctl(Op.DEBUG_VM_ACCESS, args)
    return reply


def next_event(dbg: Device) -> m.DebugEventInfo:
    message: EventMessage = dbg.wait_event(EVENT_WAIT)
    assert message.event == Event.DEBUG_EVENT, message
    data: m.DebugEventInfo = message.data
    return data


def events_until(dbg: Device, kind: str, client_id: int | None = None) -> list[m.DebugEventInfo]:
    """DEBUG_EVENTs up to and including the first of `kind` (of `client_id`, if given)."""
    seen = []
    while True:
        event = next_event(dbg)
        seen.append(event)
        if event.kind == kind and client_id in (None, event.client_id):
            return seen


def poll(check: Callable[[], bool], what: str, rounds: int = 500) -> None:
    """Bounded polling for something the daemon does on its own schedule."""
    for _ in range(rounds):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def attach_errno(dbg: Device, pid: int) -> int:
    try:
        dbg.debug_attach(pid)
    except XeError as exc:
        assert exc.errno is not None
        return exc.errno
    return 0


# --- children that run as uid 65534 -------------------------------------------------------------


def nobody_target(name: str) -> Callable[[Callable[[Any], None], Callable[[], None]], None]:
    """A target running as nobody: a VM with a one-page BO holding b"nobody!!" at BO_VA."""

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        with Device.open(name) as dev:
            vm = dev.vm_create()
            bo = dev.gem_create(PAGE_SIZE)
            with dev.mmap_bo(bo) as cpu:
                cpu[0:8] = b"nobody!!"
                dev.vm_bind(vm, bo, BO_VA)
                report({"uid": os.getuid(), "client_id": dev.client_id, "vm": vm})
                wait_go()
                report({"seen": bytes(cpu[0:8]).hex()})

    return work
