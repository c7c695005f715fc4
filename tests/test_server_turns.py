"""The daemon's reader gives the other tasks their turn, and a cancel ends it, even when
a client never lets its socket run dry.

These run the daemon's own Connection and XeDevice in trio, in this process, over a real
socketpair filled with real requests before the reader starts: the only way to make
"the socket never ran dry" certain rather than likely. Nothing is mocked.
"""

from __future__ import annotations

import socket

import trio

from protocols import PROTOCOL_VERSION, Op, encode_request
from protocols import messages as m
from xed.config import Config
from xed.connection import Connection
from xed.device.device import XeDevice

QUEUED = 200  # requests waiting before the reader starts


def _filled_socketpair() -> tuple[socket.socket, socket.socket]:
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (client, server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.send(encode_request(1, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm")))
    for request_id in range(2, 2 + QUEUED):
        client.send(encode_request(request_id, Op.VERSION, m.DrmVersion()))
    server.setblocking(False)
    client.setblocking(False)
    return client, server


def _replies(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


async def test_queued_requests_let_other_tasks_run_between_them() -> None:
    device = XeDevice(Config())
    client, server = _filled_socketpair()
    turns = 0
    answered = 0

    async def other_task() -> None:
        nonlocal turns, answered
        while answered < QUEUED + 1:  # HELLO's reply, then every VERSION's
            await trio.lowlevel.checkpoint()
            turns += 1
            answered += _replies(client)

    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        nursery.start_soon(Connection(device, server, 1).run)
        await other_task()
        nursery.cancel_scope.cancel()
    client.close()
    # one turn per request at least: the reader never had to wait for any of them
    assert turns >= QUEUED, turns


async def test_a_cancel_ends_the_reader_with_requests_still_queued() -> None:
    device = XeDevice(Config())
    client, server = _filled_socketpair()
    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        connection = Connection(device, server, 1)
        nursery.start_soon(connection.run)
        while not _replies(client):  # the reader is serving
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    client.close()
    (version,) = [op for op in device.ioctl_stats.report() if op.op == "VERSION"]
    assert version.count < QUEUED  # it stopped; it did not serve the queue to its end first
    assert server.fileno() == -1  # and released the connection's socket
    assert not device.files  # and its file
