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

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .syncobj import Fence

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile


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
            self._device.start_soon(
                self._run, what="bind_queue", on_crash=self._crashed, log=self._file.log
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
        finally:
            self._worker = None  # no checkpoint since the last look at the jobs

    def _crashed(self) -> None:
        """A bind that raised (a bug of ours): what is queued after it is dropped, with
        its fences signalled."""
        self.halt()
