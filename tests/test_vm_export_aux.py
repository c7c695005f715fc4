"""The aux driver's side of VM export, its registrations: AUX_VM_IMPORT (on behalf of the
exporting application only), and aux disconnect, which unregisters all the aux driver
imported. What a registration is used for, AUX_VM_RESOLVE and the invalidation events, is
in test_vm_export_resolve.py; the helpers here are shared with it and test_aux_userptr.py.

The test process is the application (drm connection `dev`) and the aux driver (a
connection of role `aux`); other applications and a killable aux driver are spawned
agent processes.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import pytest
from agent import Agent
from conftest import baseline
from test_vm_export import (
    BASE,
    BATCH_VA,
    SETTLE,
    SIZE,
    WAIT_NS,
    counts,
    errno_of,
    settle_to,
    vm_with_bo,
    wait_until,
)

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols import Event, Op
from protocols import messages as m
from protocols.constants import (
    DRM_CLOEXEC,
    DRM_RDWR,
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    PAGE_SIZE,
)

VA_BITS = 48  # the default device's
ELSEWHERE = 0x5_0000_0000  # far from BASE
SENTINEL = 0x7_0000_0000  # far from both: marks the end of a test's events


def export_import(dev: Device, aux: Device, vm: int) -> m.XedAuxVmImportReply:
    """Export `vm` from dev, import it on aux on our own behalf, close the descriptor."""
    fd = dev.vm_export(vm)
    try:
        return aux.aux_vm_import(fd, os.getpid())
    finally:
        os.close(fd)


def back_to_back(dev: Device, *pages: int) -> tuple[int, list[int]]:
    """(vm, bos): a VM with BOs of `pages` pages each, bound one after another at BASE."""
    vm = dev.vm_create()
    bos, addr = [], BASE
    for n in pages:
        bo = dev.gem_create(n * PAGE_SIZE)
        dev.vm_bind(vm, bo, addr)
        bos.append(bo)
        addr += n * PAGE_SIZE
    return vm, bos


def invalidations(dev: Device, vm: int, aux: Device, handle: int) -> list[Any]:
    """Every event `aux` got for what was done before this call (taken off its queue),
    with seqno zeroed once checked here: each is one more than the one before.

    Events reach a connection in the order they were queued: a sentinel invalidation
    (a page bound, resolved and unbound far from everything else) marks the end."""
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, bo, SENTINEL)
    resolved(aux, handle, SENTINEL, PAGE_SIZE)
    dev.vm_unbind(vm, SENTINEL, PAGE_SIZE)
    dev.gem_close(bo)
    found: list[Any] = []
    while True:
        event = aux.wait_event(timeout=SETTLE)
        data = event.data
        if event.event == Event.AUX_RANGE_INVALIDATED and data.va == SENTINEL:
            assert (data.vm_handle, data.length, data.reason) == (handle, PAGE_SIZE, "unbind")
            seqnos = [e.seqno for e in found if e.vm_handle == handle] + [data.seqno]
            assert seqnos == list(range(seqnos[0], seqnos[0] + len(seqnos)))
            return [attrs.evolve(e, seqno=0) for e in found]
        found.append(data)


def resolved(aux: Device, handle: int, va: int, length: int) -> None:
    """Resolve (and so watch) a range; the descriptors are not needed."""
    _, fds = aux.aux_vm_resolve(handle, va, length)
    close_all(fds)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


# --- AUX_VM_IMPORT ---------------------------------------------------------------------------


def _memfd() -> int:
    fd = os.memfd_create("not-a-vm")
    os.ftruncate(fd, PAGE_SIZE)
    return fd


def _pipe() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


def _dma_buf(dev: Device) -> int:
    return dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE), DRM_CLOEXEC | DRM_RDWR)


def _regular_file() -> int:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


def _socketpair_end() -> int:
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    two.close()
    return one.detach()


NOT_A_VM: dict[str, Callable[[Device], int]] = {
    "memfd": lambda dev: _memfd(),
    "pipe": lambda dev: _pipe(),
    "dma-buf": _dma_buf,
    "regular-file": lambda dev: _regular_file(),
    "socketpair": lambda dev: _socketpair_end(),
}


@pytest.mark.parametrize("kind", list(NOT_A_VM))
def test_aux_import_of_non_vm_descriptor_is_einval(dev: Device, aux: Device, kind: str) -> None:
    """AUX_VM_IMPORT of a memfd, pipe, dma-buf of this daemon, file or socket: EINVAL."""
    fd = NOT_A_VM[kind](dev)
    try:
        assert errno_of(aux.aux_vm_import, fd, os.getpid()) == errno.EINVAL
    finally:
        os.close(fd)
    assert not aux.events


def test_aux_import_of_another_daemons_vm_is_einval(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """A VM descriptor exported by another daemon is not a VM of this one: EINVAL."""
    one, two = make_daemon(name="one"), make_daemon(name="two")
    with Device.open(one.socket_path) as dev, Device.open(two.socket_path, role="aux") as aux:
        vm, _ = vm_with_bo(dev)
        fd = dev.vm_export(vm)
        try:
            assert errno_of(aux.aux_vm_import, fd, os.getpid()) == errno.EINVAL
            assert counts(two).aux_registrations == 0
            with Device.open(one.socket_path, role="aux") as own:  # its own daemon takes it
                assert own.aux_vm_import(fd, os.getpid()).vm_handle > 0
        finally:
            os.close(fd)


def test_aux_import_on_behalf_of_another_pid_is_eperm(
    daemon: DaemonProcess, dev: Device, aux: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """on_behalf_of_pid naming a process that did not export the VM: EPERM."""
    other = agents(daemon)
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        for pid in (other.pid, 1, os.getppid(), 0):
            assert errno_of(aux.aux_vm_import, fd, pid) == errno.EPERM
        assert aux.aux_vm_import(fd, os.getpid()).vm_handle > 0
    finally:
        os.close(fd)


def test_aux_import_for_app_that_was_handed_the_fd_is_eperm(
    daemon: DaemonProcess, aux: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """App A exports and hands its VM fd to app B: importing it on behalf of B is EPERM."""
    a, b = agents(daemon), agents(daemon)
    _, (from_a,) = a.run_fds(
        f"""
        vm = dev.vm_create()
        dev.vm_bind(vm, dev.gem_create({SIZE}), {BASE})
        send = [dev.vm_export(vm)]
        """
    )
    try:
        # B holds A's VM now, and hands it to the aux driver as if it were its own
        _, (from_b,) = b.run_fds("(held,) = fds\nsend = [os.dup(held)]", [from_a])
    finally:
        os.close(from_a)
    try:
        assert errno_of(aux.aux_vm_import, from_b, b.pid) == errno.EPERM
        assert aux.aux_vm_import(from_b, a.pid).vm_handle > 0  # A's own request is fine
    finally:
        os.close(from_b)
    b.run("os.close(held)")


@pytest.mark.parametrize(
    "fields",
    [{"flags": 1}, {"flags": 1 << 31}, {"reserved": (1, 0)}, {"reserved": (0, 1)}],
    ids=["flags1", "flags31", "reserved0", "reserved1"],
)
def test_aux_import_nonzero_flags_or_reserved_is_einval(
    dev: Device, aux: Device, fields: dict[str, Any]
) -> None:
    """AUX_VM_IMPORT with flags or reserved[] not zero is EINVAL, and registers nothing."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        args = m.XedAuxVmImport(on_behalf_of_pid=os.getpid(), **fields)
        assert errno_of(aux.ioctl, Op.AUX_VM_IMPORT, args, [fd]) == errno.EINVAL
        assert aux.aux_vm_import(fd, os.getpid()).vm_handle > 0  # not registered before
    finally:
        os.close(fd)


