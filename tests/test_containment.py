"""The safety nets themselves: a bug in a handler or a device task costs one ioctl, one
queue, one object or one page, never the daemon, and it is logged with its traceback
at error level (so it shows at --log-level error) and counted in `xed ctl status`.

No client input makes these crash (that would be a bug to fix, not to test), so the
daemon is started with XED_TEST_CRASH=NAME, a test-only switch: the first task of that
kind (exec_queue, dma_buf, vm_export, page_watcher...) or the first request of that op
raises RuntimeError. Those daemons log tracebacks on purpose: the `crashing` fixture
checks that their log holds exactly the crashes the test expects, each with its
traceback, and nothing else of the kind.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from errno import ECANCELED, EINVAL, EIO
from pathlib import Path
from typing import Any

import pytest
from conftest import adjusted_xed
from helpers import BATCH_VA, Gpu, errno_of, peer_attach

from clients import Batch, Device
from clients.daemon import DaemonProcess
from protocols import (
    Event,
    Reply,
)
from protocols import messages as m

TIMEOUT = 10.0  # seconds: an upper bound, never an expectation
DATA_VA = 0x2_0000_0000

Expected = list[tuple[str, str]]  # (event, task or op) of each crash the log must hold


def logged_crashes(daemon: DaemonProcess) -> Expected:
    """Every crash the daemon logged, as (event, task or op); each must carry its
    traceback at error level, and no other line may mention one."""
    found = []
    for line in daemon.log_text().splitlines():
        if "Traceback" not in line and "crashed" not in line:
            continue
        entry = json.loads(line)
        assert entry["level"] == "error", entry
        assert entry.get("exception", "").startswith("Traceback (most recent call last)"), entry
        assert "crashing on purpose" in entry["exception"], entry
        found.append((entry["event"], entry.get("task") or entry.get("op")))
    return found


@pytest.fixture
def crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, Expected], DaemonProcess]]:
    """start(crash, expected): a daemon at --log-level error with XED_TEST_CRASH=crash;
    at the end it must still run, and its log must hold exactly the `expected` crashes."""
    started: list[tuple[DaemonProcess, Expected]] = []

    def start(crash: str, expected: Expected) -> DaemonProcess:
        where = tmp_path / f"d{len(started)}"
        where.mkdir()
        monkeypatch.setenv("XED_TEST_CRASH", crash)
        try:
            proc = DaemonProcess(
                socket_path=where / "xed.sock",
                log_path=where / "daemon.log",
                extra_args=("--log-level", "error"),
            ).start()
        finally:
            monkeypatch.delenv("XED_TEST_CRASH")
        started.append((proc, expected))
        return proc

    yield start
    for proc, expected in started:
        alive = proc.proc is not None and proc.proc.poll() is None
        proc.stop()
        try:
            assert alive, "the daemon died"
            assert sorted(logged_crashes(proc)) == sorted(expected)
        finally:
            proc.cleanup()


def status(daemon: DaemonProcess) -> m.XedAdminStatusReply:
    with Device.open(daemon.socket_path, role="admin") as admin:
        return admin.admin_status()


def next_event(dev: Device, kind: Event) -> Any:
    """The data of the next event of `kind` (others are skipped), within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        event = dev.wait_event(timeout=max(deadline - time.monotonic(), 0.001))
        if event.event == kind:
            return event.data


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def attach(fd: int, request_id: int = 7) -> Reply:
    """Speak on an exported object's descriptor as another daemon would: DMA_BUF_ATTACH."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return peer_attach(sock, request_id, TIMEOUT)


# --- ioctl handlers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "call"),
    [
        # answered in the reader's own step (connection.py _PLAIN)
        ("XE_VM_CREATE", lambda dev: dev.vm_create()),
        # answered by _answer: its reply opens a descriptor
        ("XE_GEM_CREATE", lambda dev: dev.gem_create(4096)),
    ],
)
def test_ioctl_crash_is_eio_logged_at_error_level_and_counted(
    crashing: Callable[[str, Expected], DaemonProcess],
    op: str,
    call: Callable[[Device], object],
) -> None:
    """A handler that crashes answers EIO; the crash is logged with its traceback even at
    --log-level error, counted as ioctl_crashes, and the next call is served: on either
    of the daemon's two ways of answering."""
    daemon = crashing(op, [("ioctl_crashed", op)])
    with Device.open(daemon.socket_path) as dev:
        assert errno_of(lambda: call(dev)) == EIO
        assert call(dev)
    assert status(daemon).ioctl_crashes == 1


