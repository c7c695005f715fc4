"""sd_notify and socket activation, by hand: two environment variables and a datagram.

NOTIFY_SOCKET may name a path or, with a leading '@', an abstract address. LISTEN_FDS
counts descriptors from 3 up, meant for us only when LISTEN_PID is our pid.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3
_ACTIVATION_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to the service manager; False if there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


class ActivationError(Exception):
    pass


def listen_fds() -> list[socket.socket]:
    """The sockets systemd passed us (empty when not socket-activated)."""
    count = os.environ.get("LISTEN_FDS")
    if count is None:
        return []
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []  # meant for another process (we were forked past it)
    try:
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number") from None
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            raise ActivationError(f"fd {fd} is not an AF_UNIX SOCK_SEQPACKET socket")
        sockets.append(sock)
    return sockets


def scrub_environment() -> None:
    """Children we spawn must not think the activation or notify socket is theirs."""
    for name in (*_ACTIVATION_VARS, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