def test_aux_import_after_the_exported_vms_queue_faulted(dev: Device, aux: Device) -> None:
    """A queue's fault ends the queue alone: its LR VM, exported before, is still
    imported, with its bindings."""
    vm = dev.vm_create(DRM_XE_VM_CREATE_FLAG_LR_MODE)
    bo = dev.gem_create(SIZE)
    dev.vm_bind(vm, bo, BATCH_VA)
    fd = dev.vm_export(vm)
    try:
        queue = dev.exec_queue_create(vm)
        with dev.mmap_bo(bo) as cpu:
            batch = Batch().raw(0x1F << 23).end().tobytes()
            cpu[0x100 : 0x100 + len(batch)] = batch
            dev.exec(queue, BATCH_VA + 0x100, syncs=[user_fence(BATCH_VA, 1)])
            # never written (a long-running job that faults): EIO once the queue is banned
            addr = cpu.user_address(0)
            wait = partial(dev.wait_user_fence, addr, 1, WAIT_NS, exec_queue=queue)
            assert errno_of(wait) == errno.EIO
        assert dev.wait_event(timeout=SETTLE).event == Event.EXEC_QUEUE_BANNED
        imported = aux.aux_vm_import(fd, os.getpid())
        assert [binding.va for binding in imported.bindings] == [BATCH_VA]
        aux.aux_vm_release(imported.vm_handle)
        dev.exec_queue_destroy(queue)
    finally:
        os.close(fd)


