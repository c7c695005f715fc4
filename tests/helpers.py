"""Helpers several test files share: the errno of a refused call, a ready GPU context."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from errno import ECANCELED
from pathlib import Path
from typing import Any

import pytest

from clients import Batch, Device, XeError, user_fence
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, MAX_FDS, Event, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.ancillary import unpack_fds

WAIT = 5_000_000_000  # ns: an upper bound, never an expectation
BATCH_VA = 0x1_0000_0000  # the batch BO: fence qword at offset 0, batches after it
BATCH_BO_SIZE = 0x10000
FENCE = 0
NOBODY = 65534


def peer_attach(sock: socket.socket, request_id: int = 7, timeout: float = 10.0) -> Reply:
    """DMA_BUF_ATTACH spoken on an exported object's descriptor, as another daemon would;
    the descriptors of its answer are closed."""
    sock.settimeout(timeout)
    sock.send(encode_request(request_id, Op.DMA_BUF_ATTACH, m.DmaBufAttach()))
    data, ancdata, _flags, _ = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * MAX_FDS))
    fds, _junk = unpack_fds(ancdata)
    for fd in fds:
        os.close(fd)
    reply = decode_incoming(data, tuple(fds), {request_id: Op.DMA_BUF_ATTACH})
    assert isinstance(reply, Reply)
    return reply


def errno_of(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno a refused call raised (fails the test if it succeeded)."""
    with pytest.raises(XeError) as info:
        call(*args, **kwargs)
    assert info.value.errno is not None
    return info.value.errno


class Gpu:
    """A VM with a batch BO bound at BATCH_VA (its first qword is the fence) and a queue."""

    def __init__(self, dev: Device, vm_flags: int = 0) -> None:
        self.dev = dev
        self.vm = dev.vm_create(vm_flags)
        self.batch_bo = dev.gem_create(BATCH_BO_SIZE)
        dev.vm_bind(self.vm, self.batch_bo, BATCH_VA)
        self.cpu = dev.mmap_bo(self.batch_bo)
        self.queue = dev.exec_queue_create(self.vm)
        self._offset = 0x100
        self._seq = 0

    def place(self, batch: Batch) -> int:
        """Write `batch` into the batch BO; return its GPU address."""
        data = batch.tobytes()
        if self._offset + len(data) > BATCH_BO_SIZE:
            self._offset = 0x100
        offset = self._offset
        self.cpu[offset : offset + len(data)] = data
        self._offset = (offset + len(data) + 63) & ~63
        return BATCH_VA + offset

    def submit_at(self, address: int, queue: int | None = None) -> int:
        """EXEC the batch at `address` with a fresh user-fence value; return that value."""
        self._seq += 1
        fence = user_fence(BATCH_VA + FENCE, self._seq)
        self.dev.exec(queue or self.queue, address, syncs=[fence])
        return self._seq

    def submit(self, batch: Batch, queue: int | None = None) -> int:
        return self.submit_at(self.place(batch), queue)

    def wait(self, seq: int, exec_queue: int = 0) -> None:
        self.dev.wait_user_fence(
            self.cpu.user_address(FENCE), seq, timeout=WAIT, exec_queue=exec_queue
        )

    def run(self, batch: Batch, queue: int | None = None) -> None:
        """Submit and wait for the batch's user fence."""
        self.wait(self.submit(batch, queue))

    def banned_queues(self) -> list[int]:
        return [e.data.exec_queue_id for e in self.dev.events if e.event == Event.EXEC_QUEUE_BANNED]

    def ban_events(self, queue: int) -> list[m.ExecQueueBanned]:
        return [
            e.data
            for e in self.dev.events
            if e.event == Event.EXEC_QUEUE_BANNED and e.data.exec_queue_id == queue
        ]

    def expect_ban(self, batch: Batch, queue: int) -> None:
        """The batch faults: its fence is still written, the queue is banned and says so."""
        seq = self.submit(batch, queue)
        self.wait(seq)
        # The event travels beside the replies, not in order with them: a second wait
        # gives the event, queued before the fence was written, time to be out first.
        self.wait(seq)
        banned = [
            e.data.exec_queue_id for e in self.dev.events if e.event == Event.EXEC_QUEUE_BANNED
        ]
        assert queue in banned
        assert errno_of(self.dev.exec, queue, self.place(Batch().end())) == ECANCELED

    def close(self) -> None:
        self.cpu.close()


# --- children that run as uid 65534 -------------------------------------------------------------


class NobodyChild:
    """A child forked from the test process that drops to uid/gid 65534 and runs `work`.

    `work(report, wait_go)` may report JSON-able dicts (one line each) and block in
    wait_go() until the test calls go(). The child closes every descriptor it inherited
    but its pipes and stdio, so the test's own connections stay the test's.
    """

    def __init__(
        self, socket_path: Path, work: Callable[[Callable[[Any], None], Callable[[], None]], None]
    ) -> None:
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                keep = {0, 1, 2, report_w, go_r}
                for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
                    if fd not in keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                os.chdir(socket_path.parent)  # as root: the path above may be closed to nobody
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)

                def report(value: Any) -> None:
                    os.write(report_w, json.dumps(value).encode() + b"\n")

                def wait_go() -> None:
                    while os.read(go_r, 1):
                        pass

                work(report, wait_go)
                code = 0
            except BaseException as exc:  # report anything to the parent
                os.write(report_w, json.dumps({"error": repr(exc)}).encode() + b"\n")
            finally:
                os._exit(code)
        os.close(report_w)
        os.close(go_r)
        self.pid = pid
        self._go = go_w
        self._reports = os.fdopen(report_r, "r")

    def report(self) -> Any:
        line = self._reports.readline()
        assert line, "the child ended without reporting"
        value = json.loads(line)
        assert not (isinstance(value, dict) and "error" in value), value
        return value

    def go(self) -> None:
        if self._go >= 0:
            os.close(self._go)
            self._go = -1

    def join(self) -> int:
        self.go()
        _, status = os.waitpid(self.pid, 0)
        self._reports.close()
        return os.waitstatus_to_exitcode(status)


def open_to_nobody(daemon: DaemonProcess) -> str:
    """Let uid 65534 reach the daemon's socket (as tests/test_robustness.py does)."""
    path = daemon.socket_path
    os.chmod(path.parent, 0o711)  # nobody may look the socket up in its directory
    os.chown(path, 0, NOBODY)  # and connect to it through the group bits (mode 0660)
    return path.name


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as uid 65534")
