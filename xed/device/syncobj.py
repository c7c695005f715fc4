"""DRM syncobjs (drm_syncobj.c): a handle that holds a fence or nothing.

A Fence (fence.py) stands for a dma_fence: signalled once, by the job that owns it (an
EXEC's batch, a VM_BIND), by SYNCOBJ_SIGNAL (the stub fence, signalled from birth) or
by the queue's end (destroyed, or the device unplugged: xe signals what it will never
run, with an error no syncobj ioctl reports). A syncobj's fence is replaced, never
changed: a wait holds the fence it found, as the kernel's does, and a RESET or a later
SIGNAL job does not disturb it. Given a timeline point, a syncobj holds a FenceChain
instead, the latest point, through which the earlier ones are reached; the timeline
ioctls are syncobj_timeline.py's.

Each drm file has its own handle space (lowest free id from 1, as idr_alloc). A syncobj
leaves its file as a descriptor (HANDLE_TO_FD, FD_TO_HANDLE: one syncobj, a handle in
each file), and its fence as a sync file (EXPORT_SYNC_FILE, IMPORT_SYNC_FILE; the
descriptors are sync_file.py's).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from errno import EINVAL, ENOENT, ETIME
from typing import TYPE_CHECKING

import trio

from protocols import messages as m
from protocols.constants import (
    DRM_SYNCOBJ_CREATE_SIGNALED,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
)

from .errors import IoctlError, refuse_if
from .export import lookup as lookup_exported
from .fence import Fence, FenceChain
from .limits import refuse_over

if TYPE_CHECKING:
    from .file import XeFile
    from .limits import Account

_WAIT_FLAGS = (
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
)
NONE_SIGNALLED = 0xFFFF_FFFF  # first_signaled when nothing was signalled at the start


class DrmSyncobj:
    """A syncobj: the fence it holds now (None: empty). Given timeline points, it holds
    the latest (a FenceChain), through which the earlier ones are reached."""

    __slots__ = ("fence", "_changed", "_waiters", "__weakref__")

    def __init__(self, fence: Fence | None = None) -> None:
        self.fence = fence
        self._changed: trio.Event | None = None  # TRANSFER, eventfds: set at a change
        self._waiters: list[Callable[[], None]] | None = None  # the same, as callbacks

    def replace_fence(self, fence: Fence | None) -> None:
        """drm_syncobj_replace_fence: from now on it holds `fence`."""
        self.fence = fence
        if fence is not None:
            self._tell()

    def add_point(self, fence: Fence, point: int) -> None:
        """drm_syncobj_add_point: `fence` becomes the point `point`, after the fence or
        points it held (a point not after the last starts a context of its own)."""
        head = FenceChain(self.fence, fence, point)
        self.fence = head
        # let go of the points right behind it already signalled (one step of the
        # kernel's walk; a whole walk per point would make adding N points cost N^2)
        head.collapse()
        self._tell()

    def _tell(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter()

    def add_waiter(self, waiter: Callable[[], None]) -> None:
        """Call `waiter` once, when a fence or point is next added (as changed() is set
        then; a waiter that still needs another adds itself again). A syncobj wait's
        syncobj_wait_entry, a callback rather than a task of its own."""
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)

    def remove_waiter(self, waiter: Callable[[], None]) -> None:
        if self._waiters and waiter in self._waiters:
            self._waiters.remove(waiter)

    def find_fence(self, point: int = 0) -> Fence | None:
        """drm_syncobj_fence_get and dma_fence_chain_find_seqno: the fence that signals
        once `point` has (0: the fence it holds), or None if the point is not submitted
        (nothing held; above the latest point; a point of a binary syncobj). A point
        signalled and let go is a signalled stub."""
        fence = self.fence
        if fence is None or not point:
            return fence
        if not isinstance(fence, FenceChain) or fence.seqno < point:
            return None
        found = fence.find_seqno(point)
        return found if found is not None else Fence(signalled=True)

    def find_points(self, points: Iterable[int]) -> dict[int, Fence | None]:
        """find_fence() of each of `points`, the chain walked once for them all."""
        fence = self.fence
        distinct = set(points)
        if not isinstance(fence, FenceChain):
            return {point: self.find_fence(point) for point in distinct}
        seqnos = fence.find_seqnos(p for p in distinct if p and p <= fence.seqno)
        found: dict[int, Fence | None] = {}
        for point in distinct:
            if not point:
                found[point] = fence
            elif point > fence.seqno:
                found[point] = None
            else:  # as find_fence: a point signalled and let go is a signalled stub
                node = seqnos[point]
                found[point] = node if node is not None else Fence(signalled=True)
        return found

    async def fence_submitted(self, point: int = 0) -> Fence:
        """find_fence(point), waiting for the point to be submitted if it is not."""
        while (fence := self.find_fence(point)) is None:
            await self.changed().wait()
        return fence

    def changed(self) -> trio.Event:
        """Set when a fence or point is next added (what WAIT_FOR_SUBMIT waits on)."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed


