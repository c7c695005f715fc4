"""DRM syncobjs, as libdrm's drmSyncobj* functions spell them (xf86drm.h): functions of a
Device rather than methods, as they are DRM core ioctls and not xe's.

    from clients import syncobj
    done = syncobj.create(dev)
    dev.exec(queue, batch_addr, syncs=[syncobj.signal_sync(done)])
    syncobj.wait(dev, [done])

A wait's timeout is an absolute CLOCK_MONOTONIC time in nanoseconds, as the ioctl's
(`deadline_in(seconds)` makes one); it raises XeError(ETIME) when it passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_SYNCOBJ_CREATE_SIGNALED,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE,
    DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE,
    DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
)

from .device import Device

FOREVER = 2**63 - 1  # INT64_MAX, IGT's "wait forever"


def deadline_in(seconds: float) -> int:
    """The absolute timeout_nsec `seconds` from now."""
    return time.monotonic_ns() + int(seconds * 1e9)


def create(dev: Device, signaled: bool = False) -> int:
    """drmSyncobjCreate: a new syncobj handle, empty or holding a signalled fence."""
    flags = DRM_SYNCOBJ_CREATE_SIGNALED if signaled else 0
    reply: m.DrmSyncobjCreateReply = dev.ioctl(Op.SYNCOBJ_CREATE, m.DrmSyncobjCreate(flags=flags))
    return reply.handle


def destroy(dev: Device, handle: int) -> None:
    """drmSyncobjDestroy."""
    dev.ioctl(Op.SYNCOBJ_DESTROY, m.DrmSyncobjDestroy(handle=handle))


def _handles(handles: Iterable[int]) -> tuple[m.DrmSyncobjHandle, ...]:
    return tuple(m.DrmSyncobjHandle(handle=h) for h in handles)


def wait(
    dev: Device,
    handles: Iterable[int],
    timeout_nsec: int = FOREVER,
    wait_all: bool = False,
    for_submit: bool = False,
) -> int:
    """drmSyncobjWait: the index of the first signalled syncobj (~0 if none was at the
    start and `wait_all`); XeError ETIME when the deadline passes first."""
    flags = (DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL if wait_all else 0) | (
        DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT if for_submit else 0
    )
    args = m.DrmSyncobjWait(handles=_handles(handles), timeout_nsec=timeout_nsec, flags=flags)
    reply: m.DrmSyncobjWaitReply = dev.ioctl(Op.SYNCOBJ_WAIT, args)
    return reply.first_signaled


def reset(dev: Device, handles: Iterable[int]) -> None:
    """drmSyncobjReset: each drops its fence."""
    dev.ioctl(Op.SYNCOBJ_RESET, m.DrmSyncobjArray(handles=_handles(handles)))


def signal(dev: Device, handles: Iterable[int]) -> None:
    """drmSyncobjSignal: each holds a signalled fence."""
    dev.ioctl(Op.SYNCOBJ_SIGNAL, m.DrmSyncobjArray(handles=_handles(handles)))


# --- timelines: points of a syncobj (drmSyncobjTimeline*, drmSyncobjQuery, ...Transfer) --
def timeline_wait(
    dev: Device,
    handles: Iterable[int],
    points: Iterable[int],
    timeout_nsec: int = FOREVER,
    wait_all: bool = False,
    for_submit: bool = False,
    available: bool = False,
) -> int:
    """drmSyncobjTimelineWait: until one (wait_all: every) point is signalled, or with
    `available` submitted; the index of the first; XeError ETIME past the deadline."""
    flags = (
        (DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL if wait_all else 0)
        | (DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT if for_submit else 0)
        | (DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE if available else 0)
    )
    args = m.DrmSyncobjTimelineWait(
        handles=_handles(handles), points=tuple(points), timeout_nsec=timeout_nsec, flags=flags
    )
    reply: m.DrmSyncobjWaitReply = dev.ioctl(Op.SYNCOBJ_TIMELINE_WAIT, args)
    return reply.first_signaled


def query(dev: Device, handles: Iterable[int], last_submitted: bool = False) -> list[int]:
    """drmSyncobjQuery2: each syncobj's point: the latest signalled with every point
    before it (last_submitted: the latest submitted)."""
    flags = DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED if last_submitted else 0
    args = m.DrmSyncobjTimelineArray(handles=_handles(handles), flags=flags)
    reply: m.DrmSyncobjQueryReply = dev.ioctl(Op.SYNCOBJ_QUERY, args)
    return list(reply.points)


def timeline_signal(dev: Device, handles: Iterable[int], points: Iterable[int]) -> None:
    """drmSyncobjTimelineSignal: each syncobj gets its point, signalled."""
    args = m.DrmSyncobjTimelineArray(handles=_handles(handles), points=tuple(points))
    dev.ioctl(Op.SYNCOBJ_TIMELINE_SIGNAL, args)


def transfer(
    dev: Device, dst: int, dst_point: int, src: int, src_point: int, for_submit: bool = False
) -> None:
    """drmSyncobjTransfer: the fence of src's src_point becomes dst's dst_point (0: the
    fence each holds)."""
    flags = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT if for_submit else 0
    args = m.DrmSyncobjTransfer(
        src_handle=src, dst_handle=dst, src_point=src_point, dst_point=dst_point, flags=flags
    )
    dev.ioctl(Op.SYNCOBJ_TRANSFER, args)


def handle_to_fd(dev: Device, handle: int) -> int:
    """drmSyncobjHandleToFD: the syncobj as a descriptor (yours to pass or close)."""
    return _to_fd(dev, m.DrmSyncobjFd(handle=handle))


def fd_to_handle(dev: Device, fd: int) -> int:
    """drmSyncobjFDToHandle: a handle of `dev`'s file for the syncobj `fd` stands for."""
    args = m.DrmSyncobjFd(fd=fd)
    reply: m.DrmSyncobjFdReply = dev.ioctl(Op.SYNCOBJ_FD_TO_HANDLE, args, fds=[fd])
    return reply.handle


