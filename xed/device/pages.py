"""Per-file device pages the device watches: the PCI barrier page and doorbells.

The CPU writes these pages directly; nothing tells the daemon (a library writer may
wake the watcher: watcher.py). The page watcher looks at every watched page and acts on
what it finds. Each page belongs to one file and is acted upon for that file only.

A barrier page outlives its file: the kernel's mapping holds the device, not the file
(and is inherited across fork), so after the last close it still reads 0xdeadbeef and
swallows writes. The page is watched on, its barriers counted for the device only,
until no process maps it any more. Whether one does, the kernel tells cheaply: clients
are handed a file of their own on the page (a second open of the memfd, which every
descriptor and every mapping made from it keeps alive), and a write lease on it is
granted only once no such file is left (F_SETLEASE checks the inode's open files, not
descriptors). Where leases are not to be had, the page is kept until the device goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import struct
import time
from errno import EINVAL, ENOENT
from typing import TYPE_CHECKING

import structlog

from protocols import messages as m
from protocols.constants import (
    PAGE_SIZE,
    PCI_BARRIER_ACKS_KEPT,
    PCI_BARRIER_IDLE,
    PCI_BARRIER_SEQ_HALF,
    PCI_BARRIER_SEQ_MASK,
    PCI_BARRIER_SEQ_TAG,
    XED_PCI_BARRIER_ACKS_RECORD,
)
from protocols.words import Words

from .errors import refuse_if
from .memory import create_backing

if TYPE_CHECKING:
    from .file import XeFile

_log = structlog.get_logger("xed")
F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_IDLE_PAGE = struct.pack("<I", PCI_BARRIER_IDLE) * (PAGE_SIZE // 4)
_IDLE_REST = _IDLE_PAGE[4:]
_TAG_BITS = 0xFFFF_FFFF & ~PCI_BARRIER_SEQ_MASK  # of word 0: the library's tag

LATENCY_SAMPLES = 4096
_monotonic_ns = time.monotonic_ns


class WatchedPage:
    """One page of shared memory, owned by one file, that the device acts upon."""

    kind = "page"

    def __init__(self, xef: XeFile, fill: bytes) -> None:
        self.file = xef
        self.memfd = create_backing(f"xe-{self.kind}", PAGE_SIZE)
        try:
            self.view = mmap.mmap(self.memfd, PAGE_SIZE, mmap.MAP_SHARED)
        except OSError:  # out of memory or mappings: the ioctl fails, nothing is kept
            os.close(self.memfd)
            raise
        self.view[:] = fill
        self.words = Words(self.view)

    def look(self, now: float, since: float, full: bool) -> bool:
        """Act on whatever was written since the last look; True if anything was. A
        look that is not `full` may leave what is costly to find for a full one."""
        raise NotImplementedError

    def mmap_fd(self) -> int:
        return os.dup(self.memfd)

    def close(self) -> None:
        self.words.release()
        self.view.close()
        os.close(self.memfd)


class BarrierPage(WatchedPage):
    """Writes are barriers: counted for the file, then the page reads 0xdeadbeef again."""

    kind = "pci-barrier"

    def __init__(self, xef: XeFile) -> None:
        super().__init__(xef, _IDLE_PAGE)
        try:
            self._handout: int | None = _reopen_writable(self.memfd)
        except OSError:
            super().close()
            raise
        self._u32 = self.words.u32
        # where the library's barriers land, for the watcher to sleep on (watcher.py);
        # the ctypes view goes at once, so that the mapping can still be closed
        view = ctypes.c_uint32.from_buffer(self.view)
        self.word0_at = ctypes.addressof(view)
        del view
        self.count = 0
        # counted for the device too: added up by the watcher once per look (a Counter
        # updated per page was half of what a look at a busy page cost)
        self._tally = xef.device.watcher.tally
        self._last_seq = 0
        self.ack_bounds: list[float] = []  # write-to-restore latency, upper bounds (s)
        # PCI_BARRIER_ACKS: while asked for, (number, time) of each look that counted
        # here; None otherwise, so a page nobody asks about pays one test per count
        self.acks: list[tuple[int, int]] | None = None
        self.acks_dropped = 0

    def mmap_fd(self) -> int:
        assert self._handout is not None, "no new mapping of a closed file's page"
        return os.dup(self._handout)

    @property
    def orphaned(self) -> bool:
        """Its file is closed: only mappings made before (and inherited) remain."""
        return self._handout is None

    def orphan(self) -> None:
        """The file closed: no new mapping can be made, existing ones go on; nobody can
        ask for its barriers' times any more (PCI_BARRIER_ACKS), so none are kept."""
        self.acks = None
        if self._handout is not None:
            os.close(self._handout)
            self._handout = None

    def still_mapped(self) -> bool:
        """Whether any process may still map the page (True when the kernel cannot say)."""
        probe = os.open(f"/proc/self/fd/{self.memfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.fcntl(probe, F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # leases disabled: keep it until the device goes
                _log.debug("barrier_page_lease_refused", errno=exc.errno)
            return True
        else:
            fcntl.fcntl(probe, F_SETLEASE, fcntl.F_UNLCK)
            return False
        finally:
            os.close(probe)

    def close(self) -> None:
        self.orphan()
        super().close()

    def look(self, now: float, since: float, full: bool) -> bool:
        # Word 0 is read and restored with single aligned 4-byte accesses: a client store
        # racing a wider copy could otherwise merge with it into a number nobody wrote.
        # The library's barriers land there, so that word is looked at every time; the
        # rest of the page (a raw store anywhere: one barrier) only on `full` looks.
        word0 = self._u32[0]
        if word0 == PCI_BARRIER_IDLE:
            if not full or self._rest_idle():
                return False
            counted = 0
        else:
            counted = 0
            if word0 & _TAG_BITS == PCI_BARRIER_SEQ_TAG:
                # the client library's running number: every write since the last look
                # counts (rewriting the last number is idempotent, so a store the restore
                # raced with can be repeated safely)
                delta = (word0 - self._last_seq) & PCI_BARRIER_SEQ_MASK
                if 0 < delta < PCI_BARRIER_SEQ_HALF:
                    counted = delta
                    self._last_seq = word0 & PCI_BARRIER_SEQ_MASK
            else:
                counted = 1
            if counted and self.acks is not None:  # read, and not yet reading idle again
                self._note_ack()
            self._u32[0] = PCI_BARRIER_IDLE
        if full and not self._rest_idle():
            if not counted and self.acks is not None:
                self._note_ack()
            counted = counted or 1  # any other word written: one barrier
            self.view[4:] = _IDLE_REST
        if counted:
            self.count += counted
            self._tally[0] += counted
            if len(self.ack_bounds) < LATENCY_SAMPLES:
                self.ack_bounds.append(now - since)
        return True

    def _rest_idle(self) -> bool:
        # a search that can only match at 4 is one compare in place: a slice of the page
        # was a 4 KiB copy per page per full look (10 us a look at 65 busy pages, cold)
        return self.view.find(_IDLE_REST, 4) == 4

    def _note_ack(self) -> None:
        """(In a look, between the read of a barrier and the page's restore.) The time,
        and the library's running number as counted now (a raw store leaves it as it
        was), for PCI_BARRIER_ACKS."""
        acks = self.acks
        if acks is None:  # orphaned since the look tested it
            return
        if len(acks) < PCI_BARRIER_ACKS_KEPT:
            acks.append((self._last_seq, _monotonic_ns()))
        else:
            self.acks_dropped += 1

    def take_acks(self, record: bool) -> tuple[list[tuple[int, int]], int]:
        """(The watcher's lock held.) What was recorded since the last call, and how
        many looks were not kept; recording goes on if `record`."""
        acks, dropped = self.acks or [], self.acks_dropped
        self.acks = [] if record else None
        self.acks_dropped = 0
        return acks, dropped

    def summary(self) -> dict[str, float]:
        bounds = sorted(self.ack_bounds) or [0.0]
        return {
            "barriers": self.count,
            "ack_p50_us": round(bounds[len(bounds) // 2] * 1e6, 1),
            "ack_p99_us": round(bounds[min(len(bounds) - 1, int(len(bounds) * 0.99))] * 1e6, 1),
        }


def xed_pci_barrier_acks_ioctl(xef: XeFile, args: m.XedPciBarrierAcks) -> m.XedPciBarrierAcksReply:
    """PCI_BARRIER_ACKS: when the device read this file's barriers (xed's: no kernel
    equivalent). Checks: pad (EINVAL), flags (EINVAL), a barrier page (ENOENT)."""
    refuse_if(args.pad, EINVAL, "pad not zero")
    refuse_if(args.flags & ~XED_PCI_BARRIER_ACKS_RECORD, EINVAL, f"unknown flags {args.flags:#x}")
    page = xef.barrier_page
    refuse_if(page is None, ENOENT, "no barrier page: map it first")
    assert page is not None
    with xef.device.watcher.lock:  # the watcher appends while it looks
        acks, dropped = page.take_acks(bool(args.flags & XED_PCI_BARRIER_ACKS_RECORD))
    return m.XedPciBarrierAcksReply(
        seqs=tuple(seq for seq, _at in acks),
        counted_ns=tuple(at for _seq, at in acks),
        dropped=dropped,
    )


def _reopen_writable(memfd: int) -> int:
    """A second open file of the memfd, for clients: the one a lease can see. (The memfd
    is made read-only to reopen, so that a descriptor handed out never reopens with more
    than it was given; this reopen comes before anyone holds one.)"""
    os.fchmod(memfd, 0o600)
    try:
        return os.open(f"/proc/self/fd/{memfd}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        os.fchmod(memfd, 0o400)


class DoorbellPage(WatchedPage):
    """A non-zero first word rings the bell: counted for the file, then cleared.

    Closing its region revokes the page: its memfd is cut to nothing, so every mapping
    of it faults (SIGBUS) from then on, as the kernel zaps the mappings of a revoked
    region. So the memfd cannot be sealed against shrinking, and its owner may cut it
    too: the device never maps it (a mapping of its own would fault the daemon), it
    reads and clears the bell with pread/pwrite, which read nothing from a page that
    was cut and cannot make it grow again (sealed).
    """

    kind = "doorbell"

    def __init__(self, xef: XeFile, bar_index: int) -> None:
        self.file = xef
        self.memfd = create_backing(f"xe-{self.kind}", PAGE_SIZE, sealed=False)
        try:
            # the owner may not add seals: SHRINK would stop the revocation, WRITE or
            # FUTURE_WRITE the device clearing the bell
            fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except OSError:
            os.close(self.memfd)
            raise
        self.bar_index = bar_index
        self.rings = 0
        self.last_value = 0

    def look(self, now: float, since: float, full: bool) -> bool:
        word = _pread(self.memfd, 4)
        value = int.from_bytes(word, "little") if len(word) == 4 else 0
        if not value:
            return False
        self.rings += 1
        self.last_value = value
        _pwrite(self.memfd, bytes(4))
        return True

    def revoke(self) -> None:
        """The region is closed: every mapping of the page faults from now on."""
        os.ftruncate(self.memfd, 0)

    def close(self) -> None:
        os.close(self.memfd)


def _pread(fd: int, n: int) -> bytes:
    try:
        return os.pread(fd, n, 0)
    except OSError:  # a page its owner broke is a page that reads nothing
        return b""


def _pwrite(fd: int, data: bytes) -> None:
    # cut by its owner: writing would grow it (sealed: EPERM); a clear that cannot
    # happen is a bell that cannot ring again, the owner's doing and no one else's
    with contextlib.suppress(OSError):
        os.pwrite(fd, data, 0)
