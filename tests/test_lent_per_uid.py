"""Descriptors lent to blocking requests, counted per uid across all its connections.

A blocking request with a descriptor (a foreign dma-buf's DMA_BUF_LLSEEK, ...) keeps it,
and a copy, in the daemon's table until its peer answers or PEER_TIMEOUT passes. Each
connection parks at most LENT_IN_FLIGHT of them; one uid, over all its connections, at
most [limits] lent_descriptors_per_uid: past that the request is refused at once with
EMFILE, so a uid that opens many connections cannot fill the table every other uid's
requests need.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from errno import EINVAL, EMFILE
from typing import Any

from conftest import baseline
from helpers import NobodyChild, needs_root, open_to_nobody
from test_vm_export import settle_to

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import (
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    Op,
    Reply,
    decode_incoming,
    encode_request,
    pack_fds,
)
from protocols import messages as m
from protocols.constants import PAGE_SIZE, SEEK_END
from xed.connection import LENT_IN_FLIGHT

TIMEOUT = 10.0
NOFILE = 256
CONNECTIONS = 16  # each parks LENT_IN_FLIGHT: on the old code, past NOFILE
LENT = 32  # [limits] lent_descriptors_per_uid, below its default (64)


def _outq(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
    value: int = struct.unpack("i", raw)[0]
    return value


@contextlib.contextmanager
def parked(daemon: DaemonProcess, connections: int, each: int) -> Iterator[list[socket.socket]]:
    """`connections` connections of ours, each with `each` DMA_BUF_LLSEEK sent on a
    socket whose peer never answers, all read by the daemon (parked or refused)."""
    silent, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socks: list[socket.socket] = []
    try:
        seek = m.DmaBufLlseek(offset=0, whence=SEEK_END)
        for _ in range(connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            socks.append(sock)
            sock.settimeout(TIMEOUT)
            sock.connect(str(daemon.socket_path))
            hello(sock)
            for i in range(each):
                request = encode_request(i + 2, Op.DMA_BUF_LLSEEK, seek)
                sock.sendmsg([request], pack_fds([silent.fileno()]))
        for sock in socks:  # the daemon read every request: parked, or answered
            poll(lambda sock=sock: _outq(sock) == 0)  # type: ignore[misc]
        yield socks
    finally:
        for sock in socks:
            sock.close()
        silent.close()
        kept.close()


def poll(check: Callable[[], bool]) -> None:
    """Bounded polling for what the daemon does on its own schedule."""
    for _ in range(1000):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("never happened")


def hello(sock: socket.socket) -> None:
    sock.sendmsg([encode_request(1, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm"))])
    sock.recv(MAX_DATAGRAM)


def _victim(path: str) -> Callable[[Callable[[Any], None], Callable[[], None]], None]:
    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        try:
            with Device.open(path) as dev:
                bo = dev.gem_create(PAGE_SIZE)
                with dev.mmap_bo(bo) as cpu:
                    cpu[0:4] = b"mine"
                os.close(dev.prime_handle_to_fd(bo))
            report({"errno": 0})
        except (OSError, XeError) as exc:
            report({"errno": getattr(exc, "errno", -1)})

    return work


def test_one_uid_parking_requests_on_many_connections_leaves_other_uids_served(
    make_daemon: Any,
) -> None:
    """A uid whose many connections each park LENT_IN_FLIGHT blocking requests holding a
    descriptor cannot take the daemon's table from another uid: that uid still creates,
    maps and exports a BO meanwhile, and everything is let go after."""
    needs_root()
    daemon = make_daemon("[limits]\ndescriptor_reserve = 16\n", nofile=NOFILE)
    name = open_to_nobody(daemon)
    before = baseline(daemon)
    with parked(daemon, CONNECTIONS, LENT_IN_FLIGHT + 1):
        child = NobodyChild(daemon.socket_path, _victim(name))
        try:
            assert child.report() == {"errno": 0}
        finally:
            assert child.join() == 0
    assert settle_to(daemon, before) == before


def test_blocking_request_past_the_uids_lent_limit_is_emfile(make_daemon: Any) -> None:
    """With limits.lent_descriptors_per_uid descriptors lent by a uid's blocking
    requests, one more, on any of its connections, is answered EMFILE at once; the
    connection goes on, and once they end the uid's blocking requests are served again."""
    daemon = make_daemon(f"[limits]\nlent_descriptors_per_uid = {LENT}\n", nofile=4096)
    before = baseline(daemon)
    full = LENT // LENT_IN_FLIGHT
    with parked(daemon, full, LENT_IN_FLIGHT):
        silent, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with silent, kept:
            seek = m.DmaBufLlseek(offset=0, whence=SEEK_END)
            last = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with last:
                last.settimeout(TIMEOUT)
                last.connect(str(daemon.socket_path))
                hello(last)
                request = encode_request(7, Op.DMA_BUF_LLSEEK, seek)
                last.sendmsg([request], pack_fds([silent.fileno()]))
                reply = decode_incoming(last.recv(MAX_DATAGRAM), (), {7: Op.DMA_BUF_LLSEEK})
                assert isinstance(reply, Reply)
                assert (reply.id, reply.errno) == (7, EMFILE)
                assert f"has {LENT} blocking requests" in reply.result.message
                # the connection goes on: a request without descriptors is answered
                last.sendmsg([encode_request(8, Op.VERSION, m.DrmVersion())])
                reply = decode_incoming(last.recv(MAX_DATAGRAM), (), {8: Op.VERSION})
                assert isinstance(reply, Reply) and (reply.id, reply.errno) == (8, 0)
    assert settle_to(daemon, before) == before
    # every lent descriptor was given back: the uid's next blocking request is served
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as again:
        again.settimeout(TIMEOUT)
        again.connect(str(daemon.socket_path))
        hello(again)
        memfd = os.memfd_create("not-a-dma-buf")
        try:
            request = encode_request(
                9, Op.DMA_BUF_LLSEEK, m.DmaBufLlseek(offset=0, whence=SEEK_END)
            )
            again.sendmsg([request], pack_fds([memfd]))
        finally:
            os.close(memfd)
        reply = decode_incoming(again.recv(MAX_DATAGRAM), (), {9: Op.DMA_BUF_LLSEEK})
        assert isinstance(reply, Reply) and (reply.id, reply.errno) == (9, EINVAL)