FoundFences = dict[tuple[DrmSyncobj, int], Fence | None]


def find_fence_once(found: FoundFences, syncobj: DrmSyncobj, point: int) -> Fence | None:
    """syncobj.find_fence(point), each pair looked up once a request (`found` is the
    request's): a request may name one syncobj thousands of times, and a lookup walks
    its chain."""
    if (syncobj, point) not in found:
        found[syncobj, point] = syncobj.find_fence(point)
    return found[syncobj, point]


def find_fences(syncobjs: list[DrmSyncobj], points: list[int]) -> list[Fence | None]:
    """find_fence() of each (syncobj, point), each pair looked up once, and each
    syncobj's chain walked once for all its points (not once a point: thousands of
    points of one long chain would stall every client)."""
    if not any(points):  # SYNCOBJ_WAIT's: the fence each holds, nothing to walk
        held = {syncobj: syncobj.find_fence(0) for syncobj in dict.fromkeys(syncobjs)}
        return [held[syncobj] for syncobj in syncobjs]
    wanted: dict[DrmSyncobj, list[int]] = {}
    for syncobj, point in zip(syncobjs, points, strict=True):
        wanted.setdefault(syncobj, []).append(point)
    found = {syncobj: syncobj.find_points(its) for syncobj, its in wanted.items()}
    return [found[syncobj][point] for syncobj, point in zip(syncobjs, points, strict=True)]


def lookup(xef: XeFile, handle: int) -> DrmSyncobj:
    """drm_syncobj_find: ENOENT for a handle this file does not hold."""
    syncobj = xef.syncobjs.get(handle)
    if syncobj is None:
        raise IoctlError(ENOENT, f"no syncobj {handle}")
    return syncobj


def _array(xef: XeFile, handles: Iterable[m.DrmSyncobjHandle]) -> list[DrmSyncobj]:
    """drm_syncobj_array_find: every handle, or ENOENT for the first unknown."""
    return [lookup(xef, h.handle) for h in handles]


def drm_syncobj_create_ioctl(xef: XeFile, args: m.DrmSyncobjCreate) -> m.DrmSyncobjCreateReply:
    """DRM_IOCTL_SYNCOBJ_CREATE. Checks: flags other than SIGNALED: EINVAL; this file
    holding limits.syncobjs syncobjs: ENOMEM (xed's limit)."""
    refuse_if(args.flags & ~DRM_SYNCOBJ_CREATE_SIGNALED, EINVAL, f"flags {args.flags:#x}")
    signalled = bool(args.flags & DRM_SYNCOBJ_CREATE_SIGNALED)
    handle = xef.syncobj_create(DrmSyncobj(Fence(True) if signalled else None))
    return m.DrmSyncobjCreateReply(handle=handle)


def drm_syncobj_destroy_ioctl(xef: XeFile, args: m.DrmSyncobjDestroy) -> m.Empty:
    """DRM_IOCTL_SYNCOBJ_DESTROY. Checks: pad not zero: EINVAL; no such handle: EINVAL
    (drm_syncobj_destroy's answer; the other syncobj ioctls find none otherwise)."""
    refuse_if(args.pad, EINVAL, "pad must be zero")
    refuse_if(args.handle not in xef.syncobjs, EINVAL, f"no syncobj {args.handle}")
    xef.syncobj_destroy(args.handle)
    return m.Empty()


def _array_checks(args: m.DrmSyncobjArray) -> None:
    refuse_if(args.pad, EINVAL, "pad must be zero")
    refuse_if(not args.handles, EINVAL, "no handles")


def drm_syncobj_reset_ioctl(xef: XeFile, args: m.DrmSyncobjArray) -> m.Empty:
    """DRM_IOCTL_SYNCOBJ_RESET. Checks: pad not zero, no handles: EINVAL; a handle
    naming no syncobj: ENOENT (and none is reset)."""
    _array_checks(args)
    for syncobj in _array(xef, args.handles):
        syncobj.replace_fence(None)
    return m.Empty()


