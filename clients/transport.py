"""A blocking SOCK_SEQPACKET connection that carries descriptors beside each datagram."""

from __future__ import annotations

import errno
import grp
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from protocols import MAX_DATAGRAM, MAX_FDS, pack_fds, unpack_fds
from protocols.cli import connect_failure, connect_timeout, socket_path

ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)  # room for the most descriptors a message carries
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)  # a plain int: an IntFlag costs a conversion per call
_BACKLOG_PAUSE = 0.01  # seconds between two connects while the daemon's backlog is full


def default_socket_path() -> Path:
    """The daemon's socket when the caller names none: $XED_SOCKET, else the default."""
    return socket_path(None)


def _group_of(path: Path) -> str | None:
    """The group that may connect: the socket's, or its directory's if we cannot see in."""
    for where in (path, path.parent):
        try:
            gid = os.stat(where).st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return None


def unreachable(
    code: int, path: str | os.PathLike[str], timeout: float | None = None
) -> OSError:
    """The OSError of `code` (FileNotFoundError, PermissionError, TimeoutError...) whose
    filename is the socket path and whose strerror says what to check."""
    group = _group_of(Path(path)) if code in (errno.EACCES, errno.EPERM) else None
    return OSError(code, connect_failure(code, group, timeout), os.fspath(path))


def unpack_received(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, ...]:
    """The descriptors a reply's ancillary data carries (anything else in it is dropped)."""
    fds, _junk = unpack_fds(ancdata)
    return tuple(fds)


class SeqpacketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def connect(
        cls, path: str | os.PathLike[str], timeout: float | None = None
    ) -> SeqpacketTransport:
        """Connect to `path`, waiting at most `timeout` seconds ($XED_TIMEOUT, else 5)
        while the listener's backlog is full; a failure raises `unreachable()`'s error."""
        wait = connect_timeout(timeout)
        deadline = time.monotonic() + wait
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)  # a full backlog would block a blocking connect for good
        try:
            while True:
                try:
                    sock.connect(os.fspath(path))
                    break
                except BlockingIOError:  # EAGAIN: nobody accepts, the backlog is full
                    if time.monotonic() >= deadline:
                        raise unreachable(errno.ETIMEDOUT, path, wait) from None
                    time.sleep(_BACKLOG_PAUSE)
                except OSError as exc:
                    raise unreachable(exc.errno or errno.EIO, path) from exc
        except BaseException:
            sock.close()
            raise
        sock.setblocking(True)
        return cls(sock)

    def exchange(self, data: bytes, fds: Sequence[int] = ()) -> tuple[bytes, tuple[int, ...]]:
        """Send one datagram (with `fds`), then recv() the first one back: a request and
        its reply, nearly always. One call where a send and a receive through the
        client's layers were a twentieth of its round trip."""
        if fds:
            self.sock.sendmsg([data], pack_fds(fds))
        else:  # most requests: send() is the cheaper call
            self.sock.send(data)
        self.bytes_sent += len(data)
        return self.recv()

    def recv(self) -> tuple[bytes, tuple[int, ...]]:
        """One datagram and the descriptors that came with it (b"" at EOF)."""
        data, ancdata, _flags, _ = self.sock.recvmsg(MAX_DATAGRAM, ANC_SPACE, RECV_FLAGS)
        self.bytes_received += len(data)
        if not ancdata:  # most replies
            return data, ()
        return data, unpack_received(ancdata)

    def close(self) -> None:
        self.sock.close()