# A daemon whose handlers answer with replies the codec refuses (the wrong record, as an
# oversized one is refused: LocalProtocolError), on each of the three ways of answering.
UNENCODABLE = adjusted_xed(
    "import os",
    "from protocols import Op, messages as m",
    "from xed.ioctl import HANDLERS",
    "HANDLERS[Op.VERSION] = lambda xef, args: m.Empty()",
    "async def llseek(xef, args, fds): return m.Empty()",
    "HANDLERS[Op.DMA_BUF_LLSEEK] = llseek",
    "HANDLERS[Op.PRIME_HANDLE_TO_FD] = lambda xef, args: "
    "(m.Empty(), [os.open('/dev/null', os.O_RDONLY | os.O_CLOEXEC)])",
)


def test_reply_that_cannot_be_encoded_is_eio_not_the_end_of_the_daemon(tmp_path: Path) -> None:
    """A reply the codec refuses to encode is a bug of ours like a handler's crash: EIO,
    logged as ioctl_crashed, the descriptors it would have carried closed, and the
    daemon serves on (it used to end the connection's task, and with it the daemon)."""
    daemon = DaemonProcess(
        socket_path=tmp_path / "xed.sock",
        log_path=tmp_path / "daemon.log",
        extra_args=("--log-level", "error"),
        entry=UNENCODABLE,
    ).start()
    try:
        with Device.open(daemon.socket_path) as dev, open(os.devnull) as anything:
            handle = dev.gem_create(0x1000)
            fds = daemon.open_fds()
            assert errno_of(dev.version) == EIO  # answered in the reader's own step
            assert errno_of(dev.prime_handle_to_fd, handle) == EIO  # a reply with descriptors
            assert errno_of(dev.dmabuf_size, anything.fileno()) == EIO  # an async handler's
            # the lent descriptor is closed just after the answer went: poll for it
            wait_until(lambda: daemon.open_fds() == fds, "the descriptors to be closed")
            assert dev.vm_create()
        assert status(daemon).ioctl_crashes == 3
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    finally:
        daemon.stop()
        daemon.cleanup()


# --- exec queues --------------------------------------------------------------------------
def test_exec_queue_crash_bans_only_that_queue(
    crashing: Callable[[str, Expected], DaemonProcess],
) -> None:
    """An exec queue whose worker crashes is banned as a GPU fault bans it (event with
    reason "internal error", waiters on it get EIO, EXEC then ECANCELED); the daemon,
    the client's other queue and another client's work go on; task_crashes counts it."""
    daemon = crashing("exec_queue", [("task_crashed", "exec_queue")])
    with Device.open(daemon.socket_path) as dev, Device.open(daemon.socket_path) as other:
        gpu, bystander = Gpu(dev), Gpu(other)
        address = gpu.place(Batch().store_dword(BATCH_VA + 0x40, 1).end())
        seq = gpu.submit_at(address)
        assert errno_of(gpu.wait, seq, exec_queue=gpu.queue) == EIO
        banned = next_event(dev, Event.EXEC_QUEUE_BANNED)
        assert (banned.exec_queue_id, banned.reason) == (gpu.queue, "internal error")
        assert banned.address == address
        assert errno_of(dev.exec, gpu.queue, address) == ECANCELED
        second = dev.exec_queue_create(gpu.vm)
        gpu.run(Batch().store_dword(BATCH_VA + 0x48, 2).end(), second)
        assert gpu.cpu.read_u32(0x48) == 2
        bystander.run(Batch().store_dword(BATCH_VA + 0x40, 3).end())
        assert bystander.cpu.read_u32(0x40) == 3
        assert not bystander.banned_queues()
    counters = status(daemon)
    assert (counters.task_crashes, counters.bans, counters.ioctl_crashes) == (1, 1, 0)


