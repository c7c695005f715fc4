"""A CPU mapping of device memory: a real shared mmap of the descriptor the daemon sent."""

from __future__ import annotations

import mmap
import threading
import warnings

from protocols.constants import PROT_READ, PROT_WRITE
from protocols.words import Words

from .unplug import buffer_address, shared_over, zero_pages


class Mapping(mmap.mmap):
    """Shared memory mapped from a fake offset of the DRM file: an `mmap.mmap`.

    Being an mmap, it is a buffer: index and slice it like a bytearray, and hand it to
    `memoryview`, `struct.pack_into`, `numpy.frombuffer` and anything else that takes
    one. `address` is where it lives in this process, and `user_address(offset)` names
    a byte of it the way ioctls taking a user pointer (WAIT_USER_FENCE, VM_BIND user
    fences) expect. `read_u32`/`write_u32` (and u64) access one aligned word at once,
    as the device and other processes must see it; `close()` also lets go of the views
    those use (views you made yourself you release first, as with any mmap).

    It maps as mmap(2) does: past the end of the descriptor's file too, where an access
    raises SIGBUS (a GEM mapping of a foreign import on xe, VRAM outside a small BAR),
    which Python's own mmap refuses to map at all.
    """

    def __new__(
        cls,
        fd: int,
        length: int,
        prot: int = PROT_READ | PROT_WRITE,
        file_offset: int = 0,
        fake_offset: int = 0,
    ) -> Mapping:
        # a placeholder of the right size and protection (so Python refuses writes to a
        # read-only one), then the descriptor mapped over it in one step
        self = super().__new__(cls, -1, length, mmap.MAP_SHARED, prot)
        try:
            shared_over(buffer_address(self), length, prot, fd, file_offset)
        except OSError:
            mmap.mmap.close(self)
            raise
        return self

    def __init__(
        self,
        fd: int,
        length: int,
        prot: int = PROT_READ | PROT_WRITE,
        file_offset: int = 0,
        fake_offset: int = 0,
    ) -> None:
        self.fake_offset = fake_offset
        self.length = length
        self.prot = prot
        self.address = buffer_address(self)
        self.words = Words(self)
        self.inherited = True  # by a forked child (False once MADV_DONTFORK)
        # held while the device's unplug puts zero pages under it (unplug.py)
        self.guard: threading.Lock | None = None

    @property
    def mm(self) -> mmap.mmap:
        """The mapping itself (it was a separate mmap once). Deprecated: use the Mapping."""
        warnings.warn(
            "Mapping.mm is the Mapping itself now; use it directly",
            DeprecationWarning,
            stacklevel=2,
        )
        return self

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

    def zap(self) -> None:
        """The device is unplugged: private zero pages under the whole mapping, at the
        same address (the kernel's dummy page). The caller holds `guard`."""
        if not self.closed:
            zero_pages(self.address, self.length, self.prot)

    def close(self) -> None:
        if self.guard is None:
            self._close()
        else:
            with self.guard:  # never unmapped while the unplug maps over it
                self._close()

    def _close(self) -> None:
        if not self.closed:
            self.words.release()
            mmap.mmap.close(self)

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # mmap's own would close it without letting go of the word views first
        self.close()
