"""drm_dev_unplug(), and the device that comes after it.

The kernel's unplug makes every ioctl of the device's files ENODEV and zaps every CPU
mapping of it (unmap_mapping_range on the device's address space); a later access
faults in a zeroed dummy page (ttm_bo_vm_dummy_page, the barrier page's fault handler):
no SIGBUS, no more device data, and what is written lands in that page, seen by nobody
else. Here the clients map the device's memfds themselves, so the daemon cannot touch
their page tables. It does the two things it can:

- It empties the memory: a hole is punched over every memfd of the device (BOs, and so
  their dma-bufs and what the aux driver mapped of them; the doorbell and barrier
  pages; the read-only info block, sealed against it, is zeroed through the daemon's
  own mapping). Every mapping, the library's or one made by hand, reads zeros from then
  on without a fault, and the device, stopped, never looks at the memory again.
- It tells them: the notice page (UNPLUG_NOTICE) turns to 1 and its futex waiters are
  woken. The client library then puts a private zero page of the same protection under
  each of its mappings (MAP_FIXED), so that what it writes afterwards reaches nobody,
  as with the dummy page. A client that maps by hand and ignores the notice keeps
  mappings of the emptied memfds: what it writes after the unplug is seen by every
  other such mapping of the same memory (never by the device, nor by a library client).

The device stops: queued and running batches are dropped (their fences never signal),
parked fence waits answer ENODEV, debuggers are detached (a "detach" event), and the
barrier and doorbell pages are no longer watched, so barrier writes are no longer
counted.

REPLUG plugs a new device in, as a rebind of the driver would (a new drm_device): its
own identity (HELLO's instance), memory accounting, BAR0 and notice page. New
connections reach it; files opened before the unplug belong to the device that went
and answer ENODEV until closed, as do its dma-bufs and exported VMs wherever they are
presented; their mappings stay on the zero pages. Memory is never handed back.
Foreign imports (another daemon's memory) are left alone: that memory is not ours.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from typing import TYPE_CHECKING

from protocols import futex
from protocols import messages as m
from protocols.constants import NOTICE_UNPLUGGED, NOTICE_WATCHER_ASLEEP, PAGE_SIZE
from protocols.memfd import F_SEAL_FUTURE_WRITE

from . import eudebug
from .bo import XeBo
from .memory import create_backing, punch_hole, reopen_read_only
from .mmio import XeMmioRegion

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile


class UnplugNotice:
    """One device's notice page: a read-only memfd whose first word turns to 1 when that
    device is unplugged. Each device (each replug) has its own."""

    def __init__(self) -> None:
        self.memfd = create_backing("xe-unplug-notice", PAGE_SIZE, sealed=False)
        try:
            # the daemon's mapping is made before the seal, as the info block's: writable
            # for it, never for anyone else
            self.view: mmap.mmap | None = mmap.mmap(self.memfd, PAGE_SIZE, mmap.MAP_SHARED)
            seals = (
                F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, seals)
        except OSError:
            os.close(self.memfd)
            raise

    def mmap_fd(self) -> int:
        return reopen_read_only(self.memfd)

    def watcher_word(self) -> int | None:
        """The address of the page watcher's asleep word (NOTICE_WATCHER_ASLEEP) in the
        daemon's mapping, valid until announce(); None once announced."""
        if self.view is None:
            return None
        return ctypes.addressof(ctypes.c_uint32.from_buffer(self.view, NOTICE_WATCHER_ASLEEP))

    def announce(self) -> None:
        """The device is gone: turn the word and wake everyone waiting on it. The page
        lives on in the clients' mappings; the daemon lets go of its own. The watcher's
        asleep word is cleared (nothing is watched any more: writers need not wake it)."""
        assert self.view is not None, "a device is unplugged once"
        asleep = ctypes.c_uint32.from_buffer(self.view, NOTICE_WATCHER_ASLEEP)
        asleep.value = 0
        futex.wake(ctypes.addressof(asleep))
        word = ctypes.c_uint32.from_buffer(self.view)
        word.value = NOTICE_UNPLUGGED
        futex.wake(ctypes.addressof(word))
        del word, asleep  # the exports would keep the view from closing
        self.view.close()
        self.view = None
        os.close(self.memfd)


def drm_dev_unplug(device: XeDevice) -> None:
    """Stop the device, empty its memory under every mapping, and say so (the module).
    The caller has made every file open now one of a device that went."""
    for xef in device.files:
        for queue in xef.exec_queues.values():
            queue.halt()
    eudebug.device_unplugged(device)
    device.ufences.unplugged()
    _empty_device_memory(device)
    device.notice.announce()


def _empty_device_memory(device: XeDevice) -> None:
    """Punch out every memfd of the device, so that every mapping reads zeros; the pages
    the device watched are no longer watched."""
    device.watcher.unplug()
    for node in device.vma.nodes():
        obj = node.obj
        if isinstance(obj, XeBo) and not obj.imported:
            device.views.forget(obj)  # its pages go; the device never looks again
            obj.drop_view()
            punch_hole(obj.memfd, obj.size)
        elif isinstance(obj, XeMmioRegion) and obj.doorbell is not None:
            punch_hole(obj.doorbell.memfd, PAGE_SIZE)
    device.bar0.retire()


def xed_unplug_notice_ioctl(
    xef: XeFile, args: m.XedUnplugNotice
) -> tuple[m.XedMmapReply, list[int]]:
    """UNPLUG_NOTICE: the notice page of the device this file reaches, to map read-only.

    Checks: the daemon is down to its descriptor reserve (limits.descriptor_reserve):
    EMFILE. (Once the device is unplugged, the connection's ops all fail: see the
    common errors.)
    """
    fd = xef.device.notice.mmap_fd()
    return m.XedMmapReply(offset=0, length=PAGE_SIZE), [fd]
