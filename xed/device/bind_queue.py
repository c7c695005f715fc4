"""The binds of a bind queue that wait for fences: applied in order, after their waits.

xe runs each VM_BIND as a job on a bind queue (the one it names, else the VM's own):
the ioctl returns once the job is queued, the job runs when the fences it waits for
have signalled and the queue's earlier jobs are done, and its SIGNAL syncobjs hold its
fence from submission on. Here a bind with nothing to wait for is made as its ioctl
is answered (nothing could tell the two apart); one that must wait is queued on a
BindQueue, whose worker task (started by the first job, gone when the queue runs dry,
as an exec queue's) makes it later. A bind that overlaps a queued one of the same VM
on another queue waits for it too (xe orders binds that touch the same page tables).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import trio

from protocols import messages as m
from protocols.constants import DRM_XE_VM_BIND_OP_PREFETCH as PREFETCH
from protocols.constants import DRM_XE_VM_BIND_OP_UNMAP, DRM_XE_VM_BIND_OP_UNMAP_ALL

from .fence import Fence

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile
    from .vm import XeVm

PT_BLOCK = 1 << 21  # what one page-table page of xe's maps (512 PTEs of 4 KiB)
# binds of one VM queued to wait, on all its queues; past it VM_BIND answers EAGAIN (as
# EXEC past its queue's bound): every new bind is checked against those queued
MAX_QUEUED_BINDS = 1024
# and the address spans they hold (up to three a bind op): what each new bind is checked
# against, a bisection each (QueuedBinds.over); without it 1024 binds of 512 ops each
# made every new bind compare 1.5 million spans with its own 512 in the event loop
MAX_QUEUED_SPANS = 16384
# bind ops one file has queued over all its VMs (a bind of none counts one): each keeps
# its array until it is made, and 1024 VMs of 1024 binds of 512 ops would be half a
# billion records
MAX_QUEUED_BIND_OPS = 65536


class BindQueue:
    """Binds queued on one bind queue (or a VM's own), in submission order."""

    __slots__ = ("_device", "_file", "_jobs", "_last", "_stopped", "_worker")

    def __init__(self, xef: XeFile) -> None:
        self._device: XeDevice = xef.device
        self._file = xef
        self._jobs: collections.deque[tuple[list[Fence], Fence, Callable[[bool], None]]] = (
            collections.deque()
        )
        self._last: Fence | None = None  # the fence of the job being made
        self._worker: trio.CancelScope | None = None
        self._stopped = False

    @property
    def last_fence(self) -> Fence:
        """The fence of the latest bind queued (busy queues only): once it signals,
        every earlier one has."""
        last = self._jobs[-1][1] if self._jobs else self._last
        assert last is not None, "an idle bind queue has no last fence"
        return last

    @property
    def busy(self) -> bool:
        """Binds of this queue are queued or being made: a new one goes after them."""
        return bool(self._jobs) or self._last is not None

    def submit(self, waits: list[Fence], fence: Fence, make: Callable[[bool], None]) -> None:
        """Queue a bind: `make(True)` runs once every fence of `waits` has signalled and
        the binds queued before it are made, `make(False)` if it is dropped instead (to
        let go of what it holds); `fence` signals after either."""
        self._jobs.append((waits, fence, make))
        if self._worker is None and not self._stopped:
            self._worker = trio.CancelScope()
            # a bind that raises is a bug of ours: what is queued after it is dropped
            self._device.start_soon(
                self._run, what="bind_queue", on_crash=self.halt, log=self._file.log
            )
        elif self._stopped:
            self.halt()

    def halt(self) -> None:
        """The queue is destroyed (or its VM, or the device unplugged): nothing queued is
        made, and every fence signals, so that no wait waits for it for ever."""
        self._stopped = True
        if self._worker is not None:
            self._worker.cancel()  # the bind it waits for is dropped there
        while self._jobs:
            _waits, fence, make = self._jobs.popleft()
            try:
                make(False)
            finally:
                fence.signal()

    async def _run(self) -> None:
        assert self._worker is not None
        try:
            with self._worker:
                while self._jobs and not self._stopped:
                    waits, fence, make = self._jobs.popleft()
                    self._last = fence
                    made = False
                    try:
                        for wait in waits:
                            await wait.wait()
                        made = True
                        make(True)
                    finally:
                        if not made:  # cancelled: the queue was halted
                            make(False)
                        fence.signal()
                        self._last = None
                    if self._jobs:
                        # binds made back to back (all waiting for one fence) let the
                        # others run between two; no cancel lands there: a halt
                        # meanwhile has dropped the rest, and the loop's test sees it
                        await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._worker = None  # no checkpoint since the last look at the jobs


class QueuedBinds:
    """A VM's binds queued on any of its bind queues: what a later bind waits for. One
    over the same addresses waits, and so does one in a page-table block nothing mapped
    when a queued bind was made, which that bind will fill in (xe orders binds that
    update the same page tables, whatever queue they are on: bind-execqueues-conflict)."""

    __slots__ = ("_by_fence", "_file", "_spans")

    def __init__(self, xef: XeFile) -> None:
        # in the order they were queued: the fence, its queue, the addresses it holds,
        # and the ops it counts against its file
        self._by_fence: dict[Fence, tuple[BindQueue, list[tuple[int, int]], int]] = {}
        self._spans = 0
        self._file = xef

    def full(self, ops: int) -> bool:
        """Whether one more bind of `ops` ops may not be queued (EAGAIN): the VM's
        MAX_QUEUED_BINDS or MAX_QUEUED_SPANS, or the file's MAX_QUEUED_BIND_OPS."""
        return (
            len(self._by_fence) >= MAX_QUEUED_BINDS
            or self._spans >= MAX_QUEUED_SPANS
            or self._file.queued_bind_ops + max(ops, 1) > MAX_QUEUED_BIND_OPS
        )

    def add(self, ops: tuple[m.DrmXeVmBindOp, ...], fence: Fence, on: BindQueue, vm: XeVm) -> None:
        spans = []
        for start, end, op in _spans_of(ops, vm.size):
            spans.append((start, end))
            if op.op in (DRM_XE_VM_BIND_OP_UNMAP, DRM_XE_VM_BIND_OP_UNMAP_ALL, PREFETCH):
                continue
            # the blocks it fills in: only the first and the last can reach past its own
            # span (the others lie inside it), so only they are held apart
            for block in {start & -PT_BLOCK, (end - 1) & -PT_BLOCK}:
                if (block < start or block + PT_BLOCK > end) and not vm.mapped_in(
                    block, block + PT_BLOCK
                ):
                    spans.append((block, block + PT_BLOCK))
        counted = max(len(ops), 1)
        self._by_fence[fence] = (on, spans, counted)
        self._spans += len(spans)
        self._file.queued_bind_ops += counted
        self._file.uid_account.objects += counted

    def remove(self, fence: Fence) -> None:
        entry = self._by_fence.pop(fence, None)
        if entry is not None:
            self._spans -= len(entry[1])
            self._file.queued_bind_ops -= entry[2]
            self._file.uid_account.objects -= entry[2]

    def over(self, ops: tuple[m.DrmXeVmBindOp, ...], size: int) -> list[Fence]:
        """What a new bind of `ops` waits for: of each bind queue, the latest queued bind
        it overlaps (a queue's binds are made in order: the earlier ones are done by
        then). The new spans are merged into disjoint sorted ones, so each queued span
        costs one bisection."""
        starts, ends = _merged(_spans_of(ops, size))
        if not starts:
            return []
        latest: dict[BindQueue, Fence] = {}
        for fence, (on, spans, _ops) in self._by_fence.items():
            for qs, qe in spans:
                # the first merged span that ends after qs: overlaps if it starts before qe
                i = bisect.bisect_right(ends, qs)
                if i < len(starts) and starts[i] < qe:
                    latest[on] = fence
                    break
        return list(latest.values())


def _merged(spans: Iterable[tuple[int, int, object]]) -> tuple[list[int], list[int]]:
    """Non-empty spans merged into disjoint ones: their starts and ends, sorted."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end, _op in sorted(spans, key=lambda span: span[0]):
        if start >= end:
            continue
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _spans_of(
    ops: tuple[m.DrmXeVmBindOp, ...], size: int
) -> Iterator[tuple[int, int, m.DrmXeVmBindOp]]:
    """The addresses each bind op touches (UNMAP_ALL: wherever its BO is mapped)."""
    for op in ops:
        whole = op.op == DRM_XE_VM_BIND_OP_UNMAP_ALL
        yield (0, size, op) if whole else (op.addr, op.addr + op.range, op)
