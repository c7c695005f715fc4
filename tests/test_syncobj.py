"""DRM syncobjs (binary): the five ioctls, and SYNCOBJ syncs of EXEC and VM_BIND,
through real daemons. Times are deadlines handed to the daemon, never expectations."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from errno import EINVAL, ENOENT, ENOMEM, EOPNOTSUPP, ETIME
from typing import Any

import pytest
from conftest import baseline
from helpers import Gpu, errno_of
from test_lifecycle import wait_for_baseline

from clients import Batch, Device, XeError, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    PAGE_SIZE,
)
from tests.test_userptr import (
    DATA_VA,
    END_REPLACED,
    MARK,
    START,
    USERPTR_VA,
    Rig,
    invalidate,
)

LATE_VA = 0x4_0000_0000  # where a test binds once a fence lets it
NONE = 0xFFFF_FFFF  # first_signaled when nothing was signalled at the start
MARK_WORD = MARK * 0x0101_0101


def wait_errno(dev: Device, handles: list[int], **kw: object) -> int:
    return errno_of(syncobj.wait, dev, handles, **kw)


# --- CREATE / DESTROY ---------------------------------------------------------------------
def test_handles_are_the_lowest_free_from_one(fresh_daemon: DaemonProcess) -> None:
    with Device.open(fresh_daemon.socket_path) as dev:
        assert [syncobj.create(dev) for _ in range(3)] == [1, 2, 3]
        syncobj.destroy(dev, 2)
        assert syncobj.create(dev) == 2


def test_create_with_unknown_flags_is_einval(dev: Device) -> None:
    assert errno_of(dev.ioctl, Op.SYNCOBJ_CREATE, m.DrmSyncobjCreate(flags=2)) == EINVAL


def test_destroy_checks_pad_and_handle_with_einval(dev: Device) -> None:
    """DESTROY answers EINVAL for an unknown handle (every other syncobj ioctl: ENOENT)."""
    handle = syncobj.create(dev)
    args = m.DrmSyncobjDestroy(handle=handle, pad=1)
    assert errno_of(dev.ioctl, Op.SYNCOBJ_DESTROY, args) == EINVAL
    syncobj.destroy(dev, handle)
    assert errno_of(syncobj.destroy, dev, handle) == EINVAL
    assert errno_of(syncobj.destroy, dev, 12345) == EINVAL


def test_handles_are_per_file(fresh_daemon: DaemonProcess) -> None:
    with Device.open(fresh_daemon.socket_path) as a, Device.open(fresh_daemon.socket_path) as b:
        handle = syncobj.create(a, signaled=True)
        assert wait_errno(b, [handle]) == ENOENT
        assert syncobj.wait(a, [handle]) == 0


def test_syncobjs_are_counted_and_go_with_their_file(fresh_daemon: DaemonProcess) -> None:
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        for _ in range(5):
            syncobj.create(dev)
        syncobj.destroy(dev, 3)
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            assert admin.admin_status().objects.syncobjs == 4
    assert wait_for_baseline(fresh_daemon, before) == before


# --- WAIT -----------------------------------------------------------------------------------
def test_wait_on_a_signalled_syncobj_returns_at_once(dev: Device) -> None:
    handle = syncobj.create(dev, signaled=True)
    assert syncobj.wait(dev, [handle], timeout_nsec=0) == 0


def test_wait_on_an_empty_syncobj_is_einval_unless_for_submit(dev: Device) -> None:
    empty = syncobj.create(dev)
    assert wait_errno(dev, [empty]) == EINVAL
    assert wait_errno(dev, [empty], timeout_nsec=0, for_submit=True) == ETIME


def test_wait_for_submit_times_out_at_its_deadline(dev: Device) -> None:
    """The absolute deadline: ETIME, and not before it."""
    empty = syncobj.create(dev)
    deadline = syncobj.deadline_in(0.05)
    assert wait_errno(dev, [empty], timeout_nsec=deadline, for_submit=True) == ETIME
    assert time.monotonic_ns() >= deadline


def test_first_signaled_and_wait_all(dev: Device) -> None:
    empty, done = syncobj.create(dev), syncobj.create(dev, signaled=True)
    assert syncobj.wait(dev, [empty, done], timeout_nsec=0, for_submit=True) == 1
    assert wait_errno(dev, [empty, done], timeout_nsec=0, wait_all=True, for_submit=True) == ETIME
    syncobj.signal(dev, [empty])
    assert syncobj.wait(dev, [empty, done], wait_all=True) == 0


@pytest.mark.parametrize(
    ("args", "err"),
    [
        (m.DrmSyncobjWait(flags=4), EINVAL),  # WAIT_AVAILABLE: timeline waits only
        (m.DrmSyncobjWait(handles=(m.DrmSyncobjHandle(handle=77),)), ENOENT),
    ],
    ids=["flags", "unknown"],
)
def test_wait_checks(dev: Device, args: m.DrmSyncobjWait, err: int) -> None:
    assert errno_of(dev.ioctl, Op.SYNCOBJ_WAIT, args) == err


def test_an_unknown_handle_is_enoent_before_an_empty_one_is_einval(dev: Device) -> None:
    empty = syncobj.create(dev)
    assert wait_errno(dev, [empty, 77]) == ENOENT


# --- RESET / SIGNAL -------------------------------------------------------------------------
@pytest.mark.parametrize("op", [Op.SYNCOBJ_RESET, Op.SYNCOBJ_SIGNAL])
def test_array_checks(dev: Device, op: Op) -> None:
    handle = syncobj.create(dev)
    one = (m.DrmSyncobjHandle(handle=handle),)
    assert errno_of(dev.ioctl, op, m.DrmSyncobjArray(handles=one, pad=1)) == EINVAL
    assert errno_of(dev.ioctl, op, m.DrmSyncobjArray()) == EINVAL
    bad = (*one, m.DrmSyncobjHandle(handle=99))
    assert errno_of(dev.ioctl, op, m.DrmSyncobjArray(handles=bad)) == ENOENT


def test_signal_and_reset(dev: Device) -> None:
    """SIGNAL puts a signalled fence in; RESET empties; a failed SIGNAL changes none."""
    a, b = syncobj.create(dev), syncobj.create(dev)
    assert errno_of(syncobj.signal, dev, [a, 99]) == ENOENT
    assert wait_errno(dev, [a]) == EINVAL  # still empty
    syncobj.signal(dev, [a, b])
    assert syncobj.wait(dev, [a, b], wait_all=True) == 0
    syncobj.reset(dev, [a])
    assert wait_errno(dev, [a]) == EINVAL
    assert syncobj.wait(dev, [b]) == 0


# --- EXEC and VM_BIND syncs -----------------------------------------------------------------
def test_exec_signals_its_syncobj_when_the_batch_is_done(gpu: Gpu) -> None:
    dev = gpu.dev
    data = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(gpu.vm, data, DATA_VA)
    done = syncobj.create(dev)
    address = gpu.place(Batch().store_dword(DATA_VA, 0xC0FFEE).end())
    dev.exec(gpu.queue, address, syncs=[syncobj.signal_sync(done)])
    assert syncobj.wait(dev, [done]) == 0
    assert dev.mmap_bo(data).read_u32(0) == 0xC0FFEE


def stall(dev: Device) -> tuple[Rig, int]:
    """A rig, and a syncobj holding the fence of a job that cannot finish until the test
    lets it: it reads host memory while an invalidation of it is in progress (as on a
    GPU page fault); END_REPLACED lets it."""
    rig = Rig(dev)
    gate = syncobj.create(dev)
    invalidate(dev, rig.hm.base, PAGE_SIZE, START)
    address = rig.place(Batch().mem_copy(DATA_VA, USERPTR_VA, 8).end())
    dev.exec(rig.queue, address, syncs=[syncobj.signal_sync(gate)])
    return rig, gate


@pytest.fixture
def stalled(dev: Device) -> Iterator[tuple[Rig, int]]:
    """A job that cannot finish until the test lets it: it reads host memory while an
    invalidation of it is in progress (as on a GPU page fault), and puts its fence in
    the syncobj yielded beside the rig. The invalidation ends at teardown at the latest."""
    rig, gate = stall(dev)
    try:
        yield rig, gate
    finally:
        with contextlib.suppress(XeError):  # ended by the test already
            invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        rig.close()


def test_exec_waits_for_the_fence_it_names(stalled: tuple[Rig, int]) -> None:
    """A job waiting on a syncobj's fence runs only once that signals."""
    rig, gate = stalled
    dev = rig.dev
    other, done = dev.exec_queue_create(rig.vm), syncobj.create(dev)
    address = rig.place(Batch().store_dword(DATA_VA + 64, 7).end())
    dev.exec(other, address, syncs=[syncobj.wait_sync(gate), syncobj.signal_sync(done)])
    assert wait_errno(dev, [gate, done], timeout_nsec=0) == ETIME  # neither can be done
    assert rig.data.read_u32(64) == MARK_WORD
    invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
    syncobj.wait(dev, [gate, done], wait_all=True)
    assert rig.data.read_u32(64) == 7


