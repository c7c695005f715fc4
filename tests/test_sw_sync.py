"""sw_sync timelines (drivers/dma-buf/sw_sync.c) through real daemons: points signalled
as the timeline reaches them, across the wrap at 2^32; the same fence for a point asked
twice; a merge keeping one point per timeline; the release of the last copy signalling
what is left with ENOENT, at once when the library says it closed one; syncobjs holding
their fences; each errno; and nothing left behind."""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from errno import ENOENT, ENOMEM, ENOTTY, ETIME
from pathlib import Path

import pytest
import trio
from conftest import spawn_client
from helpers import errno_of, readable
from test_lifecycle import baseline, wait_for_baseline

from clients import Device, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from xed.config import Config
from xed.device.device import XeDevice
from xed.device.sw_sync import SyncTimeline


def status(dev: Device, sync_fd: int) -> tuple[int, list[int]]:
    """The sync file's status and each of its fences' (SYNC_IOC_FILE_INFO)."""
    info = syncobj.sync_file_info(dev, sync_fd)
    return info.status, [fence.status for fence in info.fences]


def closed(dev: Device, fd: int) -> None:
    """close(2) of a timeline's descriptor as the C library makes it."""
    ino = os.fstat(fd).st_ino
    os.close(fd)
    dev.ioctl(Op.SW_SYNC_CLOSED, m.SwSyncClosed(ino=ino))


@pytest.fixture
def dev(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path) as device:
        yield device


def test_a_point_signals_once_the_timeline_reaches_it(dev: Device) -> None:
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 5)
    assert not readable(fence) and status(dev, fence) == (0, [0])
    syncobj.sw_sync_inc(dev, timeline, 1)
    assert not readable(fence)
    syncobj.sw_sync_inc(dev, timeline, 4)  # signalled before INC answers
    assert readable(fence) and status(dev, fence) == (1, [1])
    passed = syncobj.sw_sync_fence(dev, timeline, 3)  # behind the timeline: signalled
    assert readable(passed)
    info = syncobj.sync_file_info(dev, fence)
    assert info.fences[0].driver_name == "sw_sync"
    assert info.fences[0].obj_name == info.name.split("-")[1][: len(info.fences[0].obj_name)]
    for fd in (fence, passed, timeline):
        os.close(fd)


def test_a_point_tells_when_it_was_signalled(dev: Device) -> None:
    """FILE_INFO's timestamp_ns: 0 while active; once signalled, the CLOCK_MONOTONIC time
    of the signal (dma_fence_timestamp), the same at every later look; a point made
    behind the timeline was signalled when made."""
    timeline = syncobj.sw_sync_timeline(dev)
    first, second = (syncobj.sw_sync_fence(dev, timeline, n) for n in (1, 2))
    assert [f.timestamp_ns for f in syncobj.sync_file_info(dev, first).fences] == [0]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    syncobj.sw_sync_inc(dev, timeline, 1)
    between = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    syncobj.sw_sync_inc(dev, timeline, 1)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    (one,) = syncobj.sync_file_info(dev, first).fences
    (two,) = syncobj.sync_file_info(dev, second).fences
    assert before <= one.timestamp_ns <= between <= two.timestamp_ns <= after
    assert syncobj.sync_file_info(dev, first).fences[0].timestamp_ns == one.timestamp_ns
    merged = syncobj.merge_sync_files(dev, first, second)
    assert [f.timestamp_ns for f in syncobj.sync_file_info(dev, merged).fences] == [
        two.timestamp_ns  # all signalled: a stub that tells the latest signal time
    ]
    passed = syncobj.sw_sync_fence(dev, timeline, 1)
    made = syncobj.sync_file_info(dev, passed).fences[0].timestamp_ns
    assert after <= made <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for fd in (first, second, merged, passed, timeline):
        os.close(fd)


def test_points_compare_across_the_wrap(dev: Device) -> None:
    """Seqnos compare as a signed 32-bit difference: near the wrap a point 'below' the
    counter is still ahead of it, and INC larger than INT_MAX goes in two steps."""
    timeline = syncobj.sw_sync_timeline(dev)
    syncobj.sw_sync_inc(dev, timeline, 0xFFFF_FFF0)
    ahead = syncobj.sw_sync_fence(dev, timeline, 5)  # 21 past the counter, after the wrap
    behind = syncobj.sw_sync_fence(dev, timeline, 0x8000_0000)  # 2^31 - 16 behind
    assert not readable(ahead) and readable(behind)
    syncobj.sw_sync_inc(dev, timeline, 0x15)
    assert readable(ahead)
    far = syncobj.sw_sync_fence(dev, timeline, 0x7000_0000)
    syncobj.sw_sync_inc(dev, timeline, 0xF000_0000)  # INT_MAX, then the rest
    assert readable(far)
    for fd in (ahead, behind, far, timeline):
        os.close(fd)


