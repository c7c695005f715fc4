"""Forged foreign dma-bufs: a client that answers DMA_BUF_ATTACH itself.

Any client can hand PRIME_FD_TO_HANDLE (or DMA_BUF_MMAP, DMA_BUF_IOCTL_SYNC,
DMA_BUF_LLSEEK) one end of a socketpair of its own and answer on the other end as if it
were another daemon exporting a buffer, claiming any size and passing any descriptor as
the memory. The daemon judges that memory as it judges a client's (protocols.memfd):
what could fault its mapping, or push a number out of its fields, is "not a dma-buf"
(EINVAL); memory the descriptor only lets it read imports read-only. After each forgery
the daemon is alive, ADMIN_STATUS answers, another client (a process of its own) maps a
BO of its own through GEM_MMAP_OFFSET + MMAP, and nothing is left behind.

The forger is the test process: a thread answers on its end of the socketpair with the
protocol's own encode_reply while the test makes the call that makes the daemon ask.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import baseline, run_client
from helpers import BATCH_BO_SIZE, BATCH_VA, FENCE, WAIT, errno_of

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, Event, Op, decode_request, encode_reply, pack_fds
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from protocols.memfd import F_SEAL_FUTURE_WRITE
from xed.config import DeviceConfig

SIZE = 4 * PAGE_SIZE
DATA_VA = 0x2_0000_0000  # where a test binds the forged import
HUGE_PAGE = 2 << 20
SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
# everything a default device could hold: a larger buffer is refused, whatever it is
CAPACITY = DeviceConfig().vram_size + DeviceConfig().system_memory
FORGED = m.DeviceIdentity(name="forged", device_id=0, revision=0, instance="forged")


class Forger:
    """One end of a socketpair handed out as a dma-buf (`fd`); a thread answers every
    DMA_BUF_ATTACH on the other end with `size`, `writable` and a copy of `memory`."""

    def __init__(self, memory: int, size: int, writable: int = 1) -> None:
        self.memory, self.size, self.writable = memory, size, writable
        self.answered = 0
        self._ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        self.fd = theirs.detach()
        self._thread = threading.Thread(target=self._answer, daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        while True:
            data = self._ours.recv(MAX_DATAGRAM)
            if not data:
                return  # close(): our end was shut down
            request = decode_request(data)
            reply = m.DmaBufAttachReply(size=self.size, writable=self.writable, device=FORGED)
            wire = encode_reply(request.id, Op.DMA_BUF_ATTACH, 0, reply)
            # counted before it goes: the daemon's refusal may reach the test before
            # this thread runs again
            self.answered += 1
            self._ours.sendmsg([wire], pack_fds([self.memory]))

    def close(self) -> None:
        self._ours.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the forger's thread did not end"
        self._ours.close()
        os.close(self.fd)


@pytest.fixture
def forge() -> Iterator[Callable[..., Forger]]:
    """Make forgers; each is closed after the test."""
    made: list[Forger] = []

    def make(memory: int, size: int, writable: int = 1) -> Forger:
        forger = Forger(memory, size, writable)
        made.append(forger)
        return forger

    yield make
    for forger in made:
        forger.close()


OTHER_CLIENT = """
h = dev.gem_create(2 * 4096)
with dev.mmap_bo(h) as mp:
    mp[4096:4101] = b"other"
    result = mp[4096:4101].decode()
