"""Requests whose work grows with what a client holds, done in one step (one event loop
serves every client, so a long handler stalls them all), answered as before:

- SYNCOBJ_TIMELINE_WAIT naming many points of one chain looks them all up in one walk
  of the chain: each point resolves as a wait on that point alone does;
- AUX_VM_RESOLVE stops at the first span past MAX_SPANS: E2BIG, nothing watched;
- closing a file holding many exported dma-bufs lets go of all of them.

These check behaviour only; how long the requests take is /tmp/stall's business.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import baseline
from helpers import errno_of
from test_limits import client_info
from test_vm_export import BASE, settle_to
from test_vm_export_aux import close_all, export_import, invalidations

from clients import Device, XeError, syncobj
from clients.daemon import DaemonProcess
from protocols import messages as m
from protocols.constants import DRM_XE_VM_BIND_FLAG_NULL, DRM_XE_VM_BIND_OP_MAP, PAGE_SIZE
from xed.device.reaper import BIG
from xed.device.vm_export import MAX_SPANS


@pytest.fixture
def dev(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path) as device:
        yield device


@pytest.fixture
def aux(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path, role="aux") as device:
        yield device


# --- SYNCOBJ_TIMELINE_WAIT over many points of a chain -----------------------------------------
READY, PENDING = "ready", "pending"
FLAGS = {"plain": {}, "available": {"available": True}, "for_submit": {"for_submit": True}}


def _status(dev: Device, handle: int, point: int, flags: dict[str, bool]) -> str | int:
    """A wait on this one point (timeout 0): READY, PENDING, or the errno."""
    try:
        assert syncobj.timeline_wait(dev, [handle], [point], 0, **flags) == 0
    except XeError as exc:
        return PENDING if exc.errno == errno.ETIME else exc.errno
    return READY


def _answer(dev: Device, pairs: list[tuple[int, int]], **flags: bool) -> int | str:
    """A wait on every pair at once (timeout 0): first_signaled, or the errno's name."""
    handles, points = [h for h, _ in pairs], [p for _, p in pairs]
    try:
        return syncobj.timeline_wait(dev, handles, points, 0, **flags)
    except XeError as exc:
        return errno.errorcode[exc.errno]


def _expected(statuses: list[str | int], wait_all: bool = False) -> int | str:
    """What a wait on points of these statuses answers, as array_wait decides it."""
    if any(isinstance(s, int) for s in statuses):
        (code,) = {s for s in statuses if isinstance(s, int)}
        return errno.errorcode[code]
    if wait_all:
        return 0 if all(s == READY for s in statuses) else "ETIME"
    return statuses.index(READY) if READY in statuses else "ETIME"


