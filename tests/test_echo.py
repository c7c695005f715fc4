"""The echo server the benchmarks and the load tool compare the daemon with: a client
that dies mid-exchange must not take it down (the load tool's prober does, on Ctrl-C)."""

from __future__ import annotations

import select
import socket

import msgpack
import pytest

from clients.echo import EchoServer


def _reset_mid_exchange(path: str) -> None:
    """Send one datagram and close without reading its echo: closing with unread data
    makes the kernel report ECONNRESET to the server instead of a plain end of file."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    sock.send(b"ping")
    assert select.select([sock], [], [], 10)[0]  # the echo waits unread in our queue
    sock.close()


@pytest.mark.parametrize("in_trio", [False, True], ids=["blocking", "trio"])
def test_echo_server_outlives_a_reset_connection(tmp_path, in_trio):
    server = EchoServer(str(tmp_path / "echo.sock"), in_trio=in_trio)
    try:
        for _ in range(3):
            _reset_mid_exchange(server.path)
        client = server.connect()
        try:
            assert client.round_trip() > 0  # a later client is still served
        finally:
            client.close()
        assert server.process.poll() is None
    finally:
        server.stop()


def test_the_msgpack_floor_answers_each_request_under_its_id(tmp_path):
    """The floor `xec bench rtt` prints is a real exchange: the reply it was given, under
    the id of the request it unpacked."""
    reply = {"name": "xe", "version_major": 1}
    server = EchoServer(str(tmp_path / "floor.sock"), reply=msgpack.packb(reply))
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with sock:
            sock.connect(server.path)
            for request_id in (7, 0xFFFF_FFFF):
                sock.send(msgpack.packb([request_id, 0, {}]))
                assert msgpack.unpackb(sock.recv(65536)) == [request_id, 0, reply]
        client = server.connect()
        try:
            assert client.round_trip() > 0  # its own client packs and unpacks
        finally:
            client.close()
    finally:
        server.stop()


def test_the_design_floor_serves_connections_at_once_each_under_its_ids(tmp_path):
    """The design floor is a real trio server: two connections open at once are each
    answered the fixed reply under their own request ids, and its client matches them."""
    reply = {"name": "xe", "version_major": 1}
    server = EchoServer.design_floor(str(tmp_path / "design.sock"), msgpack.packb(reply))
    try:
        socks = [socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
        for sock in socks:
            sock.settimeout(10)
            sock.connect(server.path)
        for ids in ((3, 4), (0xFFFF_FFFF, 0xFFFF_FFFE)):
            for sock, request_id in zip(socks, ids, strict=True):  # both sent before either is read
                sock.send(msgpack.packb([request_id, 0, {}]))
            for sock, request_id in zip(socks, ids, strict=True):
                assert msgpack.unpackb(sock.recv(65536)) == [request_id, 0, reply]
        for sock in socks:
            sock.close()
        client = server.connect()
        try:
            for _ in range(3):  # ids 1, 2, 3, each matched to its reply
                assert client.round_trip() > 0
        finally:
            client.close()
    finally:
        server.stop()