def test_one_point_one_fence_and_a_merge_keeps_the_latest_per_timeline(dev: Device) -> None:
    timelines = [syncobj.sw_sync_timeline(dev) for _ in range(2)]
    first = syncobj.sw_sync_fence(dev, timelines[0], 1)
    again = syncobj.sw_sync_fence(dev, timelines[0], 1)
    later = syncobj.sw_sync_fence(dev, timelines[0], 3)
    other = syncobj.sw_sync_fence(dev, timelines[1], 2)
    same = syncobj.merge_sync_files(dev, first, again)  # one fence: the same point
    assert syncobj.sync_file_info(dev, same).num_fences == 1
    merged = syncobj.merge_sync_files(dev, first, later)
    merged = syncobj.merge_sync_files(dev, merged, other)
    assert status(dev, merged) == (0, [0, 0])  # point 3 of the first, point 2 of the other
    syncobj.sw_sync_inc(dev, timelines[0], 1)
    assert readable(first) and readable(again) and readable(same)
    assert not readable(merged)
    syncobj.sw_sync_inc(dev, timelines[0], 2)
    syncobj.sw_sync_inc(dev, timelines[1], 2)
    assert readable(merged) and status(dev, merged) == (1, [1, 1])
    for fd in (first, again, later, other, same, merged, *timelines):
        os.close(fd)


def test_the_last_close_signals_what_is_left_with_enoent(dev: Device) -> None:
    timeline = syncobj.sw_sync_timeline(dev)
    pending = syncobj.sw_sync_fence(dev, timeline, 2)
    done = syncobj.sw_sync_fence(dev, timeline, 1)
    syncobj.sw_sync_inc(dev, timeline, 1)
    copy = os.dup(timeline)
    closed(dev, timeline)  # a copy is left: nothing happens
    assert not readable(pending)
    closed(dev, copy)  # the last: released before the answer
    assert readable(pending)
    assert status(dev, pending) == (-ENOENT, [-ENOENT])
    assert status(dev, done) == (1, [1])
    os.close(pending)
    os.close(done)


def test_an_unannounced_close_releases_the_timeline_all_the_same(dev: Device) -> None:
    """A program that closes the descriptor without the library (or dies) still
    releases the timeline: the daemon sees the hangup itself."""
    timeline = syncobj.sw_sync_timeline(dev)
    pending = syncobj.sw_sync_fence(dev, timeline, 1)
    os.close(timeline)
    assert readable(pending, 10)
    assert status(dev, pending)[0] == -ENOENT
    os.close(pending)


def test_a_syncobj_holds_a_point_and_waits_for_it(dev: Device) -> None:
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    handle = syncobj.create(dev)
    syncobj.import_sync_file(dev, handle, fence)
    os.close(fence)  # the syncobj holds the point on its own
    assert errno_of(syncobj.wait, dev, [handle], timeout_nsec=0) == ETIME
    syncobj.sw_sync_inc(dev, timeline, 1)
    syncobj.wait(dev, [handle], timeout_nsec=syncobj.deadline_in(10))
    os.close(timeline)


