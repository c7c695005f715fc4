"""drm_xe_sync: the fences an EXEC or VM_BIND waits for, and signals when it is done.

A user fence is a word written when the job is done: an EXEC's at a GPU address in the
queue's VM, a VM_BIND's at a user address (see mmap.py). A SYNCOBJ sync names a binary
syncobj of the file (syncobj.py): with SIGNAL it holds the job's fence from submission
on, which signals when the job is done; without, the job waits for the fence it holds.
A TIMELINE_SYNCOBJ sync does the same with the point `timeline_value`.
"""

from __future__ import annotations

from collections.abc import Iterable
from errno import EINVAL, EOPNOTSUPP
from typing import TYPE_CHECKING

import attrs

from protocols import messages as m
from protocols.constants import (
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_USER_FENCE,
)

from .errors import GpuFault, IoctlError, refuse_if
from .fence import Fence
from .mmap import user_memory, user_words, words_of
from .syncobj import (
    DrmSyncobj,
    FoundFences,
    add_point_charged,
    charge_points,
    find_fence_once,
    lookup,
)
from .userptr import UserptrBusy

if TYPE_CHECKING:
    from .file import XeFile
    from .vm import XeVm


@attrs.frozen
class UserFence:
    addr: int
    value: int


@attrs.frozen
class Syncs:
    """What a job's syncs ask: the user fences it writes when done, the syncobjs that
    hold its fence from submission on, the fences it must wait for before it runs."""

    user_fences: list[UserFence]
    signals: list[tuple[DrmSyncobj, int]]  # a syncobj, and the point (0: binary)
    waits: list[Fence]
    xef: XeFile | None = None  # whose timeline points the signals add

    def unsignalled(self) -> list[Fence]:
        return [fence for fence in self.waits if not fence.signalled]

    def submit(self, fence: Fence) -> None:
        """The job is submitted: each SIGNAL syncobj holds its fence from now on, or
        has it as its point (drm_syncobj_add_point)."""
        for syncobj, point in self.signals:
            if point and self.xef is not None:
                add_point_charged(self.xef, syncobj, fence, point)
            else:
                syncobj.replace_fence(fence)


def parse_syncs(
    xef: XeFile,
    syncs: Iterable[m.DrmXeSync],
    user_addresses: bool,
    allow_ufence: bool = True,
    lr_mode: bool = False,
) -> Syncs:
    """xe_sync_entry_parse() for each sync, then the one-user-fence rule.

    - reserved non-zero, flags other than SIGNAL: EINVAL (extensions is not checked)
    - SYNCOBJ / TIMELINE_SYNCOBJ: SIGNAL on an LR_MODE VM: EOPNOTSUPP; the upper 32
      bits of addr (the union's handle is its lower half) not zero: EINVAL
    - SYNCOBJ naming no syncobj of this file: ENOENT; without SIGNAL (a wait), one
      holding no fence: EINVAL
    - TIMELINE_SYNCOBJ: timeline_value 0: EINVAL; no such syncobj: ENOENT; without
      SIGNAL (a wait), the point not submitted: EINVAL; with SIGNAL, the file's
      points held at limits.timeline_points: ENOMEM (xed's)
    - USER_FENCE on a VM_BIND with no binds: EOPNOTSUPP
    - USER_FENCE without SIGNAL: EOPNOTSUPP; address not 8-byte aligned: EINVAL
    - any other type: EINVAL
    - more than one user fence: EINVAL
    - then (xed's own check, xe asks only access_ok()): a VM_BIND's USER_FENCE at a user
      address this file has not mapped: EFAULT; in a BO the daemon
      cannot map: ENOMEM (out of descriptors or memory), else EFAULT; in a BO the
      daemon may not write (a read-only import, a foreign buffer sealed against
      writes): EFAULT, as copy_to_user into a read-only mapping faults
    """
    fences = []
    signals: list[tuple[DrmSyncobj, int]] = []
    waits: list[Fence] = []
    looked_up: FoundFences = {}
    for sync in syncs:
        refuse_if(any(sync.reserved), EINVAL, "sync reserved must be zero")
        refuse_if(sync.flags & ~DRM_XE_SYNC_FLAG_SIGNAL, EINVAL, f"sync flags {sync.flags:#x}")
        signal = sync.flags & DRM_XE_SYNC_FLAG_SIGNAL
        if sync.type in (DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ):
            refuse_if(lr_mode and signal, EOPNOTSUPP, "syncobjs do not signal in LR mode")
            refuse_if(sync.addr >> 32, EINVAL, "a syncobj handle is 32 bits")
        if sync.type in (DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ):
            point = 0
            if sync.type == DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ:
                refuse_if(not sync.timeline_value, EINVAL, "timeline_value must not be zero")
                point = sync.timeline_value
            syncobj = lookup(xef, sync.handle)
            if signal:
                if point:
                    charge_points(xef, 1 + sum(1 for _, p in signals if p))
                signals.append((syncobj, point))
            else:
                fence = find_fence_once(looked_up, syncobj, point)
                if fence is None:
                    raise IoctlError(EINVAL, f"syncobj {sync.handle} has no fence at {point}")
                waits.append(fence)
            continue
        refuse_if(sync.type != DRM_XE_SYNC_TYPE_USER_FENCE, EINVAL, f"sync type {sync.type}")
        refuse_if(not allow_ufence, EOPNOTSUPP, "no user fence on a bind without binds")
        refuse_if(not signal, EOPNOTSUPP, "user fences only signal")
        refuse_if(sync.addr & 0x7, EINVAL, "user fence address must be 8-byte aligned")
        fences.append(UserFence(sync.addr, sync.timeline_value))
    refuse_if(len(fences) > 1, EINVAL, "at most one user fence")
    if user_addresses:  # xe only asks access_ok() here: this is xed's own check, last
        for user_fence in fences:
            user_words(xef, user_fence.addr, 8)
    return Syncs(fences, signals, waits, xef)


def signal_user_fences(xef: XeFile, fences: Iterable[UserFence]) -> None:
    """Write each fence's value at its user address (a VM_BIND's) and wake the waiters
    of that word whose test it passes; no other waiter wakes. A write the daemon cannot
    make is the ioctl's EFAULT or ENOMEM (mmap.py)."""
    for fence in fences:
        memory, offset = user_memory(xef, fence.addr, 8)
        words_of(memory, fence.addr).store_u64(offset, fence.value)
        xef.device.ufences.signalled(memory, offset, fence.value)


async def signal_gpu_fences(xef: XeFile, fences: Iterable[UserFence], vm: XeVm) -> None:
    """Write each fence's value at its GPU address in `vm` (an EXEC's) and wake the
    waiters of that word whose test it passes. The write is a device access like any
    other: over host memory being invalidated it waits for the notifier, then lands
    (cs.py); a fault (nothing bound, freed host memory, a BO the device cannot map)
    loses that fence, logged."""
    for fence in fences:
        while True:
            try:
                landed = vm.write_u64(fence.addr, fence.value)
            except UserptrBusy as busy:
                xef.device.stats["userptr_retries"] += 1
                await busy.arena.wait_idle()
                continue
            except GpuFault as fault:
                xef.warn("user_fence_fault", addr=fence.addr, reason=fault.reason)
                landed = None
            break
        if landed is not None:  # None: written nowhere (a NULL binding), or split in two
            memory, offset = landed
            xef.device.ufences.signalled(memory, offset, fence.value)
