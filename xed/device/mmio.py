"""BAR0 and XeMmioRegion: parts of the register space user space may map (proposal:
"drm/xe: support for mmap-ing mmio regions").

The reviewers' rules, enforced here: a process cannot read another process's data and
cannot issue a write that affects another process. So the read-only information block
is one page set shared by all, sealed so no writable mapping of it can exist in any
client (F_SEAL_FUTURE_WRITE on an O_RDONLY descriptor: the kernel itself refuses); a
writable region (a doorbell page, for kernel-bypass submission) is a page of its own for
each file, revoked when the region is closed (its mappings fault); registers with read
side effects are never exposable.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from errno import EBUSY, EINVAL, ENOENT, ENOSPC, EPERM
from typing import TYPE_CHECKING

import attrs
import trio

from protocols import messages as m
from protocols.constants import (
    PAGE_SIZE,
    XE_BAR0_DOORBELL_OFFSET,
    XE_BAR0_GT_REGS_OFFSET,
    XE_BAR0_INFO_OFFSET,
    XE_BAR0_INFO_SIZE,
    XE_BAR0_IRQ_STATUS_OFFSET,
    XE_INFO_DEVICE_ID,
    XE_INFO_DOORBELLS,
    XE_INFO_REVISION,
    XE_INFO_SYSTEM_MEMORY,
    XE_INFO_TIMESTAMP,
    XE_INFO_VA_BITS,
    XE_INFO_VRAM_SIZE,
    XE_MMIO_ACCESS_PER_FILE,
    XE_MMIO_ACCESS_READ_ONLY,
)
from protocols.words import Words

from .errors import IoctlError, refuse_if
from .limits import refuse_past
from .memory import create_backing, reopen_read_only
from .pages import DoorbellPage

if TYPE_CHECKING:
    from ..config import DeviceConfig
    from .file import XeFile

# linux/fcntl.h; Python's fcntl module only names it from 3.12 on
F_SEAL_FUTURE_WRITE = 0x0010
TIMESTAMP_PERIOD = 0.005  # seconds between updates of the free-running timestamp
REFERENCE_CLOCK_HZ = 19_200_000
# regions one file may hold open at once. The info block can be opened any number of
# times and each open costs the daemon an object, an id and a node in the device-wide
# offset table: unbounded, one client could grow the daemon without end. A file needs
# one info region and one doorbell; 64 leaves room for libraries opening their own.
MAX_MMIO_REGIONS_OPEN = 64


@attrs.frozen
class BarRange:
    name: str
    offset: int
    size: int
    exposable: bool
    access: int = 0

    def overlaps(self, offset: int, size: int) -> bool:
        return offset < self.offset + self.size and self.offset < offset + size


class Bar0:
    """The register space: its layout, the info block's pages and the doorbell pages."""

    def __init__(self, config: DeviceConfig) -> None:
        pages = config.doorbell_pages
        # a region maps whole host pages: with pages over 4 KiB ([device] page_size)
        # the 4 KiB register blocks cannot be exposed on their own
        self.page_size = config.page_size
        self.doorbell_count = pages - 1  # the last doorbell page is the PCI barrier page
        self.size = XE_BAR0_DOORBELL_OFFSET + pages * PAGE_SIZE
        self.layout = (
            BarRange(
                "info", XE_BAR0_INFO_OFFSET, XE_BAR0_INFO_SIZE, True, XE_MMIO_ACCESS_READ_ONLY
            ),
            BarRange("irq_status", XE_BAR0_IRQ_STATUS_OFFSET, PAGE_SIZE, False),
            BarRange(
                "gt_regs",
                XE_BAR0_GT_REGS_OFFSET,
                XE_BAR0_DOORBELL_OFFSET - XE_BAR0_GT_REGS_OFFSET,
                False,
            ),
            BarRange("doorbell", XE_BAR0_DOORBELL_OFFSET, PAGE_SIZE, True, XE_MMIO_ACCESS_PER_FILE),
        )
        self._free_doorbells = list(range(self.doorbell_count))
        self.info_memfd = create_backing("xe-bar0-info", XE_BAR0_INFO_SIZE, sealed=False)
        # the daemon's own mapping is made before the seal: it stays writable, while no
        # writable shared mapping can ever be made again, by anyone
        self.info = mmap.mmap(self.info_memfd, XE_BAR0_INFO_SIZE, mmap.MAP_SHARED)
        self._fill_info(config)
        self.info_words = Words(self.info)
        fcntl.fcntl(
            self.info_memfd,
            fcntl.F_ADD_SEALS,
            F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
        )
        self.info_users = 0
        self.retired = False
        self._info_wanted = trio.Event()
        self._start = time.monotonic()

    def _fill_info(self, config: DeviceConfig) -> None:
        struct.pack_into("<I", self.info, XE_INFO_DEVICE_ID, config.device_id)
        struct.pack_into("<I", self.info, XE_INFO_REVISION, config.revision)
        struct.pack_into("<Q", self.info, XE_INFO_VRAM_SIZE, config.vram_size)
        struct.pack_into("<Q", self.info, XE_INFO_SYSTEM_MEMORY, config.system_memory)
        struct.pack_into("<I", self.info, XE_INFO_VA_BITS, config.va_bits)
        struct.pack_into("<I", self.info, XE_INFO_DOORBELLS, self.doorbell_count)

    def regions(self) -> tuple[m.DrmXeMmioRegion, ...]:
        return tuple(
            m.DrmXeMmioRegion(
                name=r.name,
                bar_offset=r.offset,
                size=r.size,
                access=r.access,
                count=self.doorbell_count if r.access == XE_MMIO_ACCESS_PER_FILE else 1,
            )
            for r in self.layout
            if r.exposable and not (r.offset % self.page_size or r.size % self.page_size)
        )

    def exposable(self, offset: int, size: int) -> BarRange:
        """The region [offset, offset+size) names, checked as the proposal says."""
        page = self.page_size
        refuse_if(not size or offset % page or size % page, EINVAL, "unaligned region")
        refuse_if(offset + size > self.size, EINVAL, "beyond BAR0")
        for r in self.layout:
            refuse_if(
                not r.exposable and r.overlaps(offset, size),
                EPERM,
                f"the range touches {r.name}, which is never exposed",
            )
        for r in self.layout:
            if r.exposable and (r.offset, r.size) == (offset, size):
                return r
        raise IoctlError(EINVAL, "not a region DEVICE_QUERY(MMIO_REGIONS) lists")

    def take_doorbell(self) -> int:
        refuse_if(not self._free_doorbells, ENOSPC, "every doorbell page is taken")
        return self._free_doorbells.pop(0)

    def give_back_doorbell(self, index: int) -> None:
        self._free_doorbells.append(index)
        self._free_doorbells.sort()

    def retire(self) -> None:
        """The device is unplugged: the info block reads zeros in every mapping (it is
        sealed against hole punching: zeroed through the daemon's own mapping) and its
        timestamp stops. A replugged device has a BAR0 of its own."""
        self.retired = True
        self.info[:] = bytes(len(self.info))
        self._info_wanted.set()  # the timestamp task sees it retired and ends
        if not self.info_users:
            self._close_info()

    def _close_info(self) -> None:
        """The daemon's own hold on a retired info block: clients' mappings keep theirs."""
        self.info_words.release()
        self.info.close()
        os.close(self.info_memfd)

    # --- the free-running timestamp, kept moving while anyone has the info block open ---
    def info_opened(self) -> None:
        self.info_users += 1
        self._info_wanted.set()

    def info_closed(self) -> None:
        self.info_users -= 1
        if self.retired and not self.info_users:
            self._close_info()

    async def run_timestamp(self) -> None:
        while not self.retired:
            if not self.info_users:
                self._info_wanted = trio.Event()
                await self._info_wanted.wait()
                continue
            ticks = int((time.monotonic() - self._start) * REFERENCE_CLOCK_HZ)
            self.info_words.store_u64(XE_INFO_TIMESTAMP, ticks)  # readers never see half of it
            await trio.sleep(TIMESTAMP_PERIOD)


