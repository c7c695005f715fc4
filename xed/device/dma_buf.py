"""DmaBuf and PRIME: buffers that travel between processes (and daemons) as descriptors.

A DmaBuf is an exported object (export.py) holding a reference on its BO. While the BO
has GEM handles the daemon keeps a copy of the dma-buf's descriptor, as the kernel's
obj->dma_buf does, so exporting again hands out the same dma-buf (same inode); at the
last handle close that copy goes, and when the last client copy closes too, the dma-buf
is released and its BO reference dropped.

A dma-buf of another xed daemon is imported by asking that daemon for the pages over the
dma-buf's own descriptor (DMA_BUF_ATTACH): a foreign import, zero copy, whose BO keeps
the foreign descriptor (and so the exporter's buffer) alive.
"""

from __future__ import annotations

import os
from errno import EACCES, EINVAL, ENOENT, EOPNOTSUPP, EPERM
from typing import TYPE_CHECKING, Any

from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_VALID_FLAGS_MASK,
    DMA_BUF_SYNC_WRITE,
    DRM_CLOEXEC,
    DRM_RDWR,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SEEK_END,
    SEEK_SET,
)
from protocols.ops import Op

from .bo import XeBo
from .errors import IoctlError, refuse_if
from .export import ExportedObject, exported_as, lookup, peer_call
from .limits import charge_export, refuse_over
from .memory import client_memory, reopen_read_only
from .sync_file import SyncFile, exported_fd, resv_add, resv_fences

if TYPE_CHECKING:
    from .file import XeFile

_PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC


class DmaBuf(ExportedObject):
    kind = "dma_buf"

    def __init__(self, bo: XeBo, writable: bool) -> None:
        super().__init__(bo.device)
        self.bo = bo.get()
        bo.exported_as = self
        self.size = bo.size
        self.writable = writable  # fixed at the first export, as the file's f_mode is
        self.windows: dict[Any, list[int]] = {}  # owner -> [open reads, open writes]

    def info(self) -> m.XedExportedInfo:
        return m.XedExportedInfo(
            kind=self.kind, ino=self.ino, size=self.size, held_by_daemon=int(self.held)
        )

    def memory_fd(self) -> int:
        """The pages, as the dma-buf's mode allows: O_RDONLY unless exported DRM_RDWR."""
        if self.writable:
            return os.dup(self.bo.memfd)
        return reopen_read_only(self.bo.memfd)

    def release(self) -> None:
        if self.bo.exported_as is self:
            self.bo.exported_as = None
        self.bo.put()

    def peer_request(self, op: Any, args: Any) -> tuple[Any, list[int]]:
        if op is Op.DMA_BUF_ATTACH:
            # anyone holding the descriptor may ask: never more access than it grants
            reply = m.DmaBufAttachReply(
                size=self.size, writable=int(self.writable), device=self.device.identity
            )
            return reply, [self.memory_fd()]
        return super().peer_request(op, args)

    # --- CPU access windows (DMA_BUF_IOCTL_SYNC) ------------------------------------------
    def sync(self, owner: Any, flags: int) -> None:
        counts = self.windows.setdefault(owner, [0, 0])
        step = -1 if flags & DMA_BUF_SYNC_END else 1
        if flags & DMA_BUF_SYNC_READ:
            counts[0] = max(counts[0] + step, 0)
        if flags & DMA_BUF_SYNC_WRITE:
            counts[1] = max(counts[1] + step, 0)
        if counts == [0, 0]:
            del self.windows[owner]

    def cpu_writers(self) -> int:
        return sum(writes for _reads, writes in self.windows.values())

    def forget(self, owner: Any) -> None:
        self.windows.pop(owner, None)


def xe_dma_buf_of(xef: XeFile, fd: int) -> DmaBuf | None:
    """Our own dma-buf behind `fd`; None for a foreign one; EINVAL for our non-dma-bufs;
    ENODEV for one of a device since unplugged."""
    obj = lookup(xef.device, fd)
    if obj is None:
        return None
    refuse_if(not isinstance(obj, DmaBuf), EINVAL, f"a {obj.kind} is not a dma-buf")
    assert isinstance(obj, DmaBuf)
    return obj


