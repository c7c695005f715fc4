"""A raw SOCK_SEQPACKET echo server in Python: the baseline the daemon is compared with.

No codec, no event loop, no work: a blocking recv and a send. `xec bench rtt` times a
round trip through it beside a daemon ioctl; `xec load barrier` probes it beside the
daemon under the same load, to show what the machine alone does to a round trip.
Kept to the bare loop on purpose: anything added here makes the daemon look better.

With a `reply`, it is the msgpack floor instead: the server unpacks each request and
packs that reply under the request's id, and its client packs each request and unpacks
the answer. Nothing is checked, dispatched or built: what the wire format alone costs
in Python, the least any daemon speaking it could add to the echo.

With both (`design_floor()`), it is the design floor: the least any daemon built on trio
and speaking this protocol can cost. The server serves every connection at once, each
in a trio task that reads its socket exactly as the daemon's reader does (recvmsg with
room for descriptors, parking in trio on EAGAIN, one scheduler turn before a request that
was already waiting, so that no client starves the others), unpacks the request with
the daemon's limits and packs and sends a fixed reply under its id. Its client does what
the library cannot do without: a fresh request id, the request packed, the reply read
with room for descriptors, unpacked with the same limits and matched to its id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import msgpack
import trio

from protocols import MAX_DATAGRAM, MAX_FDS, Op, encode_request
from protocols import messages as m

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


class EchoServer:
    """The echo server in a process of its own, listening at `path`. With `trio`, the
    echo runs in a trio task reading the socket the way the daemon does (straight to the
    non-blocking socket, parking in trio on EAGAIN): the daemon's I/O without its work."""

    def __init__(
        self,
        path: str,
        in_trio: bool = False,
        own_session: bool = False,
        reply: bytes | None = None,
    ) -> None:
        self.path = path
        self.floor = reply is not None
        self.design = in_trio and reply is not None
        args = ["--trio"] if in_trio else []
        if reply is not None:
            args += ["--reply", reply.hex()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clients.echo", path, *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=own_session,  # as the daemon it stands in for may be
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the echo server did not start (status {self.process.wait()})")
        self.pid = self.process.pid

    @classmethod
    def design_floor(cls, path: str, reply: bytes) -> EchoServer:
        """The design floor's server, answering every request with `reply` (a packed
        map), to as many connections at once as connect."""
        return cls(path, in_trio=True, reply=reply)

    def connect(self) -> EchoClient:
        return EchoClient(self.path, self.floor, self.design)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class EchoClient:
    """A connection to the echo server that sends what a VERSION request is, byte for
    byte, so the echo and the daemon carry the same datagram. With `floor`, each request
    is packed and each answer unpacked, as any msgpack client must; with `design`, also
    read and matched as the library must (the design floor's client)."""

    def __init__(self, path: str, floor: bool = False, design: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(path)
        sock, payload = self.sock, encode_request(1, Op.VERSION, m.DrmVersion())
        pack, unpack = msgpack.Packer().pack, msgpack.unpackb

        def once() -> None:  # a closure over locals: the cheapest call Python has
            sock.send(payload)
            sock.recv(65536)

        def once_packed() -> None:
            sock.send(pack([1, Op.VERSION, {}]))
            unpack(sock.recv(65536))

        library_pack = msgpack.Packer(use_bin_type=True).pack
        request_id = 0

        def once_design() -> None:
            nonlocal request_id
            request_id = request_id % 0xFFFF_FFFF + 1
            sock.send(library_pack([request_id, Op.VERSION, {}]))
            data = sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE, _MSG_CMSG_CLOEXEC)[0]
            frame = unpack(data, max_ext_len=0, max_array_len=4096, max_map_len=4096)
            if frame[0] != request_id:
                raise RuntimeError(f"reply to {frame[0]}, not to {request_id}")

        self.once = once_design if design else once_packed if floor else once

    def round_trip(self) -> float:
        """One send and its echo; seconds taken."""
        start = time.perf_counter()
        self.once()
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def serve(path: str, in_trio: bool = False, reply: bytes | None = None) -> None:
    """Echo each connection until it closes, one connection at a time, until killed;
    with `reply` (a packed map), answer each request with it instead; with both, serve
    as the design floor (every connection at once) instead."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(128)
    print("ready", flush=True)
    if in_trio and reply is not None:
        listener.setblocking(False)
        trio.run(_design_floor, listener, msgpack.unpackb(reply))
    while True:
        conn, _ = listener.accept()
        # A client killed mid-exchange (the load tool's prober on Ctrl-C) resets the
        # connection: that ends it like a close, and the server waits for the next one.
        with conn, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            if reply is not None:
                _answer_packed(conn, msgpack.unpackb(reply))
            elif in_trio:
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


def _answer_packed(conn: socket.socket, body: object) -> None:
    pack, unpack = msgpack.Packer().pack, msgpack.unpackb
    while True:
        data = conn.recv(65536)
        if not data:
            return
        request_id, _op, _args = unpack(data)
        conn.send(pack([request_id, 0, body]))


async def _design_floor(listener: socket.socket, body: object) -> None:
    """Accept connections as the daemon does, each served by a task of its own."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            conn.setblocking(False)
            nursery.start_soon(_answer_in_trio, conn, body)


async def _answer_in_trio(conn: socket.socket, body: object) -> None:
    pack, unpack = msgpack.Packer(use_bin_type=True).pack, msgpack.unpackb
    with conn, contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while True:
                try:
                    data = conn.recvmsg(MAX_DATAGRAM + 1, _ANC_SPACE, _MSG_CMSG_CLOEXEC)[0]
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(conn)
                    parked = True
                    continue
                break
            if not parked:  # the daemon's turn for the others (xed/connection.py)
                await trio.lowlevel.cancel_shielded_checkpoint()
            if not data:
                return
            request_id = unpack(data, max_ext_len=0, max_array_len=4096, max_map_len=4096)[0]
            conn.send(pack([request_id, 0, body]))


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
    # Ctrl-C reaches the whole process group: the tool that started us stops us itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    flags = sys.argv[2:]
    reply = bytes.fromhex(flags[flags.index("--reply") + 1]) if "--reply" in flags else None
    serve(sys.argv[1], in_trio="--trio" in flags, reply=reply)