class XeMmioRegion:
    """A region opened by one file: mappable at a fake offset allowed for that file only."""

    exact_length = True  # mmap length must equal the region size

    def __init__(self, xef: XeFile, bar: BarRange) -> None:
        self.file = xef
        self.bar = bar
        self.size = bar.size
        self.doorbell: DoorbellPage | None = None
        device = xef.device
        self.bar0 = device.bar0  # the device's, even after it is unplugged and replaced
        if bar.access == XE_MMIO_ACCESS_PER_FILE:
            index = self.bar0.take_doorbell()
            try:
                self.doorbell = DoorbellPage(xef, index)
            except OSError:  # out of descriptors or memory: the page is free for another
                self.bar0.give_back_doorbell(index)
                raise
            self.bar_offset = bar.offset + index * PAGE_SIZE
            device.watcher.add(self.doorbell)
        else:
            self.bar_offset = bar.offset
            self.bar0.info_opened()
        self.node = device.vma.add(self, self.size)
        self.node.allow(xef)
        self.id = 0

    @property
    def memfd(self) -> int:
        return self.doorbell.memfd if self.doorbell else self.bar0.info_memfd

    def mmap_fd(self) -> int:
        """What a client maps: the read-only block only ever as an O_RDONLY descriptor."""
        if self.doorbell is not None:
            return self.doorbell.mmap_fd()
        return reopen_read_only(self.memfd)

    def close(self, revoke: bool = False) -> None:
        """The offset no longer maps. With `revoke` (XE_MMIO_REGION_CLOSE) a doorbell
        page is revoked too: every mapping of it faults from now on. The read-only info
        block is shared by every file and cannot be: mappings of it keep reading it.
        Without (the file is released) mappings of the page stay, writing to nobody: the
        kernel's mapping would keep the file, and its doorbell, alive."""
        device = self.file.device
        device.vma.remove(self.node)
        if self.doorbell is not None:
            device.watcher.remove(self.doorbell)
            if revoke:
                self.doorbell.revoke()
            self.bar0.give_back_doorbell(self.doorbell.bar_index)
            self.doorbell.close()
        else:
            self.bar0.info_closed()


