"""DRM_IOCTL_XE_WAIT_USER_FENCE, and the device's waiters on user fences.

A parked waiter learns that its fence may have passed in one of three ways, none of
which costs more with more waiters parked elsewhere:

- The device writes a user fence (an EXEC or a VM_BIND done): the waiters of that very
  word are tested against the value written, and those it satisfies are woken.
- A queue is reset (banned): the waiters that named it are woken (EIO).
- Anything else writes the word (the CPU, a batch's own stores, a debugger, an aux
  driver): nothing tells the daemon, so one device task looks at the waited-on words.
  A waiter is looked at every LOOK_TICK (10 ms) while it is new or its word keeps
  changing, and half as often after each look that finds the word unchanged, down to
  every SLOW_LOOK (0.32 s): a CPU write to a fence nobody has touched for a while is
  noticed within that. Looks fall on a grid of ticks, so the task wakes a few times a
  second for any number of still waiters. (The kernel notices a CPU-written fence only
  on the next interrupt or at the timeout.)

Whatever woke it, a waiter then looks again itself, every check in order, and parks
again if its test does not hold (the value may have moved on since).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from errno import EINVAL, EIO, ENODEV, ENOENT, ENOMEM, ETIME
from typing import TYPE_CHECKING, Any

import trio

from protocols import messages as m
from protocols.constants import DRM_XE_UFENCE_WAIT_FLAG_ABSTIME, UfenceOp

from .errors import IoctlError, refuse_if
from .mmap import user_memory, user_read_u64

if TYPE_CHECKING:
    from .device import XeDevice
    from .exec_queue import XeExecQueue
    from .file import XeFile

LONG_MAX = (1 << 63) - 1
LOOK_TICK = 0.01  # seconds: how soon a new or busy waiter's word is looked at
SLOWEST = 5  # a still word is looked at every LOOK_TICK << SLOWEST at most
SLOW_LOOK = LOOK_TICK * (1 << SLOWEST)

_COMPARE: dict[UfenceOp, Callable[[int, int], bool]] = {
    UfenceOp.EQ: lambda a, b: a == b,
    UfenceOp.NEQ: lambda a, b: a != b,
    UfenceOp.GT: lambda a, b: a > b,
    UfenceOp.GTE: lambda a, b: a >= b,
    UfenceOp.LT: lambda a, b: a < b,
    UfenceOp.LTE: lambda a, b: a <= b,
}


class UfenceWaiter:
    """One WAIT_USER_FENCE parked: what it waits for, and when it is looked at next."""

    def __init__(
        self, xef: XeFile, args: m.DrmXeWaitUserFence, queue: XeExecQueue | None
    ) -> None:
        self.file = xef
        self.addr = args.addr
        self.mask = args.mask
        self.want = args.value & args.mask
        self.compare = _COMPARE[UfenceOp(args.op)]
        self.queue = queue
        self.word: tuple[Any, int] = user_memory(xef, args.addr, 8)  # what the device writes
        self.last: int | None = None  # the word as the last look found it
        self.slowness = 0  # looked at every LOOK_TICK << slowness
        self.entry = -1  # its entry in the look schedule; -1: none (not parked)
        self.woken = trio.Event()

    def passes(self, value: int) -> bool:
        return self.compare(value & self.mask, self.want)

    def look(self) -> bool:
        """The device task's look: True if the waiter must look for itself (its test
        passes, its queue was reset, or its address stopped being readable)."""
        if self.queue is not None and self.queue.banned:
            return True
        try:
            value = user_read_u64(self.file, self.addr)
        except IoctlError:
            return True  # EFAULT now: the waiter reports it
        if self.passes(value):
            return True
        if value == self.last:
            self.slowness = min(self.slowness + 1, SLOWEST)
        else:
            self.slowness = 0  # busy: keep looking often
            self.last = value
        return False

    def wake(self) -> None:
        self.entry = -1
        self.woken.set()


class UfenceWaiters:
    """Every parked WAIT_USER_FENCE of the device, by the word it waits on, and the
    device task that looks at their words."""

    def __init__(self, device: XeDevice) -> None:
        self.device = device
        self.parked: set[UfenceWaiter] = set()
        self._by_word: dict[tuple[Any, int], set[UfenceWaiter]] = {}
        self._per_file: Counter[XeFile] = Counter()
        self._schedule: list[tuple[int, int, UfenceWaiter]] = []  # (tick, entry, waiter)
        self._entries = itertools.count()
        self._kick = trio.Event()
        self._sleeping_until = math.inf  # the tick the task sleeps until
        self.looks = 0  # words looked at by the task
        self.wakeups = 0  # waiters woken, by any of the three ways

    # --- the waiters' side ----------------------------------------------------------------
    def _count_in(self, xef: XeFile) -> None:
        """One more wait of `xef` asleep, against limits.fence_waits (ENOMEM past it)."""
        limit = self.device.limits.fence_waits
        if self._per_file[xef] >= limit:
            self.device.stats["limits_hit"] += 1
            raise IoctlError(ENOMEM, f"{limit} fence waits already parked ([limits])")
        self._per_file[xef] += 1

    def _count_out(self, xef: XeFile) -> None:
        self._per_file[xef] -= 1
        if not self._per_file[xef]:
            del self._per_file[xef]

    def add(self, waiter: UfenceWaiter) -> None:
        """Count a waiter against its file's limit (ENOMEM past it) and index it."""
        self._count_in(waiter.file)
        self._by_word.setdefault(waiter.word, set()).add(waiter)

    @contextlib.contextmanager
    def asleep(self, xef: XeFile) -> Iterator[None]:
        """A wait of another kind (SYNCOBJ_WAIT, a VM_BIND waiting on fences) asleep:
        it counts against the same limits.fence_waits of its file (ENOMEM past it)."""
        self._count_in(xef)
        try:
            yield
        finally:
            self._count_out(xef)

    def remove(self, waiter: UfenceWaiter) -> None:
        self.parked.discard(waiter)
        waiter.entry = -1  # its schedule entry, if any, is skipped when it comes up
        waiters = self._by_word[waiter.word]
        waiters.discard(waiter)
        if not waiters:
            del self._by_word[waiter.word]
        self._count_out(waiter.file)

    async def park(self, waiter: UfenceWaiter, until: float) -> None:
        """Sleep until something may have made the waiter's test pass, or `until`
        (trio time). It starts out busy: a word just waited on is often about to move."""
        waiter.woken = trio.Event()
        waiter.slowness = 0
        waiter.last = None
        self.parked.add(waiter)
        self._plan(waiter, self._tick())
        try:
            with trio.move_on_at(until):
                await waiter.woken.wait()
        finally:
            self.parked.discard(waiter)
            waiter.entry = -1

    # --- the device's side ----------------------------------------------------------------
    def signalled(self, memory: Any, offset: int, value: int) -> None:
        """The device wrote `value` into a user fence: wake the waiters it satisfies."""
        for waiter in self._by_word.get((memory, offset), ()):
            if waiter in self.parked and waiter.passes(value):
                self._wake(waiter)

    def unplugged(self) -> None:
        """drm_dev_unplug: the device will never write a fence again; every parked
        waiter wakes and answers ENODEV."""
        for waiter in list(self.parked):
            self._wake(waiter)

    def queue_reset(self, queue: XeExecQueue) -> None:
        """A queue was banned: its waiters answer EIO unless their value is there."""
        for waiter in [w for w in self.parked if w.queue is queue]:
            self._wake(waiter)

    def _wake(self, waiter: UfenceWaiter) -> None:
        self.wakeups += 1
        waiter.wake()

    # --- the look schedule ----------------------------------------------------------------
    @staticmethod
    def _tick() -> int:
        return math.floor(trio.current_time() / LOOK_TICK)

    def _plan(self, waiter: UfenceWaiter, now: int) -> None:
        """Schedule the waiter's next look at the next multiple of its period: waiters
        of one period share their ticks, and one wake of the task looks at them all."""
        period = 1 << waiter.slowness
        tick = (now // period + 1) * period
        waiter.entry = next(self._entries)
        heapq.heappush(self._schedule, (tick, waiter.entry, waiter))
        if tick < self._sleeping_until:
            self._kick.set()

    async def run(self) -> None:
        while True:
            self._kick = trio.Event()
            if not self._schedule:
                self._sleeping_until = math.inf
                await self._kick.wait()
                continue
            due = self._schedule[0][0]
            self._sleeping_until = due
            with trio.move_on_at(due * LOOK_TICK) as sleep:
                await self._kick.wait()
            self._sleeping_until = math.inf
            now = self._tick()
            if sleep.cancelled_caught:
                now = max(now, due)  # the clock reached `due`, whatever the rounding says
            self._look_until(now)

    def _look_until(self, now: int) -> None:
        while self._schedule and self._schedule[0][0] <= now:
            _, entry, waiter = heapq.heappop(self._schedule)
            if waiter.entry != entry:
                continue  # woken, gone or planned anew since
            self.looks += 1
            if waiter.look():
                self._wake(waiter)
            else:
                self._plan(waiter, now)


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
    Then, each time it looks: addr not inside a mapping of this file, or inside a GEM
    mapping of a foreign import that faults (imported_mmap = "xe"): EFAULT; the BO
    behind it cannot be mapped by the daemon: ENOMEM if it is out of descriptors or
    memory, else EFAULT (mmap.py; a buffer sealed against writes is read through a
    read-only map); the test passes: done; the queue was reset (banned):
    EIO; the timeout passed: ETIME; the device was unplugged while it slept (it will
    never write the fence): ENODEV.
    Before it first sleeps: this file has limits.fence_waits waits asleep already:
    ENOMEM (the kernel has no such limit; ENOMEM is this daemon's answer to a client
    past any of its [limits]; a wait that need not sleep never meets it).
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
    waiters = xef.device.ufences
    waiter: UfenceWaiter | None = None
    try:
        while True:
            if compare(user_read_u64(xef, args.addr) & args.mask, want):
                break
            if queue is not None and queue.banned:
                raise IoctlError(EIO, f"exec queue {queue.id} was reset")
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                raise IoctlError(ETIME, "timed out")
            if waiter is None:
                parking = UfenceWaiter(xef, args, queue)
                waiters.add(parking)
                waiter = parking
            until = math.inf if deadline is None else trio.current_time() + (deadline - now) / 1e9
            await waiters.park(waiter, until)
            refuse_if(xef.device.is_gone(xef.generation), ENODEV, "the device was unplugged")
    finally:
        if waiter is not None:
            waiters.remove(waiter)
    if absolute:
        return m.DrmXeWaitUserFenceReply(timeout=args.timeout)
    initial = LONG_MAX if args.timeout < 0 else args.timeout
    return m.DrmXeWaitUserFenceReply(timeout=max(initial - (time.monotonic_ns() - start), 0))
