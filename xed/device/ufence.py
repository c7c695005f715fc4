"""DRM_IOCTL_XE_WAIT_USER_FENCE: sleep until a 64-bit value in memory passes a test."""

from __future__ import annotations

import time
from collections.abc import Callable
from errno import EINVAL, EIO, ENOENT, ETIME
from typing import TYPE_CHECKING

import trio

from protocols import messages as m
from protocols.constants import DRM_XE_UFENCE_WAIT_FLAG_ABSTIME, UfenceOp

from .errors import IoctlError, refuse_if
from .mmap import user_read_u64

if TYPE_CHECKING:
    from .file import XeFile

LONG_MAX = (1 << 63) - 1
# The device wakes waiters whenever it writes a fence; a fence the CPU writes is only
# noticed on this poll, as the kernel only notices it on the next interrupt or timeout.
CPU_WRITE_POLL = 0.01

_COMPARE: dict[UfenceOp, Callable[[int, int], bool]] = {
    UfenceOp.EQ: lambda a, b: a == b,
    UfenceOp.NEQ: lambda a, b: a != b,
    UfenceOp.GT: lambda a, b: a > b,
    UfenceOp.GTE: lambda a, b: a >= b,
    UfenceOp.LT: lambda a, b: a < b,
    UfenceOp.LTE: lambda a, b: a <= b,
}


async def xe_wait_user_fence_ioctl(
    xef: XeFile, args: m.DrmXeWaitUserFence
) -> m.DrmXeWaitUserFenceReply:
    """Wait until (*addr & mask) op (value & mask), unsigned 64-bit.

    Checks, in order:
    - extensions, pad, pad2 or reserved non-zero: EINVAL
    - flags other than ABSTIME: EINVAL
    - op above LTE: EINVAL
    - addr not 8-byte aligned: EINVAL
    - exec_queue_id non-zero and naming no queue: ENOENT
    Then, each time it looks: addr not inside a mapping of this file: EFAULT; the BO
    behind it cannot be mapped by the daemon: ENOMEM if it is out of descriptors or
    memory, else EFAULT (mmap.py); the test passes: done; the queue was reset (banned):
    EIO; the timeout passed: ETIME.
    timeout < 0 waits forever; 0 looks once; ABSTIME makes it a CLOCK_MONOTONIC deadline.
    The reply's timeout is what is left of a relative wait (LONG_MAX - elapsed if endless).
    """
    refuse_if(
        args.extensions or args.pad or args.pad2 or any(args.reserved),
        EINVAL,
        "extensions/pad/reserved not zero",
    )
    refuse_if(args.flags & ~DRM_XE_UFENCE_WAIT_FLAG_ABSTIME, EINVAL, f"flags {args.flags:#x}")
    refuse_if(args.op > UfenceOp.LTE, EINVAL, f"unknown op {args.op}")
    refuse_if(args.addr & 0x7, EINVAL, "addr must be 8-byte aligned")
    queue = None
    if args.exec_queue_id:
        queue = xef.exec_queues.get(args.exec_queue_id)
        if queue is None:
            raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
    start = time.monotonic_ns()
    absolute = bool(args.flags & DRM_XE_UFENCE_WAIT_FLAG_ABSTIME)
    if args.timeout < 0:
        deadline = None
    else:
        deadline = args.timeout if absolute else start + args.timeout
    compare = _COMPARE[UfenceOp(args.op)]
    want = args.value & args.mask
    lot = xef.device.ufence_lot
    while True:
        if compare(user_read_u64(xef, args.addr) & args.mask, want):
            break
        if queue is not None and queue.banned:
            raise IoctlError(EIO, f"exec queue {queue.id} was reset")
        now = time.monotonic_ns()
        if deadline is not None and now >= deadline:
            raise IoctlError(ETIME, "timed out")
        wait = CPU_WRITE_POLL if deadline is None else min(CPU_WRITE_POLL, (deadline - now) / 1e9)
        with trio.move_on_after(wait):
            await lot.park()
    if absolute:
        return m.DrmXeWaitUserFenceReply(timeout=args.timeout)
    initial = LONG_MAX if args.timeout < 0 else args.timeout
    return m.DrmXeWaitUserFenceReply(timeout=max(initial - (time.monotonic_ns() - start), 0))