def export_sync_file(dev: Device, handle: int, point: int = 0) -> int:
    """drmSyncobjExportSyncFile: a sync file of the fence the syncobj holds now (or of
    its point `point`); it polls readable (POLLIN) once that fence is signalled."""
    flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
    if point:
        flags |= DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE
    return _to_fd(dev, m.DrmSyncobjFd(handle=handle, flags=flags, point=point))


def import_sync_file(dev: Device, handle: int, sync_fd: int, point: int = 0) -> None:
    """drmSyncobjImportSyncFile: the syncobj holds the sync file's fence from now on
    (or has it as its point `point`)."""
    flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
    if point:
        flags |= DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
    args = m.DrmSyncobjFd(handle=handle, flags=flags, fd=sync_fd, point=point)
    dev.ioctl(Op.SYNCOBJ_FD_TO_HANDLE, args, fds=[sync_fd])


def merge_sync_files(dev: Device, sync_fd: int, fd2: int, name: str = "") -> int:
    """sync_merge (SYNC_IOC_MERGE): a new sync file that signals once both have."""
    args = m.SyncMerge(name=name, fd2=fd2)
    _reply, (merged,) = dev.ioctl_fds(Op.SYNC_FILE_MERGE, args, fds=[sync_fd, fd2])
    return merged


def sync_file_info(dev: Device, sync_fd: int) -> m.SyncFileInfoReply:
    """sync_file_info (SYNC_IOC_FILE_INFO): the sync file's name, status and fences."""
    count: m.SyncFileInfoReply = dev.ioctl(Op.SYNC_FILE_INFO, m.SyncFileInfo(), fds=[sync_fd])
    args = m.SyncFileInfo(num_fences=count.num_fences)
    reply: m.SyncFileInfoReply = dev.ioctl(Op.SYNC_FILE_INFO, args, fds=[sync_fd])
    return reply


def _to_fd(dev: Device, args: m.DrmSyncobjFd) -> int:
    _reply, (fd,) = dev.ioctl_fds(Op.SYNCOBJ_HANDLE_TO_FD, args)
    return fd


def signal_sync(handle: int) -> m.DrmXeSync:
    """An EXEC or VM_BIND sync that puts the job's fence in syncobj `handle`."""
    return m.DrmXeSync(type=DRM_XE_SYNC_TYPE_SYNCOBJ, flags=DRM_XE_SYNC_FLAG_SIGNAL, handle=handle)


def wait_sync(handle: int) -> m.DrmXeSync:
    """An EXEC or VM_BIND sync that makes the job wait for the fence `handle` holds."""
    return m.DrmXeSync(type=DRM_XE_SYNC_TYPE_SYNCOBJ, handle=handle)


def timeline_signal_sync(handle: int, point: int) -> m.DrmXeSync:
    """An EXEC or VM_BIND sync that makes the job's fence the point `point` of `handle`."""
    return m.DrmXeSync(
        type=DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
        flags=DRM_XE_SYNC_FLAG_SIGNAL,
        handle=handle,
        timeline_value=point,
    )


def timeline_wait_sync(handle: int, point: int) -> m.DrmXeSync:
    """An EXEC or VM_BIND sync that makes the job wait for the point `point` of `handle`."""
    return m.DrmXeSync(type=DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ, handle=handle, timeline_value=point)


# --- sw_sync: timelines the program signals (drivers/dma-buf/sw_sync.c) ------------------
def sw_sync_timeline(dev: Device) -> int:
    """sw_sync_timeline_create (open of debugfs's sync/sw_sync): a timeline at 0, as a
    descriptor; closing its last copy signals its pending points with ENOENT."""
    _reply, (fd,) = dev.ioctl_fds(Op.SW_SYNC_TIMELINE_CREATE, m.SwSyncTimelineCreate())
    return fd


def sw_sync_fence(dev: Device, timeline_fd: int, value: int) -> int:
    """sw_sync_timeline_create_fence (SW_SYNC_IOC_CREATE_FENCE): a sync file of the
    point `value`, signalled once the timeline reaches it."""
    args = m.SwSyncCreateFence(value=value)
    _reply, (fd,) = dev.ioctl_fds(Op.SW_SYNC_CREATE_FENCE, args, fds=[timeline_fd])
    return fd


def sw_sync_inc(dev: Device, timeline_fd: int, count: int = 1) -> None:
    """sw_sync_timeline_inc (SW_SYNC_IOC_INC): advance the timeline by `count`."""
    dev.ioctl(Op.SW_SYNC_INC, m.SwSyncInc(value=count), fds=[timeline_fd])
