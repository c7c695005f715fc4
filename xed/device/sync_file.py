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
from errno import ENOMEM
from typing import TYPE_CHECKING, Any

from protocols import messages as m

from .errors import IoctlError
from .export import ExportedObject
from .syncobj import DrmSyncobj, Fence

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice

MAX_FENCES = 256  # unsignalled fences a reservation holds: past it, IMPORT is ENOMEM
_SIGNALLED = b"\x01"  # what the daemon sends on a sync file's end when its fence signals


class SyncFile(ExportedObject):
    kind = "sync_file"

    def __init__(self, device: XeDevice, fences: list[Fence]) -> None:
        super().__init__(device)
        waiting = [fence for fence in fences if not fence.signalled]
        # one fence stands for itself; several for a fence of their own (merged), which
        # signals when the last of them does, whatever becomes of this descriptor
        self.fence = waiting[0] if len(waiting) == 1 else Fence(signalled=not waiting)
        if self.fence.signalled:
            self._tell()
        else:
            device.start_soon(functools.partial(self._watch, waiting), what=self.kind)

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
