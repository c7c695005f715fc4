"""Words in memory shared between processes, each read and written in one access.

`struct.pack_into` is not a store: it zeroes the destination first and then writes the
value (and the "<" formats go byte by byte), so a process watching the same word (the
device looking at a barrier page, a waiter reading a user fence) can see 0 or half a
value, and two racing writers can merge into a number nobody wrote. A memoryview cast
to "I" or "Q" copies each item with one aligned 4- or 8-byte access on the
little-endian hosts xed runs on; every word of shared memory goes through one.
Unaligned words are copied as bytes: no atomicity there, as on hardware.
"""

from __future__ import annotations

import sys

if sys.byteorder != "little":  # pragma: no cover - the wire and memory layout assume it
    raise ImportError("xed needs a little-endian host")


class Words:
    """32- and 64-bit words of a buffer (an mmap) at any byte offset; aligned ones are
    single accesses. It holds the buffer exported: call release() before closing it."""

    __slots__ = ("raw", "u32", "u64")
    raw: memoryview
    u32: memoryview
    u64: memoryview

    def __init__(self, buffer: object) -> None:
        self.raw = memoryview(buffer)  # type: ignore[arg-type]  # any buffer-protocol object
        size = len(self.raw)
        self.u32 = self.raw[: size - size % 4].cast("I")
        self.u64 = self.raw[: size - size % 8].cast("Q")

    def load_u32(self, offset: int) -> int:
        if offset & 3:
            return int.from_bytes(self.raw[offset : offset + 4], "little")
        value: int = self.u32[offset >> 2]
        return value

    def store_u32(self, offset: int, value: int) -> None:
        if offset & 3:
            self.raw[offset : offset + 4] = value.to_bytes(4, "little")
        else:
            self.u32[offset >> 2] = value

    def load_u64(self, offset: int) -> int:
        if offset & 7:
            return int.from_bytes(self.raw[offset : offset + 8], "little")
        value: int = self.u64[offset >> 3]
        return value

    def store_u64(self, offset: int, value: int) -> None:
        if offset & 7:
            self.raw[offset : offset + 8] = value.to_bytes(8, "little")
        else:
            self.u64[offset >> 3] = value

    def release(self) -> None:
        self.u32.release()
        self.u64.release()
        self.raw.release()
