"""Blocking requests a client pipelines without reading the answers.

Each blocking request (SYNCOBJ_WAIT, WAIT_USER_FENCE, SYNCOBJ_EVENTFD_WAIT, ...) runs in
a task of its own, which keeps its reply until the client reads it. A connection has at
most limits.fence_waits + BLOCKING_HEADROOM of them under way: past that the daemon stops
reading it until one ends, as a thread's next ioctl waits for its last. So a client that
sends them and never reads parks a bounded number of tasks (before, 80,000 took the
daemon from 35 to 529 MB), and once it reads, every request is answered.
"""

from __future__ import annotations

import os
import socket
import threading
from errno import EINVAL
from typing import Any

import pytest
from conftest import baseline
from test_lent_per_uid import hello
from test_mmio import wait_until

from clients import Device
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from xed.connection import BLOCKING_HEADROOM

TIMEOUT = 10.0
FENCE_WAITS = 4
CAP = FENCE_WAITS + BLOCKING_HEADROOM
SENT = 10_000  # each parked with its reply was ~5 KiB of the daemon's: ~50 MB unbounded
GROWTH = 16 << 20  # what the daemon may grow by meanwhile, well above CAP tasks' cost

# blocking ops answered at once: nothing to wait for (0); no registration (EINVAL)
ANSWERED_AT_ONCE = {
    "syncobj_wait": (
        Op.SYNCOBJ_WAIT,
        m.DrmSyncobjWait(
            handles=(), timeout_nsec=0, flags=0, first_signaled=0, pad=0, deadline_nsec=0
        ),
        0,
    ),
    "syncobj_eventfd_wait": (Op.SYNCOBJ_EVENTFD_WAIT, m.Empty(), EINVAL),
}


def _rss(daemon: DaemonProcess) -> int:
    with open(f"/proc/{daemon.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _blocking(adm: Device, pid: int) -> int:
    (info,) = [c for c in adm.admin_clients() if c.pid == pid and c.role == "drm"]
    blocking: int = info.blocking
    return blocking


@pytest.mark.parametrize("name", sorted(ANSWERED_AT_ONCE))
def test_blocking_requests_never_read_stop_the_reading_at_the_cap(
    make_daemon: Any, name: str
) -> None:
    op, args, expected = ANSWERED_AT_ONCE[name]
    daemon = make_daemon(f"[limits]\nfence_waits = {FENCE_WAITS}\n")
    before = baseline(daemon)
    rss_before = _rss(daemon)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(TIMEOUT)
    sock.connect(str(daemon.socket_path))
    hello(sock)
    ids = range(2, 2 + SENT)
    failed: list[BaseException] = []

    def send_all() -> None:  # blocks once the daemon stops reading, until we read
        try:
            for request_id in ids:
                sock.send(encode_request(request_id, op, args))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failed.append(exc)

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        with Device.open(daemon.socket_path, role="admin") as adm:
            # the replies fill our socket, their tasks wait for room, and the daemon
            # stops reading at the cap rather than take all SENT
            wait_until(lambda: _blocking(adm, os.getpid()) == CAP, "the cap to be reached")
            assert sender.is_alive(), "the daemon read every request"
            assert _rss(daemon) - rss_before < GROWTH
            assert _blocking(adm, os.getpid()) == CAP  # and it stays there: we read nothing
            pending = {request_id: op for request_id in ids}
            answered: list[int] = []
            while pending:
                reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), pending)
                assert isinstance(reply, Reply)
                del pending[reply.id]  # each answered once
                answered.append(reply.errno)
            sender.join(TIMEOUT)
            assert not sender.is_alive() and not failed, failed
            assert answered == [expected] * SENT
            assert _blocking(adm, os.getpid()) == 0
    finally:
        sock.close()
        sender.join(TIMEOUT)
    wait_until(lambda: baseline(daemon) == before, "the daemon to let everything go")