def test_another_process_advances_a_timeline_it_was_sent(
    fresh_daemon: DaemonProcess, dev: Device, tmp_path: Path
) -> None:
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    where = str(tmp_path / "pass.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(where)
        listener.listen(1)
        code = """
import socket
from clients import syncobj
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(argv[0])
_, fds, _, _ = socket.recv_fds(sock, 1, 1)
syncobj.sw_sync_inc(dev, fds[0], 1)
print("advanced")
"""
        child = spawn_client(fresh_daemon.socket_path, code, where)
        conn, _ = listener.accept()
        with conn:
            socket.send_fds(conn, [b"t"], [timeline])
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "advanced" in out and readable(fence)
    for fd in (fence, timeline):
        os.close(fd)


def test_refusals(dev: Device) -> None:
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    dma_buf = dev.prime_handle_to_fd(dev.gem_create(0x1000))
    read_end, write_end = os.pipe()
    for not_a_timeline in (fence, dma_buf, read_end):
        assert errno_of(syncobj.sw_sync_fence, dev, not_a_timeline, 1) == ENOTTY
        assert errno_of(syncobj.sw_sync_inc, dev, not_a_timeline, 1) == ENOTTY
    # a timeline is no sync file, and the sync file ioctls say so
    assert errno_of(syncobj.sync_file_info, dev, timeline) == ENOTTY
    assert errno_of(syncobj.merge_sync_files, dev, fence, timeline) == ENOENT
    # SW_SYNC_CLOSED is no error, whatever it names
    dev.ioctl(Op.SW_SYNC_CLOSED, m.SwSyncClosed(ino=os.fstat(fence).st_ino))
    dev.ioctl(Op.SW_SYNC_CLOSED, m.SwSyncClosed(ino=2**63))
    assert not readable(fence)  # the timeline has copies: still pending
    for fd in (fence, dma_buf, read_end, write_end, timeline):
        os.close(fd)


def test_limits_exported_bounds_timelines_and_fences(make_daemon: object) -> None:
    daemon = make_daemon("[limits]\nexported = 3\n")  # type: ignore[operator]
    with Device.open(daemon.socket_path) as dev:
        timeline = syncobj.sw_sync_timeline(dev)
        fences = [syncobj.sw_sync_fence(dev, timeline, n) for n in (1, 2)]
        assert errno_of(syncobj.sw_sync_fence, dev, timeline, 3) == ENOMEM
        assert errno_of(syncobj.sw_sync_timeline, dev) == ENOMEM
        for fd in (*fences, timeline):
            os.close(fd)


def test_nothing_is_left_behind(fresh_daemon: DaemonProcess) -> None:
    """Timelines, their points and sync files go with their last descriptor, signalled
    or not, and points nothing holds are not kept: the daemon's descriptors and objects
    are back where they were."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        timeline = syncobj.sw_sync_timeline(dev)
        for point in range(1, 200):  # made and dropped: nothing holds them
            os.close(syncobj.sw_sync_fence(dev, timeline, 1000 + point))
        held = syncobj.sw_sync_fence(dev, timeline, 1)
        handle = syncobj.create(dev)
        syncobj.import_sync_file(dev, handle, held)
        with Device.open(fresh_daemon.socket_path, role="admin") as adm:
            objects = adm.admin_status().objects
            assert objects.sw_sync_timelines == 1
        os.close(held)
        os.close(timeline)
    assert wait_for_baseline(fresh_daemon, before) == before


async def test_a_timeline_keeps_only_the_points_something_holds() -> None:
    """In process, with a real device: points whose sync files are gone are not kept
    (the kernel frees a sync_pt with its last reference), one a syncobj holds is, and
    a point asked for again after is a new fence, still pending."""
    device = XeDevice(Config())
    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        timeline = SyncTimeline(device, "test")
        held = timeline.point(1)
        for point in range(2, 1000):
            timeline.point(point)  # nothing keeps it
        gc.collect()
        assert list(timeline._points) == [1]
        assert timeline.point(1) is held
        timeline.inc(1)
        assert held.status() == 1 and not timeline._points
        again = timeline.point(500)
        assert not again.signalled
        timeline.release()
        assert again.status() == -ENOENT
        timeline.let_go()
        nursery.cancel_scope.cancel()


def test_a_merges_status_listed_is_its_first_fence_not_signalled_cleanly(dev: Device) -> None:
    """FILE_INFO of a merge one of whose fences ended with ENOENT while the other is
    pending: listing them, the file's status is the first not 1 (-ENOENT); asked for
    the count alone, the merge's own (0: not all signalled)."""
    timelines = [syncobj.sw_sync_timeline(dev) for _ in range(2)]
    fences = [syncobj.sw_sync_fence(dev, t, 1) for t in timelines]
    merged = syncobj.merge_sync_files(dev, fences[0], fences[1])
    closed(dev, timelines[0])
    assert status(dev, merged) == (-ENOENT, [-ENOENT, 0])
    count = dev.ioctl(Op.SYNC_FILE_INFO, m.SyncFileInfo(), fds=[merged])
    assert count.status == 0 and count.num_fences == 2
    for fd in (*fences, merged, timelines[1]):
        os.close(fd)


async def test_an_inc_looks_only_at_the_points_it_reaches() -> None:
    """In process: points are due in order of their distance from the counter (across
    the wrap), an INC signals those it reaches, earliest first, and looks at no other;
    points freed before they are due leave nothing behind for long."""
    device = XeDevice(Config())
    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        timeline = SyncTimeline(device, "test")
        timeline.inc(0xFFFF_FFF0)
        order: list[int] = []
        held = []
        for seqno in (5, 0xFFFF_FFF8, 1, 0xFFFF_FFF2):  # 21, 8, 17 and 2 ahead
            pt = timeline.point(seqno)
            pt.add_callback(lambda seqno=seqno: order.append(seqno))
            held.append(pt)
        timeline.inc(0)
        assert order == [] and len(timeline._due) == 4
        timeline.inc(17)
        assert order == [0xFFFF_FFF2, 0xFFFF_FFF8, 1]
        for point in range(100, 10_000):
            timeline.point(point)  # freed at once: nothing holds them
        assert len(timeline._due) < 2 * len(timeline._points) + 64 + 2
        timeline.inc(4)
        assert order[-1] == 5 and held[0].signalled
        timeline.release()
        timeline.let_go()
        nursery.cancel_scope.cancel()
