"""Waits over many handles, and releases of many exports, at scale: a SYNCOBJ_WAIT
watches each distinct fence it waits on once (a callback, not a task per handle), with
the same answers as a wait per handle would give; several connections asleep on one
fence all wake at its signal; a wait that ends however (done, timed out, cancelled, its
connection gone) leaves nothing behind; thousands of exported dma-bufs let go at once
are all released. Times here are deadlines handed to the daemon or bounds for a hung
test, never expectations."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from errno import ENOMEM, ETIME
from typing import Any

import pytest
import trio
import trio.testing
from conftest import baseline
from test_lifecycle import wait_for_baseline
from test_syncobj import asleep_elsewhere, until_asleep_elsewhere

from clients import Device, XeError, syncobj
from clients.daemon import DaemonProcess
from protocols import Op, encode_request
from protocols import messages as m
from protocols.constants import (
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
    PAGE_SIZE,
)
from xed.config import Config
from xed.device.device import XeDevice
from xed.device.errors import IoctlError
from xed.device.export import RELEASE_BATCH, ExportedObject
from xed.device.fence import Fence
from xed.device.syncobj import NONE_SIGNALLED, DrmSyncobj, array_wait

FOREVER = 2**63 - 1
ALL = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
FOR_SUBMIT = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
AVAILABLE = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
HANDLES = 1500  # handles of one wait, over a few fences
HUNG = 60.0  # seconds: a bound for a hung test, never a measured time


# --- in process: what a wait watches ----------------------------------------------------
class _File:
    """What array_wait asks of a drm file: its device (limits.fence_waits counts it)."""

    def __init__(self, device: XeDevice) -> None:
        self.device = device


def _callbacks(fence: Fence) -> int:
    return len(fence._callbacks or [])


async def _started(nursery: trio.Nursery, call: Callable[[], Any], results: list[Any]) -> None:
    """Run `call` beside the test, its answer (or IoctlError's errno) into `results`;
    back once it is asleep."""

    async def run() -> None:
        try:
            results.append(await call())
        except IoctlError as exc:
            results.append(("errno", exc.errno))

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()


@contextlib.asynccontextmanager
async def _beside() -> AsyncIterator[trio.Nursery]:
    """A nursery for the tasks beside the test, failing it rather than hanging."""
    with trio.fail_after(HUNG):
        async with trio.open_nursery() as nursery:
            yield nursery


@pytest.fixture
async def device() -> Any:
    device = XeDevice(Config())
    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        yield device
        nursery.cancel_scope.cancel()


def _spread(fences: list[Fence], count: int) -> list[DrmSyncobj]:
    """`count` syncobjs holding `fences` in turn (syncobj i holds fences[i % len])."""
    return [DrmSyncobj(fences[index % len(fences)]) for index in range(count)]


async def test_a_wait_watches_each_distinct_fence_once_and_no_task_per_handle(
    device: XeDevice,
) -> None:
    """WAIT_ALL over HANDLES syncobjs holding three fences: one callback on each fence,
    one task (the wait's own); asleep until the last fence signals; nothing left on any
    fence after."""
    xef = _File(device)
    fences = [Fence() for _ in range(3)]
    syncobjs = _spread(fences, HANDLES)
    results: list[Any] = []
    tasks = trio.lowlevel.current_statistics().tasks_living
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, [0] * HANDLES, ALL, FOREVER),  # type: ignore[arg-type]
            results,
        )
        assert trio.lowlevel.current_statistics().tasks_living == tasks + 1
        assert [_callbacks(fence) for fence in fences] == [1, 1, 1]
        fences[2].signal()
        fences[0].signal()
        await trio.testing.wait_all_tasks_blocked()
        assert results == [] and _callbacks(fences[1]) == 1
        fences[1].signal()
    assert results == [NONE_SIGNALLED]
    assert device.ufences._per_file == {}


@pytest.mark.parametrize("which", [0, 1, 2])
async def test_wait_any_answers_the_lowest_index_holding_the_signalled_fence(
    device: XeDevice, which: int
) -> None:
    """WAIT_ANY over handles whose syncobjs hold three fences (the first of them at
    index 5 + k for fence k): the first index of the fence signalled; the other fences'
    callbacks are taken back."""
    xef = _File(device)
    fences = [Fence() for _ in range(3)]
    syncobjs = [DrmSyncobj(fences[1]) for _ in range(5)] + _spread(fences, HANDLES)
    syncobjs[5:8] = [DrmSyncobj(fences[k]) for k in range(3)]
    syncobjs[0] = DrmSyncobj(fences[2])  # fence 2 first held at 0 after all
    results: list[Any] = []
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, [0] * len(syncobjs), 0, FOREVER),  # type: ignore[arg-type]
            results,
        )
        fences[which].signal()
    assert results == [{0: 5, 1: 1, 2: 0}[which]]
    assert [_callbacks(fence) for fence in fences] == [0, 0, 0]


async def test_a_wait_signalled_at_the_start_answers_at_once(device: XeDevice) -> None:
    """first_signaled is the first index signalled at the start: WAIT_ANY answers it,
    WAIT_ALL answers it once the rest are signalled (not the one signalled last)."""
    xef = _File(device)
    done, pending = Fence(signalled=True), Fence()
    syncobjs = [DrmSyncobj(pending)] * 700 + [DrmSyncobj(done)] + [DrmSyncobj(pending)] * 700
    points = [0] * len(syncobjs)
    assert await array_wait(xef, syncobjs, points, 0, FOREVER) == 700  # type: ignore[arg-type]
    results: list[Any] = []
    async with _beside() as nursery:
        await _started(nursery, lambda: array_wait(xef, syncobjs, points, ALL, FOREVER), results)  # type: ignore[arg-type]
        pending.signal()
    assert results == [700]


async def test_a_wait_timed_out_or_cancelled_leaves_nothing_behind(device: XeDevice) -> None:
    """A deadline passed: ETIME; cancelled (its connection gone): nothing to answer.
    Either way no callback is left on a fence, no waiter on a syncobj, no wait counted."""
    xef = _File(device)
    fences = [Fence() for _ in range(4)]
    empty = DrmSyncobj()
    syncobjs = _spread(fences, HANDLES) + [empty] * 100
    points = [0] * len(syncobjs)
    deadline = time.monotonic_ns() + 20_000_000
    with pytest.raises(IoctlError) as info:
        await array_wait(xef, syncobjs, points, ALL | FOR_SUBMIT, deadline)  # type: ignore[arg-type]
    assert info.value.errno == ETIME
    assert [_callbacks(fence) for fence in fences] == [0] * 4 and not empty._waiters
    results: list[Any] = []
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, points, FOR_SUBMIT, FOREVER),  # type: ignore[arg-type]
            results,
        )
        assert [_callbacks(fence) for fence in fences] == [1] * 4
        assert empty._waiters is not None and len(empty._waiters) == 1
        nursery.cancel_scope.cancel()
    assert results == []
    assert [_callbacks(fence) for fence in fences] == [0] * 4 and not empty._waiters
    assert device.ufences._per_file == {}
    fences[0].signal()  # nothing of the wait runs (it would fail the test: it is over)


async def test_wait_for_submit_watches_each_syncobj_once_then_its_fence(
    device: XeDevice,
) -> None:
    """WAIT_FOR_SUBMIT over two empty syncobjs named a thousand times each: one waiter
    on each; a submitted fence is then watched (once); the wait ends once both points
    are signalled, and a WAIT_ANY answers the first index of the syncobj submitted
    signalled."""
    xef = _File(device)
    one, two = DrmSyncobj(), DrmSyncobj()
    syncobjs = [one, two] * 1000
    points = [0] * len(syncobjs)
    results: list[Any] = []
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, points, ALL | FOR_SUBMIT, FOREVER),
            results,  # type: ignore[arg-type]
        )
        assert one._waiters is not None and len(one._waiters) == 1
        fence = Fence()
        one.replace_fence(fence)
        assert _callbacks(fence) == 1 and not one._waiters
        two.replace_fence(Fence(signalled=True))
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        fence.signal()
    assert results == [NONE_SIGNALLED]
    one.replace_fence(None)
    two.replace_fence(None)
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, points, FOR_SUBMIT, FOREVER),
            results,  # type: ignore[arg-type]
        )
        two.replace_fence(Fence(signalled=True))
    assert results[-1] == 1 and not one._waiters


async def test_wait_available_ends_once_every_point_is_submitted(device: XeDevice) -> None:
    """WAIT_AVAILABLE (timeline waits): a point submitted is enough, signalled or not;
    a point below the one awaited does not end it."""
    xef = _File(device)
    timeline = DrmSyncobj()
    syncobjs = [timeline] * 600
    points = [1 + index % 3 for index in range(600)]  # points 1, 2 and 3
    results: list[Any] = []
    async with _beside() as nursery:
        await _started(
            nursery,
            lambda: array_wait(xef, syncobjs, points, ALL | AVAILABLE, FOREVER),
            results,  # type: ignore[arg-type]
        )
        timeline.add_point(Fence(), 2)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        timeline.add_point(Fence(), 3)
    assert results == [NONE_SIGNALLED]
    assert not timeline._waiters


# --- in process: exports let go of together ------------------------------------------
async def test_exports_let_go_together_are_released_over_several_turns() -> None:
    """Thousands of exported objects whose last descriptor goes at once are all
    released, RELEASE_BATCH or so a scheduler turn rather than all in one; the daemon
    going meanwhile releases the rest at once."""
    for cancel in (False, True):
        device = XeDevice(Config())
        async with trio.open_nursery() as nursery:
            device.attach(nursery)
            made = [ExportedObject(device) for _ in range(6 * RELEASE_BATCH)]
            await trio.testing.wait_all_tasks_blocked()
            for exported in made:
                exported.let_go()
            seen = []
            with trio.fail_after(HUNG):
                while device.counts["exported"]:
                    await trio.lowlevel.checkpoint()
                    seen.append(device.counts["exported"])
                    if cancel and device.counts["exported"] < len(made) - RELEASE_BATCH:
                        nursery.cancel_scope.cancel()
                        break
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        assert device.counts["exported"] == 0 and not device.exported
        assert all(exported.released for exported in made)
        assert any(0 < count < len(made) for count in seen)  # some turns saw some left
        if not cancel:
            assert len(set(seen)) > 3  # released over several turns, not one


# --- through daemons ---------------------------------------------------------------------
ONE_WAIT = "[limits]\nfence_waits = 1\n"  # a file's second wait asleep: ENOMEM (a probe)


def _holding(dev: Device, sync_fds: list[int], count: int) -> list[int]:
    """`count` syncobjs, syncobj i holding the fence of sync_fds[i % len]."""
    handles = [syncobj.create(dev) for _ in range(count)]
    for index, handle in enumerate(handles):
        syncobj.import_sync_file(dev, handle, sync_fds[index % len(sync_fds)])
    return handles


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """`call` in a thread of its own, its answer (or errno) into the list; called again
    on ENOMEM (a probe of asleep_elsewhere() held the file's one wait a moment)."""
    results: list[Any] = []

    def run() -> None:
        while True:
            try:
                results.append(call())
            except XeError as exc:
                if exc.errno == ENOMEM:
                    continue
                results.append(("errno", exc.errno))
            return

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def _waiting(
    daemon: DaemonProcess, dev: Device, handles: list[int], wait_all: bool
) -> tuple[threading.Thread, list[Any], Device]:
    """A wait over `handles` of dev's file, on a channel of its own, back once asleep."""
    channel = Device.open(daemon.socket_path, join=dev.token)
    deadline = syncobj.deadline_in(HUNG)  # ETIME for a wait that never wakes
    thread, results = _in_thread(lambda: syncobj.wait(channel, handles, deadline, wait_all))
    until_asleep_elsewhere(dev)
    return thread, results, channel


def test_wait_any_and_wait_all_over_few_fences(make_daemon: Any) -> None:
    """Through a daemon: WAIT_ANY over handles sharing three sw_sync fences answers the
    first index of the fence signalled; WAIT_ALL sleeps until every fence is, and
    answers the first index signalled at its start; the daemon ends at baseline."""
    daemon = make_daemon(ONE_WAIT)
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev:
        timelines = [syncobj.sw_sync_timeline(dev) for _ in range(3)]
        fences = [syncobj.sw_sync_fence(dev, timeline, 1) for timeline in timelines]
        handles = _holding(dev, fences, HANDLES)
        thread, results, channel = _waiting(daemon, dev, handles, wait_all=False)
        syncobj.sw_sync_inc(dev, timelines[2], 1)
        thread.join(HUNG)
        assert results == [2]
        channel.close()
        thread, results, channel = _waiting(daemon, dev, handles, wait_all=True)
        syncobj.sw_sync_inc(dev, timelines[0], 1)
        until_asleep_elsewhere(dev)  # still asleep: fence 1 is pending
        assert not results
        syncobj.sw_sync_inc(dev, timelines[1], 1)
        thread.join(HUNG)
        assert results == [2]  # the first index signalled at the start
        channel.close()
        for fd in (*fences, *timelines):
            os.close(fd)
    assert wait_for_baseline(daemon, before) == before


def test_several_connections_asleep_are_all_woken_by_one_signal(make_daemon: Any) -> None:
    """Four files each waiting (WAIT_ALL) on their own syncobjs holding one fence: one
    SW_SYNC_INC wakes them all, each answering ~0 (nothing signalled at its start)."""
    daemon = make_daemon(ONE_WAIT)
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as owner:
        timeline = syncobj.sw_sync_timeline(owner)
        fence = syncobj.sw_sync_fence(owner, timeline, 1)
        files = [Device.open(daemon.socket_path) for _ in range(4)]
        waits = [_waiting(daemon, dev, _holding(dev, [fence], 700), True) for dev in files]
        syncobj.sw_sync_inc(owner, timeline, 1)
        for thread, _results, _channel in waits:
            thread.join(HUNG)
        assert [results for _thread, results, _channel in waits] == [[NONE_SIGNALLED]] * 4
        for dev in files:
            assert not asleep_elsewhere(dev)
        for _thread, _results, channel in waits:
            channel.close()
        for dev in files:
            dev.close()
        os.close(fence)
        os.close(timeline)
    assert wait_for_baseline(daemon, before) == before


def test_connections_gone_while_waiting_leave_the_daemon_as_before(make_daemon: Any) -> None:
    """Files asleep in WAIT_FOR_SUBMIT waits (one WAIT_ALL, one WAIT_ANY) over many
    handles, of syncobjs holding one fence and of empty ones, closed under them: the
    daemon is back where it was, and the fence signals later with nobody to tell."""
    daemon = make_daemon(ONE_WAIT)
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as owner:
        timeline = syncobj.sw_sync_timeline(owner)
        fence = syncobj.sw_sync_fence(owner, timeline, 1)
        held = baseline(daemon)
        files = [Device.open(daemon.socket_path) for _ in range(2)]
        for index, dev in enumerate(files):
            handles = _holding(dev, [fence], 800) + [syncobj.create(dev) for _ in range(50)]
            args = m.DrmSyncobjWait(
                handles=tuple(m.DrmSyncobjHandle(handle=h) for h in handles * 2),
                timeout_nsec=FOREVER,
                flags=(ALL | FOR_SUBMIT, FOR_SUBMIT)[index],
            )
            dev.transport.sock.send(encode_request(0xFFFF0000, Op.SYNCOBJ_WAIT, args))
            until_asleep_elsewhere(dev)
        for dev in files:
            dev.close()
        assert wait_for_baseline(daemon, held) == held
        syncobj.sw_sync_inc(owner, timeline, 1)
        owner.version()
        os.close(fence)
        os.close(timeline)
    assert wait_for_baseline(daemon, before) == before


@pytest.mark.parametrize("how", ["file_closed", "descriptors_closed"])
def test_thousands_of_dma_bufs_let_go_at_once_are_all_released(
    fresh_daemon: DaemonProcess, how: str
) -> None:
    """A file closed with 2000 exported dma-bufs (their descriptors closed already), or
    2000 dma-bufs whose BOs are closed losing their last descriptors at once: every one
    is released, the BOs with them, and the daemon is back at baseline; a dma-buf made
    meanwhile is not disturbed."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as other:
        bo = other.gem_create(PAGE_SIZE)
        kept = other.prime_handle_to_fd(bo)
        during = baseline(fresh_daemon)
        dev = Device.open(fresh_daemon.socket_path)
        fds = []
        for _ in range(2000):
            handle = dev.gem_create(PAGE_SIZE)
            fds.append(dev.prime_handle_to_fd(handle))
            if how == "descriptors_closed":
                dev.gem_close(handle)  # the descriptor alone keeps it now
        for fd in fds:
            os.close(fd)  # file_closed: the daemon's own copies keep them until dev goes
        if how == "file_closed":
            dev.close()
        assert other.prime_fd_to_handle(kept) == bo
        if how == "descriptors_closed":
            dev.close()
        assert wait_for_baseline(fresh_daemon, during) == during
        assert other.prime_fd_to_handle(kept) == bo
        os.close(kept)
    assert wait_for_baseline(fresh_daemon, before) == before