def test_vm_bind_waits_for_the_fence_it_names(daemon: DaemonProcess) -> None:
    """A VM_BIND waiting on an unsignalled fence answers at once, as xe's: its SIGNAL
    syncobj holds the bind's fence from then on, unsignalled until the fence it names
    has signalled and the bind is made."""
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        bound = syncobj.create(dev)
        bo = dev.gem_create(PAGE_SIZE)
        syncs = [syncobj.wait_sync(gate), syncobj.signal_sync(bound)]
        dev.vm_bind(rig.vm, bo, LATE_VA, size=PAGE_SIZE, syncs=syncs)
        try:
            # not made while the gate holds
            assert wait_errno(dev, [bound], timeout_nsec=0, for_submit=True) == ETIME
        finally:
            invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        assert syncobj.wait(dev, [bound]) == 0
        rig.run(Batch().store_dword(LATE_VA, 0x5EED).end())
        assert dev.mmap_bo(bo).read_u32(0) == 0x5EED
        rig.close()


def test_a_queue_destroyed_signals_what_it_will_never_run(stalled: tuple[Rig, int]) -> None:
    """Its jobs' syncobj fences signal (with an error, as xe's), so no wait hangs."""
    rig, gate = stalled
    rig.dev.exec_queue_destroy(rig.queue)
    assert syncobj.wait(rig.dev, [gate]) == 0


