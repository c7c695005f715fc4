"""Timeline syncobjs through real daemons (drm_syncobj.c, dma-fence-chain.c): points
added by jobs, TIMELINE_SIGNAL, TRANSFER and imported sync files; TIMELINE_WAIT with
WAIT_ALL, WAIT_FOR_SUBMIT and WAIT_AVAILABLE; QUERY; points out of order; each errno;
the per-file limits; and nothing left behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from errno import EINVAL, ENOENT, ENOMEM, ETIME
from typing import Any

import pytest
from helpers import Gpu, end_spinner, errno_of, readable, start_spinner
from test_lifecycle import baseline, wait_for_baseline

from clients import Device, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m

H = m.DrmSyncobjHandle


@pytest.fixture
def dev(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path) as device:
        yield device


def test_points_signalled_in_order_and_queried(dev: Device) -> None:
    """QUERY tells the latest point with every point before it signalled; a point is
    signalled only once the points before it are."""
    tl = syncobj.create(dev)
    assert syncobj.query(dev, [tl]) == [0]  # empty
    timeline = syncobj.sw_sync_timeline(dev)
    pending = [syncobj.sw_sync_fence(dev, timeline, n) for n in (1, 2)]
    syncobj.import_sync_file(dev, tl, pending[0], point=1)
    syncobj.import_sync_file(dev, tl, pending[1], point=3)
    syncobj.timeline_signal(dev, [tl], [5])  # signalled itself, but after 1 and 3
    assert syncobj.query(dev, [tl]) == [0]
    assert syncobj.query(dev, [tl], last_submitted=True) == [5]
    assert errno_of(syncobj.timeline_wait, dev, [tl], [5], timeout_nsec=0) == ETIME
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert syncobj.query(dev, [tl]) == [1]
    assert syncobj.timeline_wait(dev, [tl], [1], timeout_nsec=0) == 0
    assert errno_of(syncobj.timeline_wait, dev, [tl], [2], timeout_nsec=0) == ETIME  # in 3
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert syncobj.query(dev, [tl]) == [5]
    assert syncobj.timeline_wait(dev, [tl], [4], timeout_nsec=0) == 0
    assert syncobj.wait(dev, [tl], timeout_nsec=0) == 0  # point 0: the latest
    for fd in (*pending, timeline):
        os.close(fd)


def test_a_point_not_submitted(dev: Device) -> None:
    """Not submitted: EINVAL, unless WAIT_FOR_SUBMIT (then ETIME at the deadline) or
    WAIT_AVAILABLE; WAIT_AVAILABLE counts a submitted point as ready, signalled or not."""
    tl = syncobj.create(dev)
    syncobj.timeline_signal(dev, [tl], [1])
    assert errno_of(syncobj.timeline_wait, dev, [tl], [2]) == EINVAL
    assert errno_of(syncobj.wait, dev, [syncobj.create(dev)]) == EINVAL  # empty, point 0
    soon = syncobj.deadline_in(0.05)
    assert errno_of(syncobj.timeline_wait, dev, [tl], [2], soon, for_submit=True) == ETIME
    assert errno_of(syncobj.timeline_wait, dev, [tl], [2], soon, available=True) == ETIME
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    syncobj.import_sync_file(dev, tl, fence, point=2)  # submitted, not signalled
    assert syncobj.timeline_wait(dev, [tl], [2], timeout_nsec=0, available=True) == 0
    assert errno_of(syncobj.timeline_wait, dev, [tl], [2], timeout_nsec=0) == ETIME
    for fd in (fence, timeline):
        os.close(fd)


def test_wait_for_submit_wakes_when_another_file_adds_the_point(
    fresh_daemon: DaemonProcess, dev: Device
) -> None:
    tl = syncobj.create(dev)
    shared_fd = syncobj.handle_to_fd(dev, tl)
    results: list[Any] = []

    def wait() -> None:
        try:
            results.append(
                syncobj.timeline_wait(dev, [tl], [7], syncobj.deadline_in(30), for_submit=True)
            )
        except Exception as exc:  # reported below
            results.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    with Device.open(fresh_daemon.socket_path) as other:
        theirs = syncobj.fd_to_handle(other, shared_fd)
        time.sleep(0.1)  # (the wait is asleep or not yet made: either way it wakes)
        syncobj.timeline_signal(other, [theirs], [7])
        waiter.join(timeout=30)
    os.close(shared_fd)
    assert results == [0]


def test_jobs_signal_and_wait_for_points(dev: Device) -> None:
    """An EXEC's TIMELINE_SYNCOBJ SIGNAL makes its fence the point; a later EXEC that
    waits for the point waits for the job; a VM_BIND does the same."""
    gpu = Gpu(dev)
    tl = syncobj.create(dev)
    seq = start_spinner(gpu, syncs=[syncobj.timeline_signal_sync(tl, 1)])
    assert syncobj.query(dev, [tl], last_submitted=True) == [1]
    assert errno_of(syncobj.timeline_wait, dev, [tl], [1], timeout_nsec=0) == ETIME
    sync_fd = syncobj.export_sync_file(dev, tl, point=1)
    assert not readable(sync_fd)
    bo = dev.gem_create(0x1000)
    dev.vm_bind(
        gpu.vm,
        bo,
        0x4000_0000,
        syncs=[syncobj.timeline_wait_sync(tl, 1), syncobj.timeline_signal_sync(tl, 2)],
    )
    end_spinner(gpu, seq)
    assert syncobj.timeline_wait(dev, [tl], [2], syncobj.deadline_in(10)) == 0
    assert syncobj.query(dev, [tl]) == [2] and readable(sync_fd)
    os.close(sync_fd)
    gpu.close()


def test_transfer_between_binary_and_timeline(fresh_daemon: DaemonProcess, dev: Device) -> None:
    binary, tl, other = syncobj.create(dev, signaled=True), syncobj.create(dev), syncobj.create(dev)
    syncobj.transfer(dev, tl, 3, binary, 0)  # binary's fence becomes point 3
    assert syncobj.query(dev, [tl]) == [3]
    syncobj.transfer(dev, other, 0, tl, 3)  # point 3 replaces other's fence
    assert syncobj.wait(dev, [other], timeout_nsec=0) == 0
    assert errno_of(syncobj.transfer, dev, other, 0, tl, 4) == EINVAL  # not submitted
    results: list[Any] = []

    def later() -> None:
        time.sleep(0.1)
        with Device.open(fresh_daemon.socket_path) as second:  # the same syncobj, another file
            handle = syncobj.fd_to_handle(second, shared_fd)
            syncobj.timeline_signal(second, [handle], [4])
            results.append("signalled")

    shared_fd = syncobj.handle_to_fd(dev, tl)
    signaller = threading.Thread(target=later)
    signaller.start()
    syncobj.transfer(dev, other, 9, tl, 4, for_submit=True)  # waits for point 4
    signaller.join(timeout=30)
    os.close(shared_fd)
    assert results == ["signalled"]
    assert syncobj.query(dev, [other], last_submitted=True) == [9]


def test_a_point_out_of_order_starts_afresh(dev: Device) -> None:
    """A point not after the latest takes the latest's number and a context of its own
    (dma_fence_chain_init): QUERY stops there, and waits for any point up to the
    latest wait for it."""
    tl = syncobj.create(dev)
    syncobj.timeline_signal(dev, [tl], [5])
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    syncobj.import_sync_file(dev, tl, fence, point=2)  # out of order: numbered 5
    assert syncobj.query(dev, [tl], last_submitted=True) == [5]
    assert syncobj.query(dev, [tl]) == [0]  # its own context: nothing before it counts
    assert errno_of(syncobj.timeline_wait, dev, [tl], [3], timeout_nsec=0) == ETIME
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert syncobj.query(dev, [tl]) == [5]
    for fd in (fence, timeline):
        os.close(fd)


def test_binary_ioctls_on_a_timeline(dev: Device) -> None:
    """SIGNAL replaces the chain with a signalled fence, RESET empties it: point 0 is
    always the fence it holds."""
    tl = syncobj.create(dev)
    syncobj.timeline_signal(dev, [tl], [0])  # point 0: as SYNCOBJ_SIGNAL
    assert syncobj.query(dev, [tl]) == [0]
    syncobj.timeline_signal(dev, [tl], [4])
    syncobj.reset(dev, [tl])
    assert syncobj.query(dev, [tl], last_submitted=True) == [0]
    assert errno_of(syncobj.timeline_wait, dev, [tl], [4]) == EINVAL


def test_refusals(dev: Device) -> None:
    tl = syncobj.create(dev)

    def ioctl(op: Op, args: Any) -> int:
        return errno_of(dev.ioctl, op, args)

    one = (H(handle=tl),)
    wait = Op.SYNCOBJ_TIMELINE_WAIT
    assert ioctl(wait, m.DrmSyncobjTimelineWait(handles=one, flags=1 << 4)) == EINVAL
    # no handles: nothing to wait for (the kernel answers 0, first_signaled as sent)
    nothing = m.DrmSyncobjTimelineWait(first_signaled=7)
    assert dev.ioctl(wait, nothing).first_signaled == 7
    assert dev.ioctl(Op.SYNCOBJ_WAIT, m.DrmSyncobjWait(first_signaled=7)).first_signaled == 7
    assert ioctl(wait, m.DrmSyncobjTimelineWait(handles=(H(handle=99),))) == ENOENT
    assert ioctl(wait, m.DrmSyncobjTimelineWait(handles=one, points=(1, 2))) == EINVAL
    query = Op.SYNCOBJ_QUERY
    assert ioctl(query, m.DrmSyncobjTimelineArray(handles=one, flags=2)) == EINVAL
    assert ioctl(query, m.DrmSyncobjTimelineArray()) == EINVAL
    assert ioctl(query, m.DrmSyncobjTimelineArray(handles=(H(handle=99),))) == ENOENT
    signal = Op.SYNCOBJ_TIMELINE_SIGNAL
    assert ioctl(signal, m.DrmSyncobjTimelineArray(handles=one, flags=1)) == EINVAL
    assert ioctl(signal, m.DrmSyncobjTimelineArray()) == EINVAL
    assert ioctl(signal, m.DrmSyncobjTimelineArray(handles=(H(handle=99),))) == ENOENT
    transfer = Op.SYNCOBJ_TRANSFER
    assert ioctl(transfer, m.DrmSyncobjTransfer(src_handle=tl, dst_handle=tl, pad=1)) == EINVAL
    assert ioctl(transfer, m.DrmSyncobjTransfer(src_handle=tl, dst_handle=99)) == ENOENT
    assert ioctl(transfer, m.DrmSyncobjTransfer(src_handle=tl, dst_handle=tl, flags=1)) == EINVAL
    assert ioctl(transfer, m.DrmSyncobjTransfer(src_handle=99, dst_handle=tl)) == ENOENT
    assert ioctl(transfer, m.DrmSyncobjTransfer(src_handle=tl, dst_handle=tl)) == EINVAL
    assert syncobj.query(dev, [tl], last_submitted=True) == [0]  # nothing changed


def test_limits(make_daemon: Any) -> None:
    """limits.syncobjs handles and limits.timeline_points points per file that the
    daemon holds: ENOMEM; a point let go of (its syncobj reset) gives its room back."""
    daemon = make_daemon("[limits]\nsyncobjs = 3\ntimeline_points = 2\n")
    with Device.open(daemon.socket_path) as dev:
        handles = [syncobj.create(dev) for _ in range(3)]
        assert errno_of(syncobj.create, dev) == ENOMEM
        fd = syncobj.handle_to_fd(dev, handles[0])
        assert errno_of(syncobj.fd_to_handle, dev, fd) == ENOMEM
        os.close(fd)
        timeline = syncobj.sw_sync_timeline(dev)
        fence = syncobj.sw_sync_fence(dev, timeline, 1)
        syncobj.import_sync_file(dev, handles[0], fence, point=1)
        syncobj.import_sync_file(dev, handles[1], fence, point=1)
        assert errno_of(syncobj.import_sync_file, dev, handles[2], fence, point=1) == ENOMEM
        assert errno_of(syncobj.timeline_signal, dev, [handles[2]], [1]) == ENOMEM
        syncobj.reset(dev, [handles[0]])  # its chain let go of: room again
        syncobj.import_sync_file(dev, handles[2], fence, point=1)
        assert errno_of(syncobj.timeline_signal, dev, [handles[0]], [1]) == ENOMEM
        syncobj.destroy(dev, handles[1])
        syncobj.timeline_signal(dev, [handles[0]], [1])
        for fd in (fence, timeline):
            os.close(fd)


def test_nothing_is_left_behind(fresh_daemon: DaemonProcess) -> None:
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        gpu = Gpu(dev)
        tl = syncobj.create(dev)
        seq = start_spinner(gpu, syncs=[syncobj.timeline_signal_sync(tl, 1)])
        timeline = syncobj.sw_sync_timeline(dev)
        fence = syncobj.sw_sync_fence(dev, timeline, 1)
        syncobj.import_sync_file(dev, tl, fence, point=2)
        for point in range(3, 200):
            syncobj.timeline_signal(dev, [tl], [point])
        exported = syncobj.export_sync_file(dev, tl, point=150)
        os.close(exported)
        syncobj.destroy(dev, tl)  # its points pending: dropped with the handle
        end_spinner(gpu, seq)
        for fd in (fence, timeline):
            os.close(fd)
        gpu.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_thousands_of_points_behind_one_fence_signal_together(dev: Device) -> None:
    """5000 points on one timeline, all behind a point not signalled: its signal
    signals them all (one after the other, not one nested in the next), and adding
    them stays cheap while they wait."""
    tl = syncobj.create(dev)
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    syncobj.import_sync_file(dev, tl, fence, point=1)
    for first in range(2, 5002, 500):
        points = list(range(first, first + 500))
        syncobj.timeline_signal(dev, [tl] * len(points), points)
    assert syncobj.query(dev, [tl]) == [0]
    sync_fd = syncobj.export_sync_file(dev, tl, point=5001)
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert syncobj.query(dev, [tl]) == [5001] and readable(sync_fd)
    for fd in (sync_fd, fence, timeline):
        os.close(fd)


def test_a_merge_of_two_points_waits_for_both(dev: Device) -> None:
    """Sync files of two points of one syncobj hold the points' own fences (unwrapped,
    as dma_fence_unwrap_merge): their merge waits for both, however far apart the
    points are (64-bit), and FILE_INFO names the fences inside."""
    tl = syncobj.create(dev)
    timelines = [syncobj.sw_sync_timeline(dev) for _ in range(2)]
    pending = [syncobj.sw_sync_fence(dev, t, 1) for t in timelines]
    syncobj.import_sync_file(dev, tl, pending[0], point=1)
    syncobj.import_sync_file(dev, tl, pending[1], point=0x8000_0002)
    first = syncobj.export_sync_file(dev, tl, point=1)
    both = syncobj.export_sync_file(dev, tl, point=0x8000_0002)
    info = syncobj.sync_file_info(dev, both)
    assert info.num_fences == 2 and {f.driver_name for f in info.fences} == {"sw_sync"}
    merged = syncobj.merge_sync_files(dev, first, both)
    assert syncobj.sync_file_info(dev, merged).num_fences == 2
    syncobj.sw_sync_inc(dev, timelines[0], 1)
    assert readable(first) and not readable(merged) and not readable(both)
    syncobj.sw_sync_inc(dev, timelines[1], 1)
    assert readable(merged) and readable(both)
    for fd in (first, both, merged, *pending, *timelines):
        os.close(fd)


def test_timeline_signal_of_point_0_is_a_point_after_the_others(dev: Device) -> None:
    """drm_syncobj_timeline_signal_ioctl adds every point, 0 included: numbered as the
    latest, it is signalled only once the points before it are."""
    tl = syncobj.create(dev)
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    syncobj.import_sync_file(dev, tl, fence, point=1)
    syncobj.timeline_signal(dev, [tl], [0])
    assert syncobj.query(dev, [tl], last_submitted=True) == [1]
    assert errno_of(syncobj.timeline_wait, dev, [tl], [1], timeout_nsec=0) == ETIME
    assert errno_of(syncobj.wait, dev, [tl], timeout_nsec=0) == ETIME
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert syncobj.wait(dev, [tl], timeout_nsec=0) == 0
    for fd in (fence, timeline):
        os.close(fd)


def test_a_chain_let_go_of_is_freed_while_its_fences_wait() -> None:
    """In process: a timeline point watches nothing until something waits on it, so a
    chain nobody holds is freed at once, its fences pending or not (a RESET, a syncobj
    destroyed); one that is waited on is told once every fence is signalled."""
    import gc
    import weakref

    from xed.device.fence import Fence, FenceChain

    pending = Fence()
    chain = FenceChain(FenceChain(None, pending, 1), Fence(signalled=True), 2)
    gone = weakref.ref(chain)
    del chain
    gc.collect()
    assert gone() is None and not pending._callbacks
    told: list[int] = []
    later = Fence()
    waited = FenceChain(FenceChain(None, pending, 1), later, 2)
    waited.add_callback(lambda: told.append(1))
    pending.signal()
    assert not told and not waited.signalled  # point 2's own fence is pending
    later.signal()
    assert told == [1] and waited.signalled


def test_each_syncobj_and_point_of_a_request_is_looked_up_once() -> None:
    """A request naming one syncobj thousands of times walks its chain once."""
    from xed.device.fence import Fence
    from xed.device.syncobj import DrmSyncobj, find_fences

    walks: list[int] = []

    class Counting(DrmSyncobj):
        __slots__ = ()

        def find_fence(self, point: int = 0) -> Fence | None:
            walks.append(point)
            return super().find_fence(point)

    one = Counting(Fence(signalled=True))
    assert len(find_fences([one] * 4096, [0] * 4096)) == 4096
    assert walks == [0]
