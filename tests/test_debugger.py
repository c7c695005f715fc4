"""The debugger (role debugger): attach rules and DEBUG_EVENT. DEBUG_VM_ACCESS has its
own module (test_debugger_vm_access.py), and so have the target exiting while attached, a
reused pid and `xec debug attach` (test_debugger_lifetime.py); what they share is in
debugger_support.py.

Targets are separate client processes ("targets") that run the snippets the test sends
them over stdin and answer one JSON line each; the debugger is the test process (or, for
the uid rules, a child forked from it that drops to uid 65534).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from errno import EBUSY, ENOENT, EPERM, ESRCH
from typing import Any

import debugger_support
from debugger_support import (
    BO_PATTERN,
    BO_SIZE,
    BO_VA,
    HOST_PATTERN,
    HOST_SIZE,
    NULL_VA,
    UP_VA,
    Target,
    attach_errno,
    errno_of,
    events_until,
    next_event,
    nobody_target,
    poll,
)
from helpers import NOBODY, NobodyChild, needs_root, open_to_nobody

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, Op, encode_reply
from protocols import messages as m
from protocols.constants import PAGE_SIZE
from xed.device import eudebug

# debugger_support's fixtures, for this module's tests too
dbg, targets = debugger_support.dbg, debugger_support.targets


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
