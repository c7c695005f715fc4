"""Descriptors in flight: sent to a client in replies, not yet read by it.

The kernel counts the descriptors each user has in flight on AF_UNIX sockets (sent, not
yet received) and refuses more with ETOOMANYREFS once they pass the sender's
RLIMIT_NOFILE, unless the sender has CAP_SYS_RESOURCE or CAP_SYS_ADMIN
(too_many_unix_fds()). The sender of every reply is the daemon: run without those
capabilities, as the shipped unit runs it, one client that leaves its MMAP replies
unread would use up the budget every other client's replies need. So a connection, and
a uid across all its connections, may leave only so many descriptors unread
([limits] unread_descriptors, unread_descriptors_per_uid); past that, a reply that
would carry descriptors is refused with EMFILE instead and the client keeps its
connection.

What is unread: SIOCOUTQ on the daemon's end of a connection tells the bytes (skb
truesize) of the messages sent on it that the client has not read yet. They are read
in order, so the unread ones are the latest; and each message takes at least
max(its length, the truesize of a one-byte message). Hence a reply with descriptors is
read for sure once the bytes sent from it on, counted that way, exceed SIOCOUTQ. An
event left unread counts as the bytes it is, never as a descriptor.

What it costs: a reply without descriptors adds its length to a sum (only while a reply
with descriptors may be unread). A reply with descriptors compares two counts; the
kernel is asked (one ioctl) only when one of them would pass its limit, or every
SETTLE_EVERY replies, so that what a connection has read is not counted for long. When
the uid's count would pass its limit, the uid's other connections are asked too, at
most once every SWEEP_INTERVAL: a client that keeps asking past its limit costs the
daemon one ioctl a request, not one per connection it holds.

The ledger is the daemon's book of what each uid makes it hold over all its
connections: besides the descriptors in flight, its connections (limits.
connections_per_uid, counted by the accept loop) and the descriptors its blocking
requests have lent it (limits.lent_descriptors_per_uid), both in connection.py.
"""

from __future__ import annotations

import collections
import fcntl
import functools
import socket
import struct
import termios
import time

from .config import LimitsConfig

_OUTQ = struct.Struct("i")
_SIOCOUTQ = termios.TIOCOUTQ  # 0x5411, the same request for sockets


def outq(fd: int) -> int:
    """SIOCOUTQ: bytes sent on the socket and not yet read by its peer."""
    value: int = _OUTQ.unpack(fcntl.ioctl(fd, _SIOCOUTQ, bytes(_OUTQ.size)))[0]
    return value


@functools.cache
def smallest_truesize() -> int:
    """What a one-byte datagram costs in a socket's send queue on this kernel: no
    message costs less."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(b"\0")
        return max(outq(a.fileno()), 1)


SETTLE_EVERY = 64  # replies with descriptors between two looks at the send queue
SWEEP_INTERVAL = 0.01  # s: at most one look at all of a uid's connections in this time


class UnreadLedger:
    """What each client uid makes the daemon hold, against the limits: descriptors in
    flight, descriptors lent, connections."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.by_uid: collections.Counter[int] = collections.Counter()
        self.connections: dict[int, set[Unread]] = collections.defaultdict(set)
        self.swept: dict[int, float] = {}  # uid -> when its connections were last looked at
        self.smallest = smallest_truesize()
        # uid -> its blocking requests under way that hold a lent descriptor, over all
        # its connections (limits.lent_descriptors_per_uid): what it makes the daemon hold
        self.lent: collections.Counter[int] = collections.Counter()
        # uid -> its connections open now, each a descriptor of the daemon's table: from
        # accept to the end of the connection's task, however it ends
        self.connected: collections.Counter[int] = collections.Counter()

    def connect(self, uid: int) -> bool:
        """Count a new connection of `uid`; False, and nothing counted, if the uid has
        limits.connections_per_uid open already."""
        if self.connected[uid] >= self.limits.connections_per_uid:
            return False
        self.connected[uid] += 1
        return True

    def disconnect(self, uid: int) -> None:
        """A connection that connect() counted has ended."""
        left = self.connected[uid] - 1
        if left:
            self.connected[uid] = left
        else:
            del self.connected[uid]


class Unread:
    """The descriptors of one connection that its client may not have read yet."""

    __slots__ = ("_fd", "_ledger", "_pending", "_sent", "count", "uid")

    def __init__(self, ledger: UnreadLedger, fd: int, uid: int) -> None:
        self._ledger = ledger
        self._fd = fd
        self.uid = uid
        self.count = 0  # descriptors in _pending: while non-zero, every message is counted
        # bytes sent (each message counted as at least the smallest truesize) since
        # _pending was last empty, and the replies with descriptors sent meanwhile that
        # may be unread: (bytes sent before it, its descriptors), oldest first
        self._sent = 0
        self._pending: collections.deque[tuple[int, int]] = collections.deque()
        ledger.connections[uid].add(self)

    def refusal(self, fds: int) -> str | None:
        """Why a reply with `fds` descriptors may not be sent now, or None if it may."""
        ledger = self._ledger
        limits = ledger.limits
        if (
            self.count + fds <= limits.unread_descriptors
            and ledger.by_uid[self.uid] + fds <= limits.unread_descriptors_per_uid
            and len(self._pending) < SETTLE_EVERY
        ):
            return None
        self._settle()
        if self.count + fds > limits.unread_descriptors:
            return (
                f"{self.count} descriptors left unread on this connection "
                f"(limits.unread_descriptors = {limits.unread_descriptors})"
            )
        if ledger.by_uid[self.uid] + fds > limits.unread_descriptors_per_uid:
            self._sweep()
        by_uid = ledger.by_uid[self.uid]
        if by_uid + fds > limits.unread_descriptors_per_uid:
            return (
                f"{by_uid} descriptors left unread by uid {self.uid} "
                f"(limits.unread_descriptors_per_uid = {limits.unread_descriptors_per_uid})"
            )
        return None

    def sent(self, length: int, fds: int) -> None:
        """A message of `length` bytes with `fds` descriptors went out."""
        if fds:
            self._pending.append((self._sent, fds))
            self.count += fds
            self._ledger.by_uid[self.uid] += fds
        self._sent += max(length, self._ledger.smallest)

    def _settle(self) -> None:
        """Forget the replies the client has read for sure."""
        if not self._pending:
            return
        unread = outq(self._fd)
        pending = self._pending
        freed = 0
        while pending and self._sent - pending[0][0] > unread:
            freed += pending.popleft()[1]
        if freed:
            self.count -= freed
            self._ledger.by_uid[self.uid] -= freed
        if not pending:
            self._sent = 0

    def _sweep(self) -> None:
        """Settle every connection of the uid, unless that was done a moment ago."""
        ledger = self._ledger
        now = time.monotonic()
        if now - ledger.swept.get(self.uid, -SWEEP_INTERVAL) < SWEEP_INTERVAL:
            return
        ledger.swept[self.uid] = now
        for other in ledger.connections[self.uid]:
            other._settle()

    def release(self) -> None:
        """The connection is closed: what it left unread is freed with its socket."""
        ledger = self._ledger
        ledger.by_uid[self.uid] -= self.count
        if ledger.by_uid[self.uid] <= 0:
            del ledger.by_uid[self.uid]
        peers = ledger.connections[self.uid]
        peers.discard(self)
        if not peers:
            del ledger.connections[self.uid]
            ledger.swept.pop(self.uid, None)
        self.count = 0
        self._pending.clear()