def drm_syncobj_signal_ioctl(xef: XeFile, args: m.DrmSyncobjArray) -> m.Empty:
    """DRM_IOCTL_SYNCOBJ_SIGNAL. Checks: pad not zero, no handles: EINVAL; a handle
    naming no syncobj: ENOENT (and none is signalled). Each then holds a signalled fence."""
    _array_checks(args)
    for syncobj in _array(xef, args.handles):
        syncobj.replace_fence(Fence(True))
    return m.Empty()


async def drm_syncobj_wait_ioctl(xef: XeFile, args: m.DrmSyncobjWait) -> m.DrmSyncobjWaitReply:
    """DRM_IOCTL_SYNCOBJ_WAIT: until any (WAIT_ALL: every) fence is signalled.

    Checks, in order:
    - flags other than WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_DEADLINE: EINVAL
    - no handles: nothing to wait for, answered at once (first_signaled as sent)
    - a handle naming no syncobj: ENOENT
    - then as array_wait() (every point 0): without WAIT_FOR_SUBMIT, a syncobj holding
      no fence: EINVAL; the timeout passes: ETIME; limits.fence_waits: ENOMEM
    """
    refuse_if(args.flags & ~_WAIT_FLAGS, EINVAL, f"flags {args.flags:#x}")
    if not args.handles:
        return m.DrmSyncobjWaitReply(first_signaled=args.first_signaled)
    syncobjs = _array(xef, args.handles)
    points = [0] * len(syncobjs)
    first = await array_wait(xef, syncobjs, points, args.flags, args.timeout_nsec)
    return m.DrmSyncobjWaitReply(first_signaled=first)


async def array_wait(
    xef: XeFile, syncobjs: list[DrmSyncobj], points: list[int], flags: int, timeout_nsec: int
) -> int:
    """drm_syncobj_array_wait_timeout: until one (WAIT_ALL: every) point is signalled
    (WAIT_AVAILABLE: submitted); the index of the first found signalled.

    Checks, in order:
    - without WAIT_FOR_SUBMIT or WAIT_AVAILABLE, a point not submitted (a syncobj
      holding no fence, for point 0): EINVAL (before any wait)
    - the absolute CLOCK_MONOTONIC timeout_nsec passes first (0: look once): ETIME
    - this file has limits.fence_waits waits asleep already: ENOMEM (xed's limit)
    first_signaled is the index of the first fence found signalled: at the start, or,
    without WAIT_ALL, while waiting; ~0 if none was. A fence signalled by the device's
    end (an unplug) or with an error counts as signalled, as the kernel's do.
    """
    wait_all = bool(flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL)
    available = bool(flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)
    for_submit = available or bool(flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT)
    fences = find_fences(syncobjs, points)
    refuse_if(not for_submit and None in fences, EINVAL, "a point not submitted (no fence)")

    done = _readiness(fences, available)
    first = done.index(True) if any(done) else NONE_SIGNALLED
    if all(done) or (any(done) and not wait_all):
        return first
    refuse_if(timeout_nsec <= time.monotonic_ns(), ETIME, "timed out")
    with xef.device.ufences.asleep(xef):
        wait = _ArrayWait(fences, wait_all, available)
        try:
            wait.watch(syncobjs, points, done)
            # the deadline is CLOCK_MONOTONIC nanoseconds; trio's clock is a float of
            # seconds: look again until the nanoseconds say it has passed
            while not wait.signalled.is_set():
                left = timeout_nsec - time.monotonic_ns()
                if left <= 0:
                    break
                with trio.move_on_after(left / 1e9):
                    await wait.signalled.wait()
        finally:
            wait.unwatch()  # whatever ends it: done, timed out, the connection gone
    if not wait.signalled.is_set():
        raise IoctlError(ETIME, "timed out")
    if not wait_all:  # the kernel looks over them in order once woken: the lowest
        first = _readiness(fences, available).index(True)
    return first


def _readiness(fences: list[Fence | None], available: bool) -> list[bool]:
    """Whether each point is signalled (WAIT_AVAILABLE: submitted) now, each distinct
    fence asked once: thousands of handles often hold one fence, and asking a timeline
    point walks its chain."""
    known: dict[int, bool] = {}
    ready = []
    for fence in fences:
        if fence is None or available:
            ready.append(fence is not None)
            continue
        state = known.get(id(fence))  # the list holds each fence: its id stays its own
        if state is None:
            state = known[id(fence)] = fence.signalled
        ready.append(state)
    return ready