async def _describe(xef: XeFile, fd: int) -> tuple[int, bool, int]:
    """(size, writable, memory) of any dma-buf, ours or asked of its daemon; the memory
    is a descriptor the caller owns, read-only unless the dma-buf is writable.

    Whoever holds the other end of a foreign descriptor answers for it, and may be any
    client forging an answer: its memory is judged as a client's (memory.client_memory:
    a memfd on shmem that cannot shrink, holding the size claimed, a size within bounds)
    and is writable only if the descriptor itself allows it. Refused: EINVAL, "not a
    dma-buf", as the kernel answers for a file that is not one.
    """
    own = xe_dma_buf_of(xef, fd)
    if own is not None:
        return own.size, own.writable, own.memory_fd()
    info, fds = await peer_call(fd, Op.DMA_BUF_ATTACH, m.DmaBufAttach())
    (memfd,) = fds  # the codec let through exactly the one DMA_BUF_ATTACH answers with
    try:
        writable = client_memory(memfd, info.size, xef.device)
    except IoctlError as exc:
        os.close(memfd)
        raise IoctlError(EINVAL, f"not a dma-buf: {exc.message}") from None
    return info.size, writable and bool(info.writable), memfd


async def _ours_or_checked(xef: XeFile, fd: int) -> DmaBuf | None:
    """This daemon's dma-buf behind `fd`, or None for another daemon's, asked to answer
    as one (EINVAL, "not a dma-buf", if it does not)."""
    own = xe_dma_buf_of(xef, fd)
    if own is None:
        _size, _writable, memfd = await _describe(xef, fd)
        os.close(memfd)
    return own


_FOREIGN_FENCES = "another daemon's dma-buf: its fences are that daemon's"


def drm_prime_handle_to_fd_ioctl(
    xef: XeFile, args: m.DrmPrimeHandle
) -> tuple[m.DrmPrimeHandleReply, list[int]]:
    """DRM_IOCTL_PRIME_HANDLE_TO_FD.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - flags other than DRM_CLOEXEC | DRM_RDWR: EINVAL
    - no such handle: ENOENT
    - the BO is private to a VM (xe_gem_prime_export): EPERM
    - a new dma-buf while this file's live exports reach limits.exported: ENOMEM (the
      dma-buf counts against its creator until it is freed, wherever it went)
    - a BO made with DEFER_BACKING is backed here (an importer may map it at once), as
      GEM_CREATE places one: larger than its placement, or with system memory full
      too: ENOMEM
    A foreign import re-exports the dma-buf it came from.
    """
    refuse_if(args.flags & ~(DRM_CLOEXEC | DRM_RDWR), EINVAL, f"flags {args.flags:#x}")
    bo = xef.handles.get(args.handle)
    if bo is None:
        raise IoctlError(ENOENT, f"no handle {args.handle}")
    reply = m.DrmPrimeHandleReply(handle=args.handle, size=bo.size)
    if bo.import_fd is not None:
        return reply, [os.dup(bo.import_fd)]
    refuse_if(bo.vm is not None, EPERM, "a VM-private BO cannot be exported")
    dma_buf = bo.dma_buf
    if dma_buf is None:
        refuse_over(xef, "exported", xef.account.exported)
        bo.back()
        dma_buf = DmaBuf(bo, writable=bool(args.flags & DRM_RDWR))
        charge_export(xef, dma_buf)
        xef.log.debug("dma_buf_exported", handle=args.handle, ino=dma_buf.ino)
    xef.prime_handles[dma_buf] = args.handle
    return reply, [dma_buf.new_fd()]