def test_aux_import_twice_on_one_connection_is_eexist(
    daemon: DaemonProcess, dev: Device, aux: Device
) -> None:
    """The same aux connection importing a VM again: EEXIST; a second aux may register it."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        first = aux.aux_vm_import(fd, os.getpid())
        assert errno_of(aux.aux_vm_import, fd, os.getpid()) == errno.EEXIST
        copy = os.dup(fd)  # another copy of the same descriptor changes nothing
        try:
            assert errno_of(aux.aux_vm_import, copy, os.getpid()) == errno.EEXIST
        finally:
            os.close(copy)
        with Device.open(daemon.socket_path, role="aux") as second:
            other = second.aux_vm_import(fd, os.getpid())
            assert other.bindings == first.bindings
            second.aux_vm_release(other.vm_handle)
        aux.aux_vm_release(first.vm_handle)
        again = aux.aux_vm_import(fd, os.getpid())  # released: may import once more
        assert again.bindings == first.bindings
    finally:
        os.close(fd)


def test_aux_import_reply_lists_the_bindings(dev: Device, aux: Device) -> None:
    """The import reply lists every binding: va, range, bo_size, bo_offset (NULL: size 0)."""
    vm = dev.vm_create()
    big = dev.gem_create(8 * PAGE_SIZE)
    small = dev.gem_create(2 * PAGE_SIZE)
    dev.vm_bind(vm, big, BASE, size=3 * PAGE_SIZE, obj_offset=4 * PAGE_SIZE)
    dev.vm_bind(vm, small, BASE + 3 * PAGE_SIZE)
    null = m.DrmXeVmBindOp(
        addr=ELSEWHERE, range=16 * PAGE_SIZE, op=DRM_XE_VM_BIND_OP_MAP,
        flags=DRM_XE_VM_BIND_FLAG_NULL,
    )  # fmt: skip
    dev.vm_bind_ops(vm, [null])
    dev.vm_bind(vm, big, BASE + 8 * PAGE_SIZE, size=PAGE_SIZE, obj_offset=7 * PAGE_SIZE)
    reply = export_import(dev, aux, vm)
    assert reply.va_bits == VA_BITS
    assert reply.bindings == (
        m.XedAuxBinding(
            va=BASE, range=3 * PAGE_SIZE, bo_size=8 * PAGE_SIZE, bo_offset=4 * PAGE_SIZE
        ),
        m.XedAuxBinding(va=BASE + 3 * PAGE_SIZE, range=2 * PAGE_SIZE, bo_size=2 * PAGE_SIZE),
        m.XedAuxBinding(
            va=BASE + 8 * PAGE_SIZE, range=PAGE_SIZE, bo_size=8 * PAGE_SIZE, bo_offset=7 * PAGE_SIZE
        ),
        m.XedAuxBinding(va=ELSEWHERE, range=16 * PAGE_SIZE, bo_size=0),
    )


def test_aux_import_of_a_vm_with_600_bindings_lists_the_first_512(dev: Device, aux: Device) -> None:
    """A VM of 600 bindings imports: the reply lists the first 512 (what its record
    holds), the rest resolve as any binding does; the import used to fail (EIO) and
    leave the VM registered all the same (EEXIST on the next import, EBUSY on destroy)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    for start in range(0, 600, 300):
        ops = [
            m.DrmXeVmBindOp(
                obj=bo, range=PAGE_SIZE, addr=BASE + i * PAGE_SIZE, op=DRM_XE_VM_BIND_OP_MAP
            )
            for i in range(start, start + 300)
        ]
        dev.vm_bind_ops(vm, ops)
    fd = dev.vm_export(vm)
    try:
        reply = aux.aux_vm_import(fd, os.getpid())
    finally:
        os.close(fd)
    assert [b.va for b in reply.bindings] == [BASE + i * PAGE_SIZE for i in range(512)]
    spans, fds = aux.aux_vm_resolve(reply.vm_handle, BASE + 599 * PAGE_SIZE, PAGE_SIZE)
    close_all(fds)
    assert len(spans) == 1
    aux.aux_vm_release(reply.vm_handle)
    dev.vm_destroy(vm)