class _ArrayWait:
    """The watches of one array_wait asleep (drm_syncobj_array_wait_timeout's entries):
    a callback on each distinct fence still pending, for every handle that holds it, and
    a waiter on each distinct (syncobj, point) not submitted yet. A signal wakes the
    wait's own task once, not a task per handle; `signalled` is set once one point (with
    WAIT_ALL: the last) is signalled (WAIT_AVAILABLE: submitted). A point submitted
    while waiting has its fence put in `fences`, as found then."""

    def __init__(self, fences: list[Fence | None], wait_all: bool, available: bool) -> None:
        self.fences = fences
        self.wait_all = wait_all
        self.available = available
        self.signalled = trio.Event()
        self._left = 0  # points not signalled yet
        self._fence_watches: dict[Callable[[], None], Fence] = {}
        self._submit_watches: dict[Callable[[], None], DrmSyncobj] = {}

    def watch(self, syncobjs: list[DrmSyncobj], points: list[int], done: list[bool]) -> None:
        """Watch every point not `done`, grouped by the fence (or, not submitted yet, the
        syncobj and point) it waits on."""
        by_fence: dict[int, list[int]] = {}
        by_point: dict[tuple[DrmSyncobj, int], list[int]] = {}
        for index, fence in enumerate(self.fences):
            if done[index]:
                continue
            self._left += 1
            if fence is None:
                by_point.setdefault((syncobjs[index], points[index]), []).append(index)
            else:
                by_fence.setdefault(id(fence), []).append(index)
        for indices in by_fence.values():
            fence = self.fences[indices[0]]
            assert fence is not None
            self._watch_fence(fence, len(indices))
        for (syncobj, point), indices in by_point.items():
            self._watch_submit(syncobj, point, indices)

    def unwatch(self) -> None:
        """Take back every callback still in place (none may run once the wait is over)."""
        for callback, fence in self._fence_watches.items():
            fence.remove_callback(callback)
        for waiter, syncobj in self._submit_watches.items():
            syncobj.remove_waiter(waiter)
        self._fence_watches.clear()
        self._submit_watches.clear()

    def _signalled(self, count: int) -> None:
        self._left -= count
        if not self._left or not self.wait_all:
            self.signalled.set()

    def _watch_fence(self, fence: Fence, count: int) -> None:
        """`count` points wait on `fence` (not signalled yet)."""

        def fence_signalled() -> None:
            if self._fence_watches.pop(fence_signalled, None) is not None:  # not over
                self._signalled(count)

        self._fence_watches[fence_signalled] = fence
        fence.add_callback(fence_signalled)

    def _watch_submit(self, syncobj: DrmSyncobj, point: int, indices: list[int]) -> None:
        """The points at `indices` wait for `point` of `syncobj` to be submitted, then
        (without WAIT_AVAILABLE) for its fence."""

        def changed() -> None:
            if changed not in self._submit_watches:
                return  # the wait is over
            fence = syncobj.find_fence(point)
            if fence is None:  # not this point yet: the next change
                syncobj.add_waiter(changed)
                return
            del self._submit_watches[changed]
            for index in indices:
                self.fences[index] = fence
            if self.available or fence.signalled:
                self._signalled(len(indices))
            else:
                self._watch_fence(fence, len(indices))

        self._submit_watches[changed] = syncobj
        syncobj.add_waiter(changed)


