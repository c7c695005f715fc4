"""PRIME and dma-bufs on a Device: exporting a BO as a dma-buf descriptor, importing
one (of this device or of another xed daemon), and what a dma-buf's holder may do with
it (its size, mmap, the CPU-access bracket an exporter needs for coherency)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Protocol

from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DRM_CLOEXEC,
    DRM_RDWR,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    SEEK_END,
)

from . import unplug
from .mapping import Mapping
from .roles import Ioctls


class _Device(Ioctls, Protocol):
    """What these ops use of the Device they are mixed into, beside its ioctls."""

    _bo_sizes: dict[int, int]  # handle -> size, for mmap_bo() and vm_bind()

    def unplug_watch(self) -> unplug.UnplugWatch: ...

    def dmabuf_size(self, fd: int) -> int: ...

    def dmabuf_sync(self, fd: int, flags: int) -> None: ...


class PrimeOps:
    """Mixed into Device."""

    def prime_handle_to_fd(self: _Device, handle: int, flags: int = DRM_CLOEXEC | DRM_RDWR) -> int:
        """Export a BO as a dma-buf descriptor (yours to close, send or map)."""
        reply, (fd,) = self.ioctl_fds(
            Op.PRIME_HANDLE_TO_FD, m.DrmPrimeHandle(handle=handle, flags=flags)
        )
        if not flags & DRM_CLOEXEC:
            os.set_inheritable(fd, True)
        self._bo_sizes.setdefault(handle, reply.size)
        return fd

    def prime_fd_to_handle(self: _Device, fd: int) -> int:
        """Import a dma-buf (of this device, or of another xed daemon) as a GEM handle."""
        reply: m.DrmPrimeHandleReply = self.ioctl(
            Op.PRIME_FD_TO_HANDLE, m.DrmPrimeHandle(fd=fd), fds=[fd]
        )
        self._bo_sizes[reply.handle] = reply.size
        return reply.handle

    def dmabuf_size(self: _Device, fd: int) -> int:
        """lseek(fd, 0, SEEK_END) on a dma-buf: its size."""
        reply: m.DmaBufLlseekReply = self.ioctl(
            Op.DMA_BUF_LLSEEK, m.DmaBufLlseek(offset=0, whence=SEEK_END), fds=[fd]
        )
        return reply.offset

    def dmabuf_mmap(
        self: _Device,
        fd: int,
        length: int | None = None,
        offset: int = 0,
        prot: int = PROT_READ | PROT_WRITE,
        flags: int = MAP_SHARED,
    ) -> Mapping:
        """mmap(2) of a dma-buf descriptor; bracket CPU access with cpu_access()."""
        if length is None:
            length = self.dmabuf_size(fd) - offset
        watch = self.unplug_watch()
        reply, (memfd,) = self.ioctl_fds(
            Op.DMA_BUF_MMAP,
            m.XedMmap(offset=offset, length=length, prot=prot, flags=flags),
            fds=[fd],
        )
        try:
            mapping = Mapping(memfd, reply.length, prot, reply.offset)
        finally:
            os.close(memfd)
        watch.add(mapping)  # falls with this device (a foreign dma-buf's too)
        return mapping

    def dmabuf_sync(self: _Device, fd: int, flags: int) -> None:
        """DMA_BUF_IOCTL_SYNC: DMA_BUF_SYNC_START/END | READ/WRITE/RW."""
        self.ioctl(Op.DMA_BUF_IOCTL_SYNC, m.DmaBufSync(flags=flags), fds=[fd])

    def dmabuf_export_sync_file(self: _Device, fd: int, flags: int = DMA_BUF_SYNC_RW) -> int:
        """DMA_BUF_IOCTL_EXPORT_SYNC_FILE: a sync file (yours to poll, pass or close) of
        the fences an access must wait for: WRITE in `flags`, every one; READ alone, the
        writers'. It polls readable (POLLIN) once they are all signalled."""
        _reply, (sync_fd,) = self.ioctl_fds(
            Op.DMA_BUF_EXPORT_SYNC_FILE, m.DmaBufSyncFile(flags=flags), fds=[fd]
        )
        return sync_fd

    def dmabuf_import_sync_file(self: _Device, fd: int, sync_fd: int, flags: int) -> None:
        """DMA_BUF_IOCTL_IMPORT_SYNC_FILE: the sync file's fence joins the dma-buf's,
        a writer's (WRITE in `flags`) or a reader's (READ)."""
        args = m.DmaBufSyncFile(flags=flags, fd=sync_fd)
        self.ioctl(Op.DMA_BUF_IMPORT_SYNC_FILE, args, fds=[fd, sync_fd])

    @contextlib.contextmanager
    def cpu_access(self: _Device, fd: int, write: bool = True) -> Iterator[None]:
        """Bracket CPU access to a mapped dma-buf, as the exporter needs for coherency."""
        direction = DMA_BUF_SYNC_RW if write else DMA_BUF_SYNC_READ
        self.dmabuf_sync(fd, DMA_BUF_SYNC_START | direction)
        try:
            yield
        finally:
            self.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
