"""The debugger (role debugger): attach rules, DEBUG_EVENT, DEBUG_VM_ACCESS over BO and
userptr VMAs (racing invalidations included), the target exiting while attached, and
`xec debug attach`.

Targets are separate client processes ("targets") that run the snippets the test sends
them over stdin and answer one JSON line each; the debugger is the test process (or, for
the uid rules, a child forked from it that drops to uid 65534).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from errno import EBUSY, EFAULT, EINVAL, ENOENT, EPERM, ESRCH
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import ROOT, baseline, spawn_client
from helpers import NOBODY, NobodyChild, needs_root, open_to_nobody

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, Event, EventMessage, Op, Reply, decode_incoming, encode_reply
from protocols import messages as m
from protocols.codec import to_wire
from protocols.constants import PAGE_SIZE
from xed.device import eudebug

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


# --- attach rules ----------------------------------------------------------------------------


def test_attach_same_uid_lists_vms_and_bindings(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """DEBUG_ATTACH to a process of our uid answers with its VMs and their bindings."""
    target = targets(daemon).setup()
    reply = dbg.debug_attach(target.pid)
    (vm,) = reply.vms
    assert (vm.client_id, vm.vm_id) == (target.client_id, target.vm)
    by_va = {b.va: b for b in vm.bindings}
    assert set(by_va) == {BO_VA, UP_VA, NULL_VA}
    assert (by_va[BO_VA].kind, by_va[BO_VA].range, by_va[BO_VA].handle) == (
        "bo",
        BO_SIZE,
        target.bo,
    )
    assert (by_va[UP_VA].kind, by_va[UP_VA].range) == ("userptr", HOST_SIZE)
    assert by_va[UP_VA].userptr == target.host
    assert (by_va[NULL_VA].kind, by_va[NULL_VA].range) == ("null", PAGE_SIZE)


MANY_BINDINGS = """
bo = dev.gem_create(PAGE_SIZE)
for _ in range(8):
    vm = dev.vm_create()
    dev.vm_bind_ops(vm, [m.DrmXeVmBindOp(obj=bo, range=PAGE_SIZE, addr=(1 << 46) + (i << 33),
                                         op=DRM_XE_VM_BIND_OP_MAP) for i in range(256)])
"""


def test_attach_to_a_process_with_thousands_of_bindings_lists_what_fits(
    fresh_daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """DEBUG_ATTACH to a process with 8 VMs of 256 bindings each answers with every VM
    and as many bindings as one reply holds (the whole list, 140 KB, ended the daemon)."""
    target = targets(fresh_daemon)
    target.run(MANY_BINDINGS)
    with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
        reply = dbg.debug_attach(target.pid)
        assert len(reply.vms) == 8
        assert 0 < sum(len(vm.bindings) for vm in reply.vms) <= 8 * 256
        assert len(reply.vms[0].bindings) == 256  # the first VMs whole, in order
        assert dbg.version()


def test_attach_reply_at_its_largest_fits_one_datagram() -> None:
    """The largest reply DEBUG_ATTACH can make (every VM, every binding listed, every
    field at its widest) encodes: no target makes the reply fail."""
    widest = m.XedDebugBinding(
        va=2**64 - 1, range=2**64 - 1, kind="x" * 8, handle=2**32 - 1, userptr=2**64 - 1
    )
    left, vms = eudebug.VIEW_BINDINGS, []
    for _ in range(eudebug.VIEW_VMS):
        shown = min(eudebug.VIEW_BINDINGS_PER_VM, left)
        left -= shown
        vms.append(m.XedDebugVm(client_id=2**32 - 1, vm_id=2**32 - 1, bindings=(widest,) * shown))
    reply = m.XedDebugAttachReply(vms=tuple(vms))
    assert len(encode_reply(2**32 - 1, Op.DEBUG_ATTACH, 0, reply)) <= MAX_DATAGRAM


def test_attach_same_non_root_uid_is_allowed(fresh_daemon: DaemonProcess) -> None:
    """A debugger of uid 65534 may attach to a process of uid 65534 (same uid, not root)."""
    needs_root()
    name = open_to_nobody(fresh_daemon)
    target = NobodyChild(fresh_daemon.socket_path, nobody_target(name))
    try:
        state = target.report()
        assert state["uid"] == NOBODY

        def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
            with Device.open(name, role="debugger") as dbg:
                reply = dbg.debug_attach(target.pid)
                data = dbg.debug_vm_read(state["client_id"], state["vm"], BO_VA, 8)
                report({"uid": os.getuid(), "vms": len(reply.vms), "data": data.hex()})

        debugger = NobodyChild(fresh_daemon.socket_path, work)
        seen = debugger.report()
        assert debugger.join() == 0
        assert seen == {"uid": NOBODY, "vms": 1, "data": b"nobody!!".hex()}
    finally:
        target.go()
        target.report()
        assert target.join() == 0


def test_attach_other_uid_is_eperm(
    fresh_daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A debugger of uid 65534 attaching to a process of uid 0 is refused with EPERM."""
    needs_root()
    name = open_to_nobody(fresh_daemon)
    target = targets(fresh_daemon).setup()

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        with Device.open(name, role="debugger") as dbg:
            errno = attach_errno(dbg, target.pid)
            read = 0
            try:
                dbg.debug_vm_read(target.client_id, target.vm, BO_VA, 8)
            except XeError as exc:
                read = exc.errno or -1
            report({"uid": os.getuid(), "attach": errno, "read": read})

    child = NobodyChild(fresh_daemon.socket_path, work)
    seen = child.report()
    assert child.join() == 0
    assert seen == {"uid": NOBODY, "attach": EPERM, "read": ENOENT}
    with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(target.pid)  # the refusal left no attachment behind


