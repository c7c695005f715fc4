"""Helpers several test files share: the errno of a refused call, a ready GPU context."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable
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
LONG_WAIT = 60_000_000_000  # ns: the same, for a batch that keeps a CPU busy for seconds
BATCH_VA = 0x1_0000_0000  # the batch BO: fence qword at offset 0, batches after it
BATCH_BO_SIZE = 0x10000
FENCE = 0
NOBODY = 65534
CHILD_WAIT = 30.0  # s: an upper bound for a forked child's report or exit


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


def next_reply(sock: socket.socket, pending: dict[int, Op]) -> Reply:
    """The next reply on a raw connection to one of the requests in `pending` (id ->
    op), taken off it; events are let go by, and descriptors closed."""
    while True:
        data, ancdata, _flags, _ = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * MAX_FDS))
        fds, _junk = unpack_fds(ancdata)
        for fd in fds:
            os.close(fd)
        reply = decode_incoming(data, tuple(fds), pending)
        if isinstance(reply, Reply):
            del pending[reply.id]
            return reply


def readable(fd: int, timeout: float = 0.0) -> bool:
    """`fd` polls readable (a sync file: its fence signalled) within `timeout` seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


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

    def wait(self, seq: int, exec_queue: int = 0, timeout: int = WAIT) -> None:
        self.dev.wait_user_fence(
            self.cpu.user_address(FENCE), seq, timeout=timeout, exec_queue=exec_queue
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


# a spinner's marks in a Gpu's batch BO (below the batches, which start at 0x100)
SPIN_START, SPIN_END, SPIN_COUNT = 0x40, 0x48, 0x50


def start_spinner(
    gpu: Gpu, queue: int | None = None, count: bool = False, syncs: Iterable[m.DrmXeSync] = ()
) -> int:
    """A spinner on `queue` (the Gpu's own by default): marks SPIN_START, then loops
    (adding one to SPIN_COUNT each turn, if `count`) until the CPU writes 0 at SPIN_END.
    Its user-fence value, once it runs; `syncs` go with its EXEC beside that fence."""
    gpu.cpu.write_u32(SPIN_END, 1)
    base = gpu.place(Batch().raw(*([0] * 32)))
    loop = base + 16  # right after the SPIN_START mark's store
    body = Batch().store_dword(BATCH_VA + SPIN_START, 0xC0FFEE).arb_check()
    if count:
        body = body.atomic_inc(BATCH_VA + SPIN_COUNT)
    body = body.cond_end(BATCH_VA + SPIN_END, 0, mode=0).batch_start(loop)
    offset = base - BATCH_VA
    gpu.cpu[offset : offset + len(body)] = body.tobytes()
    gpu._seq += 1
    fence = user_fence(BATCH_VA + FENCE, gpu._seq)
    gpu.dev.exec(queue or gpu.queue, base, syncs=[fence, *syncs])
    deadline = time.monotonic() + 10
    while gpu.cpu.read_u32(SPIN_START) != 0xC0FFEE:
        assert time.monotonic() < deadline, "the spinner never started"
        time.sleep(0.001)
    return gpu._seq


def end_spinner(gpu: Gpu, seq: int) -> None:
    gpu.cpu.write_u32(SPIN_END, 0)
    gpu.wait(seq)


# --- children forked from the test process (as uid 65534, or not) ------------------------------


Work = Callable[[Callable[[Any], None], Callable[[], None]], None]


class ForkedChild:
    """A child forked from the test process that runs `work` (as `uid`, if given).

    `work(report, wait_go)` may report JSON-able dicts (one line each) and block in
    wait_go() until the test calls go(). The child closes every descriptor it inherited
    but its pipes, stdio and `keep`, so the test's own connections stay the test's (a
    descriptor in `keep` is a copy the child holds, as a forked program does).
    """

    def __init__(
        self,
        socket_path: Path,
        work: Work,
        *,
        uid: int | None = None,
        keep: Iterable[int] = (),
    ) -> None:
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                kept = {0, 1, 2, report_w, go_r, *keep}
                for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
                    if fd not in kept:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                if uid is not None:
                    os.chdir(socket_path.parent)  # as root: the path above may be closed
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)

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
        self._reports = report_r
        self._pending = b""

    def report(self, timeout: float = CHILD_WAIT) -> Any:
        """The child's next report (it failed, or is stuck past `timeout`: the test fails)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._reports], [], [], max(left, 0))
            assert ready, f"the child reported nothing in {timeout} s"
            chunk = os.read(self._reports, 4096)
            assert chunk, "the child ended without reporting"
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        value = json.loads(line)
        assert not (isinstance(value, dict) and "error" in value), value
        return value

    def go(self) -> None:
        if self._go >= 0:
            os.close(self._go)
            self._go = -1

    def join(self, timeout: float = CHILD_WAIT) -> int:
        """Let the child go and wait for its exit status (killed past `timeout`)."""
        self.go()
        pidfd = os.pidfd_open(self.pid)
        try:
            exited, _, _ = select.select([pidfd], [], [], timeout)  # readable once it exits
        finally:
            os.close(pidfd)
        if not exited:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        os.close(self._reports)
        assert exited, f"the child did not exit in {timeout} s"
        return os.waitstatus_to_exitcode(status)


def open_to_nobody(daemon: DaemonProcess) -> str:
    """Let uid 65534 reach the daemon's socket (as tests/test_hello_roles.py does)."""
    path = daemon.socket_path
    os.chmod(path.parent, 0o711)  # nobody may look the socket up in its directory
    os.chown(path, 0, NOBODY)  # and connect to it through the group bits (mode 0660)
    return path.name


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as uid 65534")


class NobodyChild(ForkedChild):
    """A ForkedChild that drops to uid/gid 65534 before it runs `work`."""

    def __init__(self, socket_path: Path, work: Work) -> None:
        super().__init__(socket_path, work, uid=NOBODY)
