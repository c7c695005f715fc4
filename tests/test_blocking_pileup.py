"""Blocking requests a client pipelines without reading the answers.

Each blocking request (SYNCOBJ_WAIT, WAIT_USER_FENCE, SYNCOBJ_EVENTFD_WAIT, ...) runs in
a task of its own, which keeps its reply until there is room for it in the client's
socket. While one waits, the daemon reads no further blocking request from that
connection, as it reads nothing while its own reply to a plain one waits. So a client
that sends them and never reads parks a task or two (before, a task per request: 80,000
took the daemon from 35 to 529 MB), and once it reads, every request is answered.
Requests that wait for something else (a fence, another process) do not stop the
reading: their own limits bound them (fence_waits, LENT_IN_FLIGHT, ...).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from errno import EINVAL, ENOMEM
from typing import Any

import pytest
from conftest import baseline
from helpers import next_reply
from test_aux_userptr import userptr_vm
from test_lent_per_uid import hello
from test_mmio import wait_until
from test_userptr import END_REPLACED, START, invalidate
from test_vm_export import BASE
from test_vm_export_aux import export_import, resolved

from clients import Device
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, EventMessage, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.constants import PAGE_SIZE

TIMEOUT = 10.0
SENT = 10_000  # each parked with its reply was ~5 KiB of the daemon's: ~50 MB unbounded
GROWTH = 16 << 20  # what the daemon may grow by meanwhile, far above a few tasks' cost
PARKED = 4  # tasks with a reply waiting at most: the one, and those already started
SETTLE = 2.0  # how long the client then goes on reading nothing (not a time asserted)

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
def test_blocking_requests_never_read_stop_the_reading(make_daemon: Any, name: str) -> None:
    op, args, expected = ANSWERED_AT_ONCE[name]
    daemon = make_daemon()
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
            # the replies fill our socket, a task waits for room for its reply, and the
            # daemon stops reading rather than take all SENT, each parking its reply
            wait_until(lambda: _blocking(adm, os.getpid()), "a reply to wait for room")
            # what the daemon holds stays bounded however long the client reads
            # nothing (without the bound it had read and parked ~8,000 within this)
            sender.join(SETTLE)
            assert sender.is_alive(), "the daemon read every request"
            assert _blocking(adm, os.getpid()) <= PARKED
            assert _rss(daemon) - rss_before < GROWTH
            pending = {request_id: op for request_id in ids}
            answered: list[int] = []
            while pending:
                answered.append(next_reply(sock, pending).errno)  # each answered once
            sender.join(TIMEOUT)
            assert not sender.is_alive() and not failed, failed
            assert answered == [expected] * SENT
            assert _blocking(adm, os.getpid()) == 0
    finally:
        sock.close()
        sender.join(TIMEOUT)
    wait_until(lambda: baseline(daemon) == before, "the daemon to let everything go")


class MidChange:
    """An application's userptr VM imported by an aux driver, with the application's
    change of its first page STARTed (in a thread: START waits for the aux driver's
    ack) and the aux driver's connection to send raw requests on."""

    def __init__(self, dev: Device, aux: Device) -> None:
        self.dev = dev
        vm, self.host = userptr_vm(dev)
        self.handle = export_import(dev, aux, vm).vm_handle
        resolved(aux, self.handle, BASE, PAGE_SIZE)
        self.started = threading.Event()
        self.changer = threading.Thread(target=self._start, daemon=True)
        self.changer.start()
        self.seqno = aux.wait_event(timeout=TIMEOUT).data.seqno
        self.sock = aux.transport.sock
        self.sock.settimeout(TIMEOUT)
        self.pending: dict[int, Op] = {}

    def _start(self) -> None:
        invalidate(self.dev, self.host.base, PAGE_SIZE, START)
        self.started.set()

    def send(self, request_id: int, op: Op, args: Any) -> None:
        self.sock.send(encode_request(request_id, op, args))
        self.pending[request_id] = op

    def resolve(self, request_id: int) -> None:
        self.send(
            request_id,
            Op.AUX_VM_RESOLVE,
            m.XedAuxVmResolve(vm_handle=self.handle, va=BASE, length=PAGE_SIZE),
        )

    def acknowledge(self, request_id: int) -> None:
        done = m.XedAuxVmInvalidateDone(vm_handle=self.handle, seqno=self.seqno)
        self.send(request_id, Op.AUX_VM_INVALIDATE_DONE, done)

    def end(self) -> None:
        self.changer.join(TIMEOUT)
        invalidate(self.dev, self.host.base, PAGE_SIZE, END_REPLACED)

    def answer(self) -> Reply:
        return next_reply(self.sock, self.pending)

    def event(self) -> None:
        """Read the next message, an invalidation event: its seqno is the one to ack."""
        data, fds, _, _ = socket.recv_fds(self.sock, MAX_DATAGRAM, 8)
        message = decode_incoming(data, tuple(fds), self.pending)
        assert isinstance(message, EventMessage), message
        self.seqno = message.data.seqno


