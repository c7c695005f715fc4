"""The aux driver and userptr ranges: AUX_VM_RESOLVE hands out the host memory's own
pages (its memfd, zero copy), HOST_MEMORY_INVALIDATE START tells the aux driver holding
them (AUX_RANGE_INVALIDATED, reason "userptr") and waits for AUX_VM_INVALIDATE_DONE, a
resolve meeting pages mid-change waits for END, and freed pages answer EFAULT.

The test process is the application (`dev`, with host memory) and the aux driver. A
call expected to block runs in a thread, on a connection no other thread uses meanwhile;
"still blocked" is a short join then is_alive(); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import baseline
from test_userptr import END_FREED, END_REPLACED, START, invalidate
from test_vm_export import BASE, SETTLE, errno_of, settle_to, wait_until
from test_vm_export_aux import VA_BITS, close_all, export_import, invalidations, resolved

from clients import Device
from clients.daemon import DaemonProcess
from clients.host_memory import HostMemory
from protocols import Event
from protocols import messages as m
from protocols.constants import PAGE_SIZE

P = PAGE_SIZE
HOST_SIZE = 4 * P
BLOCKED = 0.2  # seconds a call is given to (wrongly) finish before it counts as blocked


class Background:
    """`fn(*args)` in a thread of its own; its return value or exception kept."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None  # raised again by result()
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:
            self.error = exc

    def blocked(self) -> bool:
        """Still waiting after a short while (cannot fail a correct blocking call)."""
        self.thread.join(BLOCKED)
        return self.thread.is_alive()

    def result(self) -> Any:
        """Its outcome, once it finished (within a generous bound)."""
        self.thread.join(SETTLE)
        assert not self.thread.is_alive(), "the call is still blocked"
        if self.error is not None:
            raise self.error
        return self.value


def cut(device: Device) -> None:
    """Shut a connection down (a thread blocked reading it wakes up) and close it."""
    with contextlib.suppress(OSError):
        device.transport.sock.shutdown(socket.SHUT_RDWR)
    device.close()


@contextlib.contextmanager
def background(unblock: Device, fn: Callable[..., Any], *args: Any) -> Iterator[Background]:
    """The call in a thread; still blocked when the block ends (a failed test): cut
    `unblock` (the aux, which ends a START's wait, or the thread's own connection)."""
    job = Background(fn, *args)
    try:
        yield job
    finally:
        if job.thread.is_alive():
            cut(unblock)
        job.thread.join(SETTLE)


def userptr_vm(dev: Device, offset: int = 0, length: int = HOST_SIZE) -> tuple[int, HostMemory]:
    """(vm, host): host memory [offset, offset+length) bound as a userptr at BASE."""
    host = dev.host_memory(HOST_SIZE)
    vm = dev.vm_create()
    dev.vm_bind_userptr(vm, host, offset, BASE, length)
    return vm, host


def next_invalidation(aux: Device) -> m.AuxRangeInvalidated:
    event = aux.wait_event(timeout=SETTLE)  # TimeoutError if none came
    assert event.event == Event.AUX_RANGE_INVALIDATED
    data: m.AuxRangeInvalidated = event.data
    return data


