"""DRM syncobjs (drm_syncobj.c), binary only: a handle that holds a fence or nothing.

A Fence stands for a dma_fence: signalled once, by the job that owns it (an EXEC's
batch, a VM_BIND), by SYNCOBJ_SIGNAL (the stub fence, signalled from birth) or by the
queue's end (destroyed, or the device unplugged: xe signals what it will never run,
with an error no syncobj ioctl reports). A syncobj's
fence is replaced, never changed: a wait holds the fence it found, as the kernel's
does, and a RESET or a later SIGNAL job does not disturb it.

Each drm file has its own handle space (lowest free id from 1, as idr_alloc). A syncobj
leaves its file as a descriptor (HANDLE_TO_FD, FD_TO_HANDLE: one syncobj, a handle in
each file), and its fence as a sync file (EXPORT_SYNC_FILE, IMPORT_SYNC_FILE; the
descriptors are sync_file.py's). Timeline syncobjs are not emulated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from errno import EINVAL, ENOENT, EOPNOTSUPP, ETIME
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
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
)

from .errors import IoctlError, refuse_if
from .export import lookup as lookup_exported

if TYPE_CHECKING:
    from .file import XeFile

_WAIT_FLAGS = (
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
)
NONE_SIGNALLED = 0xFFFF_FFFF  # first_signaled when nothing was signalled at the start


class Fence:
    """A dma_fence: signalled once, with an error or none (dma_fence_set_error before
    the signal: a fence signalled by a timeline's release, say). Callbacks
    (dma_fence_add_callback) run when it is, in the signalling task, and may be removed
    before: what a sync file watches with, rather than a task of its own that would
    outlive its descriptor."""

    __slots__ = ("signalled", "error", "_event", "_callbacks", "__weakref__")
    # what SYNC_IOC_FILE_INFO names it by (dma_fence_ops): the device's own fences
    driver_name = "xe"
    timeline_name = "xed"
    context: int | None = None  # a timeline's: a merge keeps its latest point only
    seqno = 0

    def __init__(self, signalled: bool = False) -> None:
        self.signalled = signalled
        self.error = 0  # an errno, once signalled with one
        self._event: trio.Event | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def signal(self, error: int = 0) -> None:
        if self.signalled:
            return
        self.error = error
        self.signalled = True
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def status(self) -> int:
        """dma_fence_get_status: 0 while unsignalled, 1 once signalled, -errno if
        signalled with an error."""
        if not self.signalled:
            return 0
        return -self.error if self.error else 1

    async def wait(self) -> None:
        if not self.signalled:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this fence is signalled (it must not be yet)."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        if self._callbacks and callback in self._callbacks:
            self._callbacks.remove(callback)


class FenceArray(Fence):
    """Several fences as one (dma_fence_array, what sync_file_merge makes): signalled
    once all its parts are, with the first error among them. It keeps no state of its
    own, so nothing needs to watch the parts for it: whoever holds it asks them."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Fence]) -> None:  # not Fence's: its state is derived
        self._event = None
        self._callbacks = None
        self.parts = parts

    @property
    def signalled(self) -> bool:  # type: ignore[override]
        return all(part.signalled for part in self.parts)

    @property
    def error(self) -> int:  # type: ignore[override]
        return next((part.error for part in self.parts if part.error), 0)

    def signal(self, error: int = 0) -> None:
        raise AssertionError("a fence array is signalled by its parts")

    async def wait(self) -> None:
        for part in self.parts:
            await part.wait()

    def add_callback(self, callback: Callable[[], None]) -> None:
        raise AssertionError("watch a fence array's parts")


class DrmSyncobj:
    """A binary syncobj: the fence it holds now (None: empty)."""

    __slots__ = ("fence", "_submitted")

    def __init__(self, fence: Fence | None = None) -> None:
        self.fence = fence
        self._submitted: trio.Event | None = None  # WAIT_FOR_SUBMIT waiters of a fence

    def replace_fence(self, fence: Fence | None) -> None:
        """drm_syncobj_replace_fence: from now on it holds `fence`."""
        self.fence = fence
        if fence is not None and self._submitted is not None:
            self._submitted.set()
            self._submitted = None

    async def fence_submitted(self) -> Fence:
        """The fence it holds, waiting for one to be put in if it is empty."""
        while self.fence is None:
            if self._submitted is None:
                self._submitted = trio.Event()
            await self._submitted.wait()
        return self.fence


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
    """DRM_IOCTL_SYNCOBJ_CREATE. Checks: flags other than SIGNALED: EINVAL."""
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
    - no handles: EINVAL
    - a handle naming no syncobj: ENOENT
    - without WAIT_FOR_SUBMIT, a syncobj holding no fence: EINVAL (before any wait)
    - the absolute CLOCK_MONOTONIC timeout_nsec passes first (0: look once): ETIME
    - this file has limits.fence_waits waits asleep already: ENOMEM (xed's limit)
    first_signaled is the index of the first fence found signalled: at the start, or,
    without WAIT_ALL, while waiting; ~0 if none was. A fence signalled by the device's
    end (an unplug) counts as signalled, as the kernel's error fences do.
    """
    refuse_if(args.flags & ~_WAIT_FLAGS, EINVAL, f"flags {args.flags:#x}")
    refuse_if(not args.handles, EINVAL, "no handles")
    syncobjs = _array(xef, args.handles)
    wait_all = bool(args.flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL)
    for_submit = bool(args.flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT)
    fences: list[Fence | None] = [s.fence for s in syncobjs]
    refuse_if(not for_submit and None in fences, EINVAL, "a syncobj holds no fence")
    done = [f is not None and f.signalled for f in fences]
    first = done.index(True) if any(done) else NONE_SIGNALLED
    if all(done) or (any(done) and not wait_all):
        return m.DrmSyncobjWaitReply(first_signaled=first)
    refuse_if(args.timeout_nsec <= time.monotonic_ns(), ETIME, "timed out")
    signalled = trio.Event()

    async def watch(index: int, syncobj: DrmSyncobj) -> None:
        fence = fences[index]
        if fence is None:  # WAIT_FOR_SUBMIT: the first fence put in from now on
            fence = fences[index] = await syncobj.fence_submitted()
        await fence.wait()
        done[index] = True
        if all(done) or not wait_all:
            signalled.set()

    with xef.device.ufences.asleep(xef):
        async with trio.open_nursery() as nursery:
            for index, syncobj in enumerate(syncobjs):
                if not done[index]:
                    nursery.start_soon(watch, index, syncobj)
            # the deadline is CLOCK_MONOTONIC nanoseconds; trio's clock is a float of
            # seconds: look again until the nanoseconds say it has passed
            while not signalled.is_set():
                left = args.timeout_nsec - time.monotonic_ns()
                if left <= 0:
                    break
                with trio.move_on_after(left / 1e9):
                    await signalled.wait()
            nursery.cancel_scope.cancel()
    if not signalled.is_set():
        raise IoctlError(ETIME, "timed out")
    if not wait_all:  # the kernel looks over them in order once woken: the lowest
        first = next(i for i, f in enumerate(fences) if f is not None and f.signalled)
    return m.DrmSyncobjWaitReply(first_signaled=first)


def drm_syncobj_handle_to_fd_ioctl(
    xef: XeFile, args: m.DrmSyncobjFd
) -> tuple[m.DrmSyncobjFdReply, list[int]]:
    """DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: the syncobj as a descriptor, or (EXPORT_SYNC_FILE)
    a sync file of the fence it holds now.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - pad not zero: EINVAL
    - flags other than EXPORT_SYNC_FILE and TIMELINE: EINVAL
    - EXPORT_SYNC_FILE: no such syncobj: ENOENT; `point` (TIMELINE) not 0, or the
      syncobj holding no fence: EINVAL (drm_syncobj_find_fence on a binary syncobj)
    - otherwise: `point` (TIMELINE) not 0: EINVAL; no such syncobj: EINVAL
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
        fence = lookup(xef, args.handle).fence
        refuse_if(point, EINVAL, "a binary syncobj has no timeline point")
        refuse_if(fence is None, EINVAL, f"syncobj {args.handle} holds no fence")
        assert fence is not None
        return reply, [exported_fd(xef, lambda: SyncFile(xef.device, [fence]))]
    refuse_if(point, EINVAL, "a point without EXPORT_SYNC_FILE")
    syncobj = xef.syncobjs.get(args.handle)
    refuse_if(syncobj is None, EINVAL, f"no syncobj {args.handle}")
    assert syncobj is not None
    return reply, [exported_fd(xef, lambda: SyncobjFile(xef.device, syncobj))]


def drm_syncobj_fd_to_handle_ioctl(
    xef: XeFile, args: m.DrmSyncobjFd, fds: tuple[int, ...]
) -> m.DrmSyncobjFdReply:
    """DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE: a handle of this file for the syncobj the
    descriptor stands for; with IMPORT_SYNC_FILE, the syncobj `handle` holds the sync
    file's fence from now on (drm_syncobj_replace_fence).

    Checks, in order:
    - pad not zero: EINVAL
    - flags other than IMPORT_SYNC_FILE and TIMELINE: EINVAL
    - one of ours of a device since unplugged: ENODEV
    - IMPORT_SYNC_FILE: the descriptor not a sync file: EINVAL; no such syncobj: ENOENT;
      a timeline `point` (TIMELINE) other than 0: EOPNOTSUPP (the kernel adds the point:
      timeline syncobjs are not emulated)
    - otherwise: a `point` other than 0 (TIMELINE): EINVAL; the descriptor not a
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
        refuse_if(point, EOPNOTSUPP, "timeline points are not emulated")
        syncobj.replace_fence(found.fence)
        return m.DrmSyncobjFdReply(handle=args.handle)
    refuse_if(point, EINVAL, "a point without IMPORT_SYNC_FILE")
    refuse_if(not isinstance(found, SyncobjFile), EINVAL, "not a syncobj's descriptor")
    assert isinstance(found, SyncobjFile)
    return m.DrmSyncobjFdReply(handle=xef.syncobj_create(found.syncobj))
