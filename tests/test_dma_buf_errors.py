"""What dma-buf sharing refuses, and with which errno: importing what is not a dma-buf,
export flags and handles, writable maps of a read-only dma-buf, and bad arguments to the
dma-buf's own mmap, llseek and SYNC. The valid neighbours of a refusal (the last page,
the valid flags) are tested beside it, so that an off-by-one shows whichever way it
goes. A refusal must leave the connection usable; several tests make a call after it.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent import Agent
from dma_buf_support import RW, SIZE, errno_of, exported, ino

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_VALID_FLAGS_MASK,
    DMA_BUF_SYNC_WRITE,
    DRM_CLOEXEC,
    DRM_RDWR,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    SEEK_END,
    SEEK_SET,
)

# --- helpers --------------------------------------------------------------------------------


def dma_buf_mmap_request(
    dev: Device, fd: int, offset: int, length: int, prot: int = RW, flags: int = MAP_SHARED
) -> Any:
    """A raw DMA_BUF_MMAP; closes the descriptor the reply carries."""
    return dev.ioctl(
        Op.DMA_BUF_MMAP,
        m.XedMmap(offset=offset, length=length, prot=prot, flags=flags),
        fds=[fd],
    )


def llseek(dev: Device, fd: int, offset: int, whence: int) -> int:
    reply: m.DmaBufLlseekReply = dev.ioctl(
        Op.DMA_BUF_LLSEEK, m.DmaBufLlseek(offset=offset, whence=whence), fds=[fd]
    )
    return reply.offset


# --- errors ---------------------------------------------------------------------------------


def test_import_closed_fd_is_ebadf(dev: Device) -> None:
    """A closed descriptor: EBADF from sendmsg for import, mmap and sync; the connection lives."""
    _, fd = exported(dev)
    os.close(fd)
    assert errno_of(dev.prime_fd_to_handle, fd) == errno.EBADF
    assert errno_of(dev.dmabuf_mmap, fd, PAGE_SIZE) == errno.EBADF
    assert errno_of(dev.dmabuf_sync, fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW) == errno.EBADF
    assert dev.version() is not None


def _memfd() -> list[int]:
    fd = os.memfd_create("not-a-dma-buf")
    os.ftruncate(fd, SIZE)
    return [fd]


def _pipe_read() -> list[int]:
    r, w = os.pipe()
    return [r, w]


def _pipe_write() -> list[int]:
    r, w = os.pipe()
    return [w, r]


def _regular_file(tmp_path: Path) -> list[int]:
    path = tmp_path / "regular"
    path.write_bytes(bytes(SIZE))
    return [os.open(path, os.O_RDWR)]


def _socketpair_dead_peer() -> list[int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    return [ours.detach()]


def _stream_socketpair() -> list[int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return [ours.detach(), theirs.detach()]


def _dev_null() -> list[int]:
    return [os.open(os.devnull, os.O_RDWR)]


WRONG_KINDS: dict[str, Callable[[Path], list[int]]] = {
    "memfd": lambda _: _memfd(),
    "pipe-read-end": lambda _: _pipe_read(),
    "pipe-write-end": lambda _: _pipe_write(),
    "regular-file": _regular_file,
    "dev-null": lambda _: _dev_null(),
    "seqpacket-socketpair-dead-peer": lambda _: _socketpair_dead_peer(),
    "stream-socketpair": lambda _: _stream_socketpair(),
}


@pytest.mark.parametrize("kind", sorted(WRONG_KINDS))
def test_import_of_wrong_kind_of_fd_is_einval(dev: Device, tmp_path: Path, kind: str) -> None:
    """A descriptor that is not a dma-buf imports as EINVAL; the connection keeps working."""
    fds = WRONG_KINDS[kind](tmp_path)
    try:
        assert errno_of(dev.prime_fd_to_handle, fds[0]) == errno.EINVAL
        assert dev.version() is not None
    finally:
        for fd in fds:
            os.close(fd)


def test_import_of_silent_seqpacket_socket_is_einval(dev: Device) -> None:
    """One end of a socketpair whose other end is open but never answers: EINVAL."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert errno_of(dev.prime_fd_to_handle, ours.fileno()) == errno.EINVAL
        assert dev.version() is not None
    finally:
        ours.close()
        theirs.close()


