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


class EchoServer:
    """The echo server in a process of its own, listening at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clients.echo", path], stdout=subprocess.PIPE, text=True
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class EchoClient:
    def __init__(self, path: str, payload: bytes = b"\x93\x01\x00\x80") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(path)
        self.payload = payload  # the size of a VERSION request

    def round_trip(self) -> float:
        """One send and its echo; seconds taken."""
        start = time.perf_counter()
        self.sock.send(self.payload)
        self.sock.recv(65536)
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def serve(path: str) -> None:
    """Echo each connection until it closes, one connection at a time, until killed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.send(data)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