async def drm_prime_fd_to_handle_ioctl(
    xef: XeFile, args: m.DrmPrimeHandle, fds: tuple[int, ...]
) -> m.DrmPrimeHandleReply:
    """DRM_IOCTL_PRIME_FD_TO_HANDLE on the attached descriptor.

    Checks, in order:
    - more blocking requests lending a descriptor under way for this uid than
      limits.lent_descriptors_per_uid (checked by the server before this handler): EMFILE
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): ENOMEM
    - one of our exported objects of a device since unplugged (unplug.py): ENODEV
    - one of our exported objects that is not a dma-buf (an exported VM): EINVAL
    - a new handle while the file holds limits.bos already: ENOMEM
    - not ours: asked of its daemon over the descriptor; anything that does not answer
      as a dma-buf (a memfd, a pipe, a socket, a refusal): EINVAL
    - an answer whose memory cannot be trusted (_describe: not a memfd on shmem, not
      sealed against shrinking, smaller than the size claimed; a size zero, unaligned
      or beyond what this device could hold): EINVAL
    A dma-buf of this device gives the object itself: the handle this file already has
    for it (the exporting file gets its own handle back), else a new one. (A closed
    descriptor cannot be sent at all: sendmsg(2) fails, so the caller sees the kernel's
    EBADF without the daemon.)
    """
    (fd,) = fds
    own = xe_dma_buf_of(xef, fd)
    if own is not None:
        handle = xef.prime_handles.get(own)
        if handle is None:
            refuse_over(xef, "bos", len(xef.handles))
        # re-attach obj->dma_buf, as drm_gem_prime_fd_to_handle (if let go); first, as
        # it may want a descriptor: a refusal then leaves no handle behind
        own.hold(fd)
        if handle is None:
            handle = xef.handle_create(own.bo)
            xef.prime_handles[own] = handle
        return m.DrmPrimeHandleReply(handle=handle, size=own.size)
    info = os.fstat(fd)
    key = ("foreign", info.st_dev, info.st_ino)
    handle = xef.prime_handles.get(key)
    if handle is not None:
        return m.DrmPrimeHandleReply(handle=handle, size=xef.handles[handle].size)
    refuse_over(xef, "bos", len(xef.handles))
    size, writable, memfd = await _describe(xef, fd)
    handle = xef.prime_handles.get(key)
    if handle is not None:  # another import of it finished while we asked: that one wins
        os.close(memfd)
        return m.DrmPrimeHandleReply(handle=handle, size=xef.handles[handle].size)
    try:
        refuse_over(xef, "bos", len(xef.handles))  # again: other imports ran meanwhile
        import_fd = os.dup(fd)
    except BaseException:
        os.close(memfd)
        raise
    bo = XeBo.foreign(xef.device, memfd, size, import_fd=import_fd, writable=writable)
    handle = xef.handle_create(bo)
    bo.put()
    xef.prime_handles[key] = handle
    xef.log.debug("dma_buf_imported", handle=handle, size=size, foreign=True)
    return m.DrmPrimeHandleReply(handle=handle, size=size)


