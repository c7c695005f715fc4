"""Host memory and userptr: client memory the device reaches, with notifiers, not pins.

A client registers one memfd as its host memory; MAP_USERPTR binds map parts of it into
VMs. Nothing is pinned. When the client frees, unmaps or replaces host memory, its
library reports it as the MMU notifier would: START (the range is about to change:
device accesses wait), then END (replaced: the pages are there again; freed: they are
gone for good). Every device-side access checks the pages and copies with no await in
between, as the kernel copies under the notifier lock, so no invalidation comes in
halfway; pages mid-change are waited for (UserptrBusy) and the access starts over, whole;
freed pages are never read (EFAULT or a GPU fault).
Aux drivers that were handed the pages themselves (vm_export.py) are told at START, and
START waits until they let go.
"""

from __future__ import annotations

import mmap
import os
from errno import EBUSY, EINVAL
from typing import TYPE_CHECKING

import trio

from protocols import SHORTAGE
from protocols import messages as m
from protocols.constants import FAULT_TYPE_NOT_PRESENT, PAGE_SIZE
from protocols.constants import HOST_INVALIDATE_END_FREED as INVALIDATE_END_FREED
from protocols.constants import HOST_INVALIDATE_END_REPLACED as INVALIDATE_END_REPLACED
from protocols.constants import HOST_INVALIDATE_START as INVALIDATE_START
from protocols.words import Words

from .errors import GpuFault, IoctlError, refuse_if
from .memory import client_memory

if TYPE_CHECKING:
    from .file import XeFile
    from .vm_export import AuxRegistration


class UserptrBusy(Exception):
    """The range is being invalidated: wait for the notifier to finish, then retry."""

    def __init__(self, arena: HostArena) -> None:
        super().__init__("host memory is being invalidated")
        self.arena = arena


