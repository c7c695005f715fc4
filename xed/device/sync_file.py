"""Fences that leave a process as descriptors: sync files and syncobj descriptors, and
the fences a dma-buf's reservation holds (sync_file.c, drm_syncobj.c, dma-resv).

Both are exported objects (export.py): one end of a socketpair whose other end the
daemon keeps, known by the inode of the end handed out, released when its last copy is
closed. The daemon keeps no copy of its own: the holders' copies are all there is.

- A SyncFile stands for one fence (several, merged, as sync_file_merge makes one: it
  signals when all of them have). The end handed out polls readable (POLLIN) once the
  fence is signalled, as a sync file does: the daemon then sends one byte on its end.
  It answers nobody who speaks on the descriptor (an answer would make it poll
  readable early), and a holder that reads the byte only fools itself.
- A SyncobjFile stands for a syncobj: FD_TO_HANDLE gives a new handle to the same
  syncobj, in any drm file of the device.
- A BO's reservation (XeBo.resv) holds the fences put in through its dma-buf with
  DMA_BUF_IOCTL_IMPORT_SYNC_FILE, each a reader's or a writer's. xe's own jobs put
  theirs in with DMA_RESV_USAGE_BOOKKEEP, which no export sees, so only imported
  fences are kept here.
"""

from __future__ import annotations

import functools
from errno import EINVAL, ENOENT, ENOMEM, ENOTTY
from typing import TYPE_CHECKING, Any

from protocols import messages as m

from .errors import IoctlError, refuse_if
from .export import ExportedObject, lookup
from .limits import charge_export, refuse_over
from .syncobj import DrmSyncobj, Fence

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice
    from .file import XeFile

MAX_FENCES = 256  # unsignalled fences a reservation holds: past it, IMPORT is ENOMEM
_SIGNALLED = b"\x01"  # what the daemon sends on a sync file's end when its fence signals


class SyncFile(ExportedObject):
    kind = "sync_file"

    def __init__(self, device: XeDevice, fences: list[Fence], name: str = "") -> None:
        super().__init__(device)
        self.name = name  # SYNC_IOC_MERGE's; else the kernel's driver-timeline form
        # each fence once, the signalled ones dropped (dma_fence_unwrap_merge); none
        # left: a signalled stub (dma_fence_get_stub), so a file always holds one
        unique = {id(fence): fence for fence in fences if not fence.signalled}
        self.fences = list(unique.values()) or [Fence(signalled=True)]
        if len(self.fences) > MAX_FENCES:
            raise IoctlError(ENOMEM, f"a sync file of more than {MAX_FENCES} fences")
        # one fence stands for itself; several for a fence of their own (merged), which
        # signals when the last of them does, whatever becomes of this descriptor
        self.fence = self.fences[0] if len(self.fences) == 1 else Fence()
        if self.fence.signalled:
            self._tell()
        else:
            device.start_soon(functools.partial(self._watch, self.fences), what=self.kind)

    async def _watch(self, waiting: list[Fence]) -> None:
        for fence in waiting:
            await fence.wait()
        self.fence.signal()
        self._tell()

    def _tell(self) -> None:
        if not self.released:
            self._send_nowait(_SIGNALLED, [])

    def _answer_peer(self, data: bytes) -> None:
        """Nobody is answered on a sync file (see the module's docstring)."""


class SyncobjFile(ExportedObject):
    kind = "syncobj_fd"

    def __init__(self, device: XeDevice, syncobj: DrmSyncobj) -> None:
        super().__init__(device)
        self.syncobj = syncobj

    def info(self) -> Any:
        return m.XedExportedInfo(kind=self.kind, ino=self.ino, held_by_daemon=int(self.held))


# --- a BO's reservation ------------------------------------------------------------------
def resv_fences(bo: XeBo, write: bool) -> list[Fence]:
    """The fences an access must wait for (dma_resv_usage_rw): a writer waits for every
    fence, readers' and writers'; a reader for the writers' only."""
    return [fence for fence, writer in bo.resv or () if writer or write]