def read_at(fd: int, offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of a descriptor, through a mapping at a page boundary."""
    start = offset - offset % P
    with mmap.mmap(fd, offset + length - start, offset=start) as view:
        return view[offset - start : offset - start + length]


def start_acked(
    dev: Device, host: HostMemory, aux: Device, offset: int, length: int
) -> m.AuxRangeInvalidated:
    """START over host [offset, offset+length) that the aux holds: its one event, after
    acknowledging it and seeing START return."""
    with background(aux, invalidate, dev, host.base + offset, length, START) as start:
        event = next_invalidation(aux)
        aux.aux_vm_invalidate_done(event.vm_handle, event.seqno)
        start.result()
    return event


# --- AUX_VM_RESOLVE of userptr ranges ------------------------------------------------------------


def test_resolve_userptr_hands_out_the_host_memory_itself(dev: Device, aux: Device) -> None:
    """The descriptor of a userptr range is the host memory: the app's bytes are seen
    through it, and the aux's writes land in the app's memory."""
    vm, host = userptr_vm(dev, offset=P, length=3 * P)
    host[2 * P + 16 : 2 * P + 22] = b"marker"
    handle = export_import(dev, aux, vm).vm_handle
    spans, fds = aux.aux_vm_resolve(handle, BASE + P + 16, 6)
    try:
        assert spans == (m.XedAuxSpan(va=BASE + P + 16, length=6, fd_index=0, offset=2 * P + 16),)
        assert len(fds) == 1
        assert read_at(fds[0], spans[0].offset, 6) == b"marker"
        with mmap.mmap(fds[0], P, offset=3 * P) as view:
            view[100:108] = b"from aux"
        assert host[3 * P + 100 : 3 * P + 108] == b"from aux"
    finally:
        close_all(fds)


def test_resolve_mixed_bo_and_userptr(dev: Device, aux: Device) -> None:
    """userptr, BO, userptr again (same host memory): three spans, two descriptors."""
    host = dev.host_memory(HOST_SIZE)
    vm = dev.vm_create()
    bo = dev.gem_create(2 * P)
    dev.vm_bind_userptr(vm, host, 0, BASE, P)
    dev.vm_bind(vm, bo, BASE + P, size=P, obj_offset=P)
    dev.vm_bind_userptr(vm, host, 2 * P, BASE + 2 * P, P)
    host[8:12] = b"host"
    host[2 * P + 8 : 2 * P + 12] = b"HOST"
    with dev.mmap_bo(bo) as cpu:
        cpu[P + 8 : P + 12] = b"bo!!"
    handle = export_import(dev, aux, vm).vm_handle
    spans, fds = aux.aux_vm_resolve(handle, BASE, 3 * P)
    try:
        assert len(fds) == 2
        assert spans == (
            m.XedAuxSpan(va=BASE, length=P, fd_index=0, offset=0),
            m.XedAuxSpan(va=BASE + P, length=P, fd_index=1, offset=P),
            m.XedAuxSpan(va=BASE + 2 * P, length=P, fd_index=0, offset=2 * P),
        )
        seen = [read_at(fds[s.fd_index], s.offset + 8, 4) for s in spans]
        assert seen == [b"host", b"bo!!", b"HOST"]
    finally:
        close_all(fds)


def test_resolve_over_freed_host_memory_is_efault(dev: Device, aux: Device) -> None:
    """Freed host pages under the range, all of it or part: EFAULT; the rest resolves."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    host.free(P, P)
    assert errno_of(aux.aux_vm_resolve, handle, BASE + P, P) == errno.EFAULT
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 3 * P) == errno.EFAULT
    assert errno_of(aux.aux_vm_resolve, handle, BASE + P + 8, 8) == errno.EFAULT
    resolved(aux, handle, BASE, P)
    resolved(aux, handle, BASE + 2 * P, 2 * P)


# --- START waits for the aux driver ---------------------------------------------------------------


def test_start_waits_until_the_aux_acknowledges(dev: Device, aux: Device) -> None:
    """START over held pages: one "userptr" event over the GPU range of the changed
    pages, and START returns only once the aux acknowledged its seqno."""
    vm, host = userptr_vm(dev, offset=P, length=3 * P)  # host pages 1..3 at BASE
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, 3 * P)
    with background(aux, invalidate, dev, host.base, 3 * P, START) as start:
        event = next_invalidation(aux)
        assert event == m.AuxRangeInvalidated(
            vm_handle=handle, va=BASE, length=2 * P, reason="userptr", seqno=1
        )
        assert start.blocked()
        aux.aux_vm_invalidate_done(handle, 1)
        start.result()
    invalidate(dev, host.base, 3 * P, END_REPLACED)
    resolved(aux, handle, BASE, 3 * P)  # usable again after END


def test_acknowledgement_is_cumulative(dev: Device, aux: Device) -> None:
    """Two held ranges under one START: two events; acking the first leaves START
    waiting, acking the last releases it."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, P)
    resolved(aux, handle, BASE + 2 * P, P)
    with background(aux, invalidate, dev, host.base, HOST_SIZE, START) as start:
        first, second = next_invalidation(aux), next_invalidation(aux)
        assert [(e.va, e.length, e.reason, e.seqno) for e in (first, second)] == [
            (BASE, P, "userptr", 1),
            (BASE + 2 * P, P, "userptr", 2),
        ]
        aux.aux_vm_invalidate_done(handle, 1)
        assert start.blocked()
        aux.aux_vm_invalidate_done(handle, 2)
        start.result()
    invalidate(dev, host.base, HOST_SIZE, END_REPLACED)


@pytest.mark.parametrize("instead", ["release", "close"])
def test_start_returns_when_the_aux_lets_go_of_the_vm(
    dev: Device, aux: Device, instead: str
) -> None:
    """START waiting for an aux that releases the VM, or closes its connection, instead
    of acknowledging returns: nobody holds the pages any more."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, P)
    with background(aux, invalidate, dev, host.base, P, START) as start:
        assert next_invalidation(aux).seqno == 1
        assert start.blocked()
        if instead == "release":
            aux.aux_vm_release(handle)
        else:
            aux.close()
        start.result()
    invalidate(dev, host.base, P, END_REPLACED)


# --- a resolve meeting pages mid-change -----------------------------------------------------------


