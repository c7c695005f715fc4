"""Fake offsets across files: who may map what another file was given.

drm_gem_mmap looks the offset up (none: EINVAL), then drm_vma_node_is_allowed: only a
file that holds a handle to the object (drm_gem_handle_create_tail allows the file,
drm_gem_object_release_handle revokes it with its last handle) may map it (EACCES). A
channel joined to a file is that file. After each refusal the daemon answers and the
object's own file still maps it.

Then memory a client changes after handing it over: a forged dma-buf's memfd grown
after the import (the buffer stays the size judged), and one sealed against writes
before the daemon mapped it: the device reads it through a read-only map, as its DMA
would, and a write there is a fault (EFAULT for the debugger, a GPU fault for a batch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from errno import EFAULT

import pytest
from conftest import baseline
from helpers import BATCH_VA, Gpu, errno_of
from test_device_views import fake_exporter
from test_dma_buf_forged import SIZE, Forger, forge, others_unharmed, sealed_memfd
from test_mmap import RW, mmap_errno, mmap_request

from clients import Batch, Device
from clients.daemon import DaemonProcess
from protocols.constants import PAGE_SIZE, PROT_READ
from protocols.memfd import F_SEAL_FUTURE_WRITE

__all__ = ["forge"]  # the fixture, imported to be found
SEALED_VA = 0x3_0000_0000


def test_opened_bo_offset_is_eacces_after_the_openers_last_handle(
    fresh_daemon: DaemonProcess,
) -> None:
    """GEM_OPEN allows the opener the object's offset; its GEM_CLOSE revokes it (EACCES)
    while the flinking file still maps it."""
    d = fresh_daemon
    with Device.open(d.socket_path) as dev:
        before = baseline(d)
        bo = dev.gem_create(2 * PAGE_SIZE)
        offset = dev.gem_mmap_offset(bo)
        with Device.open(d.socket_path) as other:
            assert mmap_errno(other, offset, PAGE_SIZE) == errno.EACCES
            handle, _ = other.gem_open(dev.gem_flink(bo))
            assert other.gem_mmap_offset(handle) == offset  # one node per object
            with other.mmap_bo(handle) as theirs:
                theirs[0:4] = b"open"
            other.gem_close(handle)
            assert mmap_errno(other, offset, PAGE_SIZE) == errno.EACCES
        with dev.mmap_bo(bo) as mine:
            assert mine[0:4] == b"open"
        dev.gem_close(bo)
        assert mmap_errno(dev, offset, PAGE_SIZE) == errno.EINVAL
        assert baseline(d) == before


def test_channel_maps_its_files_offsets(fresh_daemon: DaemonProcess) -> None:
    """A channel is its file: it maps an offset the file was given, and a BO it made
    itself maps through the file too; another file is refused both (EACCES)."""
    d = fresh_daemon
    with (
        Device.open(d.socket_path) as dev,
        Device.open(d.socket_path, join=dev.token) as channel,
        Device.open(d.socket_path) as other,
    ):
        bo = dev.gem_create(PAGE_SIZE)
        offset = dev.gem_mmap_offset(bo)
        mmap_request(channel, offset, PAGE_SIZE, RW)  # answered: the file's own offset
        mine = channel.gem_create(PAGE_SIZE)
        theirs = channel.gem_mmap_offset(mine)
        assert mmap_errno(other, offset, PAGE_SIZE) == errno.EACCES
        assert mmap_errno(other, theirs, PAGE_SIZE) == errno.EACCES
        with dev.mmap_bo(bo) as cpu:
            cpu[0:2] = b"ok"


def test_grown_forged_memory_is_bounded_by_the_size_claimed(
    fresh_daemon: DaemonProcess, forge: Callable[..., Forger]
) -> None:
    """A forged dma-buf's memfd grown after the import: the buffer keeps the size the
    import judged; a mapping past it is EINVAL, the bytes past it are never handed out."""
    d = fresh_daemon
    memory = sealed_memfd(SIZE, seals=fcntl.F_SEAL_SHRINK, fill=b"claimed")
    try:
        with Device.open(d.socket_path) as dev:
            before = baseline(d)
            forger = forge(memory, SIZE)
            handle = dev.prime_fd_to_handle(forger.fd)
            os.ftruncate(memory, 4 * SIZE)
            os.pwrite(memory, b"secret", SIZE)
            assert dev.dmabuf_size(forger.fd) == SIZE
            assert errno_of(dev.dmabuf_mmap, forger.fd, PAGE_SIZE, offset=SIZE) == errno.EINVAL
            assert errno_of(dev.dmabuf_mmap, forger.fd, SIZE + PAGE_SIZE) == errno.EINVAL
            with dev.dmabuf_mmap(forger.fd, prot=PROT_READ) as seen:
                assert len(seen) == SIZE and seen[0:7] == b"claimed"
            dev.gem_close(handle)
            others_unharmed(d, before)
    finally:
        os.close(memory)


PATTERN = bytes(range(256)) * (PAGE_SIZE // 256)  # what the foreign buffer holds
SEALED_NAME = "xed-test-sealed-later"  # the memfd's name, as the daemon's maps show it


@contextlib.contextmanager
def foreign_buffer() -> Iterator[tuple[int, socket.socket]]:
    """(memfd, dma-buf) of a fake exporter: one page holding PATTERN, sealed against
    shrinking (what an import asks) and nothing else yet; closed at the end."""
    memfd = os.memfd_create(SEALED_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, PAGE_SIZE)
    os.pwrite(memfd, PATTERN, 0)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    owner, buf = fake_exporter(memfd, PAGE_SIZE)
    try:
        yield memfd, buf
    finally:
        owner.close()
        buf.close()
        os.close(memfd)


def daemon_maps(daemon: DaemonProcess) -> list[str]:
    """The permissions of each of the daemon's maps of the foreign buffer (/proc maps)."""
    with open(f"/proc/{daemon.pid}/maps") as maps:
        return [line.split()[1] for line in maps if f"memfd:{SEALED_NAME}" in line]


