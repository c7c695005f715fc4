"""Device memory: one sealed memfd per object, and the regions that account for it."""

from __future__ import annotations

import ctypes
import fcntl
import os
from errno import EINVAL, ENOMEM
from typing import TYPE_CHECKING

import attrs

from protocols.memfd import F_SEAL_FUTURE_WRITE, MAX_SHARED_SIZE, UnsafeMemory, check_memfd

from .errors import IoctlError

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice

U64_MAX = (1 << 64) - 1

# A client that holds the descriptor may write the pages but never resize the object
# (the daemon's own mapping would SIGBUS) nor add seals of its own (a FUTURE_WRITE seal
# would stop the daemon mapping it writable).
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def create_backing(name: str, size: int, sealed: bool = True) -> int:
    """A memfd of exactly `size` bytes, sealed against resizing; pages come on first touch.

    `sealed=False` leaves the seals to the caller (who wants to add FUTURE_WRITE too).
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        # nobody but root may reopen it through /proc/<pid>/fd with more access than the
        # descriptor they were given (a read-only dma-buf stays read-only)
        os.fchmod(fd, 0o400)
        os.ftruncate(fd, size)
        if sealed:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(fd)
        raise
    return fd


def unbacked() -> int:
    """An empty memfd, sealed so that it never grows: mapped at any length, its first
    access raises SIGBUS, as a mapping of an object with no pages to fault in does."""
    return create_backing("xe-unbacked", 0)


def client_memory(fd: int, size: int, device: XeDevice) -> bool:
    """Judge memory a client (or another daemon, through a dma-buf) hands us before
    anything maps it; return whether the descriptor allows a writable mapping.

    Refused with EINVAL, as the kernel refuses what is not memory it can use: what
    protocols.memfd refuses (a pipe, a file on disk, hugetlbfs, a memfd that could
    shrink, fewer bytes than `size`, not readable), a size that is not a multiple of
    the device's page size, and a size beyond everything this device could hold (and
    2^47): such an object is never larger than an honest BO could be, so it fills u64
    counters and the fake-offset space no faster than one.
    """
    limit = min(sum(region.total for region in device.regions.values()), MAX_SHARED_SIZE)
    if size % device.page_size:
        raise IoctlError(EINVAL, f"size {size:#x} is not a multiple of the page size")
    try:
        return check_memfd(fd, size, limit)
    except UnsafeMemory as exc:
        raise IoctlError(EINVAL, f"not memory the device may map: {exc}") from None


def write_sealed(fd: int) -> bool:
    """Whether the memfd is sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE):
    the kernel then refuses every new writable shared map of it (EPERM), and for good,
    since a seal is never removed; a read-only shared map is still allowed."""
    return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))


def reported_bytes(total: int) -> int:
    """A sum of object sizes as a u64 field of a reply carries it: saturated. Every object
    is bounded, their number only by descriptors; a total past 2^64 must not make
    ADMIN_STATUS unencodable for everyone."""
    return min(total, U64_MAX)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, size: int) -> None:
    """Give back every page of the memfd (it keeps its size): each mapping of it, in any
    process, reads zeros from now on, and a write allocates a fresh page. Refused only
    for write-sealed memory (EPERM), which the caller zeroes otherwise."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def reopen_read_only(fd: int) -> int:
    """A new O_RDONLY open of the same memory: a shared writable mmap of it is EACCES."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


@attrs.define(eq=False)
class MemRegion:
    """A drm_xe_mem_region: capacity and what is allocated from it."""

    mem_class: int
    instance: int
    total: int
    cpu_visible: int
    used: int = 0
    cpu_visible_used: int = 0
    # the BOs charged here, least recently placed or validated first (residency.py)
    lru: dict[XeBo, None] = attrs.field(factory=dict, repr=False)
    # those of them charged to the CPU-visible part, in the same order
    visible_lru: dict[XeBo, None] = attrs.field(factory=dict, repr=False, eq=False)

    def charge(self, size: int, visible: bool) -> None:
        # TTM's ENOSPC reaches user space as ENOMEM (ttm_bo_validate, for compatibility)
        if self.used + size > self.total:
            raise IoctlError(ENOMEM, f"{size} bytes do not fit region {self.instance}")
        if visible and self.cpu_visible_used + size > self.cpu_visible:
            raise IoctlError(ENOMEM, f"{size} bytes do not fit CPU-visible VRAM")
        self.used += size
        if visible:
            self.cpu_visible_used += size

    def uncharge(self, size: int, visible: bool) -> None:
        self.used -= size
        if visible:
            self.cpu_visible_used -= size

    def fits(self, size: int, visible: bool) -> bool:
        if self.used + size > self.total:
            return False
        return not visible or self.cpu_visible_used + size <= self.cpu_visible