def test_import_of_own_daemon_connection_is_einval(daemon: DaemonProcess) -> None:
    """Importing the client's own daemon connection socket: EINVAL, and the connection lives."""
    # the daemon must not speak on it: whoever read the answer first decided the outcome,
    # so one try could pass by luck
    for _ in range(8):
        with Device.open(daemon.socket_path) as dev:
            err = errno_of(dev.prime_fd_to_handle, dev.transport.sock.fileno())
            assert err == errno.EINVAL
            handle = dev.gem_create(PAGE_SIZE)
            dev.gem_close(handle)


def test_import_of_another_connection_socket_is_einval(dev: Device, daemon: DaemonProcess) -> None:
    """Another live daemon connection (of this daemon) is not a dma-buf either: EINVAL."""
    with Device.open(daemon.socket_path) as other:
        assert errno_of(dev.prime_fd_to_handle, other.transport.sock.fileno()) == errno.EINVAL
        assert other.version() is not None
    assert dev.version() is not None


@pytest.mark.parametrize("op", ["mmap", "sync", "llseek"])
def test_dma_buf_ops_on_a_memfd_are_einval(dev: Device, op: str) -> None:
    """DMA_BUF_MMAP, DMA_BUF_IOCTL_SYNC and DMA_BUF_LLSEEK on a plain memfd: EINVAL."""
    (fd,) = _memfd()
    try:
        if op == "mmap":
            err = errno_of(dma_buf_mmap_request, dev, fd, 0, PAGE_SIZE)
        elif op == "sync":
            err = errno_of(dev.dmabuf_sync, fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
        else:
            err = errno_of(llseek, dev, fd, 0, SEEK_END)
        assert err == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "flags",
    [
        DRM_CLOEXEC - 1,
        DRM_CLOEXEC + 1,
        DRM_RDWR - 1,
        DRM_RDWR + 1,
        DRM_CLOEXEC | DRM_RDWR | 0x4,
        1 << 31,
        0xFFFF_FFFF,
    ],
    ids=["cloexec-1", "cloexec+1", "rdwr-1", "rdwr+1", "both+4", "bit31", "all"],
)
def test_export_with_unknown_flags_is_einval(dev: Device, flags: int) -> None:
    """PRIME_HANDLE_TO_FD flags other than DRM_CLOEXEC | DRM_RDWR: EINVAL."""
    handle = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.prime_handle_to_fd, handle, flags) == errno.EINVAL


def test_export_unknown_flags_checked_before_handle(dev: Device) -> None:
    """Bad flags on a handle that does not exist: EINVAL (flags are checked first)."""
    assert errno_of(dev.prime_handle_to_fd, 0xDEAD, DRM_CLOEXEC + 1) == errno.EINVAL


@pytest.mark.parametrize(
    "flags",
    [0, DRM_CLOEXEC, DRM_RDWR, DRM_CLOEXEC | DRM_RDWR],
    ids=["0", "cloexec", "rdwr", "both"],
)
def test_export_valid_flags_give_a_dma_buf(dev: Device, flags: int) -> None:
    """Each valid flag combination exports; the descriptor is close-on-exec iff DRM_CLOEXEC."""
    handle = dev.gem_create(2 * PAGE_SIZE)
    fd = dev.prime_handle_to_fd(handle, flags)
    try:
        assert dev.dmabuf_size(fd) == 2 * PAGE_SIZE
        assert os.get_inheritable(fd) == (not flags & DRM_CLOEXEC)
    finally:
        os.close(fd)


def test_export_of_unknown_handle_is_enoent(dev: Device) -> None:
    """PRIME_HANDLE_TO_FD of a handle that never existed, or was closed: ENOENT."""
    assert errno_of(dev.prime_handle_to_fd, 0xFFFF) == errno.ENOENT
    assert errno_of(dev.prime_handle_to_fd, 0) == errno.ENOENT
    handle = dev.gem_create(PAGE_SIZE)
    dev.gem_close(handle)
    assert errno_of(dev.prime_handle_to_fd, handle) == errno.ENOENT


def test_export_of_another_files_handle_is_enoent(dev: Device, daemon: DaemonProcess) -> None:
    """A handle number valid only in another file: ENOENT here."""
    with Device.open(daemon.socket_path) as other:
        theirs = other.gem_create(PAGE_SIZE)  # dev (a fresh file) holds no handle yet
        assert errno_of(dev.prime_handle_to_fd, theirs) == errno.ENOENT