@contextlib.contextmanager
def debugged_foreign_buffer(
    d: DaemonProcess,
) -> Iterator[tuple[int, socket.socket, Device, Device]]:
    """A foreign buffer (foreign_buffer()), a drm connection to import it and a debugger
    connection; when the test is done with them, the daemon is alive and holds nothing
    more than before."""
    with (
        foreign_buffer() as (memfd, buf),
        Device.open(d.socket_path) as dev,
        Device.open(d.socket_path, role="debugger") as dbg,
    ):
        before = baseline(d)
        yield memfd, buf, dev, dbg
        assert d.proc is not None and d.proc.poll() is None
        assert baseline(d) == before


@pytest.mark.parametrize("seal", [fcntl.F_SEAL_WRITE, F_SEAL_FUTURE_WRITE])
def test_debugger_reads_a_buffer_sealed_against_writes_and_cannot_write_it(
    fresh_daemon: DaemonProcess, seal: int
) -> None:
    """A foreign buffer sealed against writes after the import: a debugger's VM read there
    returns its bytes (the daemon maps it read-only, once), a write is EFAULT and changes
    nothing, before the read-only map and after; the map goes with the BO."""
    d = fresh_daemon
    with debugged_foreign_buffer(d) as (memfd, buf, dev, dbg):
        handle = dev.prime_fd_to_handle(buf.fileno())
        vm = dev.vm_create()
        dev.vm_bind(vm, handle, SEALED_VA)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seal)  # nobody maps it yet
        dbg.debug_attach(os.getpid())
        assert errno_of(dbg.debug_vm_write, dev.client_id, vm, SEALED_VA, b"x") == EFAULT
        assert dbg.debug_vm_read(dev.client_id, vm, SEALED_VA + 8, 8) == PATTERN[8:16]
        assert errno_of(dbg.debug_vm_write, dev.client_id, vm, SEALED_VA + 8, b"y") == EFAULT
        assert dbg.debug_vm_read(dev.client_id, vm, SEALED_VA, PAGE_SIZE) == PATTERN
        assert os.pread(memfd, PAGE_SIZE, 0) == PATTERN
        assert daemon_maps(d) == ["r--s"]
        dbg.debug_detach(os.getpid())
        dev.vm_destroy(vm)
        dev.gem_close(handle)
        assert daemon_maps(d) == []