# --- exported objects ---------------------------------------------------------------------
def test_dma_buf_server_crash_releases_only_that_dma_buf(
    crashing: Callable[[str, Expected], DaemonProcess],
) -> None:
    """A dma-buf whose server crashes is released as at its last close (its descriptor
    is no dma-buf any more: EINVAL); another dma-buf and the BO itself are untouched."""
    daemon = crashing("dma_buf", [("task_crashed", "dma_buf")])
    with Device.open(daemon.socket_path) as dev:
        one, two = dev.gem_create(0x1000), dev.gem_create(0x1000)
        fd_one, fd_two = dev.prime_handle_to_fd(one), dev.prime_handle_to_fd(two)
        try:
            sock = socket.socket(fileno=os.dup(fd_one))
            sock.send(b"\x90")  # anything: the server crashes on the first datagram
            sock.close()
            wait_until(lambda: status(daemon).objects.dma_bufs == 1, "the release")
            assert errno_of(dev.prime_fd_to_handle, fd_one) == EINVAL
            assert attach(fd_two).errno == 0
            assert dev.prime_fd_to_handle(fd_two) == two
            again = dev.prime_handle_to_fd(one)  # the BO lives on: a new dma-buf of it
            os.close(again)
        finally:
            os.close(fd_one)
            os.close(fd_two)
    assert status(daemon).task_crashes == 1


def test_vm_export_server_crash_releases_only_that_export(
    crashing: Callable[[str, Expected], DaemonProcess],
) -> None:
    """A VM export whose server crashes is released (the VM may be destroyed again);
    another VM's export is untouched."""
    daemon = crashing("vm_export", [("task_crashed", "vm_export")])
    with Device.open(daemon.socket_path) as dev:
        vm_one, vm_two = dev.vm_create(), dev.vm_create()
        fd_one, fd_two = dev.vm_export(vm_one), dev.vm_export(vm_two)
        try:
            sock = socket.socket(fileno=os.dup(fd_one))
            sock.send(b"\x90")
            sock.close()
            wait_until(lambda: status(daemon).objects.vm_exports == 1, "the release")
            dev.vm_destroy(vm_one)
            assert attach(fd_two).errno == EINVAL  # still served: "not a dma-buf"
            with Device.open(daemon.socket_path, role="aux") as aux:
                assert aux.aux_vm_import(fd_two, os.getpid()).vm_handle
        finally:
            os.close(fd_one)
            os.close(fd_two)


# --- the page watcher ---------------------------------------------------------------------
def test_page_watcher_crash_ends_one_page_not_the_watcher(
    crashing: Callable[[str, Expected], DaemonProcess],
) -> None:
    """A failure while looking at one client's barrier page ends that page (its writes
    are not counted any more); the watcher goes on counting everyone else's."""
    daemon = crashing("page_watcher", [("task_crashed", "page_watcher")])
    with Device.open(daemon.socket_path) as dev, Device.open(daemon.socket_path) as other:
        dev.pci_barrier()
        wait_until(lambda: status(daemon).task_crashes == 1, "the crash")
        other.pci_barrier()
        with Device.open(daemon.socket_path, role="admin") as admin:

            def barriers() -> dict[int, int]:
                return {c.client_id: c.barriers for c in admin.admin_clients()}

            wait_until(lambda: barriers()[other.client_id] == 1, "the other page's barrier")
            dev.pci_barrier()
            other.pci_barrier()
            wait_until(lambda: barriers()[other.client_id] == 2, "the other page's barrier")
            assert barriers()[dev.client_id] == 0
