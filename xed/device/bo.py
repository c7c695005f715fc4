"""XeBo, the GEM buffer object, and the GEM ioctls that create, name and release it."""

from __future__ import annotations

import mmap
import os
from errno import EACCES, EINVAL, ENODEV, ENOENT, ENOSPC, EPERM
from typing import TYPE_CHECKING

import structlog

from protocols import messages as m
from protocols.constants import (
    DRM_XE_GEM_CPU_CACHING_WB,
    DRM_XE_GEM_CPU_CACHING_WC,
    DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING,
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_GEM_CREATE_FLAG_SCANOUT,
    DRM_XE_GEM_CREATE_FLAGS,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER,
    SZ_4K,
    XE_PCI_BARRIER_MMAP_OFFSET,
)
from protocols.words import Words

from . import residency
from .errors import IoctlError, refuse_if
from .flink import drop_name
from .limits import refuse_over
from .memory import MemRegion, create_backing, unbacked, write_sealed
from .reaper import close_memory
from .vma_manager import VmaNode

if TYPE_CHECKING:
    from .device import XeDevice
    from .dma_buf import DmaBuf
    from .fence import Fence
    from .file import XeFile
    from .vm import XeVm


_log = structlog.get_logger("xed")


class XeBo:
    """Memory the device and the CPU share: a memfd, mapped by clients and the daemon.

    References come from GEM handles and from VMAs binding it; the last put frees the
    record, the region accounting and the daemon's descriptor. Client mappings made
    earlier keep their pages: they hold the memfd themselves.
    """

    def __init__(
        self,
        device: XeDevice,
        size: int,
        placement: tuple[MemRegion, ...],
        flags: int,
        cpu_caching: int,
        vm: XeVm | None,
        memfd: int | None = None,
        deferred: bool = False,
    ) -> None:
        self.device = device
        self.size = size
        self.flags = flags
        # the placement's regions, in TTM's order (none for a foreign import); where it
        # is charged, and which VMs bind it: residency.py
        self.placement = placement
        self.wants_visible = bool(flags & DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM)
        self.region: MemRegion | None = None  # none while DEFER_BACKING leaves it unbacked
        self.visible = False  # charged to the CPU-visible part of VRAM
        self.bound_in: dict[XeVm, int] = {}  # VM -> how many of its VMAs map it
        if memfd is None:
            if not deferred:
                residency.place(self)  # ENOMEM before anything is made
            try:
                memfd = create_backing("xe-bo", size)
            except OSError:
                if self.region is not None:
                    residency.uncharge(self)
                raise
        self.memfd = memfd
        self.cpu_caching = cpu_caching
        self.vm = vm  # VM-private: shares the VM's reservation, never exportable
        # fences imported through its dma-buf (sync_file.py): (fence, a writer's?)
        self.resv: list[tuple[Fence, bool]] | None = None
        self.refs = 1
        self.writable = True
        self.sealed = False  # its owner sealed it against writes since the import (view())
        self.handle_count = 0
        self.exported_as: DmaBuf | None = None  # our export, for as long as it lives
        self.name = 0  # GEM_FLINK's global name while handles exist (flink.py)
        self.name_uids: set[int] = set()  # the uids of the files that flinked it
        self.import_fd: int | None = None  # a foreign import: the dma-buf it came from
        # the offset exists from the start; which files may map it is the node's business
        self.node: VmaNode | None = device.vma.add(self, size)
        self._view: mmap.mmap | None = None
        self._words: Words | None = None
        device.counts["bo"] += 1
        device.counts["bo_bytes"] += size

    @classmethod
    def foreign(
        cls, device: XeDevice, memfd: int, size: int, import_fd: int, writable: bool
    ) -> XeBo:
        """A BO over another daemon's pages (a foreign dma-buf import): no region of ours
        pays for it, and `import_fd` keeps the exporter's buffer alive while we use it.
        A dma-buf exported without DRM_RDWR comes read-only: the device cannot write it."""
        bo = cls(device, size, (), 0, 0, None, memfd=memfd)
        bo.import_fd = import_fd
        bo.writable = writable
        return bo

    def back(self) -> None:
        """Back a BO made with DEFER_BACKING at its first CPU mapping or export, as
        GEM_CREATE would have placed it (residency.place: ENOMEM, and it stays
        unbacked, if even system memory is full). A bind validates it instead
        (residency.validate). Nothing to do for any other BO."""
        if self.region is None and self.placement:
            residency.place(self)

    @property
    def imported(self) -> bool:
        return self.import_fd is not None

    def handle_opened(self) -> None:
        self.handle_count += 1

    @property
    def dma_buf(self) -> DmaBuf | None:
        """obj->dma_buf: our export while the daemon holds it, i.e. while handles exist."""
        exported = self.exported_as
        return exported if exported is not None and exported.held else None

    def handle_closed(self) -> None:
        """The last handle going drops the object's name and the daemon's copy of its
        dma-buf (obj->dma_buf), as drm_gem_object_handle_put_unlocked does."""
        self.handle_count -= 1
        if self.handle_count:
            return
        drop_name(self)
        if self.exported_as is not None:
            self.exported_as.let_go()

    @property
    def cpu_visible(self) -> bool:
        """Whether the CPU can reach the pages through a mapping. VRAM outside the
        CPU-visible part of a small BAR cannot be: xe places a VRAM BO created without
        NEEDS_VISIBLE_VRAM top-down (out of the BAR) on such a device, and its CPU
        fault handler answers SIGBUS for a resource not wholly inside the BAR
        (xe_ttm_io_mem_reserve). System memory and a full BAR always can."""
        region = self.region
        return (
            region is None
            or region.mem_class != DRM_XE_MEM_REGION_CLASS_VRAM
            or self.visible
            or region.cpu_visible >= region.total
        )

    def get(self) -> XeBo:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self._free()

    def _free(self) -> None:
        if self.node is not None:
            self.device.vma.remove(self.node)
            self.node = None
        if self._view is not None:
            self.device.views.forget(self)
            self.drop_view()
        close_memory(self.memfd, self.size)  # a large one's pages are freed off the loop
        if self.import_fd is not None:
            os.close(self.import_fd)
            self.import_fd = None
        if self.region is not None:
            residency.uncharge(self)
        _log.debug("bo_freed", size=self.size, imported=self.imported)
        self.device.counts["bo"] -= 1
        self.device.counts["bo_bytes"] -= self.size

    def view(self, write: bool = True) -> mmap.mmap:
        """The device's own mapping of the pages, made on demand and unmapped again when
        the device maps too many (views.py): use it at once, never across an await.
        OSError if the kernel refuses the map (out of descriptors or memory), or if
        `write` is asked of pages the device cannot write: a read-only import (EACCES,
        as a writable map of its O_RDONLY descriptor would be), or a foreign buffer its
        owner sealed against writes after the import (EPERM, the kernel's answer to a
        writable map of it). The device's DMA would write such pages; the daemon has no
        way in but a map, so it reads them through a read-only one and faults a write."""
        if self._view is None:
            self._view = self.device.views.map(self, self._map)
        else:
            self.device.views.used(self)
        if write and not self.writable:
            raise OSError(EACCES, "a read-only import: the device may not write it")
        if write and self.sealed:
            raise OSError(EPERM, "its owner sealed it against writes")
        return self._view

    def _map(self) -> mmap.mmap:
        """A shared map of the pages: writable if the device may write them, else (a
        read-only import, or write-sealed) read-only. A seal is found when the kernel
        refuses the writable map, and kept: seals are never removed, so the read-only
        view is the only one the BO will have."""
        if self.writable and not self.sealed:
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            try:
                return mmap.mmap(self.memfd, self.size, mmap.MAP_SHARED, prot)
            except OSError as exc:
                if exc.errno != EPERM or not write_sealed(self.memfd):
                    raise
                self.sealed = True
        return mmap.mmap(self.memfd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)

    def words(self, write: bool = True) -> Words:
        """Single-access words of the device's view (user fences, atomics): as view()."""
        view = self.view(write)
        if self._words is None:
            self._words = Words(view)
        return self._words

    def drop_view(self) -> None:
        """Unmap the device's view (its words first: they hold it exported)."""
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._view is not None:
            self._view.close()
            self._view = None

    exact_length = False  # a BO maps in part too, from its start

    def mmap_fd(self) -> int:
        """What a CPU mapping maps: the pages, or an empty memfd (sealed against
        growing) every access of which faults SIGBUS: memory the CPU cannot reach (VRAM
        outside a small BAR), and, with imported_mmap = "xe", a foreign import, which
        xe's TTM mapping has no pages of its own to fault in for."""
        self.back()
        if not self.cpu_visible:
            return unbacked()
        if self.imported and self.device.dma_buf_config.imported_mmap == "xe":
            return unbacked()
        return os.dup(self.memfd)

    def mmap_node(self) -> VmaNode:
        assert self.node is not None, "a freed BO has no handle to look it up by"
        return self.node


