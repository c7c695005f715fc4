"""Fences that leave a process as descriptors: sync files and syncobj descriptors, and
the fences a dma-buf's reservation holds (sync_file.c, drm_syncobj.c, dma-resv).

Both are exported objects (export.py): one end of a socketpair whose other end the
daemon keeps, known by the inode of the end handed out, released when its last copy is
closed. The daemon keeps no copy of its own: the holders' copies are all there is.

- A SyncFile stands for one fence (several, merged, as sync_file_merge makes one: a
  FenceArray, signalled when all of them are). The end handed out polls readable
  (POLLIN) once the fence is signalled, as a sync file does: the daemon then shuts its
  own end for sending, so every copy reads the end of the file from then on, whoever
  reads it. It answers nobody who speaks on the descriptor (an answer would make it
  poll readable early). It watches its fences with callbacks, dropped with the file:
  a sync file closed before its fence signals leaves nothing behind. (A holder that
  shuts the descriptor down itself makes it look signalled: to every holder, as with
  any shared socket; the fence the daemon knows it by is not changed.)
- A SyncobjFile stands for a syncobj: FD_TO_HANDLE gives a new handle to the same
  syncobj, in any drm file of the device.
- A BO's reservation (XeBo.resv) holds the fences put in through its dma-buf with
  DMA_BUF_IOCTL_IMPORT_SYNC_FILE, each a reader's or a writer's. xe's own jobs put
  theirs in with DMA_RESV_USAGE_BOOKKEEP, which no export sees, so only imported
  fences are kept here.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from errno import EINVAL, ENOENT, ENOMEM, ENOTTY
from typing import TYPE_CHECKING

from protocols import messages as m

from .errors import IoctlError, refuse_if
from .export import ExportedObject, exported_as
from .fence import Fence, FenceArray, is_later, unwrap
from .limits import charge_export, refuse_over
from .syncobj import DrmSyncobj

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice
    from .file import XeFile

MAX_FENCES = 256  # unsignalled fences a reservation holds: past it, IMPORT is ENOMEM


class SyncFile(ExportedObject):
    kind = "sync_file"

    def __init__(self, device: XeDevice, fences: list[Fence], name: str = "") -> None:
        parts = merged_parts(fences)
        super().__init__(device)
        self.name = name  # SYNC_IOC_MERGE's; else the kernel's driver-timeline form
        self.fences = parts
        # one fence stands for itself; several for an array of them, signalled once
        # they all are, whatever becomes of this descriptor (imported elsewhere)
        self.fence = parts[0] if len(parts) == 1 else FenceArray(parts)
        self._waiting = [part for part in parts if not part.signalled]
        for part in self._waiting:
            part.add_callback(self._part_signalled)
        if not self._waiting:
            self._tell()

    def _part_signalled(self) -> None:
        self._waiting = [part for part in self._waiting if not part.signalled]
        if not self._waiting:
            self._tell()

    def _tell(self) -> None:
        """Every copy of the descriptor polls readable from now on, for good: our end
        shut for sending reads as the end of the file in each (nothing any holder reads
        can take the signal from the others)."""
        if not self.released:
            with contextlib.suppress(OSError):
                self._ours.shutdown(socket.SHUT_WR)

    def release(self) -> None:
        for part in self._waiting:  # nobody left to tell: no callback outlives the file
            part.remove_callback(self._part_signalled)
        self._waiting = []

    def _answer_peer(self, data: bytes) -> None:
        """Nobody is answered on a sync file (see the module's docstring)."""


def merged_parts(fences: list[Fence]) -> list[Fence]:
    """The fences a sync file of `fences` holds, as dma_fence_unwrap_merge: fence arrays
    and timeline points (chains) unwrapped into the fences they hold, the signalled
    ones dropped, and of a sw_sync timeline's points the latest only (the device's own
    fences, which have no timeline, each once); none left, a signalled stub that tells
    the latest of their signal times (dma_fence_allocate_private_stub). ENOMEM past
    MAX_FENCES, before anything is made."""
    unique: dict[object, Fence] = {}
    latest = 0
    for part in (leaf for fence in fences for leaf in unwrap(fence)):
        if part.signalled:
            latest = max(latest, part.timestamp)
            continue
        key = id(part) if part.context is None else ("timeline", part.context)
        kept = unique.get(key)
        if kept is None or is_later(part.seqno, kept.seqno):
            unique[key] = part
        if len(unique) > MAX_FENCES:
            raise IoctlError(ENOMEM, f"a sync file of more than {MAX_FENCES} fences")
    if unique:
        return list(unique.values())
    stub = Fence(signalled=True)
    stub.timestamp = latest or stub.timestamp
    return [stub]


def unwrap_merge(fence: Fence) -> Fence:
    """dma_fence_unwrap_merge of one fence: the same signal, as one fence or an array
    of the ones it waits for, never a chain inside a chain."""
    parts = merged_parts([fence])
    return parts[0] if len(parts) == 1 else FenceArray(parts)


class SyncobjFile(ExportedObject):
    kind = "syncobj_fd"

    def __init__(self, device: XeDevice, syncobj: DrmSyncobj) -> None:
        super().__init__(device)
        self.syncobj = syncobj


def exported_fd(xef: XeFile, make: Callable[[], ExportedObject]) -> int:
    """The descriptor of a new object `make()` builds, counted against the client until
    it is freed (ENOMEM once its live ones reach limits.exported, before it is built)
    and handed out with no copy kept."""
    refuse_over(xef, "exported", xef.account.exported)
    obj = make()
    charge_export(xef, obj)
    return obj.hand_out()


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
def fence_name(fence: Fence) -> str:
    """sync_file_get_name of a sync file holding `fence` alone: driver, timeline and,
    for a timeline's point, its context and point."""
    if fence.context is None:
        return f"{fence.driver_name}-{fence.timeline_name}"
    return f"{fence.driver_name}-{fence.timeline_name}{fence.context}-{fence.seqno}"


def _sync_file(xef: XeFile, fd: int) -> SyncFile:
    """The sync file the ioctl was made on: ENOTTY for any other descriptor (the ioctl is
    a sync file's; the library then asks the kernel)."""
    return exported_as(xef.device, fd, SyncFile, ENOTTY, "not a sync file")


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
    second = exported_as(xef.device, second_fd, SyncFile, ENOENT, "fd2 is not a sync file")
    fences = first.fences + second.fences
    return m.Empty(), [exported_fd(xef, lambda: SyncFile(xef.device, fences, args.name[:31]))]


def sync_file_info_ioctl(
    xef: XeFile, args: m.SyncFileInfo, fds: tuple[int, ...]
) -> m.SyncFileInfoReply:
    """SYNC_IOC_FILE_INFO (sync_file_ioctl_fence_info) on the attached sync file.

    Checks, in order: not a sync file: ENOTTY (one of a device since unplugged: ENODEV);
    flags or pad not zero: EINVAL; num_fences neither 0 nor at least the number of
    fences: EINVAL. With num_fences 0 only the number is told. Status, the file's and
    each fence's, is dma_fence_get_status's: 0 active, 1 signalled, -errno signalled
    with an error (the file's, when its fences are listed: the first not 1); each
    fence's timestamp_ns is when it was signalled, CLOCK_MONOTONIC (0 while active).
    """
    (fd,) = fds
    sync_file = _sync_file(xef, fd)
    refuse_if(args.flags or args.pad, EINVAL, "flags and pad must be zero")
    fences = sync_file.fences
    infos: tuple[m.SyncFenceInfo, ...] = ()
    status = sync_file.fence.status()
    if args.num_fences:
        refuse_if(args.num_fences < len(fences), EINVAL, f"it holds {len(fences)} fences")
        infos = tuple(
            m.SyncFenceInfo(
                obj_name=f.timeline_name[:31],
                driver_name=f.driver_name,
                status=f.status(),
                timestamp_ns=f.timestamp,
            )
            for f in fences
        )
        # listing them, the kernel tells the first fence's status not 1 (else 1)
        status = next((info.status for info in infos if info.status <= 0), 1)
    name = sync_file.name or fence_name(sync_file.fence)[:31]
    return m.SyncFileInfoReply(name=name, status=status, num_fences=len(fences), fences=infos)
