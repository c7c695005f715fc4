"""sd_notify, socket activation and the watchdog, by hand: a few environment variables
and a datagram (as gunicorn does; no dependency on an unmaintained binding).

NOTIFY_SOCKET may name a path or, with a leading '@', an abstract address. LISTEN_FDS
counts descriptors from 3 up, meant for us only when LISTEN_PID is our pid. WATCHDOG_USEC
asks for WATCHDOG=1 at least that often, when WATCHDOG_PID (if set) is our pid.
Processes the daemon spawns must see none of these: give them `child_environment()`.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3
ACTIVATION_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# everything systemd hands the service itself and no child of it may inherit
SERVICE_MANAGER_VARS = (*ACTIVATION_VARS, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


_notify_sock: socket.socket | None = None


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to the service manager; False if there is none,
    or it could not be told. Never raises: the pings must go on when the daemon is out
    of descriptors, so the socket is made once (at READY=1) and kept, and a failure to
    make it is only tried again at the next message."""
    global _notify_sock
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        if _notify_sock is None:
            _notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            atexit.register(_notify_sock.close)  # kept to the end, closed, not dropped
        _notify_sock.sendto(message.encode(), address)
    except (OSError, ValueError):  # ValueError: a message that cannot be encoded
        return False
    return True


def notify_enabled() -> bool:
    """Is there a service manager listening for our notifications?"""
    return bool(os.environ.get("NOTIFY_SOCKET"))


class ActivationError(Exception):
    """The service manager passed something we cannot serve on (an operator's mistake)."""


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
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"fd {fd} from LISTEN_FDS: {exc.strerror}") from exc
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            raise ActivationError(f"fd {fd} is not an AF_UNIX SOCK_SEQPACKET socket")
        sockets.append(sock)
    return sockets


def forget_activation() -> None:
    """Drop LISTEN_* once the sockets are ours (sd_listen_fds' unset_environment)."""
    for name in ACTIVATION_VARS:
        os.environ.pop(name, None)


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC); None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog watches another process
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) without the service manager's variables: pass it as `env=`
    to anything the daemon spawns, so a child never answers for the daemon (a READY=1 or
    a watchdog ping from a child would lie) nor takes the daemon's listening socket."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in SERVICE_MANAGER_VARS}