def xe_mmio_region_open_ioctl(
    xef: XeFile, args: m.DrmXeMmioRegionOpen
) -> m.DrmXeMmioRegionOpenReply:
    """XE_MMIO_REGION_OPEN (proposal): make a part of BAR0 mappable for this file.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): ENOMEM
    - extensions, pad or reserved non-zero, or flags non-zero: EINVAL
    - bar_offset or size zero or not aligned to the host page ([device] page_size: with
      64 KiB pages no 4 KiB block is exposable, and the query lists none), or beyond
      BAR0: EINVAL
    - the range touches a never-exposable register (irq status, GT control): EPERM
    - not exactly a region DEVICE_QUERY(MMIO_REGIONS) lists: EINVAL
    - the doorbell region when this file already has its page: EBUSY
    - the file holds MAX_MMIO_REGIONS_OPEN (64) regions already: ENOMEM (closing one
      makes room)
    - no doorbell page left: ENOSPC
    """
    refuse_if(args.extensions or args.pad or any(args.reserved), EINVAL, "extensions/pad/reserved")
    refuse_if(args.flags, EINVAL, f"unknown flags {args.flags:#x}")
    bar = xef.device.bar0.exposable(args.bar_offset, args.size)
    refuse_if(
        bar.access == XE_MMIO_ACCESS_PER_FILE
        and any(r.doorbell is not None for r in xef.mmio_regions.values()),
        EBUSY,
        "this file already has its doorbell page",
    )
    refuse_past(
        xef, "mmio_regions", len(xef.mmio_regions), MAX_MMIO_REGIONS_OPEN, "MAX_MMIO_REGIONS_OPEN"
    )
    region = XeMmioRegion(xef, bar)
    region.id = xef.mmio_ids.alloc()
    xef.mmio_regions[region.id] = region
    xef.log.debug("mmio_region_opened", region=bar.name, bar_offset=region.bar_offset)
    return m.DrmXeMmioRegionOpenReply(
        region_id=region.id,
        offset=region.node.start,
        size=region.size,
        bar_offset=region.bar_offset,
    )


def xe_mmio_region_close_ioctl(xef: XeFile, args: m.DrmXeMmioRegionClose) -> m.Empty:
    """XE_MMIO_REGION_CLOSE: the offset is revoked, and a doorbell page's mappings fault
    (SIGBUS) from now on, as the final version of the proposal zaps them.

    Checks: pad or reserved non-zero: EINVAL; no such region: ENOENT.
    """
    refuse_if(args.pad or any(args.reserved), EINVAL, "pad and reserved must be zero")
    region = xef.mmio_regions.pop(args.region_id, None)
    if region is None:
        raise IoctlError(ENOENT, f"no region {args.region_id}")
    xef.mmio_ids.release(args.region_id)
    region.close(revoke=True)
    return m.Empty()
