"""Failures as an ioctl reports them: an OSError carrying the kernel's errno."""

from __future__ import annotations

import os


class XeError(OSError):
    """An ioctl the daemon refused. `errno` is the kernel's; `detail` says why."""

    def __init__(self, errno: int, op: str, detail: str = "") -> None:
        super().__init__(errno, os.strerror(errno))
        self.op = op
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.op}: [Errno {self.errno}] {self.strerror}"
        return f"{text} ({self.detail})" if self.detail else text


class DaemonGone(ConnectionError):
    """The daemon (or the aux driver) is gone: it closed the connection, died with our
    request unread (a reset), could not be written to (a broken pipe), or sent something
    that is not the protocol. The one error a caller sees for all of these; the
    connection is useless afterwards. It is a ConnectionError, so an OSError too."""


class NotCpuVisible(MemoryError):
    """A CPU mapping every access of which the kernel answers with SIGBUS: VRAM outside
    the CPU-visible part (a BO created without NEEDS_VISIBLE_VRAM on a small-BAR
    device). A C program gets that mapping, and the signal; the Python library refuses
    to map it, since the first touch would kill the interpreter."""
