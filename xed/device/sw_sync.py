"""sw_sync timelines (drivers/dma-buf/sw_sync.c): fences a program signals itself.

The kernel's validation driver, which IGT drives fences with: each open of debugfs's
`sync/sw_sync` makes a timeline, a 32-bit counter at 0. SW_SYNC_IOC_CREATE_FENCE makes
a sync file of a point on it, signalled once SW_SYNC_IOC_INC brings the counter there
(across the wrap at 2^32, as dma-fence seqnos compare); when the last copy of the
timeline's descriptor is closed, the points still unsignalled are signalled with
ENOENT. The C library turns the open, the two ioctls and the close into the ops here
(clients/preload/sw_sync.c).

A timeline is an exported object (export.py): one end of a socketpair, released with
its last copy. It keeps its unsignalled points weakly: a point nothing holds any more
(its sync files closed, no syncobj or merge holding it) is gone, as the kernel's
sync_pt is freed with its last reference, so a program making points it never
signals does not grow the daemon.
"""

from __future__ import annotations

import heapq
import weakref
from errno import ENOENT, ENOTTY
from typing import TYPE_CHECKING

from protocols import messages as m

from .export import ExportedObject, exported_as
from .fence import Fence, is_later, new_context
from .sync_file import SyncFile, exported_fd

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile

_INT_MAX = 0x7FFF_FFFF


class SyncPt(Fence):
    """A point on a timeline (struct sync_pt)."""

    __slots__ = ("timeline", "seqno")
    driver_name = "sw_sync"

    def __init__(self, timeline: SyncTimeline, seqno: int) -> None:
        super().__init__()
        self.timeline = timeline
        self.seqno = seqno

    @property
    def timeline_name(self) -> str:  # type: ignore[override]
        return self.timeline.name

    @property
    def context(self) -> int:  # type: ignore[override]
        return self.timeline.context


class SyncTimeline(ExportedObject):
    kind = "sw_sync"

    def __init__(self, device: XeDevice, name: str) -> None:
        super().__init__(device)
        self.name = name  # the opener's command, as the kernel names it
        self.context = new_context()
        self.value = 0
        self._points: weakref.WeakValueDictionary[int, SyncPt] = weakref.WeakValueDictionary()
        # when each pending point is due: (how far the timeline will have advanced in
        # all, its seqno), earliest first, so an INC looks only at the points it reaches
        # (the kernel's pt_list); entries of points since freed are skipped when due
        self._advanced = 0
        self._due: list[tuple[int, int]] = []

    def point(self, seqno: int) -> SyncPt:
        """sync_pt_create: the unsignalled point `seqno` there is, else a new one,
        signalled at once if the timeline has reached it."""
        found = self._points.get(seqno)
        if found is not None and not found.signalled:
            return found
        pt = SyncPt(self, seqno)
        if not is_later(seqno, self.value):
            pt.signal()
            return pt
        self._points[seqno] = pt
        heapq.heappush(self._due, (self._advanced + self._distance(seqno), seqno))
        if len(self._due) > 2 * len(self._points) + 64:  # mostly points freed since
            self._due = [(self._advanced + self._distance(n), n) for n in self._points]
            heapq.heapify(self._due)
        return pt

    def _distance(self, seqno: int) -> int:
        return (seqno - self.value) & 0xFFFF_FFFF

    def inc(self, by: int) -> None:
        """SW_SYNC_IOC_INC: advance by `by`, at most INT_MAX a step as the kernel does,
        signalling each point reached, the earliest first."""
        while by > _INT_MAX:
            self._advance(_INT_MAX)
            by -= _INT_MAX
        self._advance(by)

    def _advance(self, by: int) -> None:
        self.value = (self.value + by) & 0xFFFF_FFFF
        self._advanced += by
        due = self._due
        while due and due[0][0] <= self._advanced:
            pt = self._points.pop(heapq.heappop(due)[1], None)
            if pt is not None:
                pt.signal()

    def release(self) -> None:
        """sw_sync_debugfs_release: every point still unsignalled ends with ENOENT."""
        points, self._points = list(self._points.values()), weakref.WeakValueDictionary()
        self._due = []
        for pt in sorted(points, key=lambda pt: self._distance(pt.seqno)):
            pt.signal(ENOENT)


def _timeline(xef: XeFile, fd: int) -> SyncTimeline:
    """The timeline the ioctl was made on: ENOTTY for any other descriptor (the ioctl
    is sw_sync's; the library then asks the kernel)."""
    return exported_as(xef.device, fd, SyncTimeline, ENOTTY, "not a sw_sync timeline")


def sw_sync_timeline_create_ioctl(
    xef: XeFile, args: m.SwSyncTimelineCreate
) -> tuple[m.Empty, list[int]]:
    """open(2) of sync/sw_sync (sw_sync_debugfs_open): a new timeline, named after the
    caller's command. Checks: the daemon down to its descriptor reserve: EMFILE; this
    client's exported objects at limits.exported: ENOMEM."""
    return m.Empty(), [exported_fd(xef, lambda: SyncTimeline(xef.device, xef.comm))]


def sw_sync_create_fence_ioctl(
    xef: XeFile, args: m.SwSyncCreateFence, fds: tuple[int, ...]
) -> tuple[m.Empty, list[int]]:
    """SW_SYNC_IOC_CREATE_FENCE on the attached timeline: a sync file of the point
    `value` (the name is ignored, as the kernel ignores it).

    Checks, in order: the daemon down to its descriptor reserve: EMFILE; not a timeline:
    ENOTTY (one of a device since unplugged: ENODEV); this client's exported objects
    at limits.exported: ENOMEM.
    """
    (fd,) = fds
    pt = _timeline(xef, fd).point(args.value)
    return m.Empty(), [exported_fd(xef, lambda: SyncFile(xef.device, [pt]))]


def sw_sync_inc_ioctl(xef: XeFile, args: m.SwSyncInc, fds: tuple[int, ...]) -> m.Empty:
    """SW_SYNC_IOC_INC on the attached timeline: every point reached is signalled (and
    its sync files poll readable) before the answer. Checks: not a timeline: ENOTTY
    (one of a device since unplugged: ENODEV)."""
    (fd,) = fds
    _timeline(xef, fd).inc(args.value)
    return m.Empty()


def sw_sync_closed_ioctl(xef: XeFile, args: m.SwSyncClosed) -> m.Empty:
    """The library closed a timeline's descriptor: if every copy is closed now, release
    it at once (export.settle), as the kernel's release() runs within close(2). Nothing
    else happens: not a timeline, or copies left, is no error (close has none)."""
    found = xef.device.exported.get(args.ino)
    if isinstance(found, SyncTimeline):
        found.settle()
    return m.Empty()
