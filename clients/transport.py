"""A blocking SOCK_SEQPACKET connection that carries descriptors beside each datagram."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from protocols import MAX_DATAGRAM, MAX_FDS, pack_fds, unpack_fds

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)


def default_socket_path() -> Path:
    """Where `xed serve` listens by default; $XED_SOCKET overrides it."""
    if "XED_SOCKET" in os.environ:
        return Path(os.environ["XED_SOCKET"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "xed" / "xed.sock"
    return Path("/run/xed/xed.sock")


class SeqpacketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def connect(cls, path: str | os.PathLike[str]) -> SeqpacketTransport:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if fds:
            self.sock.sendmsg([data], pack_fds(fds))
        else:  # most requests: send() is the cheaper call
            self.sock.send(data)
        self.bytes_sent += len(data)

    def recv(self) -> tuple[bytes, list[int]]:
        """One datagram and the descriptors that came with it (b"" at EOF)."""
        data, ancdata, _flags, _ = self.sock.recvmsg(
            MAX_DATAGRAM, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
        )
        fds, _junk = unpack_fds(ancdata)
        self.bytes_received += len(data)
        return data, fds

    def close(self) -> None:
        self.sock.close()
