"""Memory another process hands over: what it must be before anyone maps it.

Memory travels as memfds over SCM_RIGHTS, and whoever receives one maps it. A mapping of
a file faults (SIGBUS, the end of the process) wherever the file has no page to give: if
its owner shrinks it (ftruncate) after the mapping was made, or if it lives on hugetlbfs
and the huge page pool runs dry. So nobody maps memory of another process unless
`check_memfd` passes it: a memfd on shmem, sealed F_SEAL_SHRINK (it may grow, never
shrink), holding at least the bytes claimed. Whether it may be mapped writable is the
descriptor's to say (its access mode, its write seals), never the sender's.

This is protocol, not policy of one side: the daemon judges what clients and other
daemons send it, and the drivers beside it judge what the daemon sends them, with this
one function. It asks the kernel about the descriptor (fstat, fcntl, fstatfs) and never
reads or writes a byte of it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat

from .constants import PAGE_SIZE

TMPFS_MAGIC = 0x01021994  # shmem, where memfds live (hugetlbfs is 0x958458f6)
F_SEAL_FUTURE_WRITE = 0x0010  # Linux 5.1; Python's fcntl module does not name it
# The x86-64 user address space: no process maps more, so no honest buffer is larger.
MAX_SHARED_SIZE = 1 << 47


class UnsafeMemory(Exception):
    """The descriptor is not memory that can be mapped without risk (args[0]: why)."""


class _Statfs(ctypes.Structure):
    # f_type is the first member of struct statfs on every Linux ABI xed runs on (a C
    # long on 64-bit); the rest is room for the kernel to fill (120 bytes on x86-64)
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 248)]


_libc = ctypes.CDLL(None, use_errno=True)


def _fs_type(fd: int) -> int:
    """statfs(2)'s f_type of the file system the descriptor's file lives on."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type) & 0xFFFF_FFFF


def check_memfd(fd: int, size: int, limit: int = MAX_SHARED_SIZE) -> bool:
    """Raise UnsafeMemory unless the first `size` bytes of `fd` can be mapped shared and
    stay mapped whatever the sender does next; return whether a writable mapping is
    allowed (an O_RDWR descriptor of a memfd with no write seal).

    Refused, in order: a size that is zero, not page aligned or above `limit`; anything
    but a regular file on shmem (a pipe, a socket, a file on disk, a hugetlbfs memfd); a
    file that can shrink (no F_SEAL_SHRINK: a memfd created without MFD_ALLOW_SEALING
    has F_SEAL_SEAL alone); fewer bytes than `size`; a descriptor not open for reading.
    """
    if not 0 < size <= limit or size % PAGE_SIZE:
        raise UnsafeMemory(f"size {size:#x}: zero, not page aligned or above {limit:#x}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise UnsafeMemory("not a memfd (not even a regular file)")
    try:
        on_shmem = _fs_type(fd) == TMPFS_MAGIC
    except OSError:
        on_shmem = False
    if not on_shmem:
        raise UnsafeMemory("not a memfd on shmem (a file on disk, or hugetlbfs)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise UnsafeMemory("not a memfd") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        raise UnsafeMemory("not sealed with F_SEAL_SHRINK: it could shrink under a mapping")
    # the size after the seal: it can only have grown since
    held = os.fstat(fd).st_size
    if held < size:
        raise UnsafeMemory(f"{held:#x} bytes, not the {size:#x} claimed")
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if mode == os.O_WRONLY:
        raise UnsafeMemory("not open for reading")
    return mode == os.O_RDWR and not seals & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)