def asleep_elsewhere(dev: Device) -> bool:
    """With fence_waits = 1: whether another wait of this file is asleep now (a wait
    that would sleep is then ENOMEM; else it times out at once, ETIME)."""
    probe = syncobj.create(dev)
    try:
        err = wait_errno(dev, [probe], timeout_nsec=syncobj.deadline_in(0.001), for_submit=True)
    finally:
        syncobj.destroy(dev, probe)
    assert err in (ENOMEM, ETIME)
    return err == ENOMEM


def until_asleep_elsewhere(dev: Device) -> None:
    deadline = time.monotonic() + 60  # a bound for a hung test, not a measured time
    while not asleep_elsewhere(dev):
        assert time.monotonic() < deadline, "the other wait never fell asleep"


def test_a_wait_counts_against_fence_waits_and_an_unplug_ends_it(make_daemon: Any) -> None:
    """A SYNCOBJ_WAIT asleep counts against limits.fence_waits (one more is ENOMEM); when
    the device is unplugged under it, the halted queue signals the job's fence (with an
    error, as xe's do) and the wait returns."""
    daemon = make_daemon("[limits]\nfence_waits = 1\n")
    results: list[object] = []
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        assert not asleep_elsewhere(dev)

        def wait() -> None:
            with Device.open(daemon.socket_path, join=dev.token) as channel:
                while True:  # ENOMEM: the probe below held the one slot a moment
                    try:
                        results.append(syncobj.wait(channel, [gate]))
                    except XeError as exc:
                        if exc.errno == ENOMEM:
                            continue
                        results.append(exc.errno)
                    return

        waiter = threading.Thread(target=wait)
        waiter.start()
        try:
            until_asleep_elsewhere(dev)
            with Device.open(daemon.socket_path, role="admin") as admin:
                admin.admin_unplug()
                waiter.join(timeout=60)
                admin.admin_replug()
        finally:
            waiter.join(timeout=60)
            rig.close()
    assert results == [0]