def _chains(dev: Device) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Syncobjs holding every kind of chain, the sw_sync timelines and the sync files
    behind them, and (handle, point) pairs naming each of their points, a few between
    and beyond them, 0, in a shuffled order and some twice."""
    t1, t2 = syncobj.sw_sync_timeline(dev), syncobj.sw_sync_timeline(dev)
    files: list[int] = [t1, t2]

    def pending(timeline: int, value: int) -> int:
        fd = syncobj.sw_sync_fence(dev, timeline, value)
        files.append(fd)
        return fd

    long, unordered, binary, empty = (syncobj.create(dev) for _ in range(4))
    # a long chain with gaps between its points: own fences of two timelines, signalled
    # out of order, and points signalled from birth
    for n in range(1, 121):
        point = 3 * n
        if n % 5 == 0:
            syncobj.timeline_signal(dev, [long], [point])
        else:
            timeline = t1 if n % 3 else t2
            syncobj.import_sync_file(dev, long, pending(timeline, (n * 7) % 23 + 1), point)
    # a point not after the last: a context of its own, numbered as the latest
    syncobj.import_sync_file(dev, unordered, pending(t1, 5), 10)
    syncobj.import_sync_file(dev, unordered, pending(t2, 3), 20)
    syncobj.import_sync_file(dev, unordered, pending(t1, 2), 15)
    syncobj.import_sync_file(dev, binary, pending(t2, 1))  # a binary fence, no points
    pairs = [(long, p) for p in range(0, 3 * 120 + 4)]
    pairs += [(unordered, p) for p in range(0, 23)]
    pairs += [(binary, p) for p in range(0, 3)] + [(empty, p) for p in range(0, 3)]
    rng = random.Random(7)
    pairs += rng.sample(pairs, 60)  # named twice
    rng.shuffle(pairs)
    return [t1, t2], files, pairs


def test_a_timeline_wait_on_many_points_answers_as_waits_on_each(dev: Device) -> None:
    """A TIMELINE_WAIT naming hundreds of points of a few chains (the chain walked once
    per syncobj, not once per point) answers exactly as each point's own wait says: with
    no flag, WAIT_AVAILABLE and WAIT_FOR_SUBMIT, WAIT_ALL or not, over every suffix of
    the list, as the timelines advance and the chains drop their signalled points."""
    (t1, t2), files, pairs = _chains(dev)
    submitted = {(h, p) for h, p in pairs if _submitted(dev, h, p)}
    try:
        for timeline, advance in [(t1, 0), (t1, 9), (t2, 2), (t1, 30), (t2, 30)]:
            if advance:
                syncobj.sw_sync_inc(dev, timeline, advance)
            for name, flags in FLAGS.items():
                named = pairs if flags else [(h, p) for h, p in pairs if _submitted(dev, h, p)]
                if not flags:  # a point not submitted among them: EINVAL, before any wait
                    assert len(named) < len(pairs)
                    assert _answer(dev, pairs) == "EINVAL"
                statuses = {(h, p): _status(dev, h, p, flags) for h, p in set(named)}
                for start in range(0, len(named), 7):
                    suffix = named[start:]
                    want = [statuses[pair] for pair in suffix]
                    assert _answer(dev, suffix, **flags) == _expected(want), (advance, name)
                assert _answer(dev, named, wait_all=True, **flags) == _expected(
                    [statuses[pair] for pair in named], wait_all=True
                ), (advance, name)
        # every fence signalled: each point submitted is, those the chain let go of too
        assert {(h, p) for h, p in pairs if _status(dev, h, p, {}) == READY} == submitted
    finally:
        close_all(files)


def _submitted(dev: Device, handle: int, point: int) -> bool:
    return _status(dev, handle, point, {"available": True}) == READY


def test_a_timeline_wait_on_thousands_of_points_of_one_chain(dev: Device) -> None:
    """4096 handles, all one syncobj, at points 1..4096 of a chain of 8192 unsignalled
    points: ETIME at timeout 0, and 0 with WAIT_AVAILABLE; once the fence behind them is
    signalled, 0; a point past the chain's end among them is EINVAL."""
    timeline = syncobj.sw_sync_timeline(dev)
    fence = syncobj.sw_sync_fence(dev, timeline, 1)
    src, dst = syncobj.create(dev), syncobj.create(dev)
    try:
        syncobj.import_sync_file(dev, src, fence)
        for point in range(1, 8193):
            syncobj.transfer(dev, dst, point, src, 0)
        handles, points = [dst] * 4096, list(range(1, 4097))
        assert errno_of(syncobj.timeline_wait, dev, handles, points, 0) == errno.ETIME
        assert syncobj.timeline_wait(dev, handles, points, 0, available=True) == 0
        late = points[:-1] + [8193]
        assert errno_of(syncobj.timeline_wait, dev, handles, late, 0) == errno.EINVAL
        assert errno_of(syncobj.timeline_wait, dev, handles, late, 0, for_submit=True) == (
            errno.ETIME
        )
        syncobj.sw_sync_inc(dev, timeline, 1)
        assert syncobj.timeline_wait(dev, handles, points, 0, wait_all=True) == 0
        assert syncobj.query(dev, [dst]) == [8192]
    finally:
        close_all([fence, timeline])


# --- AUX_VM_RESOLVE of more than MAX_SPANS spans ------------------------------------------------
def _bind_pages(dev: Device, vm: int, bo: int, first: int, count: int) -> None:
    """Bind `bo`'s page `count` times, one binding a page, from page `first` of BASE."""
    for start in range(first, first + count, 500):
        ops = [
            m.DrmXeVmBindOp(obj=bo, range=PAGE_SIZE, addr=BASE + page * PAGE_SIZE,
                            op=DRM_XE_VM_BIND_OP_MAP)
            for page in range(start, min(start + 500, first + count))
        ]  # fmt: skip
        dev.vm_bind_ops(vm, ops)


def test_aux_resolve_of_thousands_of_spans_is_e2big_and_watches_nothing(
    dev: Device, fresh_daemon: DaemonProcess
) -> None:
    """A range over 4000 bindings: E2BIG, and the registration is as before: nothing of
    the range watched (unbinding it tells the aux driver nothing), and a range that fits
    resolves as ever."""
    vm, bo = dev.vm_create(), dev.gem_create(PAGE_SIZE)
    _bind_pages(dev, vm, bo, 0, 4000)
    with Device.open(fresh_daemon.socket_path, role="aux") as aux:
        handle = export_import(dev, aux, vm).vm_handle
        assert errno_of(aux.aux_vm_resolve, handle, BASE, 4000 * PAGE_SIZE) == errno.E2BIG
        assert errno_of(aux.aux_vm_resolve, handle, BASE, (MAX_SPANS + 1) * PAGE_SIZE) == (
            errno.E2BIG
        )
        dev.vm_unbind(vm, BASE, 4000 * PAGE_SIZE)
        assert invalidations(dev, vm, aux, handle) == []
        _bind_pages(dev, vm, bo, 0, MAX_SPANS)
        spans, fds = aux.aux_vm_resolve(handle, BASE, MAX_SPANS * PAGE_SIZE)
        close_all(fds)
        assert (len(spans), len(fds)) == (MAX_SPANS, 1)
        assert [s.va for s in spans] == [BASE + i * PAGE_SIZE for i in range(MAX_SPANS)]


