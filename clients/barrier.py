"""The PCI barrier page as the library uses it: one 4-byte store per barrier.

Each store is `PCI_BARRIER_SEQ_TAG | n`, n a running number, so the device counts every
barrier made between two of its looks (it counts how far n moved). The mapping is
inherited across fork, as the kernel's is (no VM_DONTCOPY), and a child's barriers count
for the same file: so the running number lives in a page of its own shared with every
child (MAP_SHARED, anonymous), and once the process has forked it is advanced with an
atomic add (protocols.futex), never read-then-written, so that two processes never go
backwards. Whoever adds then stores the number as it reads it afterwards, which may be
another's later number: a number stored twice counts once, a lower one not at all, and
the highest one stored covers every add before it.

After the store, the library looks at the device's notice page: if its page watcher is
asleep (NOTICE_WATCHER_ASLEEP reads non-zero), it wakes it (FUTEX_WAKE), so a barrier
after a quiet spell is acknowledged at once; while the watcher is awake (barriers keep
coming) that costs one load. A store without the wake-up is counted all the same, at
the watcher's next timed look.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
import weakref

from protocols import futex
from protocols.constants import (
    NOTICE_WATCHER_ASLEEP,
    PAGE_SIZE,
    PCI_BARRIER_IDLE,
    PCI_BARRIER_SEQ_MASK,
    PCI_BARRIER_SEQ_TAG,
)

from .mapping import Mapping

_SCRATCH = 64  # the futex FUTEX_WAKE_OP names beside the counter; nobody waits there
_forked = False  # once True, parent and children may add to a shared counter at once
# Until the process forks, a barrier's running number is a plain int (a store costs one
# add): the shared page only has to hold it from the fork on, for the child and for the
# atomic adds of both. The hook writes it there, in the parent, just before the fork.
_barriers: weakref.WeakSet[PciBarrier] = weakref.WeakSet()


def _forking() -> None:
    global _forked
    if not _forked:
        _forked = True
        for barrier in list(_barriers):
            barrier.publish_count()


os.register_at_fork(before=_forking)


class PciBarrier:
    """The barrier page mapped write-only, and the running number of its stores."""

    def __init__(self, page: Mapping, notice: int) -> None:
        """`notice`: the address of the device's notice page, mapped for as long as the
        process lives (clients/unplug.py)."""
        self.attach(page)
        self._asleep_at = notice + NOTICE_WATCHER_ASLEEP
        # the asleep word as a one-item memoryview: a load is half a ctypes .value
        word = (ctypes.c_char * 4).from_address(self._asleep_at)
        self._asleep = memoryview(word).cast("B").cast("I")
        self._shared = mmap.mmap(-1, PAGE_SIZE, mmap.MAP_SHARED)
        self._counter = ctypes.c_uint32.from_buffer(self._shared)
        self._address = ctypes.addressof(self._counter)
        self._seq = 0  # the running number while the process has not forked
        _barriers.add(self)

    def publish_count(self) -> None:
        """Put the running number in the shared page (before a fork: see _forking)."""
        self._counter.value = self._seq

    @property
    def written(self) -> int:
        """Barriers stored by this process and every child sharing the page with it."""
        return int(self._counter.value) if _forked else self._seq

    def store(self) -> None:
        """One barrier: one store to the page."""
        if _forked:
            futex.atomic_add(self._address, 1, self._address + _SCRATCH)
            seq = self._counter.value
        else:
            self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
        self._store[0] = PCI_BARRIER_SEQ_TAG | seq & PCI_BARRIER_SEQ_MASK
        if self._asleep[0]:
            futex.wake(self._asleep_at, 1)

    def attach(self, page: Mapping) -> None:
        """Store to `page` from now on (the page mapped, or mapped again after unmap():
        the running number, shared with any forked child, goes on)."""
        self.page = page
        self._store = page.words.u32

    def unmap(self) -> None:
        """Let go of the page in this process (a forked child's copy is its own): once
        nobody maps it, the device lets go of a closed file's page at once. Nothing is
        stored until attach()."""
        self._store.release()
        self.page.close()

    def drain(self, attempts: int = 3) -> None:
        """Make sure the device has seen the last barrier: repeat it (a repeated number
        counts once) and wait for the page to read 0xdeadbeef again."""
        seq = self.written
        if not seq:
            return
        for _ in range(attempts):
            self.page.write_u32(0, PCI_BARRIER_SEQ_TAG | seq & PCI_BARRIER_SEQ_MASK)
            if self._asleep[0]:
                futex.wake(self._asleep_at, 1)
            while self.page.read_u32(0) != PCI_BARRIER_IDLE:
                time.sleep(0.0005)