def test_export_of_vm_private_bo_is_eperm(dev: Device) -> None:
    """A BO created private to a VM cannot be exported: EPERM."""
    vm = dev.vm_create()
    handle = dev.gem_create(PAGE_SIZE, vm_id=vm)
    assert errno_of(dev.prime_handle_to_fd, handle) == errno.EPERM
    assert errno_of(dev.prime_handle_to_fd, handle, 0) == errno.EPERM


def test_read_only_dma_buf_maps_read_only_and_writable_shared_is_eacces(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """No DRM_RDWR: maps read-only anywhere, writable shared is EACCES, re-export is read-only."""
    handle, fd = exported(dev, b"read-only", flags=DRM_CLOEXEC)
    again = dev.prime_handle_to_fd(handle, DRM_CLOEXEC | DRM_RDWR)
    try:
        assert ino(again) == ino(fd)
        with dev.dmabuf_mmap(fd, prot=PROT_READ) as mp:
            assert mp[0:9] == b"read-only"
        assert errno_of(dev.dmabuf_mmap, fd, prot=RW) == errno.EACCES
        assert errno_of(dev.dmabuf_mmap, again, prot=RW) == errno.EACCES
        assert errno_of(dev.dmabuf_mmap, fd, prot=PROT_WRITE) == errno.EACCES
        b = agents(daemon)
        result = b.run(
            """
            (fd,) = fds
            with dev.dmabuf_mmap(fd, prot=PROT_READ) as mp:
                seen = mp[0:9].decode()
            result = [seen, errno_of(dev.dmabuf_mmap, fd, prot=PROT_READ | PROT_WRITE)]
            os.close(fd)
            """,
            [fd],
        )
        assert result == ["read-only", errno.EACCES]
    finally:
        os.close(fd)
        os.close(again)


def test_read_only_dma_buf_mmap_descriptor_cannot_be_mapped_writable(dev: Device) -> None:
    """A read-only dma-buf's mmap descriptor is O_RDONLY: a writable shared mmap of it is EACCES."""
    handle, fd = exported(dev, b"sealed", flags=DRM_CLOEXEC)
    try:
        reply, fds = dev.ioctl_fds(
            Op.DMA_BUF_MMAP,
            m.XedMmap(offset=0, length=PAGE_SIZE, prot=PROT_READ, flags=MAP_SHARED),
            fds=[fd],
        )
        (memfd,) = fds
        try:
            assert fcntl.fcntl(memfd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            with mmap.mmap(memfd, PAGE_SIZE, mmap.MAP_SHARED, PROT_READ, offset=reply.offset) as ro:
                assert ro[0:6] == b"sealed"
            with pytest.raises(OSError) as e:
                mmap.mmap(memfd, PAGE_SIZE, mmap.MAP_SHARED, RW, offset=reply.offset)
            assert e.value.errno == errno.EACCES
        finally:
            os.close(memfd)
        with dev.mmap_bo(handle) as mine:
            assert mine[0:6] == b"sealed"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("offset", "length", "prot", "flags"),
    [
        (0, SIZE + PAGE_SIZE, RW, MAP_SHARED),
        (0, 2 * SIZE, RW, MAP_SHARED),
        (SIZE // 2, SIZE, RW, MAP_SHARED),
        (SIZE, PAGE_SIZE, RW, MAP_SHARED),
        (1 << 62, PAGE_SIZE, RW, MAP_SHARED),
        (PAGE_SIZE + 1, PAGE_SIZE, RW, MAP_SHARED),
        (PAGE_SIZE // 2, PAGE_SIZE, RW, MAP_SHARED),
        (0, 0, RW, MAP_SHARED),
        (0, PAGE_SIZE, RW, MAP_PRIVATE),
        (0, PAGE_SIZE, PROT_READ, MAP_PRIVATE),
        (0, PAGE_SIZE, RW, 0),
        (0, PAGE_SIZE, RW, MAP_SHARED | MAP_PRIVATE),
        (0, PAGE_SIZE, 0x8, MAP_SHARED),
    ],
    ids=[
        "length-beyond-end",
        "twice-the-size",
        "offset+length-beyond",
        "offset-at-end",
        "offset-far-away",
        "unaligned-offset",
        "half-page-offset",
        "length-zero",
        "private",
        "private-read-only",
        "no-share-flag",
        "shared+private",
        "unknown-prot",
    ],
)
def test_dma_buf_mmap_bad_arguments_are_einval(
    dev: Device, offset: int, length: int, prot: int, flags: int
) -> None:
    """DMA_BUF_MMAP beyond the end, unaligned, empty, private or with bad prot: EINVAL."""
    _, fd = exported(dev)
    try:
        err = errno_of(dma_buf_mmap_request, dev, fd, offset, length, prot, flags)
        assert err == errno.EINVAL
    finally:
        os.close(fd)


def test_dma_buf_mmap_of_the_last_page_works(dev: Device) -> None:
    """The largest legal range ending exactly at the end of the buffer maps."""
    _, fd = exported(dev)
    try:
        reply = dma_buf_mmap_request(dev, fd, SIZE - PAGE_SIZE, PAGE_SIZE)
        assert (reply.offset, reply.length) == (SIZE - PAGE_SIZE, PAGE_SIZE)
    finally:
        os.close(fd)


def test_dma_buf_llseek_tells_the_size(dev: Device) -> None:
    """llseek (0, SEEK_END) is the size for 4 KiB << i, (0, SEEK_SET) is 0 (IGT llseek-size)."""
    for i in range(10):
        size = PAGE_SIZE << i
        handle = dev.gem_create(size)
        fd = dev.prime_handle_to_fd(handle)
        try:
            assert llseek(dev, fd, 0, SEEK_END) == size
            assert llseek(dev, fd, 0, SEEK_SET) == 0
            assert dev.dmabuf_size(fd) == size
        finally:
            os.close(fd)
            dev.gem_close(handle)


@pytest.mark.parametrize(
    ("offset", "whence"),
    [
        (-1, SEEK_END),
        (1, SEEK_END),
        (1, SEEK_SET),
        (SIZE, SEEK_SET),
        (SIZE + 1, SEEK_SET),
        (SIZE - 1, SEEK_SET),
        (0, 1),  # SEEK_CUR
        (0, 3),  # SEEK_DATA
        (0, 4),  # SEEK_HOLE
        (0, 0xFFFF_FFFF),
    ],
    ids=[
        "minus-1-end",
        "plus-1-end",
        "1-set",
        "size-set",
        "size+1-set",
        "size-1-set",
        "cur",
        "data",
        "hole",
        "whence-max",
    ],
)
def test_dma_buf_llseek_anything_else_is_einval(dev: Device, offset: int, whence: int) -> None:
    """llseek other than offset 0 with SEEK_SET or SEEK_END: EINVAL (IGT basic-llseek-bad)."""
    _, fd = exported(dev)
    try:
        assert errno_of(llseek, dev, fd, offset, whence) == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "flags",
    [
        DMA_BUF_SYNC_VALID_FLAGS_MASK + 1,
        0xFFFF_FFFF_FFFF_FFFF,
        DMA_BUF_SYNC_END,
        DMA_BUF_SYNC_START,
        DMA_BUF_SYNC_RW | 0x10,
        1 << 63,
    ],
    ids=["mask+1", "all-ones", "end-alone", "zero", "rw+0x10", "bit63"],
)
def test_dma_buf_sync_bad_flags_are_einval(dev: Device, flags: int) -> None:
    """DMA_BUF_IOCTL_SYNC with unknown bits, or neither READ nor WRITE: EINVAL."""
    _, fd = exported(dev)
    try:
        assert errno_of(dev.dmabuf_sync, fd, flags) == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "direction", [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW], ids=["r", "w", "rw"]
)
def test_dma_buf_sync_valid_flags_are_accepted(dev: Device, direction: int) -> None:
    """START and END with READ, WRITE or RW are accepted, on a mapped dma-buf."""
    _, fd = exported(dev)
    try:
        with dev.dmabuf_mmap(fd) as mp:
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_START | direction)
            mp[0:2] = b"ok"
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
    finally:
        os.close(fd)


def test_dma_buf_sync_end_without_start_is_accepted(dev: Device) -> None:
    """END without a START is not an error (the kernel keeps no such state)."""
    _, fd = exported(dev)
    try:
        for direction in (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW):
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
    finally:
        os.close(fd)