@pytest.mark.parametrize("after", ["hole", "null"])
def test_aux_resolve_stops_at_the_span_past_max_spans(dev: Device, aux: Device, after: str) -> None:
    """What lies past the first MAX_SPANS + 1 spans is not looked at: a hole or a NULL
    binding there leaves the answer E2BIG; within the first MAX_SPANS, EFAULT as ever."""
    vm, bo = dev.vm_create(), dev.gem_create(PAGE_SIZE)
    _bind_pages(dev, vm, bo, 0, MAX_SPANS + 1)
    if after == "null":
        null = m.DrmXeVmBindOp(
            addr=BASE + (MAX_SPANS + 1) * PAGE_SIZE,
            range=PAGE_SIZE,
            op=DRM_XE_VM_BIND_OP_MAP,
            flags=DRM_XE_VM_BIND_FLAG_NULL,
        )
        dev.vm_bind_ops(vm, [null])
    handle = export_import(dev, aux, vm).vm_handle
    length = (MAX_SPANS + 2) * PAGE_SIZE
    assert errno_of(aux.aux_vm_resolve, handle, BASE, length) == errno.E2BIG
    dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)  # a hole among the first spans
    assert errno_of(aux.aux_vm_resolve, handle, BASE, length) == errno.EFAULT


# --- closing a file of many exported dma-bufs ---------------------------------------------------
def test_closing_a_file_of_many_exported_dma_bufs_frees_them(
    make_daemon: Any,
) -> None:
    """A file holding 2000 exported BOs (some exported twice, some imported back from
    their descriptors, some handles closed first, whose dma-bufs then come back as new
    handles) closes; the dma-bufs still held elsewhere live on, and once they are closed
    the daemon is back where it started."""
    daemon = make_daemon()
    before = baseline(daemon)
    kept: list[int] = []
    try:
        with Device.open(daemon.socket_path) as owner, Device.open(daemon.socket_path) as other:
            handles = [owner.gem_create(PAGE_SIZE) for _ in range(2000)]
            for i, handle in enumerate(handles):
                fd = owner.prime_handle_to_fd(handle)
                if i % 3 == 0:
                    os.close(owner.prime_handle_to_fd(handle))  # the same dma-buf
                if i % 100 == 0:
                    kept.append(fd)
                    continue
                if i % 7 == 0:
                    assert owner.prime_fd_to_handle(fd) == handle
                    other.prime_fd_to_handle(fd)
                os.close(fd)
            assert client_info(daemon, owner.client_id).bos == 2000
            for handle, fd in zip(handles[::100][:10], kept[:10], strict=True):
                owner.gem_close(handle)  # the dma-buf's entry goes with the handle
                again = owner.prime_fd_to_handle(fd)  # so this is a handle made anew
                assert owner.prime_fd_to_handle(fd) == again
                with owner.mmap_bo(again) as view:
                    assert len(view) == PAGE_SIZE
            assert client_info(daemon, owner.client_id).bos == 2000
        # both files are closed: the dma-bufs kept live on in their descriptors
        with Device.open(daemon.socket_path) as later:
            for fd in kept:
                with later.mmap_bo(later.prime_fd_to_handle(fd)) as view:
                    assert len(view) == PAGE_SIZE
    finally:
        close_all(kept)
    assert settle_to(daemon, before) == before


def _threads(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            names.append(comm.read().strip())
    return names


def test_a_large_bo_is_freed_off_the_event_loop(make_daemon: Any) -> None:
    """The last close of a large BO's memfd frees its pages inside close(): a filled
    BO of BIG bytes or more is closed by the daemon's reaper thread instead of the event
    loop's (a filled 1 GiB BO held every client up 165 ms). A small one is closed at
    once, with no thread; either way everything is let go."""
    daemon = make_daemon()
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev:
        small = dev.gem_create(PAGE_SIZE)
        with dev.mmap_bo(small) as cpu:
            cpu[:4] = b"\1\2\3\4"
        dev.gem_close(small)
        assert "xed-reaper" not in _threads(daemon.pid)
        big = dev.gem_create(BIG)
        with dev.mmap_bo(big) as cpu:
            for offset in range(0, BIG, 1 << 20):
                cpu[offset : offset + 1] = b"\1"  # a page of each MiB touched
        dev.gem_close(big)
    assert settle_to(daemon, before) == before
    assert "xed-reaper" in _threads(daemon.pid)
