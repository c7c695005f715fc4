"""How a handler refuses an ioctl: an errno and a message, as XE_IOCTL_DBG() logs."""

from __future__ import annotations

from protocols.constants import FAULT_TYPE_NOT_PRESENT


class IoctlError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


def refuse_if(condition: object, errno: int, message: str) -> None:
    """Fail the ioctl with `errno` when `condition` holds (the kernel's XE_IOCTL_DBG)."""
    if condition:
        raise IoctlError(errno, message)


class GpuFault(Exception):
    """The device touched a GPU address with nothing behind it, or ran something it
    cannot. `page` is the page fault's FAULT_TYPE_* where the page tables refused the
    access (a write: `write`), None for anything else (a runaway batch): VM_GET_PROPERTY
    reports the first kind only."""

    def __init__(
        self,
        address: int,
        reason: str = "unmapped address",
        *,
        page: int | None = None,
        write: bool = False,
    ) -> None:
        super().__init__(f"{reason} at {address:#x}")
        self.address = address
        self.reason = reason
        self.page = page
        self.write = write


class Unbound(GpuFault):
    """The GPU address is a hole: no VMA holds it."""

    def __init__(self, address: int, write: bool = False) -> None:
        super().__init__(address, page=FAULT_TYPE_NOT_PRESENT, write=write)