def resv_add(bo: XeBo, fence: Fence, writer: bool) -> None:
    """dma_resv_add_fence: ENOMEM past MAX_FENCES unsignalled ones (the kernel's is its
    memory; a client must not grow the daemon's without bound)."""
    held = [(f, w) for f, w in bo.resv or () if not f.signalled]
    if len(held) >= MAX_FENCES:
        raise IoctlError(ENOMEM, f"the dma-buf holds {MAX_FENCES} unsignalled fences")
    held.append((fence, writer))
    bo.resv = held


# --- the sync file's own ioctls ---------------------------------------------------------------
_DRIVER, _TIMELINE = "xe", "xed"  # what SYNC_IOC_FILE_INFO names every fence's


def _sync_file(xef: XeFile, fd: int) -> SyncFile:
    """The sync file the ioctl was made on: ENOTTY for any other descriptor (the ioctl is
    a sync file's; the library then asks the kernel)."""
    found = lookup(xef.device, fd)
    refuse_if(not isinstance(found, SyncFile), ENOTTY, "not a sync file")
    assert isinstance(found, SyncFile)
    return found


def sync_file_merge_ioctl(
    xef: XeFile, args: m.SyncMerge, fds: tuple[int, ...]
) -> tuple[m.Empty, list[int]]:
    """SYNC_IOC_MERGE (sync_file_ioctl_merge) on the sync file attached first.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - the first descriptor not a sync file: ENOTTY; one of a device since unplugged: ENODEV
    - flags or pad not zero: EINVAL
    - the second (fd2's) not a sync file: ENOENT
    - this client's exported objects reach limits.exported: ENOMEM
    - more than MAX_FENCES unsignalled fences between them: ENOMEM
    The name keeps 31 bytes, as the kernel's (it writes a NUL at the 32nd).
    """
    first_fd, second_fd = fds
    first = _sync_file(xef, first_fd)
    refuse_if(args.flags or args.pad, EINVAL, "flags and pad must be zero")
    second = lookup(xef.device, second_fd)
    refuse_if(not isinstance(second, SyncFile), ENOENT, "fd2 is not a sync file")
    assert isinstance(second, SyncFile)
    refuse_over(xef, "exported", xef.account.exported)
    merged = SyncFile(xef.device, first.fences + second.fences, name=args.name[:31])
    charge_export(xef, merged)
    return m.Empty(), [merged.hand_out()]


def sync_file_info_ioctl(
    xef: XeFile, args: m.SyncFileInfo, fds: tuple[int, ...]
) -> m.SyncFileInfoReply:
    """SYNC_IOC_FILE_INFO (sync_file_ioctl_fence_info) on the attached sync file.

    Checks, in order: not a sync file: ENOTTY (one of a device since unplugged: ENODEV);
    flags or pad not zero: EINVAL; num_fences neither 0 nor at least the number of
    fences: EINVAL. With num_fences 0 only the number is told. Status is 1 once every
    fence is signalled, else 0; xed records no signal time (timestamp_ns 0).
    """
    (fd,) = fds
    sync_file = _sync_file(xef, fd)
    refuse_if(args.flags or args.pad, EINVAL, "flags and pad must be zero")
    fences = sync_file.fences
    status = int(all(fence.signalled for fence in fences))
    infos: tuple[m.SyncFenceInfo, ...] = ()
    if args.num_fences:
        refuse_if(args.num_fences < len(fences), EINVAL, f"it holds {len(fences)} fences")
        infos = tuple(
            m.SyncFenceInfo(obj_name=_TIMELINE, driver_name=_DRIVER, status=int(f.signalled))
            for f in fences
        )
    name = sync_file.name or f"{_DRIVER}-{_TIMELINE}"
    return m.SyncFileInfoReply(name=name, status=status, num_fences=len(fences), fences=infos)