dev.gem_close(h)
"""


def others_unharmed(daemon: DaemonProcess, before: tuple[int, Any]) -> None:
    """The daemon lives, ADMIN_STATUS, ADMIN_OBJECTS and ADMIN_CLIENTS answer (status with
    what it held `before`), and another process maps a BO of its own through
    GEM_MMAP_OFFSET + MMAP."""
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    assert run_client(daemon.socket_path, OTHER_CLIENT, timeout=30) == "other"
    with Device.open(daemon.socket_path, role="admin") as adm:
        adm.ioctl(Op.ADMIN_OBJECTS, m.XedAdminObjects())
        adm.admin_clients()
    assert baseline(daemon) == before


# --- the memory a forger may hand over -------------------------------------------------------


def sealed_memfd(size: int, seals: int = SEALED, fill: bytes = b"") -> int:
    """A memfd of `size` bytes holding `fill`, with `seals` added."""
    fd = os.memfd_create("forged", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if fill:
        os.pwrite(fd, fill, 0)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _unsealable_memfd(_: Path) -> tuple[int, int]:
    fd = os.memfd_create("forged", os.MFD_CLOEXEC)  # no MFD_ALLOW_SEALING: F_SEAL_SEAL only
    os.ftruncate(fd, SIZE)
    return fd, SIZE


def _unsealed_memfd(_: Path) -> tuple[int, int]:
    return sealed_memfd(SIZE, seals=fcntl.F_SEAL_GROW), SIZE  # can still shrink


def _regular_file(tmp_path: Path) -> tuple[int, int]:
    path = tmp_path / "memory"
    path.write_bytes(bytes(SIZE))
    return os.open(path, os.O_RDWR | os.O_CLOEXEC), SIZE


def _pipe(_: Path) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end, SIZE


def _write_only(_: Path) -> tuple[int, int]:
    fd = sealed_memfd(SIZE)
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC), SIZE
    finally:
        os.close(fd)


def _hugetlb(_: Path) -> tuple[int, int]:
    try:
        fd = os.memfd_create("forged", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | os.MFD_HUGETLB)
    except OSError as exc:
        pytest.skip(f"this machine cannot create a hugetlb memfd: {exc.strerror}")
    os.ftruncate(fd, HUGE_PAGE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALED)
    return fd, HUGE_PAGE


REFUSED: dict[str, Callable[[Path], tuple[int, int]]] = {
    "size-beyond-the-memfd": lambda _: (sealed_memfd(PAGE_SIZE), SIZE),
    "size-2^64-4096": lambda _: (sealed_memfd(SIZE), (1 << 64) - PAGE_SIZE),
    "size-beyond-the-device": lambda _: (sealed_memfd(CAPACITY + PAGE_SIZE), CAPACITY + PAGE_SIZE),
    "size-0": lambda _: (sealed_memfd(SIZE), 0),
    "size-unaligned": lambda _: (sealed_memfd(SIZE), SIZE - 1),
    "memfd-without-sealing": _unsealable_memfd,
    "memfd-not-sealed-against-shrinking": _unsealed_memfd,
    "regular-file-on-disk": _regular_file,
    "pipe": _pipe,
    "write-only-descriptor": _write_only,
    "hugetlb-memfd": _hugetlb,
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_forged_dma_buf_with_untrusted_memory_is_einval(
    fresh_daemon: DaemonProcess, forge: Callable[..., Forger], tmp_path: Path, kind: str
) -> None:
    """A forged answer with memory that could fault the daemon, or a size out of bounds:
    import, mmap, sync and llseek of it are EINVAL, and it harms nobody else."""
    d = fresh_daemon
    memory, size = REFUSED[kind](tmp_path)
    try:
        with Device.open(d.socket_path) as dev:
            before = baseline(d)
            forger = forge(memory, size)
            errs = [
                errno_of(dev.prime_fd_to_handle, forger.fd),
                errno_of(dev.dmabuf_mmap, forger.fd, PAGE_SIZE),
                errno_of(dev.dmabuf_sync, forger.fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW),
                errno_of(dev.dmabuf_size, forger.fd),
            ]
            assert errs == [errno.EINVAL] * 4
            assert forger.answered == 4  # each was asked of the forger, then refused
            if kind == "memfd-not-sealed-against-shrinking":
                os.ftruncate(memory, 0)  # what it kept the right to do
            assert dev.version() is not None
            others_unharmed(d, before)
    finally:
        os.close(memory)


READ_ONLY: dict[str, Callable[[bytes], int]] = {
    "F_SEAL_WRITE": lambda fill: sealed_memfd(SIZE, SEALED | fcntl.F_SEAL_WRITE, fill),
    "F_SEAL_FUTURE_WRITE": lambda fill: sealed_memfd(SIZE, SEALED | F_SEAL_FUTURE_WRITE, fill),
    "O_RDONLY": lambda fill: _reopened_read_only(sealed_memfd(SIZE, fill=fill)),
}


def _reopened_read_only(fd: int) -> int:
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", sorted(READ_ONLY))
def test_forged_writable_claim_over_read_only_memory_imports_read_only(
    fresh_daemon: DaemonProcess, forge: Callable[..., Forger], kind: str
) -> None:
    """Memory the descriptor lets nobody write, claimed writable: the import is read-only
    (the device reads it, a device write faults the queue, a writable mmap is EACCES)."""
    d = fresh_daemon
    memory = READ_ONLY[kind](b"forged bytes")
    try:
        with Device.open(d.socket_path) as dev:
            before = baseline(d)
            forger = forge(memory, SIZE, writable=1)
            handle = dev.prime_fd_to_handle(forger.fd)
            assert dev.dmabuf_size(forger.fd) == SIZE
            assert errno_of(dev.dmabuf_mmap, forger.fd, prot=PROT_READ | PROT_WRITE) == (
                errno.EACCES
            )
            with dev.dmabuf_mmap(forger.fd, prot=PROT_READ) as seen:
                assert seen[0:12] == b"forged bytes"
            vm = dev.vm_create()
            dev.vm_bind(vm, handle, DATA_VA)
            batch_bo = dev.gem_create(BATCH_BO_SIZE)
            dev.vm_bind(vm, batch_bo, BATCH_VA)
            queue = dev.exec_queue_create(vm)
            with dev.mmap_bo(batch_bo) as cpu:

                def run(batch: Batch, seq: int) -> None:
                    cpu[0x100 : 0x100 + len(batch.tobytes())] = batch.tobytes()
                    dev.exec(queue, BATCH_VA + 0x100, syncs=[user_fence(BATCH_VA + FENCE, seq)])
                    dev.wait_user_fence(cpu.user_address(FENCE), seq, timeout=WAIT)
                    # a second blocking wait: a ban event is out before its reply
                    dev.wait_user_fence(cpu.user_address(FENCE), seq, timeout=WAIT)

                run(Batch().copy_dword(BATCH_VA + 0x800, DATA_VA).end(), 1)
                assert cpu[0x800:0x804] == b"forg"
                run(Batch().store_dword(DATA_VA, 0xBAD).end(), 2)
            bans = [e.data.reason for e in dev.events if e.event == Event.EXEC_QUEUE_BANNED]
            assert len(bans) == 1 and "read-only" in bans[0], bans
            assert os.pread(memory, 12, 0) == b"forged bytes"
            dev.exec_queue_destroy(queue)
            dev.vm_destroy(vm)
            dev.gem_close(batch_bo)
            dev.gem_close(handle)
            assert dev.version() is not None
            others_unharmed(d, before)
    finally:
        os.close(memory)