@pytest.mark.parametrize("where", ["exec", "vm_bind"])
def test_syncobj_syncs_check_their_handle(gpu: Gpu, where: str) -> None:
    """An unknown handle: ENOENT; waiting on an empty syncobj: EINVAL; a timeline sync:
    timeline_value 0 EINVAL, an unknown handle ENOENT, a wait on a point not submitted
    EINVAL; a timeline SIGNAL then makes the point."""
    dev = gpu.dev
    bo = dev.gem_create(PAGE_SIZE)

    def submit(*syncs: m.DrmXeSync) -> None:
        if where == "exec":
            dev.exec(gpu.queue, gpu.place(Batch().end()), syncs=syncs)
        else:
            dev.vm_bind(gpu.vm, bo, DATA_VA, syncs=syncs)

    empty = syncobj.create(dev)
    assert errno_of(submit, syncobj.signal_sync(99)) == ENOENT
    assert errno_of(submit, syncobj.wait_sync(99)) == ENOENT
    assert errno_of(submit, syncobj.wait_sync(empty)) == EINVAL
    timeline = m.DrmXeSync(type=DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ, flags=DRM_XE_SYNC_FLAG_SIGNAL)
    assert errno_of(submit, timeline.__class__(**{**_fields(timeline), "handle": empty})) == EINVAL
    valued = {**_fields(timeline), "timeline_value": 1}
    assert errno_of(submit, m.DrmXeSync(**{**valued, "handle": 99})) == ENOENT
    waits = {**valued, "flags": 0, "handle": empty}
    assert errno_of(submit, m.DrmXeSync(**waits)) == EINVAL  # point 1 not submitted
    submit(m.DrmXeSync(**{**valued, "handle": empty}))
    submit(m.DrmXeSync(**waits))  # submitted now: a wait is taken
    assert syncobj.wait(dev, [empty]) == 0
    submit(syncobj.signal_sync(empty))
    assert syncobj.wait(dev, [empty]) == 0
    assert syncobj.signal_sync(1).type == DRM_XE_SYNC_TYPE_SYNCOBJ


@pytest.mark.parametrize("kind", [DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ])
def test_syncobj_syncs_check_the_union_and_lr_mode(dev: Device, kind: int) -> None:
    """handle is the lower half of the addr union: upper bits set are EINVAL; a syncobj
    does not signal on an LR_MODE VM (its jobs have no dma_fence): EOPNOTSUPP, before
    the handle is looked up. xe_sync_entry_parse's order."""
    handle = syncobj.create(dev)
    sync = m.DrmXeSync(type=kind, handle=handle, timeline_value=1)
    high = m.DrmXeSync(**{**_fields(sync), "addr": (1 << 32) | handle})
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[high]) == EINVAL
    lr = dev.vm_create(DRM_XE_VM_CREATE_FLAG_LR_MODE)
    signal = m.DrmXeSync(**{**_fields(sync), "flags": DRM_XE_SYNC_FLAG_SIGNAL, "handle": 99})
    assert errno_of(dev.vm_bind, lr, bo, DATA_VA, syncs=[signal]) == EOPNOTSUPP
    queue = dev.exec_queue_create(lr)
    assert errno_of(dev.exec, queue, DATA_VA, [signal]) == EOPNOTSUPP
    dev.exec_queue_destroy(queue)


def _fields(sync: m.DrmXeSync) -> dict[str, object]:
    names = ("type", "flags", "handle", "addr", "timeline_value")
    return {name: getattr(sync, name) for name in names}
