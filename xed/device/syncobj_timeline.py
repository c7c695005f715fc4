"""Timeline syncobjs' own ioctls (drm_syncobj.c): TIMELINE_WAIT, QUERY, TRANSFER and
TIMELINE_SIGNAL.

Any syncobj takes timeline points: each point added (by an EXEC or VM_BIND sync of type
TIMELINE_SYNCOBJ, TIMELINE_SIGNAL, TRANSFER, or a sync file imported at a point) becomes
the fence it holds, a FenceChain reaching the points before it (fence.py). Point 0
always means the fence it holds, so binary and timeline use mix as in the kernel:
SYNCOBJ_WAIT waits for the latest point, SYNCOBJ_SIGNAL replaces the chain with a
signalled fence, RESET empties it.
"""

from __future__ import annotations

from errno import EINVAL, ETIME
from typing import TYPE_CHECKING

import trio

from protocols import messages as m
from protocols.constants import (
    DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
)

from .errors import IoctlError, refuse_if
from .fence import Fence, FenceChain
from .sync_file import unwrap_merge
from .syncobj import add_point_charged, array_wait, charge_points, lookup, put_fence

if TYPE_CHECKING:
    from .file import XeFile

_TIMELINE_WAIT_FLAGS = (
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
    | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
)
WAIT_FOR_SUBMIT_TIMEOUT = 5.0  # seconds: DRM_SYNCOBJ_WAIT_FOR_SUBMIT_TIMEOUT


def _points(handles: tuple[m.DrmSyncobjHandle, ...], points: tuple[int, ...]) -> list[int]:
    """One point per handle: none sent is 0 for each (a NULL `points`), as the kernel
    reads it; any other count is EINVAL (the library sends count_handles of them)."""
    if not points:
        return [0] * len(handles)
    refuse_if(len(points) != len(handles), EINVAL, "points sent, but not one per handle")
    return list(points)


async def drm_syncobj_timeline_wait_ioctl(
    xef: XeFile, args: m.DrmSyncobjTimelineWait
) -> m.DrmSyncobjWaitReply:
    """DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT: until one (WAIT_ALL: every) point is signalled
    (WAIT_AVAILABLE: submitted).

    Checks, in order:
    - flags other than WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_AVAILABLE, WAIT_DEADLINE: EINVAL
    - no handles: nothing to wait for, answered at once (first_signaled as sent)
    - a handle naming no syncobj: ENOENT
    - points sent but not one per handle: EINVAL
    - then as syncobj.array_wait(): a point not submitted without WAIT_FOR_SUBMIT or
      WAIT_AVAILABLE: EINVAL; the timeout passes: ETIME; limits.fence_waits: ENOMEM
    """
    refuse_if(args.flags & ~_TIMELINE_WAIT_FLAGS, EINVAL, f"flags {args.flags:#x}")
    if not args.handles:
        return m.DrmSyncobjWaitReply(first_signaled=args.first_signaled)
    syncobjs = [lookup(xef, h.handle) for h in args.handles]
    points = _points(args.handles, args.points)
    first = await array_wait(xef, syncobjs, points, args.flags, args.timeout_nsec)
    return m.DrmSyncobjWaitReply(first_signaled=first)


def drm_syncobj_query_ioctl(
    xef: XeFile, args: m.DrmSyncobjTimelineArray
) -> m.DrmSyncobjQueryReply:
    """DRM_IOCTL_SYNCOBJ_QUERY: each syncobj's point. With LAST_SUBMITTED, the latest
    point added; else the point before the earliest one of its context not signalled
    yet (the latest point if all are): every point up to it is signalled. A syncobj
    holding no point (empty, or a binary fence) answers 0.

    Checks, in order: flags other than LAST_SUBMITTED: EINVAL; no handles: EINVAL; a
    handle naming no syncobj: ENOENT.
    """
    refuse_if(args.flags & ~DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED, EINVAL, "bad flags")
    refuse_if(not args.handles, EINVAL, "no handles")
    syncobjs = [lookup(xef, h.handle) for h in args.handles]
    last_submitted = bool(args.flags & DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED)
    answers: dict[int, int] = {}  # each syncobj walked once, however often it is named
    for syncobj in syncobjs:
        if id(syncobj) not in answers:
            answers[id(syncobj)] = _query(syncobj.fence, last_submitted)
    return m.DrmSyncobjQueryReply(points=tuple(answers[id(s)] for s in syncobjs))


def _query(head: Fence | None, last_submitted: bool) -> int:
    if not isinstance(head, FenceChain):
        return 0
    if last_submitted:
        return head.seqno
    last: Fence = head
    for node in head.walk():
        if node.context != head.context:  # an unordered point: its own context
            break
        last = node
    assert isinstance(last, FenceChain)
    return last.seqno if last.signalled else last.prev_seqno


async def drm_syncobj_transfer_ioctl(xef: XeFile, args: m.DrmSyncobjTransfer) -> m.Empty:
    """DRM_IOCTL_SYNCOBJ_TRANSFER: the fence of `src_handle` at `src_point` becomes
    `dst_handle`'s point `dst_point` (0: replaces what it holds).

    Checks, in order:
    - pad not zero: EINVAL
    - dst_handle naming no syncobj: ENOENT
    - flags other than WAIT_FOR_SUBMIT: EINVAL
    - src_handle naming no syncobj: ENOENT
    - the source point not submitted: EINVAL; with WAIT_FOR_SUBMIT it is waited for,
      and ETIME if it is not within 5 s (drm_syncobj_find_fence)
    - a point past limits.timeline_points held for this file: ENOMEM (xed's)
    """
    refuse_if(args.pad, EINVAL, "pad must be zero")
    dst = lookup(xef, args.dst_handle)
    refuse_if(
        args.flags & ~DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT, EINVAL, f"flags {args.flags:#x}"
    )
    src = lookup(xef, args.src_handle)
    fence = src.find_fence(args.src_point)
    if fence is None:
        refuse_if(
            not args.flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
            EINVAL,
            f"syncobj {args.src_handle} has no fence at {args.src_point}",
        )
        with xef.device.ufences.asleep(xef):
            with trio.move_on_after(WAIT_FOR_SUBMIT_TIMEOUT):
                fence = await src.fence_submitted(args.src_point)
        if fence is None:
            raise IoctlError(ETIME, "the point was not submitted within 5 s")
    # a point holds the fences the source point waits for, not its chain (no chain
    # inside a chain: dma_fence_unwrap_merge)
    put_fence(xef, dst, unwrap_merge(fence) if args.dst_point else fence, args.dst_point)
    return m.Empty()


def drm_syncobj_timeline_signal_ioctl(xef: XeFile, args: m.DrmSyncobjTimelineArray) -> m.Empty:
    """DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL: each syncobj gets its point, signalled once the
    points before it are (point 0 too: a point numbered as its latest).

    Checks, in order: flags not zero: EINVAL; no handles: EINVAL; a handle naming no
    syncobj: ENOENT; points sent but not one per handle: EINVAL; the points would pass
    limits.timeline_points held for this file: ENOMEM (none is signalled).
    """
    refuse_if(args.flags, EINVAL, "flags must be zero")
    refuse_if(not args.handles, EINVAL, "no handles")
    syncobjs = [lookup(xef, h.handle) for h in args.handles]
    points = _points(args.handles, args.points)
    charge_points(xef, len(points))  # all or none
    for syncobj, point in zip(syncobjs, points, strict=True):
        # point 0 too is added, after what the syncobj holds (numbered as its latest)
        add_point_charged(xef, syncobj, Fence(signalled=True), point)
    return m.Empty()