def test_aux_import_reply_after_splits(dev: Device, aux: Device) -> None:
    """Binds that split a BO binding and a NULL binding: the pieces, with their offsets
    (a NULL piece has no BO: size 0 and offset 0)."""
    vm = dev.vm_create()
    bo = dev.gem_create(8 * PAGE_SIZE)
    dev.vm_bind(vm, bo, BASE)
    dev.vm_unbind(vm, BASE + 2 * PAGE_SIZE, PAGE_SIZE)  # a hole in the middle of the BO
    null = m.DrmXeVmBindOp(
        addr=ELSEWHERE, range=16 * PAGE_SIZE, op=DRM_XE_VM_BIND_OP_MAP,
        flags=DRM_XE_VM_BIND_FLAG_NULL,
    )  # fmt: skip
    dev.vm_bind_ops(vm, [null])
    dev.vm_bind(vm, bo, ELSEWHERE + 4 * PAGE_SIZE, size=PAGE_SIZE)  # splits the NULL one
    reply = export_import(dev, aux, vm)
    assert reply.bindings == (
        m.XedAuxBinding(va=BASE, range=2 * PAGE_SIZE, bo_size=8 * PAGE_SIZE),
        m.XedAuxBinding(
            va=BASE + 3 * PAGE_SIZE,
            range=5 * PAGE_SIZE,
            bo_size=8 * PAGE_SIZE,
            bo_offset=3 * PAGE_SIZE,
        ),
        m.XedAuxBinding(va=ELSEWHERE, range=4 * PAGE_SIZE, bo_size=0),
        m.XedAuxBinding(va=ELSEWHERE + 4 * PAGE_SIZE, range=PAGE_SIZE, bo_size=8 * PAGE_SIZE),
        m.XedAuxBinding(va=ELSEWHERE + 5 * PAGE_SIZE, range=11 * PAGE_SIZE, bo_size=0),
    )


def test_aux_import_of_empty_vm_lists_no_bindings(dev: Device, aux: Device) -> None:
    """A VM with nothing bound imports with an empty bindings list."""
    reply = export_import(dev, aux, dev.vm_create())
    assert reply.bindings == ()


# --- aux disconnect ------------------------------------------------------------------------------


def test_aux_close_unregisters_everything(fresh_daemon: DaemonProcess) -> None:
    """An aux connection closed with VMs registered: all unregistered, VMs destroyable."""
    path = fresh_daemon.socket_path
    with Device.open(path) as dev:
        start = baseline(fresh_daemon)
        made = [back_to_back(dev, 1, 1) for _ in range(3)]
        vms = [vm for vm, _ in made]
        aux = Device.open(path, role="aux")
        try:
            for vm in vms:
                reply = export_import(dev, aux, vm)
                resolved(aux, reply.vm_handle, BASE, 2 * PAGE_SIZE)
            seen = wait_until(fresh_daemon, lambda c: c.vm_exports == 0)
            assert (seen.vm_exports, seen.aux_registrations) == (0, 3)
            assert errno_of(dev.vm_destroy, vms[0]) == errno.EBUSY
        finally:
            aux.close()
        assert wait_until(fresh_daemon, lambda c: c.aux_registrations == 0).aux_registrations == 0
        for vm in vms:
            dev.vm_destroy(vm)
        for _, bos in made:
            for bo in bos:
                dev.gem_close(bo)
        assert settle_to(fresh_daemon, start) == start


def test_aux_killed_unregisters_everything(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A spawned aux driver SIGKILLed while holding a VM and resolved ranges: the daemon
    unregisters it, the app can destroy the VM, and nothing is leaked."""
    path = fresh_daemon.socket_path
    with Device.open(path) as dev:
        start = baseline(fresh_daemon)
        vm, bos = back_to_back(dev, 2, 2)
        with dev.mmap_bo(bos[0]) as app:
            app[0:5] = b"hello"
        ib = agents(fresh_daemon)
        fd = dev.vm_export(vm)
        try:
            seen = ib.run(
                f"""
                import mmap
                ib = Device.open({str(path)!r}, role="aux")
                (fd,) = fds
                reply = ib.aux_vm_import(fd, {os.getpid()})
                os.close(fd)
                spans, held = ib.aux_vm_resolve(reply.vm_handle, {BASE}, {4 * PAGE_SIZE})
                maps = [mmap.mmap(f, 0) for f in held]
                result = maps[0][0:5].decode()
                """,
                [fd],
            )
        finally:
            os.close(fd)
        assert seen == "hello"
        seen = wait_until(fresh_daemon, lambda c: c.vm_exports == 0)
        assert (seen.vm_exports, seen.aux_registrations) == (0, 1)
        assert errno_of(dev.vm_destroy, vm) == errno.EBUSY
        ib.kill()
        seen = wait_until(fresh_daemon, lambda c: c.aux_registrations == 0)
        assert seen.aux_registrations == 0
        dev.vm_destroy(vm)
        for bo in bos:
            dev.gem_close(bo)
        assert settle_to(fresh_daemon, start) == start