def xe_gem_create_ioctl(xef: XeFile, args: m.DrmXeGemCreate) -> m.DrmXeGemCreateReply:
    """DRM_IOCTL_XE_GEM_CREATE: create a BO and a handle to it.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): ENOMEM
    - pad or reserved non-zero: EINVAL
    - placement empty or naming a region the device lacks: EINVAL
    - flags outside DEFER_BACKING | SCANOUT | NEEDS_VISIBLE_VRAM: EINVAL
    - handle non-zero on input: EINVAL
    - size zero or not a multiple of the page size: EINVAL
    - NEEDS_VISIBLE_VRAM without a VRAM placement: EINVAL
    - cpu_caching neither WB nor WC: EINVAL
    - cpu_caching WB with a VRAM placement or with SCANOUT: EINVAL
    - vm_id non-zero and naming no open VM of this file: ENOENT
    - the file holds limits.bos GEM handles already: ENOMEM
    - larger than the whole fake mmap offset space (DRM_FILE_PAGE_OFFSET_SIZE, about
      1 TiB): ENOSPC, from drm_vma_offset_add in ttm_bo_init_reserved, before any
      placement is tried (IGT's xe_create create-massive-size)
    - no region of the placement has room: a VRAM-only BO is made evicted, in system
      memory, as TTM makes room by eviction (residency.py); larger than every region
      of its placement (VRAM, CPU-visible VRAM on a small BAR with NEEDS_VISIBLE_VRAM,
      system memory), or system memory full too: ENOMEM, as TTM reports it. With
      DEFER_BACKING at its first use instead (VM_BIND, MMAP, PRIME_HANDLE_TO_FD)
    - extensions non-zero: EINVAL. xe walks the chain (a user pointer) once the BO
      exists, and frees the BO if an extension fails; none is emulated here. A C
      library reads the chain itself: it asks with extensions 0 and, if the chain is
      refused (unreadable, too long, an unknown name, PXP asked of a device without
      it), closes the new handle and answers the chain's errno.
    """
    xe = xef.device
    refuse_if(any(args.pad) or any(args.reserved), EINVAL, "pad and reserved must be zero")
    refuse_if(
        not args.placement or args.placement & ~xe.mem_region_mask,
        EINVAL,
        f"placement {args.placement:#x} not within {xe.mem_region_mask:#x}",
    )
    refuse_if(args.flags & ~DRM_XE_GEM_CREATE_FLAGS, EINVAL, f"unknown flags {args.flags:#x}")
    refuse_if(args.handle, EINVAL, "handle must be zero on input")
    refuse_if(not args.size or args.size % xe.page_size, EINVAL, "size must be page aligned")
    vram = [r for r in xe.regions.values() if r.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM]
    wants_vram = [r for r in vram if args.placement & (1 << r.instance)]
    visible = bool(args.flags & DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM)
    refuse_if(visible and not wants_vram, EINVAL, "NEEDS_VISIBLE_VRAM needs a VRAM placement")
    refuse_if(
        args.cpu_caching not in (DRM_XE_GEM_CPU_CACHING_WB, DRM_XE_GEM_CPU_CACHING_WC),
        EINVAL,
        f"cpu_caching {args.cpu_caching} is neither WB nor WC",
    )
    refuse_if(
        args.cpu_caching == DRM_XE_GEM_CPU_CACHING_WB
        and (wants_vram or args.flags & DRM_XE_GEM_CREATE_FLAG_SCANOUT),
        EINVAL,
        "WB caching is not allowed for VRAM or scanout",
    )
    vm = None
    if args.vm_id:
        vm = xef.vms.get(args.vm_id)
        refuse_if(vm is None or vm.closed, ENOENT, f"no VM {args.vm_id}")
    refuse_over(xef, "bos", len(xef.handles))
    refuse_if(args.size > xe.vma.space, ENOSPC, "larger than the fake mmap offset space")
    defer = bool(args.flags & DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING)
    placement = xe.regions_for(args.placement)
    bo = XeBo(xe, args.size, placement, args.flags, args.cpu_caching, vm, deferred=defer)
    if args.extensions:
        bo.put()
        raise IoctlError(EINVAL, "no GEM_CREATE extension is emulated")
    handle = xef.handle_create(bo)
    bo.put()  # the handle holds the object now
    where = bo.region.instance if bo.region is not None else None
    xef.log.debug("bo_created", handle=handle, size=args.size, region=where)
    return m.DrmXeGemCreateReply(handle=handle)


