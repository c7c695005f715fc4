"""The device's own mappings of BOs (xed/device/views.py): bounded, so a batch touching
more BOs than the daemon has descriptors to spare runs to its end, and a map the kernel
refuses is a GPU fault on that access, never a crash.

Each daemon mapping costs a descriptor (CPython's mmap keeps a dup of the file) and a
map-count entry; unbounded, a batch touching ~10 000 BOs ran the daemon out of the one
(or, with the shipped unit's descriptor limit, the other) and it died.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable
from errno import EFAULT, ETIME
from typing import Any

from helpers import BATCH_VA, WAIT, Gpu, errno_of

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols import Event, Op, encode_reply
from protocols import messages as m
from protocols.constants import PAGE_SIZE, PROT_READ
from xed.device.views import views_limit

NOFILE = 2048
# BOs a batch touches: each costs the daemon a descriptor of its own, and a second one
# while mapped; fewer than NOFILE - limits.descriptor_reserve - views_limit(NOFILE)
MANY = NOFILE * 17 // 32
BASE = 0x10_0000_0000  # where the many BOs are bound, a page apart
SLACK = 32  # descriptors the daemon may open for anything else meanwhile


def test_batch_touching_more_bos_than_the_descriptor_limit_allows_runs(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """With a descriptor limit of NOFILE, one batch stores into MANY (> NOFILE / 2) BOs:
    it completes, every store lands, and the daemon's own mappings stay within their
    bound (its descriptor count grows by at most views_limit(NOFILE))."""
    daemon = make_daemon(nofile=NOFILE)
    with Device.open(daemon.socket_path) as dev:
        gpu = Gpu(dev)
        handles = []
        for i in range(MANY):
            handle = dev.gem_create(PAGE_SIZE)
            dev.vm_bind(gpu.vm, handle, BASE + i * PAGE_SIZE)
            handles.append(handle)
        batch = Batch()
        for i in range(MANY):
            batch.store_dword(BASE + i * PAGE_SIZE + 4, 0x1000 + i)
        before = daemon.open_fds()
        gpu.run(batch.end())
        assert daemon.open_fds() - before <= views_limit(NOFILE) + SLACK
        assert not gpu.banned_queues()
        for i in (0, MANY // 2, MANY - 1):
            with dev.mmap_bo(handles[i]) as bo:
                assert bo.read_u32(4) == 0x1000 + i
        gpu.run(Batch().store_dword(BASE + 8, 7).end())  # the first BO again: mapped anew
        with dev.mmap_bo(handles[0]) as bo:
            assert bo.read_u32(8) == 7
        gpu.close()


def fake_exporter(memfd: int, size: int) -> tuple[socket.socket, socket.socket]:
    """(owner's end, handed-out end) of a "dma-buf" of no xed daemon: its DMA_BUF_ATTACH
    answer (to request 1, as every import asks) already waits, writable, with `memfd`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    identity = m.DeviceIdentity(name="fake", device_id=1, revision=0, instance="fake")
    reply = m.DmaBufAttachReply(size=size, writable=1, device=identity)
    ours.sendmsg(
        [encode_reply(1, Op.DMA_BUF_ATTACH, 0, reply)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, memfd.to_bytes(4, "little"))],
    )
    return ours, theirs