def test_root_attaches_to_another_uids_process(fresh_daemon: DaemonProcess) -> None:
    """Root may attach to a process of uid 65534, read its BO and patch it (the target sees it)."""
    needs_root()
    name = open_to_nobody(fresh_daemon)
    target = NobodyChild(fresh_daemon.socket_path, nobody_target(name))
    try:
        state = target.report()
        assert state["uid"] == NOBODY
        with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
            reply = dbg.debug_attach(target.pid)
            assert [(v.client_id, v.vm_id) for v in reply.vms] == [
                (state["client_id"], state["vm"])
            ]
            assert dbg.debug_vm_read(state["client_id"], state["vm"], BO_VA, 8) == b"nobody!!"
            dbg.debug_vm_write(state["client_id"], state["vm"], BO_VA, b"patched!")
            target.go()
            assert target.report() == {"seen": b"patched!".hex()}
    finally:
        target.go()
        assert target.join() == 0


def test_second_debugger_on_same_target_is_ebusy(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A second DEBUG_ATTACH to the same target, from another debugger or the same, is EBUSY."""
    target = targets(daemon)
    dbg.debug_attach(target.pid)
    assert errno_of(dbg.debug_attach, target.pid) == EBUSY
    with Device.open(daemon.socket_path, role="debugger") as other:
        assert errno_of(other.debug_attach, target.pid) == EBUSY


def test_one_debugger_may_attach_to_several_targets(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """One debugger connection may attach to two processes at once and read both."""
    a, b = targets(daemon).setup(), targets(daemon).setup()
    dbg.debug_attach(a.pid)
    dbg.debug_attach(b.pid)
    assert dbg.debug_vm_read(a.client_id, a.vm, BO_VA, 16) == BO_PATTERN[:16]
    assert dbg.debug_vm_read(b.client_id, b.vm, UP_VA, 16) == HOST_PATTERN[:16]


def test_attach_dead_pid_is_esrch(dbg: Device) -> None:
    """DEBUG_ATTACH to the pid of a process that has exited is ESRCH."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert errno_of(dbg.debug_attach, int(done.stdout)) == ESRCH


def test_attach_process_with_only_non_drm_connections_is_esrch(
    fresh_daemon: DaemonProcess,
) -> None:
    """DEBUG_ATTACH to a live process whose connections are debugger/admin ones is ESRCH."""
    with (
        Device.open(fresh_daemon.socket_path, role="debugger") as dbg,
        Device.open(fresh_daemon.socket_path, role="admin"),
    ):
        assert errno_of(dbg.debug_attach, os.getpid()) == ESRCH


def test_attach_pid_whose_drm_connections_closed_is_esrch(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A live process that closed its drm connection has none left to attach to: ESRCH."""
    target = targets(daemon)
    target.run("dev.close()")
    with Device.open(daemon.socket_path, role="admin") as admin:
        poll(
            lambda: all(c.pid != target.pid for c in admin.admin_clients()),
            "the daemon to release the closed connection",
        )
    assert errno_of(dbg.debug_attach, target.pid) == ESRCH


def test_detach_of_pid_not_attached_is_enoent(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """DEBUG_DETACH of a pid this debugger is not attached to is ENOENT (even if another is)."""
    target = targets(daemon)
    assert errno_of(dbg.debug_detach, target.pid) == ENOENT
    assert errno_of(dbg.debug_detach, 0) == ENOENT
    with Device.open(daemon.socket_path, role="debugger") as other:
        other.debug_attach(target.pid)
        assert errno_of(dbg.debug_detach, target.pid) == ENOENT
        other.debug_detach(target.pid)
        assert errno_of(other.debug_detach, target.pid) == ENOENT  # detached once is enough


def test_detach_on_request_lets_another_debugger_attach(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """After DEBUG_DETACH, access is ENOENT and another debugger can attach."""
    target = targets(daemon).setup()
    dbg.debug_attach(target.pid)
    dbg.debug_detach(target.pid)
    assert errno_of(dbg.debug_vm_read, target.client_id, target.vm, BO_VA, 8) == ENOENT
    with Device.open(daemon.socket_path, role="debugger") as other:
        other.debug_attach(target.pid)
        assert other.debug_vm_read(target.client_id, target.vm, BO_VA, 8) == BO_PATTERN[:8]


def test_detach_on_disconnect_lets_another_debugger_attach(
    daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A debugger that disconnects is detached: a new debugger can then attach."""
    target = targets(daemon)
    with Device.open(daemon.socket_path, role="debugger") as first:
        first.debug_attach(target.pid)
    with Device.open(daemon.socket_path, role="debugger") as second:
        poll(lambda: attach_errno(second, target.pid) != EBUSY, "the first debugger to go")
        assert errno_of(second.debug_attach, target.pid) == EBUSY  # it is attached now


def test_detached_debugger_gets_no_more_events(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """After DEBUG_DETACH the old debugger hears nothing; the new one hears the target."""
    target = targets(daemon)
    dbg.debug_attach(target.pid)
    dbg.debug_detach(target.pid)
    with Device.open(daemon.socket_path, role="debugger") as other:
        other.debug_attach(target.pid)
        vm = target.run("result = dev.vm_create()")
        event = next_event(other)
        assert (event.kind, event.vm_id) == ("vm_create", vm)
        dbg.version()  # a round trip: an event sent to us before now would be queued
        assert not dbg.events


# --- events ---------------------------------------------------------------------------------

EVENT_WORK = """
d2 = Device.open(argv[0])
vm2 = d2.vm_create()
bo2 = d2.gem_create(PAGE_SIZE)
with d2.mmap_bo(bo2) as c2:
    c2[0:4] = Batch().end().tobytes()
d2.vm_bind(vm2, bo2, 0x1_0000_0000)
hm2 = d2.host_memory(2 * PAGE_SIZE)
d2.vm_bind_userptr(vm2, hm2, PAGE_SIZE, 0x2_0000_0000, PAGE_SIZE)
q2 = d2.exec_queue_create(vm2)
d2.exec(q2, 0x1_0000_0000)
d2.vm_unbind(vm2, 0x2_0000_0000, PAGE_SIZE)
d2.exec_queue_destroy(q2)
d2.vm_destroy(vm2)
hm2.mapping.close()
result = {"client_id": d2.client_id, "vm": vm2, "bo": bo2, "queue": q2}
d2.close()
"""

OTHER_WORK = """
vm = dev.vm_create()
bo = dev.gem_create(PAGE_SIZE)
dev.vm_bind(vm, bo, 0x1_0000_0000)
q = dev.exec_queue_create(vm)
dev.exec_queue_destroy(q)
dev.vm_destroy(vm)
"""


def test_events_arrive_in_order(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """The target's open, VM, bind, queue, exec, unbind and close arrive as DEBUG_EVENT in order."""
    target = targets(daemon)
    dbg.debug_attach(target.pid)
    done = target.run(EVENT_WORK)
    cid, vm, page = done["client_id"], done["vm"], PAGE_SIZE
    events = events_until(dbg, "close", cid)
    assert {e.pid for e in events} == {target.pid}
    assert {e.client_id for e in events} == {cid}
    got = [(e.kind, e.vm_id, e.addr, e.range) for e in events]
    assert got == [
        ("open", 0, 0, 0),
        ("vm_create", vm, 0, 0),
        ("bind", vm, 0x1_0000_0000, page),
        ("bind", vm, 0x2_0000_0000, page),
        ("exec_queue_create", vm, 0, 0),
        ("exec", vm, 0x1_0000_0000, 0),
        ("unbind", vm, 0x2_0000_0000, page),
        ("exec_queue_destroy", 0, 0, 0),
        ("vm_destroy", vm, 0, 0),
        ("close", 0, 0, 0),
    ]
    assert events[2].detail == f"bo {done['bo']}"
    assert events[3].detail == "userptr"
    assert str(done["queue"]) in events[4].detail
    assert str(done["queue"]) in events[5].detail
    assert str(done["queue"]) in events[7].detail


def test_events_of_other_processes_do_not_arrive(
    daemon: DaemonProcess,
    dbg: Device,
    dev: Device,
    targets: Callable[[DaemonProcess], Target],
) -> None:
    """Another process's work (and the debugger's own drm connection's) sends no DEBUG_EVENT."""
    target, other = targets(daemon), targets(daemon)
    dbg.debug_attach(target.pid)
    other.run(OTHER_WORK)
    extra = Target(daemon.socket_path)  # a process that opens and closes a connection
    extra.exit()
    mine = dev.vm_create()
    dev.vm_destroy(mine)
    vm = target.run("result = dev.vm_create()")
    event = next_event(dbg)  # the first event to come is the target's
    assert (event.kind, event.pid, event.client_id, event.vm_id) == (
        "vm_create", target.pid, target.client_id, vm
    )  # fmt: skip
    dbg.version()
    assert not dbg.events


def test_events_of_the_targets_first_connection(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """The connection the target had before the attach reports too (bind of a BO, exec)."""
    target = targets(daemon).setup()
    dbg.debug_attach(target.pid)
    target.run("dev.vm_unbind(vm, NULL_VA, PAGE_SIZE)")
    event = next_event(dbg)
    assert (event.kind, event.client_id, event.vm_id, event.addr, event.range) == (
        "unbind", target.client_id, target.vm, NULL_VA, PAGE_SIZE
    )  # fmt: skip


# --- DEBUG_VM_ACCESS ---------------------------------------------------------------------------


@pytest.fixture
def attached(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> Target:
    """A target in the usual state, with `dbg` attached to it."""
    target = targets(daemon).setup()
    dbg.debug_attach(target.pid)
    return target


def test_read_bo_through_the_vm(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS reads a target's BO at its GPU address."""
    t = attached
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 64) == BO_PATTERN[:64]
    tail = dbg.debug_vm_read(t.client_id, t.vm, BO_VA + 0x1234, 0x200)
    assert tail == BO_PATTERN[0x1234:0x1434]
    assert access(dbg, t.client_id, t.vm, BO_VA, 8).retries == 0


def test_patch_bo_target_cpu_mapping_sees_it(dbg: Device, attached: Target) -> None:
    """A DEBUG_VM_ACCESS write lands in the BO: the target's own CPU mapping sees it."""
    t = attached
    assert dbg.debug_vm_write(t.client_id, t.vm, BO_VA + PAGE_SIZE - 4, b"patched!") == 8
    seen = t.run(f"result = cpu[{PAGE_SIZE - 8}:{PAGE_SIZE + 8}].hex()")
    assert (
        bytes.fromhex(seen)
        == BO_PATTERN[PAGE_SIZE - 8 : PAGE_SIZE - 4]
        + b"patched!"
        + (BO_PATTERN[PAGE_SIZE + 4 : PAGE_SIZE + 8])
    )
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA + PAGE_SIZE - 4, 8) == b"patched!"


def test_read_and_write_userptr(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS reads and writes a userptr VMA: the target sees it in host memory."""
    t = attached
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 0x3000, 32) == HOST_PATTERN[0x3000:0x3020]
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x10, b"written by dbg")
    assert t.run("result = hm[0x10:0x1e].hex()") == b"written by dbg".hex()


def test_access_across_a_bo_and_a_userptr_in_one_call(dbg: Device, attached: Target) -> None:
    """One DEBUG_VM_ACCESS spans a BO VMA and the userptr VMA after it, reading and writing."""
    t = attached
    data = dbg.debug_vm_read(t.client_id, t.vm, UP_VA - 16, 32)
    assert data == BO_PATTERN[-16:] + HOST_PATTERN[:16]
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA - 8, b"BObytes!HOSTmem!")
    seen = t.run(f"result = [cpu[{BO_SIZE - 8}:{BO_SIZE}].hex(), hm[0:8].hex()]")
    assert seen == [b"BObytes!".hex(), b"HOSTmem!".hex()]


def test_read_of_32_kib_across_vmas(dbg: Device, attached: Target) -> None:
    """A read of exactly 32 KiB (the limit) across the BO and the userptr is served whole."""
    t = attached
    data = dbg.debug_vm_read(t.client_id, t.vm, BO_VA + PAGE_SIZE, MAX_ACCESS)
    assert data == BO_PATTERN[PAGE_SIZE:] + HOST_PATTERN[: MAX_ACCESS - PAGE_SIZE]


@pytest.mark.parametrize(
    "addr,length",
    [
        (HOLE_VA, 8),  # nothing bound
        (BO_VA - 8, 16),  # starts in the hole before the BO
        (0, PAGE_SIZE),
    ],
)
def test_access_of_unmapped_address_is_einval(
    dbg: Device, attached: Target, addr: int, length: int
) -> None:
    """DEBUG_VM_ACCESS starting at an address with nothing bound is EINVAL, read or
    write, as xe_eudebug_vm_access answers an offset no VMA holds (even one whose range
    runs on into a binding)."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, addr, length) == EINVAL
    assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, addr, b"x" * length) == EINVAL


def test_access_running_off_the_end_of_a_binding_is_short(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS running from the userptr into the hole after it reads and writes
    the userptr's part and answers that count, no error (xe's eudebug VM file: pread
    and pwrite return the bytes done before the VMA they could not reach)."""
    t = attached
    end = UP_VA + HOST_SIZE
    assert dbg.debug_vm_read(t.client_id, t.vm, end - 8, 16) == HOST_PATTERN[-8:]
    reply = access(dbg, t.client_id, t.vm, end - 8, 16)
    assert (reply.data, reply.length) == (HOST_PATTERN[-8:], 8)
    assert dbg.debug_vm_write(t.client_id, t.vm, end - 8, b"userptr!nothing!") == 8
    assert t.run("result = hm[HOST_SIZE - 8:HOST_SIZE].hex()") == b"userptr!".hex()


def test_access_of_null_binding_is_efault(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS of a NULL binding is EFAULT, read or write."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, NULL_VA, 8) == EFAULT
    assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, NULL_VA + 8, b"12345678") == EFAULT


def test_write_through_a_read_only_binding_lands(dbg: Device, attached: Target) -> None:
    """A READONLY binding of the BO takes the debugger's write, as xe's eudebug writes
    through the BO whatever the VMA's flags (a GPU store there still faults: test_vm);
    the target sees the bytes through its own mapping."""
    t = attached
    ro_va = 0x5_0000_0000
    t.run(f"dev.vm_bind(vm, bo, {ro_va}, flags=DRM_XE_VM_BIND_FLAG_READONLY)")
    assert dbg.debug_vm_write(t.client_id, t.vm, ro_va + 16, b"breakpt!") == 8
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA + 16, 8) == b"breakpt!"
    assert t.run("result = cpu[16:24].hex()") == b"breakpt!".hex()


@pytest.mark.parametrize("length", [0, MAX_ACCESS + 1, 1 << 40])
def test_read_length_zero_or_above_32_kib_is_einval(
    dbg: Device, attached: Target, length: int
) -> None:
    """DEBUG_VM_ACCESS reading 0 bytes or more than 32 KiB is EINVAL."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, BO_VA, length) == EINVAL


def test_write_of_no_data_is_einval(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS writing no data (length 0) is EINVAL."""
    t = attached
    args = m.XedDebugVmAccess(client_id=t.client_id, vm_id=t.vm, addr=BO_VA, write=1, data=b"")
    assert errno_of(dbg.ioctl, Op.DEBUG_VM_ACCESS, args) == EINVAL


def test_write_above_32_kib_is_einval(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS writing more than 32 KiB (raw frame) is EINVAL and writes nothing."""
    t = attached
    args = m.XedDebugVmAccess(client_id=t.client_id, vm_id=t.vm, addr=BO_VA, write=1, data=b"w")
    wire = dict(to_wire(args), data=b"w" * (MAX_ACCESS + 1))
    dbg.transport.sock.send(msgpack.packb([77, int(Op.DEBUG_VM_ACCESS), wire], use_bin_type=True))
    while True:
        data, fds = dbg.transport.recv()
        assert data, "the daemon hung up"
        reply = decode_incoming(data, tuple(fds), {77: Op.DEBUG_VM_ACCESS})
        if isinstance(reply, Reply):
            break
    assert (reply.id, reply.errno) == (77, EINVAL)
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 8) == BO_PATTERN[:8]
    assert t.run("result = cpu[0:8].hex()") == BO_PATTERN[:8].hex()


def test_access_unknown_client_id_is_enoent(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS naming a connection that does not exist is ENOENT."""
    assert errno_of(dbg.debug_vm_read, 0xFFFF_FFF0, attached.vm, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_read, 0, attached.vm, BO_VA, 8) == ENOENT


def test_access_client_of_process_not_attached_is_enoent(
    daemon: DaemonProcess,
    dbg: Device,
    dev: Device,
    attached: Target,
    targets: Callable[[DaemonProcess], Target],
) -> None:
    """DEBUG_VM_ACCESS on a connection of a process we are not attached to is ENOENT."""
    other = targets(daemon).setup()
    assert errno_of(dbg.debug_vm_read, other.client_id, other.vm, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_write, other.client_id, other.vm, BO_VA, b"no") == ENOENT
    mine = dev.vm_create()  # the debugger process's own drm connection: not attached either
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(mine, bo, BO_VA)
    assert errno_of(dbg.debug_vm_read, dev.client_id, mine, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_read, dbg.client_id, 1, BO_VA, 8) == ENOENT  # itself


def test_access_unknown_vm_is_enoent(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS on a VM id the target connection does not have is ENOENT."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm + 100, BO_VA, 8) == ENOENT
    destroyed = t.run("v = dev.vm_create(); dev.vm_destroy(v); result = v")
    assert errno_of(dbg.debug_vm_read, t.client_id, destroyed, BO_VA, 8) == ENOENT


def test_access_of_freed_host_memory_is_efault(dbg: Device, attached: Target) -> None:
    """Access to host memory the target freed is EFAULT; kept pages and the BO still work."""
    t = attached
    t.run("hm.free(PAGE_SIZE, PAGE_SIZE)")
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA + PAGE_SIZE, 8) == EFAULT
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA, 2 * PAGE_SIZE) == EFAULT
    write = dbg.debug_vm_write
    assert errno_of(write, t.client_id, t.vm, UP_VA + PAGE_SIZE + 8, b"freed") == EFAULT
    assert t.run("result = hm[PAGE_SIZE:PAGE_SIZE + 8].hex()") == bytes(8).hex()
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA, 16) == HOST_PATTERN[:16]
    assert (
        dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 2 * PAGE_SIZE, 16)
        == (HOST_PATTERN[2 * PAGE_SIZE : 2 * PAGE_SIZE + 16])
    )
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 16) == BO_PATTERN[:16]


def test_access_after_replace_reads_the_new_contents(dbg: Device, attached: Target) -> None:
    """After the target replaces host memory under its userptr, a read sees the new bytes."""
    t = attached
    t.run("hm.replace(0, b'R' * PAGE_SIZE)")
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA, PAGE_SIZE) == b"R" * PAGE_SIZE


def test_access_of_a_userptr_split_by_a_partial_unbind(dbg: Device, attached: Target) -> None:
    """A userptr split by a partial unbind lists as two VMAs and its tail reads the right bytes."""
    t = attached
    t.run("dev.vm_unbind(vm, UP_VA + PAGE_SIZE, PAGE_SIZE)")
    dbg.debug_detach(t.pid)
    (vm,) = dbg.debug_attach(t.pid).vms
    userptrs = sorted((b.va, b.range, b.userptr) for b in vm.bindings if b.kind == "userptr")
    assert userptrs == [
        (UP_VA, PAGE_SIZE, t.host),
        (UP_VA + 2 * PAGE_SIZE, HOST_SIZE - 2 * PAGE_SIZE, t.host + 2 * PAGE_SIZE),
    ]
    tail = dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 2 * PAGE_SIZE, 16)
    assert tail == HOST_PATTERN[2 * PAGE_SIZE : 2 * PAGE_SIZE + 16]
    hole = UP_VA + PAGE_SIZE  # the page unbound: nothing there, as at any hole
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, hole, 8) == EINVAL


RACE = """
stop = argv_stop
i = 0
while not os.path.exists(stop) and i < 1_000_000:
    i += 1
    hm.replace(0, bytes([i % 250 + 1]) * HOST_SIZE)
result = {"replaces": i, "last": i % 250 + 1}
"""


def test_read_racing_invalidation_retries_and_is_current(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Reads racing replace() retry at least once, never return torn pages, end on the last fill."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    retries = 0
    reads = 0
    try:
        while reads < 500 and (not retries or reads < 50):  # at least 50, to look for tears
            reply = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE)
            reads += 1
            retries += reply.retries
            assert len(reply.data) == HOST_SIZE
            for page in range(0, HOST_SIZE, PAGE_SIZE):
                chunk = reply.data[page : page + PAGE_SIZE]
                if chunk == HOST_PATTERN[page : page + PAGE_SIZE]:
                    continue  # not replaced yet when this page was read
                fills = set(chunk)
                assert len(fills) == 1, f"read {reads}: page {page // PAGE_SIZE} is torn"
                assert 1 <= fills.pop() <= 250, f"read {reads}: page {page // PAGE_SIZE} freed?"
    finally:
        stop.touch()
        done = t.wait()
    assert retries > 0, f"no retry in {reads} reads racing {done['replaces']} replaces"
    final = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE)
    assert final.data == bytes([done["last"]]) * HOST_SIZE
    assert final.retries == 0


def test_write_racing_invalidation_lands_in_current_memory(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Debugger writes racing replace() are served, and a later write shows in host memory."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    try:
        for n in range(50):
            dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x100, n.to_bytes(4, "little"))
    finally:
        stop.touch()
        t.wait()
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x100, b"last")
    assert t.run("result = hm[0x100:0x104].hex()") == b"last".hex()


MIN_READS = 200  # reads racing the replaces, at least (old code tore about 1 in 6)
MAX_READS = 5000  # the bound, should the target's replaces be slow to come


def one_generation(data: bytes) -> int | None:
    """The fill (1 to 250) every byte of `data` has, or None if it is not one fill."""
    fills = set(data)
    if len(fills) != 1:
        return None
    fill = fills.pop()
    return fill if 1 <= fill <= 250 else None


def test_read_racing_invalidation_sees_one_generation(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Each 32 KiB read racing replace() sees one generation of the userptr's pages, whole
    (the kernel copies under the notifier lock), never pages of two replaces."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    seen: set[int] = set()
    reads = 0
    try:
        while reads < MAX_READS and (reads < MIN_READS or len(seen) < 3):
            data = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE).data
            reads += 1
            if data == HOST_PATTERN:
                continue  # before the first replace
            fill = one_generation(data)
            pages = [data[p] for p in range(0, HOST_SIZE, PAGE_SIZE)]
            assert fill is not None, f"read {reads} mixes generations: page fills {pages}"
            seen.add(fill)
    finally:
        stop.touch()
        t.wait()
    assert len(seen) >= 3, f"{reads} reads saw only generations {seen}: no race"


def test_write_racing_invalidation_lands_once_and_whole(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """A 32 KiB debugger write racing replace() lands whole in one generation: read back
    at once, the range is all of that write, or all of a later replace, never part of each."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    landed = replaced = 0
    n = 0
    try:
        while n < MAX_READS and (n < MIN_READS or not landed or not replaced):
            n += 1
            stamp = (n.to_bytes(4, "little") + b"dbg!") * (HOST_SIZE // 8)
            access(dbg, t.client_id, t.vm, UP_VA, data=stamp)
            back = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE).data
            if back == stamp:
                landed += 1
                continue
            pages = [back[p : p + 8] for p in range(0, HOST_SIZE, PAGE_SIZE)]
            assert one_generation(back) is not None, f"write {n} torn: pages start {pages}"
            replaced += 1  # a replace came after the write, over all of it
    finally:
        stop.touch()
        done = t.wait()
    assert landed and replaced, f"{n} writes: {landed} read back, {replaced} replaced: no race"
    final = (b"last" + b"dbg!") * (HOST_SIZE // 8)
    access(dbg, t.client_id, t.vm, UP_VA, data=final)
    assert t.run("result = hm[0:HOST_SIZE].hex()") == final.hex()
    assert done["replaces"] > 0


def test_userptr_access_disabled_is_einval_bo_still_works(
    make_daemon: Callable[..., DaemonProcess], targets: Callable[[DaemonProcess], Target]
) -> None:
    """With [debugger] userptr_access = false userptr ranges are EINVAL while BO ranges work."""
    daemon = make_daemon("[debugger]\nuserptr_access = false\n")
    t = targets(daemon).setup()
    with Device.open(daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(t.pid)
        assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA, 8) == EINVAL
        assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA - 8, 16) == BO_PATTERN[-8:]  # short
        assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, UP_VA + 8, b"nope") == EINVAL
        assert t.run("result = hm[8:12].hex()") == HOST_PATTERN[8:12].hex()
        assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 16) == BO_PATTERN[:16]
        dbg.debug_vm_write(t.client_id, t.vm, BO_VA, b"still ok")
        assert t.run("result = cpu[0:8].hex()") == b"still ok".hex()


def test_userptr_access_disabled_write_across_bo_and_userptr_is_short(
    make_daemon: Callable[..., DaemonProcess], targets: Callable[[DaemonProcess], Target]
) -> None:
    """With userptr access off, a BO+userptr write writes the BO part and answers its
    count (the userptr VMA refused after it: a short write), host memory untouched."""
    daemon = make_daemon("[debugger]\nuserptr_access = false\n")
    t = targets(daemon).setup()
    with Device.open(daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(t.pid)
        assert dbg.debug_vm_write(t.client_id, t.vm, UP_VA - 8, b"B" * 16) == 8
        assert t.run(f"result = cpu[{BO_SIZE - 8}:{BO_SIZE}].hex()") == (b"B" * 8).hex()
        assert t.run("result = hm[0:8].hex()") == HOST_PATTERN[:8].hex()


def test_userptr_access_default_is_on(daemon: DaemonProcess, dbg: Device, attached: Target) -> None:
    """Without configuration the daemon serves userptr ranges to the debugger."""
    assert dbg.debug_vm_read(attached.client_id, attached.vm, UP_VA, 4) == HOST_PATTERN[:4]


# --- the target exits while attached ---------------------------------------------------------


def test_target_exit_while_attached_closes_then_detaches(
    fresh_daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A target exiting while attached: close events, then detach; its objects all go."""
    with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
        before = baseline(fresh_daemon)
        t = targets(fresh_daemon).setup()
        second = t.run(
            "d2 = Device.open(argv[0]); v2 = d2.vm_create(); q = dev.exec_queue_create(vm)\n"
            "result = d2.client_id"
        )
        listed = {(v.client_id, v.vm_id) for v in dbg.debug_attach(t.pid).vms}
        assert listed == {(t.client_id, t.vm), (second, 1)}  # every connection's VMs
        t.exit()
        events = events_until(dbg, "detach")
        kinds = [(e.kind, e.client_id) for e in events]
        assert sorted(kinds[:-1]) == sorted([("close", t.client_id), ("close", second)])
        detach = events[-1]
        assert (detach.kind, detach.pid) == ("detach", t.pid)
        assert "exit" in detach.detail
        poll(lambda: baseline(fresh_daemon) == before, "the target's objects to go")
        assert errno_of(dbg.debug_detach, t.pid) == ENOENT  # detached already
        assert errno_of(dbg.debug_attach, t.pid) == ESRCH
        dbg.version()
        assert not dbg.events


def test_target_killed_while_attached_detaches(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> None:
    """A target killed (SIGKILL) while attached: its close, then detach."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    t.proc.kill()
    t.proc.wait(30)
    events = events_until(dbg, "detach")
    assert [(e.kind, e.client_id) for e in events] == [("close", t.client_id), ("detach", 0)]
    t.proc.communicate(timeout=30)
    t.proc.stdin = None  # reaped: nothing for the fixture to check


# --- one process, not a pid: credentials per connection, a reused pid ----------------------

# A process of the test's with no connection yet, running snippets as TARGET does, in the
# socket's directory (name = the socket's name there): as root, or as uid 65534.
REPL = (
    r"""
import json, os, subprocess, sys, traceback
from clients import Device, XeError
from protocols.constants import PAGE_SIZE
from xed.device import eudebug
name, BO_VA, NOBODY = sys.argv[1], int(sys.argv[2]), 65534

def errno_of(call, *args):
    try:
        call(*args)
    except XeError as exc:
        return exc.errno
    return 0

def vm_with(dev, data):  # a VM with a page BO holding data at BO_VA; and its mapping
    vm, bo = dev.vm_create(), dev.gem_create(PAGE_SIZE)
    cpu = dev.mmap_bo(bo)
    cpu[0:len(data)] = data
    dev.vm_bind(vm, bo, BO_VA)
    return vm, cpu

print(json.dumps({"pid": os.getpid(), "client_id": 0}), flush=True)
"""
    + SNIPPETS
)


class Repl(Target):
    """A process that runs snippets (REPL), with no connection of its own to begin with."""

    def __init__(self, socket_path: Path, user: int | None = None) -> None:
        as_user = [f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        proc = subprocess.Popen(
            [*(["setpriv", *as_user] if user is not None else []),
             sys.executable, "-c", REPL, socket_path.name, str(BO_VA)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=socket_path.parent, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        super().__init__(socket_path, proc)


def test_connection_opened_as_root_after_attach_is_out_of_reach(
    fresh_daemon: DaemonProcess,
) -> None:
    """A uid-65534 debugger attached to a process that connected as euid 65534 neither
    reaches (EPERM) nor hears of the connection it opens once it is root again."""
    needs_root()
    open_to_nobody(fresh_daemon)
    target, dbg = Repl(fresh_daemon.socket_path), Repl(fresh_daemon.socket_path, user=NOBODY)
    try:
        first = target.run("""
            os.setegid(NOBODY); os.seteuid(NOBODY)  # SO_PEERCRED: the euid at connect
            d1 = Device.open(name)
            os.seteuid(0); os.setegid(0)
            vm1, cpu1 = vm_with(d1, b"nobody!!")
            result = {"client_id": d1.client_id, "vm": vm1}
        """)
        c1, vm1 = first["client_id"], first["vm"]
        listed = dbg.run(f"""
            dbg = Device.open(name, role="debugger")
            result = [[v.client_id, v.vm_id] for v in dbg.debug_attach({target.pid}).vms]
        """)
        assert listed == [[c1, vm1]]
        second = target.run("""
            d2 = Device.open(name)  # root now
            vm2, cpu2 = vm_with(d2, b"rootdata")
            marker = d1.vm_create()  # after d2's events, on the connection still ours
            result = {"client_id": d2.client_id, "vm": vm2, "marker": marker}
        """)
        c2, vm2 = second["client_id"], second["vm"]
        seen = dbg.run(f"""
            events = []
            while not events or events[-1] != ["vm_create", {c1}, {second["marker"]}]:
                e = dbg.wait_event(10).data
                events.append([e.kind, e.client_id, e.vm_id])
            other = Device.open(name, role="debugger")
            result = {{
                "read": errno_of(dbg.debug_vm_read, {c2}, {vm2}, BO_VA, 8),
                "write": errno_of(dbg.debug_vm_write, {c2}, {vm2}, BO_VA, b"patched!"),
                "first": dbg.debug_vm_read({c1}, {vm1}, BO_VA, 8).hex(),
                "events": events,
                "attach": errno_of(other.debug_attach, {target.pid}),
            }}
        """)
        assert seen == {
            "read": EPERM,
            "write": EPERM,
            "first": b"nobody!!".hex(),
            "events": [["vm_create", c1, second["marker"]]],  # none of d2's
            "attach": EPERM,  # a process holding a root connection: not for uid 65534
        }
        assert target.run("result = bytes(cpu2[0:8]).hex()") == b"rootdata".hex()
    finally:
        dbg.exit()
        target.exit()


def repl_with_pid(socket_path: Path, pid: int) -> Repl:
    """A root REPL process that the kernel gives `pid` (ns_last_pid = pid - 1 just before
    it forks). Another process on the machine may fork in between and take the pid:
    then end ours, wait for the pid to be free again and retry."""
    for _ in range(20):
        poll(lambda: not Path(f"/proc/{pid}").exists(), f"pid {pid} to be free", rounds=3000)
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        repl = Repl(socket_path)
        if repl.pid == pid:
            return repl
        repl.exit()
    raise AssertionError(f"pid {pid} was taken by another process 20 times")


# The process's connection also goes to a child of it that keeps it open and waits.
KEEPER = """
d = Device.open(name)
vm, cpu = vm_with(d, b"first!!!")
keeper = subprocess.Popen(
    [sys.executable, "-c", "import signal; signal.pause()"],
    pass_fds=[d.transport.sock.fileno()], start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
result = {"client_id": d.client_id, "vm": vm, "keeper": keeper.pid}
"""


def test_reused_pid_is_a_stranger_to_the_attachment(fresh_daemon: DaemonProcess) -> None:
    """The attachment ends when its process exits, even while a child keeps a connection of
    it open; a root process given the pid later is neither reached (ENOENT) nor heard."""
    needs_root()
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs /proc/sys/kernel/ns_last_pid to reuse a pid")
    a = Repl(fresh_daemon.socket_path)
    first = a.run(KEEPER)
    pid, keeper = a.pid, os.pidfd_open(first["keeper"])
    b: Repl | None = None
    try:
        with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
            listed = [(v.client_id, v.vm_id) for v in dbg.debug_attach(pid).vms]
            assert listed == [(first["client_id"], first["vm"])]
            a.exit()  # and reaped: the pid is free; the keeper holds the connection
            b = repl_with_pid(fresh_daemon.socket_path, pid)
            second = b.run("""
                d = Device.open(name)
                vm, cpu = vm_with(d, b"secret!!")
                result = {"client_id": d.client_id, "vm": vm}
            """)
            c2, vm2 = second["client_id"], second["vm"]
            assert errno_of(dbg.debug_vm_read, c2, vm2, BO_VA, 8) == ENOENT
            assert errno_of(dbg.debug_vm_write, c2, vm2, BO_VA, b"patched!") == ENOENT
            events = events_until(dbg, "detach")
            assert [(e.kind, e.pid, e.client_id) for e in events] == [("detach", pid, 0)]
            assert "exit" in events[0].detail
            old = first["client_id"], first["vm"]
            assert errno_of(dbg.debug_vm_read, *old, BO_VA, 8) == ENOENT  # the dead one's
            # attaching to the pid now is attaching to the newcomer, and to it alone
            assert [(v.client_id, v.vm_id) for v in dbg.debug_attach(pid).vms] == [(c2, vm2)]
            assert dbg.debug_vm_read(c2, vm2, BO_VA, 8) == b"secret!!"
            dbg.version()
            assert not dbg.events
    finally:
        signal.pidfd_send_signal(keeper, signal.SIGKILL)  # by pidfd: that process only
        select.select([keeper], [], [], 30)  # a pidfd reads ready once its process is gone
        os.close(keeper)
        if b is not None:
            b.exit()


# --- xec debug attach ------------------------------------------------------------------------


def xec_debug(
    daemon: DaemonProcess, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients", "debug", "attach", *args,
         "--socket", str(daemon.socket_path)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip


def test_xec_debug_attach_lists_dumps_and_patches(
    daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """`xec debug attach PID --dump --patch` exits 0, lists bindings, dumps and patches."""
    t = targets(daemon).setup()
    c, v = t.client_id, t.vm
    done = xec_debug(
        daemon, str(t.pid),
        "--patch", f"{c}:{v}:{BO_VA + 0x10:#x}:c0ffee00",
        "--dump", f"{c}:{v}:{BO_VA:#x}:0x20",
        "--dump", f"{c}:{v}:{UP_VA:#x}:16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"attached to pid {t.pid}" in out
    assert f"connection {c}, VM {v}:" in out
    lines = out.splitlines()
    assert any(f"{BO_VA:#018x}" in ln and "bo" in ln and f"handle {t.bo}" in ln for ln in lines)
    assert any(f"{UP_VA:#018x}" in ln and "userptr" in ln and f"{t.host:#x}" in ln for ln in lines)
    assert any(f"{NULL_VA:#018x}" in ln and "null" in ln for ln in lines)
    assert "patched 4 bytes" in out
    assert BO_PATTERN[:16].hex(" ") in out
    assert (bytes.fromhex("c0ffee00") + BO_PATTERN[0x14:0x20]).hex(" ") in out
    assert HOST_PATTERN[:16].hex(" ") in out
    assert t.run("result = cpu[0x10:0x14].hex()") == "c0ffee00"


def test_xec_debug_attach_pid_without_connections_exits_1(daemon: DaemonProcess) -> None:
    """`xec debug attach PID` for a pid with no drm connection exits 1 with a message."""
    done = xec_debug(daemon, str(os.getpid()))
    assert done.returncode == 1
    assert "xec debug" in done.stderr
    assert "ESRCH" in done.stderr or "No such process" in done.stderr


def test_xec_debug_attach_follow_prints_events_until_exit(
    daemon: DaemonProcess, targets: Callable[[DaemonProcess], Target]
) -> None:
    """`xec debug attach PID --follow` prints the target's events and stops at its exit."""
    t = targets(daemon).setup()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients", "debug", "attach", str(t.pid), "--follow", "30",
         "--socket", str(daemon.socket_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            assert line, "xec debug ended before attaching"
            if line.startswith("attached to pid"):
                break
        vm = t.run("result = dev.vm_create()")
        t.exit()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    kinds = [ln.split()[1] for ln in out.splitlines() if ln.startswith("event ")]
    assert kinds == ["vm_create", "close", "detach"]
    assert f"vm {vm} " in out