@pytest.mark.parametrize("end", ["replaced", "freed", "app-closed"])
def test_resolve_during_start_waits_for_end(dev: Device, aux: Device, end: str) -> None:
    """A resolve between START and END waits. END replaced: it resolves the new pages;
    END freed: EFAULT; the app closing instead of sending END: ENOENT (its VM closed)."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, 2 * P)
    assert start_acked(dev, host, aux, 0, P).seqno == 1  # START done: page 0 is changing
    with background(aux, aux.aux_vm_resolve, handle, BASE, 2 * P) as resolve:
        assert resolve.blocked()
        if end == "replaced":
            host[0:8] = b"new data"
            invalidate(dev, host.base, P, END_REPLACED)
        elif end == "freed":
            host.mapping.madvise(mmap.MADV_REMOVE, 0, P)
            invalidate(dev, host.base, P, END_FREED)
        else:
            dev.close()
        if end != "replaced":
            gone = errno.EFAULT if end == "freed" else errno.ENOENT
            assert errno_of(resolve.result) == gone
            return
        spans, fds = resolve.result()
    try:
        assert spans == (m.XedAuxSpan(va=BASE, length=2 * P, fd_index=0, offset=0),)
        assert read_at(fds[0], 0, 8) == b"new data"
    finally:
        close_all(fds)


# --- what is held, and what is not ---------------------------------------------------------------


def test_acknowledged_pages_are_no_longer_held(dev: Device, aux: Device) -> None:
    """After an acknowledged invalidation a second START sends nothing and does not
    wait, until the aux resolves the range again."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, 2 * P)
    start_acked(dev, host, aux, 0, 2 * P)
    invalidate(dev, host.base, 2 * P, END_REPLACED)
    with background(aux, invalidate, dev, host.base, P, START) as start:
        start.result()
    invalidate(dev, host.base, P, END_REPLACED)
    assert invalidations(dev, vm, aux, handle) == []
    resolved(aux, handle, BASE + P, P)
    event = start_acked(dev, host, aux, 0, 2 * P)
    assert (event.va, event.length, event.reason) == (BASE + P, P, "userptr")
    invalidate(dev, host.base, 2 * P, END_REPLACED)


def test_pages_not_invalidated_stay_held_after_an_ack(dev: Device, aux: Device) -> None:
    """Acknowledging the invalidation of one page of a resolved range lets go of that
    page only: a START over another page of the range still tells and waits."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, HOST_SIZE)
    start_acked(dev, host, aux, 0, P)
    invalidate(dev, host.base, P, END_REPLACED)
    with background(aux, invalidate, dev, host.base + 3 * P, P, START) as start:
        assert start.blocked()
        event = next_invalidation(aux)
        assert (event.va, event.length, event.seqno) == (BASE + 3 * P, P, 2)
        aux.aux_vm_invalidate_done(handle, 2)
        start.result()
    invalidate(dev, host.base + 3 * P, P, END_REPLACED)


def test_resolving_held_pages_again_sends_one_event(dev: Device, aux: Device) -> None:
    """The same range resolved twice: a START over it sends one event, as two watches of
    a BO range give one (test_unbind_in_resolved_range_sends_one_invalidation)."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, 2 * P)
    resolved(aux, handle, BASE, 2 * P)
    with background(aux, invalidate, dev, host.base, P, START) as start:
        assert next_invalidation(aux).seqno == 1
        assert errno_of(aux.aux_vm_invalidate_done, handle, 2) == errno.EINVAL  # none more
        aux.aux_vm_invalidate_done(handle, 1)
        start.result()
    invalidate(dev, host.base, P, END_REPLACED)


