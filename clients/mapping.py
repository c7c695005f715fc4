"""A CPU mapping of device memory: a real shared mmap of the descriptor the daemon sent."""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
from types import TracebackType

from protocols.words import Words


class Mapping:
    """Shared memory mapped from a fake offset of the DRM file.

    Index and slice it like a bytearray; `address` is where it lives in this process,
    and `user_address(offset)` names a byte of it the way ioctls taking a user pointer
    (WAIT_USER_FENCE, VM_BIND user fences) expect.
    """

    def __init__(self, mm: mmap.mmap, fake_offset: int, length: int) -> None:
        self.mm = mm
        self.fake_offset = fake_offset
        self.length = length
        self.address = _address_of(mm)
        self.words = Words(mm)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | slice) -> int | bytes:
        return self.mm[key]

    def __setitem__(self, key: int | slice, value: int | bytes) -> None:
        # mmap takes an int at an index and bytes at a slice; it checks the pairing itself
        self.mm[key] = value  # type: ignore[index,assignment]

    # one access per aligned word, so the device and other processes never see half of
    # one (or the zero struct.pack_into writes first)
    def read_u32(self, offset: int) -> int:
        return self.words.load_u32(offset)

    def read_u64(self, offset: int) -> int:
        return self.words.load_u64(offset)

    def write_u32(self, offset: int, value: int) -> None:
        self.words.store_u32(offset, value)

    def write_u64(self, offset: int, value: int) -> None:
        self.words.store_u64(offset, value)

    def user_address(self, offset: int = 0) -> int:
        """The CPU address of byte `offset`, for ioctls that take a user pointer."""
        if not 0 <= offset < self.length:
            raise ValueError(f"offset {offset} outside a mapping of {self.length} bytes")
        return self.address + offset

    def contains(self, address: int) -> bool:
        return self.address <= address < self.address + self.length

    @property
    def closed(self) -> bool:
        return self.mm.closed

    def close(self) -> None:
        if not self.mm.closed:
            self.words.release()
            self.mm.close()

    def __enter__(self) -> Mapping:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _address_of(mm: mmap.mmap) -> int:
    try:
        probe = ctypes.c_char.from_buffer(mm)
    except TypeError:  # a read-only mapping cannot be exported writable
        return 0
    address = ctypes.addressof(probe)
    del probe  # an outstanding export would keep mm.close() from working
    return address


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10  # linux/mman.h (Python's mmap module does not name it)


def map_shared(fd: int, length: int, prot: int, offset: int = 0) -> mmap.mmap:
    """mmap(2) of `length` bytes of `fd` at `offset`, MAP_SHARED, as the kernel maps it.

    Python's mmap refuses a length past the end of a file (ValueError); the kernel does
    not, and an access past the end then raises SIGBUS. The daemon answers with such a
    file where an access must fault (a GEM mmap of a foreign dma-buf import, as xe's):
    map it as mmap(2) would, over a placeholder of the right size that the returned
    object unmaps when closed.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size >= offset + length:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
    placeholder = mmap.mmap(-1, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    address = _address_of(placeholder)
    done = _libc.mmap(address, length, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, offset)
    if done in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        placeholder.close()
        raise OSError(err, os.strerror(err))
    return placeholder
