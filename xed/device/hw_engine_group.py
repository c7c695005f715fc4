"""Hw engine groups: engines that share hardware run page-fault-mode jobs or dma-fence
jobs, never both at once (xe_hw_engine_group.c).

A faulting job stuck on a page fault holds the hardware it shares with the other engines
of its group, and a dma-fence job must complete in bounded time: so xe keeps each group
in one of two modes. A dma-fence job (a VM not in LR mode) turns its group to DMA_FENCE
mode and suspends the group's faulting long-running queues where they are; a worker
waits for the group's dma-fence jobs to complete, then turns it back to LR mode and
resumes them. A queue of a page-fault-mode VM created meanwhile starts suspended. Queues
of a long-running VM without faults (preempt-fence mode) are in no group.

Emulated by its effect: a job of a page-fault-mode VM starts, and goes on after each of
its preemption points (a jump back, a semaphore poll: the streamer's naps), only while
no dma-fence job of its group is running. The groups are xe's: render with compute,
copy, and the two video classes, per GT.
"""

from __future__ import annotations

import trio

from protocols import messages as m
from protocols.constants import EngineClass

# engine class -> the group it shares hardware with (xe_hw_engine_setup_groups)
_GROUP_OF_CLASS = {
    EngineClass.RENDER: "rcs_ccs",
    EngineClass.COMPUTE: "rcs_ccs",
    EngineClass.COPY: "bcs",
    EngineClass.VIDEO_DECODE: "vcs_vecs",
    EngineClass.VIDEO_ENHANCE: "vcs_vecs",
}


class HwEngineGroup:
    """One group's mode: DMA_FENCE while any of its dma-fence jobs runs, LR otherwise."""

    __slots__ = ("dma_fence_jobs", "_lr_resumed")

    def __init__(self) -> None:
        self.dma_fence_jobs = 0  # dma-fence jobs of the group's queues running now
        self._lr_resumed: trio.Event | None = None  # set when LR mode comes back

    def dma_fence_job_started(self) -> None:
        """A dma-fence job runs: the group's faulting LR jobs are suspended."""
        self.dma_fence_jobs += 1
        if self._lr_resumed is None:
            self._lr_resumed = trio.Event()

    def dma_fence_job_done(self) -> None:
        """It completed (or failed, or its queue was killed): the last one's end resumes
        the faulting LR jobs (the resume worker's switch back to LR mode)."""
        self.dma_fence_jobs -= 1
        if not self.dma_fence_jobs and self._lr_resumed is not None:
            self._lr_resumed.set()
            self._lr_resumed = None

    async def lr_may_run(self) -> None:
        """Return once a faulting LR job may run: at once in LR mode, else when the
        group's dma-fence jobs are done."""
        while self._lr_resumed is not None:
            await self._lr_resumed.wait()


class HwEngineGroups:
    """The device's groups, made at first use: (GT, group name) -> its group."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str], HwEngineGroup] = {}

    def of(self, eci: m.DrmXeEngineClassInstance) -> HwEngineGroup | None:
        """The group of the engine `eci` names; None for a class in none (VM_BIND)."""
        name = _GROUP_OF_CLASS.get(EngineClass(eci.engine_class))
        if name is None:
            return None
        key = (eci.gt_id, name)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = HwEngineGroup()
        return group