def test_unwatch_drops_held_pages(dev: Device, aux: Device) -> None:
    """AUX_VM_UNWATCH over a resolved userptr range: START then neither tells nor waits."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, P)
    resolved(aux, handle, BASE + 2 * P, P)
    aux.aux_vm_unwatch(handle, BASE, HOST_SIZE)
    with background(aux, invalidate, dev, host.base, HOST_SIZE, START) as start:
        start.result()
    invalidate(dev, host.base, HOST_SIZE, END_REPLACED)
    assert invalidations(dev, vm, aux, handle) == []


def test_start_over_pages_never_resolved_sends_nothing(dev: Device, aux: Device) -> None:
    """START over host pages the aux never resolved (others it did): no event, no wait."""
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    with background(aux, invalidate, dev, host.base, HOST_SIZE, START) as start:
        start.result()  # nothing resolved at all
    invalidate(dev, host.base, HOST_SIZE, END_REPLACED)
    resolved(aux, handle, BASE, P)
    with background(aux, invalidate, dev, host.base + P, 3 * P, START) as start:
        start.result()  # next to, not over, the page resolved
    invalidate(dev, host.base + P, 3 * P, END_REPLACED)
    assert invalidations(dev, vm, aux, handle) == []


# --- AUX_VM_INVALIDATE_DONE errors ---------------------------------------------------------------


def test_invalidate_done_errors(dev: Device, aux: Device) -> None:
    """Unknown vm_handle: ENOENT; seqno 0, or beyond the last one sent: EINVAL."""
    for bad in (0, 0xFFFF, 0xFFFF_FFFF):
        assert errno_of(aux.aux_vm_invalidate_done, bad, 1) == errno.ENOENT
    vm, host = userptr_vm(dev)
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_invalidate_done, handle, 0) == errno.EINVAL
    assert errno_of(aux.aux_vm_invalidate_done, handle, 1) == errno.EINVAL  # none sent yet
    resolved(aux, handle, BASE, P)
    with background(aux, invalidate, dev, host.base, P, START) as start:
        assert next_invalidation(aux).seqno == 1
        assert errno_of(aux.aux_vm_invalidate_done, handle, 0) == errno.EINVAL
        assert errno_of(aux.aux_vm_invalidate_done, handle, 2) == errno.EINVAL
        assert errno_of(aux.aux_vm_invalidate_done, handle, 1 << 63) == errno.EINVAL
        assert start.blocked()  # the refused ones acknowledged nothing
        aux.aux_vm_invalidate_done(handle, 1)
        start.result()
    invalidate(dev, host.base, P, END_REPLACED)
    aux.aux_vm_release(handle)
    assert errno_of(aux.aux_vm_invalidate_done, handle, 1) == errno.ENOENT


# --- lifetimes and leaks -------------------------------------------------------------------------


def test_app_disconnect_while_aux_holds_its_pages(fresh_daemon: DaemonProcess) -> None:
    """The app closes while the aux holds its host pages and a BO: its VM closes with it,
    the aux hears it once ("vm_closed", the whole range), every range resolves ENOENT
    from then on, the BO is freed, and releasing it leaves nothing behind."""
    path = fresh_daemon.socket_path
    start = baseline(fresh_daemon)
    aux = Device.open(path, role="aux")
    try:
        with Device.open(path) as app:
            vm, host = userptr_vm(app, offset=P, length=2 * P)
            bo = app.gem_create(P)
            app.vm_bind(vm, bo, BASE + 2 * P)
            handle = export_import(app, aux, vm).vm_handle
            resolved(aux, handle, BASE, 3 * P)
            host.mapping.close()
        event = next_invalidation(aux)
        assert event == m.AuxRangeInvalidated(
            vm_handle=handle, va=0, length=1 << VA_BITS, reason="vm_closed", seqno=1
        )
        for va, length in ((BASE, P), (BASE + P, 2 * P), (BASE + 2 * P, P)):
            assert errno_of(aux.aux_vm_resolve, handle, va, length) == errno.ENOENT
        seen = wait_until(fresh_daemon, lambda c: c.files == start[1].files + 1)
        assert (seen.vms, seen.bos, seen.aux_registrations) == (
            start[1].vms + 1,
            start[1].bos,
            1,
        )
        aux.version()  # one round trip: no second event came
        assert not aux.events, list(aux.events)
        aux.aux_vm_invalidate_done(handle, 1)
        aux.aux_vm_release(handle)
    finally:
        aux.close()
    assert settle_to(fresh_daemon, start) == start


def test_resolve_invalidate_release_many_times_leaks_nothing(fresh_daemon: DaemonProcess) -> None:
    """Resolves (mixed, refused), invalidations and acks, over and over, then release:
    the daemon's descriptors and objects are back where they were."""
    path = fresh_daemon.socket_path
    start = baseline(fresh_daemon)
    with Device.open(path) as dev, Device.open(path, role="aux") as aux:
        vm, host = userptr_vm(dev, length=2 * P)
        bo = dev.gem_create(P)
        dev.vm_bind(vm, bo, BASE + 2 * P)
        handle = export_import(dev, aux, vm).vm_handle
        for n in range(1, 21):
            spans, fds = aux.aux_vm_resolve(handle, BASE, 3 * P)
            close_all(fds)
            assert len(spans) == 2
            event = start_acked(dev, host, aux, 0, P)
            assert (event.va, event.seqno) == (BASE, n)
            invalidate(dev, host.base, P, END_REPLACED)
        resolved(aux, handle, BASE, 2 * P)
        start_acked(dev, host, aux, P, P)
        host.mapping.madvise(mmap.MADV_REMOVE, P, P)
        invalidate(dev, host.base + P, P, END_FREED)
        for _ in range(10):
            assert errno_of(aux.aux_vm_resolve, handle, BASE, 3 * P) == errno.EFAULT
        aux.aux_vm_release(handle)
        dev.vm_destroy(vm)
        dev.gem_close(bo)
        host.mapping.close()
    assert settle_to(fresh_daemon, start) == start
