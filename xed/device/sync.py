"""drm_xe_sync: the fences an EXEC or VM_BIND signals when it is done.

Only user fences exist on the emulated device (syncobjs are not emulated, so every
syncobj handle is unknown). An EXEC's user fence is a GPU address in the queue's VM;
a VM_BIND's is a user address (see mmap.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from errno import EINVAL, ENOENT, EOPNOTSUPP
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
from .mmap import user_memory, user_words, words_of
from .userptr import UserptrBusy

if TYPE_CHECKING:
    from .file import XeFile
    from .vm import XeVm


@attrs.frozen
class UserFence:
    addr: int
    value: int


def parse_syncs(
    xef: XeFile, syncs: Iterable[m.DrmXeSync], user_addresses: bool, allow_ufence: bool = True
) -> list[UserFence]:
    """xe_sync_entry_parse() for each sync, then the one-user-fence rule.

    - reserved non-zero, flags other than SIGNAL: EINVAL (extensions is not checked)
    - SYNCOBJ / TIMELINE_SYNCOBJ: ENOENT (no syncobj handle exists here)
    - USER_FENCE on a VM_BIND with no binds: EOPNOTSUPP
    - USER_FENCE without SIGNAL: EOPNOTSUPP; address not 8-byte aligned: EINVAL
    - USER_FENCE at a user address this file has not mapped: EFAULT; in a BO the daemon
      cannot map: ENOMEM (out of descriptors or memory), else EFAULT; in a BO the
      daemon may not write (a read-only import, a foreign buffer sealed against
      writes): EFAULT, as copy_to_user into a read-only mapping faults
    - any other type: EINVAL
    - more than one user fence: EINVAL
    """
    fences = []
    for sync in syncs:
        refuse_if(any(sync.reserved), EINVAL, "sync reserved must be zero")
        refuse_if(sync.flags & ~DRM_XE_SYNC_FLAG_SIGNAL, EINVAL, f"sync flags {sync.flags:#x}")
        if sync.type in (DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ):
            raise IoctlError(ENOENT, f"no syncobj {sync.handle}")
        refuse_if(sync.type != DRM_XE_SYNC_TYPE_USER_FENCE, EINVAL, f"sync type {sync.type}")
        refuse_if(not allow_ufence, EOPNOTSUPP, "no user fence on a bind without binds")
        refuse_if(not sync.flags & DRM_XE_SYNC_FLAG_SIGNAL, EOPNOTSUPP, "user fences only signal")
        refuse_if(sync.addr & 0x7, EINVAL, "user fence address must be 8-byte aligned")
        if user_addresses:
            user_words(xef, sync.addr, 8)
        fences.append(UserFence(sync.addr, sync.timeline_value))
    refuse_if(len(fences) > 1, EINVAL, "at most one user fence")
    return fences


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
                xef.log.warning("user_fence_fault", addr=fence.addr, reason=fault.reason)
                landed = None
            break
        if landed is not None:  # None: written nowhere (a NULL binding), or split in two
            memory, offset = landed
            xef.device.ufences.signalled(memory, offset, fence.value)