def test_buffer_the_device_cannot_map_is_a_gpu_fault(daemon: DaemonProcess) -> None:
    """A foreign buffer whose owner sealed it against writes after the import cannot be
    mapped writable by the device: a batch storing there is a GPU fault (the queue is
    banned, saying why), the batch's fence still signals, and the daemon goes on."""
    memfd = os.memfd_create("sealed-later", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, PAGE_SIZE)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)  # what an import asks
    owner, buf = fake_exporter(memfd, PAGE_SIZE)
    try:
        with Device.open(daemon.socket_path) as dev:
            gpu = Gpu(dev)
            handle = dev.prime_fd_to_handle(buf.fileno())
            dev.vm_bind(gpu.vm, handle, BASE)
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # nobody maps it yet
            seq = gpu.submit(Batch().store_dword(BASE, 1).end())
            gpu.wait(seq)
            banned = next_ban(dev)
            assert banned.exec_queue_id == gpu.queue and banned.address == BASE
            assert "cannot map" in banned.reason and "EPERM" in banned.reason
            other = dev.exec_queue_create(gpu.vm)
            gpu.run(Batch().store_dword(BATCH_VA + 0x40, 2).end(), other)
            assert gpu.cpu.read_u32(0x40) == 2
            gpu.close()
    finally:
        owner.close()
        buf.close()
        os.close(memfd)


def next_ban(dev: Device) -> Any:
    while True:
        event = dev.wait_event(timeout=WAIT / 1e9)
        if event.event == Event.EXEC_QUEUE_BANNED:
            return event.data


def test_user_fence_wait_reads_a_buffer_sealed_against_writes(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """WAIT_USER_FENCE on a forwarded foreign buffer sealed against writes after the
    import (the client maps it read-only) reads it, as copy_from_user reads a read-only
    mapping: the value there passes, another times out (ETIME); a VM_BIND user fence
    there, a write the daemon cannot make, is EFAULT."""
    daemon = make_daemon('[dma_buf]\nimported_mmap = "forward"\n')
    memfd = os.memfd_create("sealed-later", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, PAGE_SIZE)
    os.pwrite(memfd, (7).to_bytes(8, "little"), 0)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)  # what an import asks
    owner, buf = fake_exporter(memfd, PAGE_SIZE)
    try:
        with Device.open(daemon.socket_path) as dev:
            handle = dev.prime_fd_to_handle(buf.fileno())
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # before any mapping
            mapping = dev.mmap(dev.gem_mmap_offset(handle), PAGE_SIZE, prot=PROT_READ)
            address = mapping.user_address(0)
            dev.wait_user_fence(address, 7, timeout=0)
            assert errno_of(dev.wait_user_fence, address, 8, timeout=0) == ETIME
            vm = dev.vm_create()
            fence = user_fence(address, 1)
            other = dev.gem_create(PAGE_SIZE)
            assert errno_of(dev.vm_bind, vm, other, BASE, syncs=[fence]) == EFAULT
            dev.wait_user_fence(address, 7, timeout=0)  # the read-only map still serves
            mapping.close()
    finally:
        owner.close()
        buf.close()
        os.close(memfd)


def test_user_fence_in_a_read_only_import_is_efault(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """A VM_BIND user fence in a forwarded mapping of a read-only foreign import (sealed
    against writes before the import) is EFAULT, as copy_to_user into a read-only
    mapping is (it crashed the ioctl: the daemon stored into its read-only map);
    WAIT_USER_FENCE there reads it."""
    daemon = make_daemon('[dma_buf]\nimported_mmap = "forward"\n')
    memfd = os.memfd_create("sealed-before", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, PAGE_SIZE)
    os.pwrite(memfd, (5).to_bytes(8, "little"), 0)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    owner, buf = fake_exporter(memfd, PAGE_SIZE)
    try:
        with Device.open(daemon.socket_path) as dev:
            handle = dev.prime_fd_to_handle(buf.fileno())
            mapping = dev.mmap(dev.gem_mmap_offset(handle), PAGE_SIZE, prot=PROT_READ)
            address = mapping.user_address(0)
            vm = dev.vm_create()
            other = dev.gem_create(PAGE_SIZE)
            assert errno_of(dev.vm_bind, vm, other, BASE, syncs=[user_fence(address, 1)]) == EFAULT
            dev.wait_user_fence(address, 5, timeout=0)
            assert os.pread(memfd, 8, 0) == (5).to_bytes(8, "little")
            mapping.close()
    finally:
        owner.close()
        buf.close()
        os.close(memfd)