async def dma_buf_mmap_ioctl(
    xef: XeFile, args: m.XedMmap, fds: tuple[int, ...]
) -> tuple[m.XedMmapReply, list[int]]:
    """mmap(2) of the attached dma-buf; `offset` is an offset into the buffer.

    Checks, in order (mmap(2), the VFS, dma_buf_mmap_internal, ttm_bo_mmap_obj), in
    pages of the host page size the device follows ([device] page_size; the length
    rounded up to one, as mmap(2) maps whole pages):
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - length zero or offset not page aligned: EINVAL
    - flags not exactly one of MAP_SHARED / MAP_PRIVATE, or unknown prot bits: EINVAL
    - one of ours of a device since unplugged (unplug.py): ENODEV
    - not a dma-buf (ours of another kind, not answering as one, or answering with
      memory that cannot be trusted, as _describe judges it): EINVAL
    - a shared writable mapping of a dma-buf exported without DRM_RDWR: EACCES
    - offset + length beyond the buffer: EINVAL
    - a private (copy-on-write) mapping: EINVAL
    A BO of ours in VRAM the CPU cannot reach maps as GEM mmap maps it: every access
    faults SIGBUS (XeBo.cpu_visible).
    """
    page = xef.device.page_size
    refuse_if(not args.length or args.offset % page, EINVAL, "bad length or offset")
    refuse_if(args.flags not in (MAP_SHARED, MAP_PRIVATE), EINVAL, "need MAP_SHARED")
    refuse_if(args.prot & ~_PROT_ALL, EINVAL, f"unknown prot bits {args.prot:#x}")
    (fd,) = fds
    size, writable, memfd = await _describe(xef, fd)
    try:
        refuse_if(
            args.flags == MAP_SHARED and args.prot & PROT_WRITE and not writable,
            EACCES,
            "dma-buf exported without DRM_RDWR: map it read-only",
        )
        length = -(-args.length // page) * page  # the vma's length
        refuse_if(args.offset + length > size, EINVAL, "beyond the end of the dma-buf")
        refuse_if(args.flags == MAP_PRIVATE, EINVAL, "copy-on-write mappings are refused")
    except IoctlError:
        os.close(memfd)
        raise
    own = xe_dma_buf_of(xef, fd)
    if own is not None and not own.bo.cpu_visible:  # the same fault handler as GEM mmap
        os.close(memfd)
        memfd = own.bo.mmap_fd()
    return m.XedMmapReply(offset=args.offset, length=args.length), [memfd]


async def dma_buf_sync_ioctl(xef: XeFile, args: m.DmaBufSync, fds: tuple[int, ...]) -> m.Empty:
    """DMA_BUF_IOCTL_SYNC on the attached dma-buf.

    Checks, in order:
    - more blocking requests lending a descriptor under way for this uid than
      limits.lent_descriptors_per_uid (checked by the server before this handler): EMFILE
    - flags outside DMA_BUF_SYNC_VALID_FLAGS_MASK: EINVAL
    - neither READ nor WRITE: EINVAL
    - one of ours of a device since unplugged (unplug.py): ENODEV
    - not a dma-buf (or a foreign one answering with untrusted memory): EINVAL
    END without START is not an error (the kernel keeps no such state). This daemon
    records the open windows of the dma-bufs it exported, per file, for strict mode.
    """
    refuse_if(args.flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK, EINVAL, f"flags {args.flags:#x}")
    refuse_if(not args.flags & DMA_BUF_SYNC_RW, EINVAL, "neither READ nor WRITE")
    (fd,) = fds
    own = await _ours_or_checked(xef, fd)
    if own is not None:
        own.sync(xef, args.flags)
    return m.Empty()


async def dma_buf_llseek_ioctl(
    xef: XeFile, args: m.DmaBufLlseek, fds: tuple[int, ...]
) -> m.DmaBufLlseekReply:
    """lseek(2) on the attached dma-buf (dma_buf_llseek).

    Checks: more blocking requests lending a descriptor under way for this uid than
    limits.lent_descriptors_per_uid (checked by the server first): EMFILE; anything but
    offset 0 with SEEK_SET or SEEK_END: EINVAL; one of ours of a device since unplugged:
    ENODEV; not a dma-buf (or a foreign one answering with untrusted memory): EINVAL.
    """
    refuse_if(args.offset != 0 or args.whence not in (SEEK_SET, SEEK_END), EINVAL, "bad seek")
    (fd,) = fds
    size, _writable, memfd = await _describe(xef, fd)
    os.close(memfd)
    return m.DmaBufLlseekReply(offset=size if args.whence == SEEK_END else 0)


def _sync_file_flags(flags: int) -> None:
    refuse_if(flags & ~DMA_BUF_SYNC_RW, EINVAL, f"flags {flags:#x}")
    refuse_if(not flags & DMA_BUF_SYNC_RW, EINVAL, "neither READ nor WRITE")


async def dma_buf_export_sync_file_ioctl(
    xef: XeFile, args: m.DmaBufSyncFile, fds: tuple[int, ...]
) -> tuple[m.Empty, list[int]]:
    """DMA_BUF_IOCTL_EXPORT_SYNC_FILE: a sync file of the fences of the attached
    dma-buf's reservation that the access must wait for (WRITE: all; READ: writers').

    Checks, in order:
    - more blocking requests lending a descriptor under way for this uid than
      limits.lent_descriptors_per_uid (checked by the server first): EMFILE
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - flags outside DMA_BUF_SYNC_RW, or neither READ nor WRITE: EINVAL
    - one of ours of a device since unplugged: ENODEV
    - not a dma-buf (or a foreign one answering with untrusted memory): EINVAL
    - another daemon's dma-buf: EOPNOTSUPP
    - this client's exported objects reach limits.exported: ENOMEM
    """
    _sync_file_flags(args.flags)
    (fd,) = fds
    own = await _ours_or_checked(xef, fd)
    refuse_if(own is None, EOPNOTSUPP, _FOREIGN_FENCES)
    assert own is not None
    fences = resv_fences(own.bo, bool(args.flags & DMA_BUF_SYNC_WRITE))
    return m.Empty(), [exported_fd(xef, lambda: SyncFile(xef.device, fences))]


async def dma_buf_import_sync_file_ioctl(
    xef: XeFile, args: m.DmaBufSyncFile, fds: tuple[int, ...]
) -> m.Empty:
    """DMA_BUF_IOCTL_IMPORT_SYNC_FILE: the sync file (attached second) joins the
    reservation of the dma-buf (attached first), a writer's fence with WRITE, else a
    reader's.

    Checks, in order:
    - more blocking requests lending a descriptor under way for this uid than
      limits.lent_descriptors_per_uid (checked by the server first): EMFILE
    - flags outside DMA_BUF_SYNC_RW, or neither READ nor WRITE: EINVAL
    - either one ours of a device since unplugged: ENODEV
    - the first not a dma-buf (or a foreign one answering with untrusted memory): EINVAL
    - the second not a sync file: EINVAL
    - another daemon's dma-buf: EOPNOTSUPP
    - the reservation holds sync_file.MAX_FENCES unsignalled fences: ENOMEM
    """
    _sync_file_flags(args.flags)
    dma_buf_fd, sync_fd = fds
    own = await _ours_or_checked(xef, dma_buf_fd)
    sync_file = exported_as(xef.device, sync_fd, SyncFile, EINVAL, "not a sync file")
    refuse_if(own is None, EOPNOTSUPP, _FOREIGN_FENCES)
    assert own is not None
    resv_add(own.bo, sync_file.fence, writer=bool(args.flags & DMA_BUF_SYNC_WRITE))
    return m.Empty()