@contextlib.contextmanager
def mid_change(daemon: DaemonProcess) -> Iterator[MidChange]:
    path = daemon.socket_path
    with Device.open(path) as dev, Device.open(path, role="aux") as aux:
        yield MidChange(dev, aux)


RESOLVES = 200  # resolves asleep at once, below [limits] fence_waits (1024)


def test_resolves_waiting_on_a_change_leave_the_ack_they_need_read(make_daemon: Any) -> None:
    """An aux driver pipelines AUX_VM_RESOLVEs of a range the application is changing
    (each waits for the change's END) and then the AUX_VM_INVALIDATE_DONE that lets the
    change's START return, all on one connection: requests waiting on something other
    than room for their reply never stop the reading, so the ack is read, START returns,
    END lets every resolve be answered. (A cap on blocking requests under way, at
    fence_waits + 64, had the daemon stop reading before the ack: START, and so the
    application's munmap, hung, and closing the aux connection did not end it.)"""
    with mid_change(make_daemon()) as change:
        for request_id in range(100_000, 100_000 + RESOLVES):
            change.resolve(request_id)
        change.acknowledge(200_000)
        assert change.started.wait(TIMEOUT), "START never returned: the ack was not read"
        change.end()
        answers = [change.answer().errno for _ in range(RESOLVES + 1)]
        assert answers == [0] * (RESOLVES + 1)


def test_resolves_waiting_on_a_change_count_against_fence_waits(make_daemon: Any) -> None:
    """AUX_VM_RESOLVEs waiting for an invalidation to end are waits asleep like any
    other: past [limits] fence_waits of the aux file the next is ENOMEM at once (one
    aux connection could otherwise park them without end while an application holds
    its change open); the ones asleep are answered once the change ends."""
    waits = 2
    with mid_change(make_daemon(f"[limits]\nfence_waits = {waits}\n")) as change:
        for request_id in range(1000, 1001 + waits):
            change.resolve(request_id)
        assert change.answer().errno == ENOMEM  # the one past the limit, the others asleep
        change.acknowledge(2000)
        assert change.answer().errno == 0  # the ack: START returns
        change.end()
        assert [change.answer().errno for _ in range(waits)] == [0] * waits


def test_starts_waiting_for_the_aux_driver_count_against_fence_waits(make_daemon: Any) -> None:
    """A HOST_MEMORY_INVALIDATE START waits until every aux driver holding the pages
    let them go, a wait asleep like any other: past [limits] fence_waits of the file the
    next START is ENOMEM at once, with nothing held off (an aux driver that never
    acknowledges must not let one client park STARTs without end); the one asleep
    returns once the aux driver acknowledges."""
    waits = 2  # MidChange's own START, asleep, and one of the channel's two
    with mid_change(make_daemon(f"[limits]\nfence_waits = {waits}\n")) as change:
        path = change.dev.transport.sock.getpeername()
        with Device.open(path, join=change.dev.token) as channel:
            sock = channel.transport.sock
            sock.settimeout(TIMEOUT)
            start = m.XedHostMemoryInvalidate(addr=change.host.base, length=PAGE_SIZE, event=START)
            pending = {10: Op.HOST_MEMORY_INVALIDATE, 11: Op.HOST_MEMORY_INVALIDATE}
            for request_id in pending:
                sock.send(encode_request(request_id, Op.HOST_MEMORY_INVALIDATE, start))

            assert next_reply(sock, pending).errno == ENOMEM
            change.event()  # the one asleep told the aux driver too
            change.acknowledge(3000)  # up to its seqno: both STARTs may return
            assert change.answer().errno == 0
            assert change.started.wait(TIMEOUT)
            assert next_reply(sock, pending).errno == 0
