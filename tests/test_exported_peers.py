"""What holders can do on an exported object's own descriptor (a dma-buf, an exported
VM), and what they cannot: end it for the other holders with an empty datagram, take
the daemon down by closing it with an answer unread, or starve everyone by flooding it.

An exported object is one end of a SOCK_SEQPACKET socketpair; whoever holds the other
end may send on it. The daemon answers there, one datagram per scheduler turn, and takes
the object as released only when the socket says every copy of that end is closed.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from errno import EBUSY, EINVAL, EMFILE, ENOMEM
from typing import Any

import pytest
import trio
from conftest import baseline, spawn_client
from helpers import errno_of, peer_attach

from clients import Device
from clients.daemon import DaemonProcess
from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    Op,
    Reply,
    decode_incoming,
    encode_request,
    pack_fds,
    unpack_fds,
)
from protocols import messages as m
from xed.config import Config
from xed.device.device import XeDevice
from xed.device.export import PEER_UNREAD, ExportedObject
from xed.inflight import outq

TIMEOUT = 10.0  # seconds: an upper bound, never an expectation
NOFILE = 64  # a daemon's descriptor limit, where a test takes them all
BYSTANDER_CALLS = 2000
# an upper bound for them: answered one per turn they take a second or two; when the
# flood had the device they took three quarters of a minute (45 calls/s)
FLOOD_BOUND = 20.0


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def counts(daemon: DaemonProcess) -> Any:
    return baseline(daemon)[1]


def attach(sock: socket.socket, request_id: int = 7) -> Reply:
    return peer_attach(sock, request_id, TIMEOUT)


@pytest.fixture
def dev(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path) as device:
        yield device


def lone_dma_buf(dev: Device) -> int:
    """A dma-buf whose only copy is the descriptor returned (no handle keeps the daemon's)."""
    handle = dev.gem_create(0x1000)
    fd = dev.prime_handle_to_fd(handle)
    dev.gem_close(handle)
    return fd


# --- the last close, and what is not one ------------------------------------------------------
@pytest.mark.parametrize("with_fd", [False, True], ids=["empty", "empty-with-a-descriptor"])
def test_empty_datagram_on_vm_descriptor_keeps_the_export(
    fresh_daemon: DaemonProcess, dev: Device, with_fd: bool
) -> None:
    """An empty datagram on an exported VM's descriptor is not its last close: the VM
    stays exported (VM_DESTROY EBUSY) and an aux driver can still import it."""
    vm = dev.vm_create()
    fd = dev.vm_export(vm)
    sock = socket.socket(fileno=os.dup(fd))
    try:
        extra = [os.open(os.devnull, os.O_RDONLY)] if with_fd else []
        sock.sendmsg([b""], pack_fds(extra))
        for spare in extra:
            os.close(spare)
        assert attach(sock).errno == EINVAL  # answered after it: the server read it and lives
        assert errno_of(dev.vm_destroy, vm) == EBUSY
        assert counts(fresh_daemon).vm_exports == 1
        with Device.open(fresh_daemon.socket_path, role="aux") as aux:
            assert aux.aux_vm_import(fd, os.getpid()).vm_handle
    finally:
        sock.close()
        os.close(fd)


def test_empty_datagram_on_dma_buf_keeps_it_for_every_holder(
    fresh_daemon: DaemonProcess, dev: Device
) -> None:
    """An empty datagram from one holder of a dma-buf is not its last close: another
    holder (another connection) still imports it and the exporter's import still works."""
    handle = dev.gem_create(0x1000)
    fd = dev.prime_handle_to_fd(handle)
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.send(b"")
        assert attach(sock).errno == 0
        with Device.open(fresh_daemon.socket_path) as other:
            assert other.prime_fd_to_handle(fd)
        assert dev.prime_fd_to_handle(fd) == handle
        assert counts(fresh_daemon).dma_bufs == 1
    finally:
        sock.close()
        os.close(fd)


def test_descriptor_shut_for_sending_lives_until_its_last_close(
    fresh_daemon: DaemonProcess, dev: Device
) -> None:
    """A holder that shuts the VM descriptor for sending ends nothing: the export lives
    while copies remain, and is released once the last one is closed."""
    vm = dev.vm_create()
    fd = dev.vm_export(vm)
    sock = socket.socket(fileno=os.dup(fd))
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    try:
        with Device.open(fresh_daemon.socket_path, role="aux") as aux:
            assert aux.aux_vm_import(fd, os.getpid()).vm_handle  # served after the shutdown
            aux.aux_vm_release(1)
        assert errno_of(dev.vm_destroy, vm) == EBUSY
    finally:
        os.close(fd)
    wait_until(lambda: counts(fresh_daemon).vm_exports == 0, "the release")
    dev.vm_destroy(vm)


@pytest.mark.parametrize("kind", ["vm_export", "dma_buf"])
def test_descriptor_closed_with_an_answer_unread_is_released(
    fresh_daemon: DaemonProcess, dev: Device, kind: str
) -> None:
    """The last copy closed while the daemon's answer sits unread in it (ECONNRESET on
    the daemon's end) is a release like any other: no crash, nothing left behind."""
    before = baseline(fresh_daemon)
    vm = dev.vm_create()
    fd = dev.vm_export(vm) if kind == "vm_export" else lone_dma_buf(dev)
    sock = socket.socket(fileno=fd)
    sock.send(encode_request(5, Op.DMA_BUF_ATTACH, m.DmaBufAttach()))
    readable, _, _ = select.select([sock], [], [], TIMEOUT)
    assert readable, "no answer came"
    sock.close()  # the answer unread
    wait_until(lambda: counts(fresh_daemon).vm_exports + counts(fresh_daemon).dma_bufs == 0,
               "the release")  # fmt: skip
    dev.vm_destroy(vm)
    wait_until(lambda: baseline(fresh_daemon) == before, "every object and descriptor back")


def test_attach_while_the_daemon_is_out_of_descriptors_is_enomem(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """DMA_BUF_ATTACH while clients hold every descriptor the daemon may have: ENOMEM on
    the dma-buf's descriptor, and the dma-buf lives on (served once they are back)."""
    # a reserve below the limit, and room for our uid's connections: the table really fills
    limits = f"[limits]\ndescriptor_reserve = 4\nconnections_per_uid = {NOFILE * 2}\n"
    daemon = make_daemon(limits, nofile=NOFILE)
    hogs: list[socket.socket] = []
    with Device.open(daemon.socket_path) as dev:
        handle = dev.gem_create(0x1000)
        with socket.socket(fileno=dev.prime_handle_to_fd(handle)) as sock:
            try:
                for _ in range(NOFILE + 16):  # connections it cannot all accept: EMFILE
                    hogs.append(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
                    hogs[-1].connect(str(daemon.socket_path))
                # The backlog is taken in order: once the last is turned away, every hog
                # is either served or refused and the table stays full. A count of the
                # daemon's descriptors alone can pass while a new connection's task
                # briefly opens /proc files in the last free slot, before the last
                # accepts (seen under load: the attach then found that slot).
                wait_until(lambda: select.select([hogs[-1]], [], [], 0)[0], "a refusal")
                assert daemon.open_fds() >= NOFILE
                assert attach(sock).errno == ENOMEM
            finally:
                for hog in hogs:
                    hog.close()
            wait_until(lambda: daemon.open_fds() < NOFILE - 8, "the hogs to be gone")
            assert attach(sock, request_id=8).errno == 0
            assert dev.prime_fd_to_handle(sock.fileno()) == handle


# --- a flood on the descriptor ----------------------------------------------------------------
FLOODER = """
import socket
handle = dev.gem_create(0x1000)
sock = socket.socket(fileno=dev.prime_handle_to_fd(handle))
sock.send(b"\\x90")
print("flooding", flush=True)
while True:
    sock.send(b"\\x90")  # an empty array: no request, no answer; blocks while the queue is full
"""


def test_flood_on_a_dma_buf_does_not_starve_a_bystander(
    fresh_daemon: DaemonProcess, dev: Device
) -> None:
    """While a client floods its dma-buf's descriptor with datagrams, another client's
    calls are still answered (the object's server takes one datagram per turn)."""
    flooders = [spawn_client(fresh_daemon.socket_path, FLOODER) for _ in range(2)]
    try:
        for flooder in flooders:
            assert flooder.stdout is not None
            assert flooder.stdout.readline().strip() == "flooding"
        deadline = time.monotonic() + FLOOD_BOUND
        for done in range(BYSTANDER_CALLS):
            dev.version()
            assert time.monotonic() < deadline, f"only {done} calls answered"
        assert all(flooder.poll() is None for flooder in flooders)
    finally:
        for flooder in flooders:
            flooder.kill()
            flooder.communicate(timeout=TIMEOUT)


QUEUED = 100  # datagrams waiting on the object's descriptor before its server starts


async def test_queued_datagrams_let_other_tasks_run_between_them() -> None:
    """In process, with the datagrams certain to be waiting: the exported object's server
    gives the other tasks a turn before each one it finds already there."""
    device = XeDevice(Config())
    turns = answered = 0
    async with trio.open_nursery() as nursery:
        device.attach(nursery)
        obj = ExportedObject(device)  # its server starts at the next checkpoint
        theirs = socket.socket(fileno=obj.new_fd())
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        theirs.setblocking(False)
        for request_id in range(1, QUEUED + 1):  # each is answered: EINVAL
            theirs.send(encode_request(request_id, Op.DMA_BUF_ATTACH, m.DmaBufAttach()))
        with trio.fail_after(TIMEOUT):
            while answered < QUEUED:
                await trio.lowlevel.checkpoint()
                turns += 1
                while True:
                    try:
                        theirs.recv(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    answered += 1
        obj.let_go()
        theirs.close()
        with trio.fail_after(TIMEOUT):
            while not obj.released:
                await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert turns >= QUEUED, turns  # a turn per datagram at least
    assert not device.exported


def test_answers_with_memory_left_unread_are_not_piled_up(dev: Device) -> None:
    """A holder that asks DMA_BUF_ATTACH again and again without reading gets a few
    answers with memory in flight at most, EMFILE for the rest (descriptors in flight are
    the daemon's budget, every client's replies need it); once read, it is answered."""
    handle = dev.gem_create(0x1000)
    sock = socket.socket(fileno=dev.prime_handle_to_fd(handle))
    sock.settimeout(TIMEOUT)
    try:
        for request_id in range(1, 51):
            sock.send(encode_request(request_id, Op.DMA_BUF_ATTACH, m.DmaBufAttach()))
        # once it has taken the 50th request off the socket, it has answered the 49
        # before it (each answer goes out before it reads on): only the last may race
        # with our reading
        wait_until(lambda: not outq(sock.fileno()), "the daemon to read every request")
        answers: list[int] = []
        descriptors = 0
        while len(answers) < 50:
            data, ancdata, _flags, _ = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * MAX_FDS))
            fds, _junk = unpack_fds(ancdata)
            descriptors += len(fds)
            for fd in fds:
                os.close(fd)
            reply = decode_incoming(data, tuple(fds), {len(answers) + 1: Op.DMA_BUF_ATTACH})
            assert isinstance(reply, Reply)
            answers.append(reply.errno)
        assert descriptors == answers.count(0)
        assert answers[:49] == [0] * PEER_UNREAD + [EMFILE] * (49 - PEER_UNREAD), answers
        assert attach(sock, request_id=99).errno == 0  # all read: answered again
    finally:
        sock.close()
        dev.gem_close(handle)
