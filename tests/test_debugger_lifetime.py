"""The debugger over its target's lifetime: the target exiting or killed while attached,
an attachment that belongs to one process and not to a pid (credentials per connection, a
reused pid), and `xec debug attach`, the same debugger from the command line, whose
--follow ends when its target does.

The targets, fixtures and helpers are debugger_support.py's, as test_debugger.py's are.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from errno import ENOENT, EPERM, ESRCH
from pathlib import Path

import debugger_support
import pytest
from conftest import ROOT, baseline
from debugger_support import (
    BO_PATTERN,
    BO_VA,
    HOST_PATTERN,
    NULL_VA,
    SNIPPETS,
    UP_VA,
    Target,
    errno_of,
    events_until,
    poll,
)
from helpers import NOBODY, needs_root, open_to_nobody

from clients import Device
from clients.daemon import DaemonProcess

# debugger_support's fixtures, for this module's tests too
dbg, targets = debugger_support.dbg, debugger_support.targets


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