def test_gpu_batch_reads_a_buffer_sealed_against_writes(fresh_daemon: DaemonProcess) -> None:
    """A batch copying out of a foreign buffer sealed against writes after the import
    gets its bytes (MI_COPY_MEM_MEM and MEM_COPY read it through a read-only map); a
    store into it is still a GPU fault, and leaves it as it was."""
    d = fresh_daemon
    with foreign_buffer() as (memfd, buf), Device.open(d.socket_path) as dev:
        gpu = Gpu(dev)
        handle = dev.prime_fd_to_handle(buf.fileno())
        dev.vm_bind(gpu.vm, handle, SEALED_VA)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # nobody maps it yet
        copy = Batch().copy_dword(BATCH_VA + 0x40, SEALED_VA + 4)
        gpu.run(copy.mem_copy(BATCH_VA + 0x80, SEALED_VA + 16, 32).end())
        assert not gpu.banned_queues()
        assert gpu.cpu[0x40:0x44] == PATTERN[4:8]
        assert gpu.cpu[0x80:0xA0] == PATTERN[16:48]
        gpu.expect_ban(Batch().store_dword(SEALED_VA, 1).end(), gpu.queue)
        assert os.pread(memfd, PAGE_SIZE, 0) == PATTERN
        gpu.close()
        dev.gem_close(handle)
        assert d.proc is not None and d.proc.poll() is None


def test_debugger_write_into_a_sealed_buffer_past_a_bo_is_short(
    fresh_daemon: DaemonProcess,
) -> None:
    """A debugger write from a BO on into the write-sealed foreign buffer bound after it
    writes the BO's part and answers that count, no error (xe's eudebug VM file: a
    short pwrite); one starting in the sealed buffer is EFAULT; a read reads both."""
    d = fresh_daemon
    with debugged_foreign_buffer(d) as (memfd, buf, dev, dbg):
        bo = dev.gem_create(PAGE_SIZE)
        handle = dev.prime_fd_to_handle(buf.fileno())
        vm = dev.vm_create()
        dev.vm_bind(vm, bo, SEALED_VA - PAGE_SIZE)
        dev.vm_bind(vm, handle, SEALED_VA)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # nobody maps it yet
        dbg.debug_attach(os.getpid())
        cid = dev.client_id
        assert dbg.debug_vm_write(cid, vm, SEALED_VA - 8, b"BO part!sealed!!") == 8
        with dev.mmap_bo(bo) as cpu:
            assert cpu[PAGE_SIZE - 16 :] == bytes(8) + b"BO part!"
        assert os.pread(memfd, PAGE_SIZE, 0) == PATTERN
        assert errno_of(dbg.debug_vm_write, cid, vm, SEALED_VA, b"sealed!!") == EFAULT
        assert dbg.debug_vm_read(cid, vm, SEALED_VA - 8, 16) == b"BO part!" + PATTERN[:8]
        dbg.debug_detach(os.getpid())
        dev.vm_destroy(vm)
        dev.gem_close(handle)
        dev.gem_close(bo)


def test_offset_allowed_while_any_handle_of_the_file_is_open(
    fresh_daemon: DaemonProcess,
) -> None:
    """A file with two handles to one object (GEM_OPEN, PRIME import) maps its offset
    until it closes both (drm_vma_node_allow counts per file), then EACCES."""
    d = fresh_daemon
    with Device.open(d.socket_path) as dev, Device.open(d.socket_path) as other:
        before = baseline(d)
        bo = dev.gem_create(PAGE_SIZE)
        offset = dev.gem_mmap_offset(bo)
        dmabuf = dev.prime_handle_to_fd(bo)
        try:
            opened, _ = other.gem_open(dev.gem_flink(bo))
            imported = other.prime_fd_to_handle(dmabuf)
        finally:
            os.close(dmabuf)
        assert opened != imported
        other.gem_close(opened)
        mmap_request(other, offset, PAGE_SIZE, RW)  # the import still allows it
        other.gem_close(imported)
        assert mmap_errno(other, offset, PAGE_SIZE) == errno.EACCES
        mmap_request(dev, offset, PAGE_SIZE, RW)
        dev.gem_close(bo)
        assert baseline(d) == before
