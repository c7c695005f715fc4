"""How a handler refuses an ioctl: an errno and a message, as XE_IOCTL_DBG() logs."""

from __future__ import annotations


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
    """The device touched a GPU address with nothing behind it."""

    def __init__(self, address: int, reason: str = "unmapped address") -> None:
        super().__init__(f"{reason} at {address:#x}")
        self.address = address
        self.reason = reason


class Unbound(GpuFault):
    """The GPU address is a hole: no VMA holds it."""

    def __init__(self, address: int) -> None:
        super().__init__(address)
