"""Passing descriptors between client processes, without the daemon.

Two processes that want to share a dma-buf (or, later, a VM fd) set up a Unix socket
between themselves (a socketpair before fork, or a listening socket) and use these to
send a small message with descriptors attached (SCM_RIGHTS). The receiver owns what it
receives and must close it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from protocols import pack_fds, unpack_fds

MAX_MESSAGE = 4096
MAX_FDS = 16


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair for a parent and the child it forks or spawns."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send_fds(sock: socket.socket, message: bytes, fds: Sequence[int]) -> None:
    """Send `message` with copies of `fds` attached; our own descriptors stay open."""
    sock.sendmsg([message or b"\0"], pack_fds(fds))


def recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one message and the descriptors that came with it (close-on-exec)."""
    data, ancdata, flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds, junk = unpack_fds(ancdata)
    if junk or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise OSError("descriptors were lost in transit (too many, or malformed)")
    return data, fds