def drm_syncobj_handle_to_fd_ioctl(
    xef: XeFile, args: m.DrmSyncobjFd
) -> tuple[m.DrmSyncobjFdReply, list[int]]:
    """DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: the syncobj as a descriptor, or (EXPORT_SYNC_FILE)
    a sync file of the fence it holds now.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - pad not zero: EINVAL
    - flags other than EXPORT_SYNC_FILE and TIMELINE: EINVAL
    - EXPORT_SYNC_FILE: no such syncobj: ENOENT; the point (`point` with TIMELINE, else
      0) not submitted, or nothing held: EINVAL (drm_syncobj_find_fence)
    - otherwise: `point` not 0 (TIMELINE or not): EINVAL; no such syncobj: EINVAL
    - this client's exported objects reach limits.exported: ENOMEM
    """
    from .sync_file import SyncFile, SyncobjFile, exported_fd  # (builds on this module)

    refuse_if(args.pad, EINVAL, "pad must be zero")
    valid = (
        DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE | DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE
    )
    refuse_if(args.flags & ~valid, EINVAL, f"flags {args.flags:#x}")
    point = args.point if args.flags & DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE else 0
    reply = m.DrmSyncobjFdReply(handle=args.handle)
    if args.flags & DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE:
        fence = lookup(xef, args.handle).find_fence(point)
        refuse_if(fence is None, EINVAL, f"syncobj {args.handle} has no fence at {point}")
        assert fence is not None
        return reply, [exported_fd(xef, lambda: SyncFile(xef.device, [fence]))]
    refuse_if(args.point, EINVAL, "a point without EXPORT_SYNC_FILE")
    syncobj = xef.syncobjs.get(args.handle)
    refuse_if(syncobj is None, EINVAL, f"no syncobj {args.handle}")
    assert syncobj is not None
    return reply, [exported_fd(xef, lambda: SyncobjFile(xef.device, syncobj))]


def drm_syncobj_fd_to_handle_ioctl(
    xef: XeFile, args: m.DrmSyncobjFd, fds: tuple[int, ...]
) -> m.DrmSyncobjFdReply:
    """DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE: a handle of this file for the syncobj the
    descriptor stands for; with IMPORT_SYNC_FILE, the syncobj `handle` holds the sync
    file's fence from now on (drm_syncobj_replace_fence), or, with TIMELINE and a
    `point` other than 0, has it as that point (drm_syncobj_add_point).

    Checks, in order:
    - pad not zero: EINVAL
    - flags other than IMPORT_SYNC_FILE and TIMELINE: EINVAL
    - one of ours of a device since unplugged: ENODEV
    - IMPORT_SYNC_FILE: the descriptor not a sync file: EINVAL; no such syncobj: ENOENT;
      a point past limits.timeline_points held for this file: ENOMEM (xed's)
    - otherwise: `point` other than 0 (TIMELINE or not): EINVAL; the descriptor not a
      syncobj's: EINVAL
    """
    from .sync_file import SyncFile, SyncobjFile

    refuse_if(args.pad, EINVAL, "pad must be zero")
    import_sync_file = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
    timeline = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
    refuse_if(args.flags & ~(import_sync_file | timeline), EINVAL, f"flags {args.flags:#x}")
    point = args.point if args.flags & timeline else 0
    (fd,) = fds
    found = lookup_exported(xef.device, fd)
    if args.flags & import_sync_file:
        refuse_if(not isinstance(found, SyncFile), EINVAL, "not a sync file")
        assert isinstance(found, SyncFile)
        syncobj = lookup(xef, args.handle)
        put_fence(xef, syncobj, found.fence, point)
        return m.DrmSyncobjFdReply(handle=args.handle)
    refuse_if(args.point, EINVAL, "a point without IMPORT_SYNC_FILE")
    refuse_if(not isinstance(found, SyncobjFile), EINVAL, "not a syncobj's descriptor")
    assert isinstance(found, SyncobjFile)
    return m.DrmSyncobjFdReply(handle=xef.syncobj_create(found.syncobj))


def put_fence(xef: XeFile, syncobj: DrmSyncobj, fence: Fence, point: int) -> None:
    """`fence` into `syncobj`: as the point `point`, or replacing what it holds for 0.
    A point costs the file while the daemon holds it: past limits.timeline_points,
    ENOMEM before anything changes."""
    if not point:
        syncobj.replace_fence(fence)
        return
    charge_points(xef, 1)
    add_point_charged(xef, syncobj, fence, point)


def charge_points(xef: XeFile, count: int) -> None:
    """ENOMEM if `count` more points would pass limits.timeline_points."""
    refuse_over(xef, "timeline_points", xef.account.points, count)


def add_point_charged(xef: XeFile, syncobj: DrmSyncobj, fence: Fence, point: int) -> None:
    """syncobj.add_point(fence, point), the point counted against the file for as long
    as it lives: a chain keeps its pending points, and a syncobj its latest; a signalled
    point behind another, or a chain let go of, is freed (and given back) at once. The
    caller checked the room (charge_points)."""
    syncobj.add_point(fence, point)
    head = syncobj.fence
    assert isinstance(head, FenceChain)
    account = xef.account
    account.points += 1
    weakref.finalize(head, _give_back, account)


def _give_back(account: Account) -> None:
    account.points -= 1
