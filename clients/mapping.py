"""A CPU mapping of device memory: a real shared mmap of the descriptor the daemon sent."""

from __future__ import annotations

import mmap
import os
import stat
import threading
from types import TracebackType

from protocols.constants import PROT_READ, PROT_WRITE
from protocols.words import Words

from .unplug import buffer_address, shared_over, zero_pages


class Mapping:
    """Shared memory mapped from a fake offset of the DRM file.

    Index and slice it like a bytearray; `address` is where it lives in this process,
    and `user_address(offset)` names a byte of it the way ioctls taking a user pointer
    (WAIT_USER_FENCE, VM_BIND user fences) expect.
    """

    def __init__(
        self, mm: mmap.mmap, fake_offset: int, length: int, prot: int = PROT_READ | PROT_WRITE
    ) -> None:
        self.mm = mm
        self.fake_offset = fake_offset
        self.length = length
        self.prot = prot
        self.address = buffer_address(mm)
        self.words = Words(mm)
        self.inherited = True  # by a forked child (False once MADV_DONTFORK)
        # held while the device's unplug puts zero pages under it (unplug.py)
        self.guard: threading.Lock | None = None

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

    def zap(self) -> None:
        """The device is unplugged: private zero pages under the whole mapping, at the
        same address (the kernel's dummy page). The caller holds `guard`."""
        if not self.mm.closed:
            zero_pages(self.address, len(self.mm), self.prot)

    def close(self) -> None:
        if self.guard is None:
            self._close()
        else:
            with self.guard:  # never unmapped while the unplug maps over it
                self._close()

    def _close(self) -> None:
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


def map_shared(fd: int, length: int, prot: int, offset: int = 0) -> mmap.mmap:
    """mmap(2) of `length` bytes of `fd` at `offset`, MAP_SHARED, as the kernel maps it.

    Python's mmap refuses a length past the end of a file (ValueError); the kernel does
    not, and an access past the end then raises SIGBUS. The daemon answers with such a
    file where an access must fault (a GEM mmap of a foreign dma-buf import, as xe's;
    VRAM outside a small BAR): map it as mmap(2) would, over a placeholder of the right
    size that the returned object unmaps when closed.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size >= offset + length:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
    placeholder = mmap.mmap(-1, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        shared_over(buffer_address(placeholder), length, prot, fd, offset)
    except OSError:
        placeholder.close()
        raise
    return placeholder