class HostArena:
    """One connection's host memory: its pages, which are gone and which are busy."""

    exact_length = False
    mappable = False  # the client maps its own memfd; MMAP of this offset is refused

    def __init__(self, xef: XeFile, fd: int, size: int) -> None:
        self.file = xef
        self.size = size
        self.memfd = os.dup(fd)
        try:
            self._view = mmap.mmap(self.memfd, size, mmap.MAP_SHARED)
        except OSError:
            os.close(self.memfd)
            raise
        self._words = Words(self._view)
        pages = size // PAGE_SIZE
        self.gone = bytearray(pages)  # 1: freed, never to be read
        self.busy = bytearray(pages)  # 1: between START and END
        self._idle = trio.Event()
        self._idle.set()
        self.closed = False  # the file went away; VMs that outlive it fault here
        self.aux_users: set[AuxRegistration] = set()  # aux drivers holding some of its pages
        self.node = xef.device.vma.add(self, size)
        self.node.allow(xef)

    def view(self, write: bool = True) -> mmap.mmap:
        """Mapped writable for its whole life (registration refuses what cannot be)."""
        return self._view

    def words(self, write: bool = True) -> Words:
        return self._words

    def _pages(self, offset: int, length: int) -> range:
        return range(offset // PAGE_SIZE, (offset + max(length, 1) - 1) // PAGE_SIZE + 1)

    # --- the notifier -------------------------------------------------------------------------
    def invalidate(self, offset: int, length: int, event: int) -> None:
        pages = self._pages(offset, length)
        # `1 in` a bytearray is one memchr: the preload library's arena of a GiB has
        # 262,144 pages, which any() would walk one by one on every report
        was_idle = 1 not in self.busy
        span = slice(pages.start, pages.stop)
        if event == INVALIDATE_START:
            self.busy[span] = b"\1" * len(pages)
        else:
            self.busy[span] = bytes(len(pages))
            self.gone[span] = (b"\1" if event == INVALIDATE_END_FREED else b"\0") * len(pages)
        if event == INVALIDATE_START:
            if was_idle:  # those already waiting keep the event they wait on
                self._idle = trio.Event()
        elif 1 not in self.busy:
            self._idle.set()

    def is_gone(self, offset: int, length: int) -> bool:
        pages = self._pages(offset, length)
        return self.closed or 1 in self.gone[pages.start : pages.stop]

    def check(self, offset: int, length: int, address: int) -> None:
        """Raise if the device may not touch [offset, offset+length) now."""
        if self.is_gone(offset, length):
            raise GpuFault(address, "freed host memory", page=FAULT_TYPE_NOT_PRESENT)
        pages = self._pages(offset, length)
        if 1 in self.busy[pages.start : pages.stop]:
            raise UserptrBusy(self)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_idle_for(self, xef: XeFile) -> None:
        """wait_idle() in an ioctl of `xef`: a wait asleep like any other, against its
        limits.fence_waits (ENOMEM past it), as it would be a thread asleep in the
        kernel; unbounded, one connection could park them without end while the
        memory's owner holds a change open."""
        with self.file.device.ufences.asleep(xef):
            await self._idle.wait()

    async def aux_let_go(self, lo: int, hi: int) -> None:
        """[lo, hi) is about to change: every aux driver handed some of its pages is told,
        and this returns once each has let them go (or its registration ended)."""
        waits = [(r, r.host_changing(self, lo, hi)) for r in list(self.aux_users)]
        for registration, seqno in waits:
            if seqno:
                await registration.wait_acknowledged(seqno)

    def close(self) -> None:
        self.closed = True
        for registration in list(self.aux_users):  # no one is left to wait for them
            registration.host_changing(self, 0, self.size)
        self.file.device.vma.remove(self.node)
        self._words.release()
        self._view.close()
        os.close(self.memfd)
        self._idle.set()


def host_memory_register_ioctl(
    xef: XeFile, args: m.XedHostMemoryRegister, fds: tuple[int, ...]
) -> m.XedHostMemoryRegisterReply:
    """HOST_MEMORY_REGISTER: the attached memfd becomes this file's host memory.

    Checks, in order (memory.client_memory: the kernel has no such ioctl, and EINVAL is
    its answer to an argument it cannot use):
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): ENOMEM
    - size zero, not page aligned ([device] page_size), or beyond what the device could
      hold: EINVAL
    - the descriptor is not a memfd on shmem (a pipe, a socket, a file on disk, a
      hugetlbfs memfd), or not sealed F_SEAL_SHRINK (the client could truncate it under
      the daemon's mapping: SIGBUS): EINVAL
    - its size is not `size`: EINVAL
    - it cannot be mapped writable (an O_RDONLY descriptor, F_SEAL_WRITE or
      F_SEAL_FUTURE_WRITE): EINVAL
    - this file registered its host memory already: EBUSY
    """
    (fd,) = fds
    writable = client_memory(fd, args.size, xef.device)
    refuse_if(os.fstat(fd).st_size != args.size, EINVAL, "size is not the memfd's size")
    refuse_if(not writable, EINVAL, "host memory is mapped writable: a read-only descriptor")
    refuse_if(xef.host is not None, EBUSY, "host memory is registered once per connection")
    try:
        xef.host = HostArena(xef, fd, args.size)
    except OSError as exc:
        if exc.errno in SHORTAGE:  # the daemon's want, not the client's mistake
            raise
        raise IoctlError(EINVAL, f"cannot map it shared: {exc.strerror}") from exc
    xef.log.info("host_memory_registered", size=args.size, offset=xef.host.node.start)
    return m.XedHostMemoryRegisterReply(offset=xef.host.node.start)


async def host_memory_invalidate_ioctl(xef: XeFile, args: m.XedHostMemoryInvalidate) -> m.Empty:
    """HOST_MEMORY_INVALIDATE: the client library's MMU notifier.

    Checks: no host memory, the range outside it, or an unknown event: EINVAL; a START
    while limits.fence_waits waits of the file are asleep already: ENOMEM.
    START waits for the jobs already submitted on VMs mapping those pages (_jobs_done),
    holds device accesses off the pages, then waits until every aux driver handed those
    pages has let them go; END lets accesses in again and marks the pages replaced
    (there, new contents) or freed (gone).
    """
    host = xef.host
    refuse_if(host is None, EINVAL, "no host memory registered")
    assert host is not None
    offset = args.addr - host.node.start
    refuse_if(
        offset < 0 or not args.length or offset + args.length > host.size,
        EINVAL,
        "outside the host memory",
    )
    refuse_if(
        args.event not in (INVALIDATE_START, INVALIDATE_END_REPLACED, INVALIDATE_END_FREED),
        EINVAL,
        f"unknown notifier event {args.event}",
    )
    if args.event != INVALIDATE_START:
        host.invalidate(offset, args.length, args.event)
        return m.Empty()
    # a wait asleep like any other, counted before the pages are held off so that a
    # refusal leaves nothing changed: an aux driver that never acknowledges must not
    # let one client park STARTs without end
    with xef.device.ufences.asleep(xef):  # ENOMEM past limits.fence_waits
        await _jobs_done(xef, host, offset, offset + args.length)
        host.invalidate(offset, args.length, args.event)
        await host.aux_let_go(offset, offset + args.length)
    return m.Empty()


async def _jobs_done(xef: XeFile, host: HostArena, lo: int, hi: int) -> None:
    """Wait for the jobs submitted so far on every VM that maps host memory's [lo, hi):
    as xe's notifier waits on the VM's fences before the pages change, a job submitted
    before an munmap or a new mmap reads the pages it was given, never their replacement
    (IGT's userptr-invalidate-race subtests count on it). At most the device's job
    timeout ([device] job_timeout_ms), which ends any job but an LR VM's; a job still
    running then stalls on the changing pages instead."""
    queues = list(xef.exec_queues.values())
    mapping = {vm for vm in {queue.vm for queue in queues} if vm.maps_host(host, lo, hi)}
    fences = [queue.last_fence for queue in queues if queue.vm in mapping]  # each VM once
    with trio.move_on_after(xef.device.config.job_timeout_ms / 1000):
        for fence in fences:
            if fence is not None:
                await fence.wait()
