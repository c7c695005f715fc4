"""Host memory: ordinary memory of the application that the device can reach (userptr).

It is a memfd the library maps and registers with the daemon once per connection,
sealed so that it never shrinks under the daemon's mapping (the daemon refuses memory
that could, see protocols.memfd). Use
it like a bytearray; bind parts of it into a VM with MAP_USERPTR. Nothing is pinned:
when the application frees or replaces part of it, `free()` and `replace()` play the MMU
notifier, telling the daemon before the pages change (so the device waits) and after
(so every userptr over them revalidates, or faults if they are gone).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import TYPE_CHECKING

from protocols import Op
from protocols import messages as m
from protocols.constants import HOST_INVALIDATE_END_FREED as INVALIDATE_END_FREED
from protocols.constants import HOST_INVALIDATE_END_REPLACED as INVALIDATE_END_REPLACED
from protocols.constants import HOST_INVALIDATE_START as INVALIDATE_START
from protocols.constants import PAGE_SIZE

from .mapping import Mapping

if TYPE_CHECKING:
    from .device import Device

# never resized, and no seal added later (a write seal would stop the aux driver mapping it)
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class HostMemory:
    def __init__(self, dev: Device, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError("host memory is a whole number of pages")
        self.dev = dev
        self.size = size
        fd = os.memfd_create("xed-host-memory", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # the daemon and the aux driver map it too: it may never shrink under them
            # (they would die of SIGBUS), and the daemon refuses it unless it cannot
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            reply, _ = dev.rpc.call(
                Op.HOST_MEMORY_REGISTER, m.XedHostMemoryRegister(size=size), [fd]
            )
            self.mapping = Mapping(fd, size, fake_offset=reply.offset)
        finally:
            os.close(fd)
        dev.track_mapping(self.mapping)
        self.base: int = reply.offset  # our user addresses, as the daemon names them

    def __getitem__(self, key: int | slice) -> int | bytes:
        return self.mapping[key]

    def __setitem__(self, key: int | slice, value: int | bytes) -> None:
        # mmap takes an int at an index and bytes at a slice; it checks the pairing itself
        self.mapping[key] = value  # type: ignore[index,assignment]

    def user_address(self, offset: int = 0) -> int:
        """What MAP_USERPTR's obj_offset takes for the byte at `offset`."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} outside host memory of {self.size} bytes")
        return self.base + offset

    def _notify(self, offset: int, length: int, event: int) -> None:
        self.dev.rpc.call(
            Op.HOST_MEMORY_INVALIDATE,
            m.XedHostMemoryInvalidate(addr=self.base + offset, length=length, event=event),
        )

    def replace(self, offset: int, data: bytes) -> None:
        """Put new contents under [offset, offset+len(data)), as a remap would."""
        self._notify(offset, len(data), INVALIDATE_START)
        try:
            self.mapping[offset : offset + len(data)] = data
        finally:
            self._notify(offset, len(data), INVALIDATE_END_REPLACED)

    def free(self, offset: int, length: int) -> None:
        """Give the pages back (page aligned): a userptr over them can never read them."""
        if offset % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("free whole pages")
        self._notify(offset, length, INVALIDATE_START)
        try:
            self.mapping.madvise(mmap.MADV_REMOVE, offset, length)  # the pages are gone
        finally:
            self._notify(offset, length, INVALIDATE_END_FREED)