def drm_gem_close_ioctl(xef: XeFile, args: m.DrmGemClose) -> m.Empty:
    """DRM_IOCTL_GEM_CLOSE: drop a handle.

    Checks: no such handle: EINVAL (drm_gem_handle_delete). pad is not checked, as in DRM.
    """
    refuse_if(args.handle not in xef.handles, EINVAL, f"no handle {args.handle}")
    xef.handle_delete(args.handle)
    return m.Empty()


def xe_gem_mmap_offset_ioctl(xef: XeFile, args: m.DrmXeGemMmapOffset) -> m.DrmXeGemMmapOffsetReply:
    """DRM_IOCTL_XE_GEM_MMAP_OFFSET: the fake offset that maps a BO.

    Checks, in order:
    - extensions or reserved non-zero: EINVAL
    - flags other than DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER: EINVAL
    - PCI_BARRIER: a device without VRAM (not discrete): EINVAL; handle not 0: EINVAL;
      a host page larger than 4 KiB ([device] page_size): EINVAL, so that user space
      falls back to the ioctl path; else the barrier page's offset (not uAPI: clients
      must ask for it)
    - no such handle: ENOENT
    - a foreign import while dma_buf.imported_mmap = "refuse": ENODEV, as i915 answers
      for objects without pages of its own (mmap the dma-buf instead and bracket CPU
      access with DMA_BUF_IOCTL_SYNC). With "xe" (the default) the offset is given and
      MMAP of it succeeds, but the first access raises SIGBUS, as xe's TTM mapping of
      an import faults; "forward" maps the exporter's pages, as the i915 RFC proposed.
    """
    refuse_if(args.extensions, EINVAL, "extensions must be zero")
    refuse_if(any(args.reserved), EINVAL, "reserved must be zero")
    refuse_if(
        args.flags & ~DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER, EINVAL, f"unknown flags {args.flags:#x}"
    )
    if args.flags & DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER:
        refuse_if(not xef.device.config.vram_size, EINVAL, "no PCI barrier on an integrated part")
        refuse_if(args.handle, EINVAL, "the PCI barrier takes handle 0")
        refuse_if(xef.device.page_size > SZ_4K, EINVAL, "no PCI barrier with pages over 4 KiB")
        return m.DrmXeGemMmapOffsetReply(offset=XE_PCI_BARRIER_MMAP_OFFSET)
    bo = xef.handles.get(args.handle)
    if bo is None:
        raise IoctlError(ENOENT, f"no handle {args.handle}")
    refuse_if(
        bo.imported and xef.device.dma_buf_config.imported_mmap == "refuse",
        ENODEV,
        "an imported buffer is mapped through its dma-buf: mmap the dma-buf and bracket "
        "CPU access with DMA_BUF_IOCTL_SYNC",
    )
    return m.DrmXeGemMmapOffsetReply(offset=bo.mmap_node().start)
