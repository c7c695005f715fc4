"""What a zero-length read means on a SOCK_SEQPACKET socket.

recvmsg() returns no bytes both for an empty datagram, which any holder of the other
end may send, and once the other end is gone. Only the socket knows which: poll(2)
says POLLHUP when every copy of the other end is closed (or it was shut down both
ways: the kernel shows the two alike), POLLRDHUP when it was shut for sending only.
Taking an empty datagram for the end let any holder of an exported object's
descriptor release the object under every other holder. (poll costs no descriptor.)
"""

from __future__ import annotations

import enum
import select
import socket


class EmptyRead(enum.Enum):
    DATAGRAM = "an empty datagram"  # a message with nothing in it; more may follow
    SHUT = "the peer shut its sending side"  # nothing more can come; it may still be there
    GONE = "the peer is gone"


def empty_read(sock: socket.socket) -> EmptyRead:
    """Why recvmsg() on `sock` just returned zero bytes and no descriptors."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)  # POLLHUP is reported whether asked or not
    events = 0
    for _fd, revents in poller.poll(0):
        events |= revents
    if events & select.POLLHUP:
        return EmptyRead.GONE
    if events & select.POLLRDHUP:
        return EmptyRead.SHUT
    return EmptyRead.DATAGRAM
