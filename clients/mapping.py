"""A CPU mapping of device memory: a real shared mmap of the descriptor the daemon sent."""

from __future__ import annotations

import ctypes
import mmap
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
