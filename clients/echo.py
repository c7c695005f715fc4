"""A raw SOCK_SEQPACKET echo server in Python: the baseline the daemon is compared with.

No codec, no event loop, no work: a blocking recv and a send. `xec bench rtt` times a
round trip through it beside a daemon ioctl; `xec load barrier` probes it beside the
daemon under the same load, to show what the machine alone does to a round trip.
Kept to the bare loop on purpose: anything added here makes the daemon look better.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import trio

from protocols import Op, encode_request
from protocols import messages as m


class EchoServer:
    """The echo server in a process of its own, listening at `path`. With `trio`, the
    echo runs in a trio task reading the socket the way the daemon does (straight to the
    non-blocking socket, parking in trio on EAGAIN): the daemon's I/O without its work."""

    def __init__(self, path: str, in_trio: bool = False, own_session: bool = False) -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clients.echo", path, *(["--trio"] if in_trio else [])],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=own_session,  # as the daemon it stands in for may be
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the echo server did not start (status {self.process.wait()})")
        self.pid = self.process.pid

    def connect(self) -> EchoClient:
        return EchoClient(self.path)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class EchoClient:
    """A connection to the echo server that sends what a VERSION request is, byte for
    byte, so the echo and the daemon carry the same datagram."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(path)
        sock, payload = self.sock, encode_request(1, Op.VERSION, m.DrmVersion())

        def once() -> None:  # a closure over locals: the cheapest call Python has
            sock.send(payload)
            sock.recv(65536)

        self.once = once

    def round_trip(self) -> float:
        """One send and its echo; seconds taken."""
        start = time.perf_counter()
        self.once()
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def serve(path: str, in_trio: bool = False) -> None:
    """Echo each connection until it closes, one connection at a time, until killed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        # A client killed mid-exchange (the load tool's prober on Ctrl-C) resets the
        # connection: that ends it like a close, and the server waits for the next one.
        with conn, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            if in_trio:
                conn.setblocking(False)
                trio.run(_echo_in_trio, conn)
            else:
                _echo_blocking(conn)


def _echo_blocking(conn: socket.socket) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.send(data)


async def _echo_in_trio(conn: socket.socket) -> None:
    while True:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(conn)
            continue
        if not data:
            return
        conn.send(data)  # a datagram this small always fits: never EAGAIN here


if __name__ == "__main__":
    serve(sys.argv[1], in_trio="--trio" in sys.argv[2:])
