"""XeVm: a GPU address space, its VMAs, and VM_CREATE and VM_DESTROY (VM_BIND is
vm_bind.py's).

Binding follows drm_gpuvm: a MAP over addresses already mapped replaces what it covers
(splitting VMAs at the edges), an UNMAP removes whatever lies in its range, mapped or
not. Device-side access (the command streamer, user fences) translates GPU addresses
through the VMAs to the BO pages; a hole is a GpuFault, or in a VM made with
SCRATCH_PAGE the scratch page: reads find zeros, writes are dropped.
"""

from __future__ import annotations

import bisect
import mmap
from collections.abc import Callable, Iterator
from errno import EBUSY, EINVAL, ENOENT
from typing import TYPE_CHECKING

import attrs

from protocols import errno_name
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_READONLY,
    DRM_XE_VM_CREATE_FLAG_FAULT_MODE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
    DRM_XE_VM_CREATE_FLAGS,
    FAULT_TYPE_NOT_PRESENT,
    FAULT_TYPE_WRITE_ACCESS,
)
from protocols.words import Words

from . import residency
from .bind_queue import BindQueue, QueuedBinds
from .errors import GpuFault, Unbound, refuse_if
from .eudebug import debug_event
from .limits import refuse_over

if TYPE_CHECKING:
    from .bo import XeBo
    from .file import XeFile
    from .userptr import HostArena
    from .vm_export import AuxRegistration, XeVmExport

XE_PAT_ENTRIES = 32

_WRITE = FAULT_TYPE_WRITE_ACCESS  # a write the binding refuses
_FEW = 32  # unmap_bo: up to this many VMAs, deleted from _starts one by one


@attrs.define(eq=False)
class Vma:
    start: int
    end: int
    bo: XeBo | None  # None and no host: a NULL binding (reads zero, writes dropped)
    bo_offset: int  # offset into the BO, or into the host memory for a userptr
    flags: int
    host: HostArena | None = None  # a userptr: the file's host memory

    @property
    def kind(self) -> str:
        return "userptr" if self.host else "bo" if self.bo else "null"


class XeVm:
    def __init__(self, xef: XeFile, flags: int) -> None:
        self.file = xef
        self.id = 0  # set when the file names it
        self.device = xef.device
        self.flags = flags
        self.size = 1 << self.device.config.va_bits
        self.closed = False
        self.export: XeVmExport | None = None
        self.registrations: set[AuxRegistration] = set()
        self.exec_queues = 0
        self.refs = 1
        self.touched: set[XeBo] | None = None  # BOs the device reached, while recording
        self.faults: list[m.XeVmFault] = []  # the first page faults (vm_faults.py)
        # VM_BINDs naming no bind queue that must wait go on the VM's own (made at the
        # first); binds queued on any of its queues, for later ones to wait for
        self.binds: BindQueue | None = None
        self.queued = QueuedBinds(xef)
        self.evicted: dict[XeBo, None] = {}  # BOs bound here, evicted since (residency.py)
        self._starts: list[int] = []  # the VMAs' starts, ascending
        self._vmas: dict[int, Vma] = {}
        self._by_bo: dict[XeBo, set[int]] = {}  # the starts of each BO's VMAs here
        self.device.counts["vm"] += 1
        xef.uid_account.objects += 1

    # --- lifetime ---------------------------------------------------------------------
    def get(self) -> XeVm:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.close()
            self.device.counts["vm"] -= 1
            self.file.uid_account.objects -= 1
            self.file.log.debug("vm_freed", vm_id=self.id)

    def close(self) -> None:
        """xe_vm_close: tear the mappings down now; holders of a reference see it closed.
        An aux driver that registered the VM is told (the whole range is invalidated,
        reason "vm_closed"): it can resolve nothing more of it, and holds it only until
        it releases it."""
        if not self.closed:
            self.closed = True
            if self.binds is not None:
                self.binds.halt()
            self.unmap(0, self.size)
            for registration in list(self.registrations):
                registration.vm_closed()

    def splits(self, addr: int, length: int) -> bool:
        """Whether unmapping [addr, addr+length) would leave a mapping in two pieces."""
        vma = next(self._overlapping(addr, addr + length), None)
        return vma is not None and vma.start < addr and addr + length < vma.end

    def mapped_in(self, start: int, end: int) -> bool:
        """Whether anything is mapped in [start, end)."""
        return next(self._overlapping(start, end), None) is not None

    @property
    def shared(self) -> bool:
        """Exported, or registered with an aux driver: VM_DESTROY refuses it (EBUSY)."""
        return self.export is not None or bool(self.registrations)

    def notify_aux(self, addr: int, length: int, reason: str) -> None:
        """Tell the aux drivers watching [addr, addr+length) that it changed."""
        for registration in list(self.registrations):
            registration.touched(addr, length, reason)

    @property
    def lr_mode(self) -> bool:
        return bool(self.flags & DRM_XE_VM_CREATE_FLAG_LR_MODE)

    @property
    def fault_mode(self) -> bool:
        """Page-fault mode: the GPU faults BOs in (residency.py), binds need no room."""
        return bool(self.flags & DRM_XE_VM_CREATE_FLAG_FAULT_MODE)

    def bos_in(self, start: int, end: int) -> list[XeBo]:
        """The BOs the VMAs over [start, end) map, each once."""
        return list(dict.fromkeys(v.bo for v in self._overlapping(start, end) if v.bo))

    # --- VMAs ---------------------------------------------------------------------------
    def iter_vmas(self) -> Iterator[Vma]:
        """The VMAs in address order, one at a time (take what you need: islice); the
        VM must not change while it runs."""
        return (self._vmas[s] for s in self._starts)

    def vmas_in(self, start: int, end: int) -> Iterator[Vma]:
        """The VMAs overlapping [start, end), in address order; the VM must not change
        while it runs."""
        return self._overlapping(start, end)

    def maps_host(self, host: HostArena, lo: int, hi: int) -> bool:
        """Whether a userptr VMA maps any of host memory's [lo, hi)."""
        return any(
            vma.host is host and vma.bo_offset < hi and lo < vma.bo_offset + vma.end - vma.start
            for vma in self._vmas.values()
        )

    def map(
        self,
        addr: int,
        length: int,
        bo: XeBo | None,
        bo_offset: int,
        flags: int,
        host: HostArena | None = None,
    ) -> None:
        self.unmap(addr, length)
        vma = Vma(addr, addr + length, bo.get() if bo else None, bo_offset, flags, host)
        self._insert(vma, get=False)

    def unmap(self, addr: int, length: int) -> None:
        end = addr + length
        first, stop = self._run(addr, end)
        if first == stop:
            return
        # the VMAs overlapping the range are a run of _starts: one deletion for them all
        gone = [self._vmas[start] for start in self._starts[first:stop]]
        del self._starts[first:stop]
        for vma in gone:
            self._forget(vma)
            if vma.start < addr:  # keep the head
                self._insert(attrs.evolve(vma, end=addr), get=True)
            if vma.end > end:  # keep the tail
                tail_offset = vma.bo_offset + (end - vma.start)
                self._insert(attrs.evolve(vma, start=end, bo_offset=tail_offset), get=True)
            if vma.bo is not None:
                vma.bo.put()

    def unmap_bo(self, bo: XeBo, unmapped: Callable[[int, int], None]) -> None:
        """UNMAP_ALL: remove every VMA of `bo` here, in address order, calling
        unmapped(start, end) after each (as unmap() of its range would, one by one)."""
        starts = sorted(self._by_bo.get(bo, ()))
        gone = [self._vmas[start] for start in starts]
        if len(starts) <= _FEW:
            for start in starts:
                del self._starts[bisect.bisect_left(self._starts, start)]
        elif starts:
            # the list copied once around them, in slices (memcpy, not a Python loop):
            # an array of UNMAP_ALLs each rebuilding it item by item took seconds
            kept: list[int] = []
            after = 0
            for index in [bisect.bisect_left(self._starts, start) for start in starts]:
                kept += self._starts[after:index]
                after = index + 1
            kept += self._starts[after:]
            self._starts[:] = kept
        for vma in gone:
            self._forget(vma)
            bo.put()
            unmapped(vma.start, vma.end)

    def _insert(self, vma: Vma, get: bool) -> None:
        if vma.bo is not None:
            if get:
                vma.bo.get()
            residency.bound(vma.bo, self)
            self._by_bo.setdefault(vma.bo, set()).add(vma.start)
        bisect.insort(self._starts, vma.start)
        self._vmas[vma.start] = vma
        self.file.vma_count += 1
        self.file.uid_account.objects += 1

    def _forget(self, vma: Vma) -> None:
        """Everything of removing `vma` but its place in _starts (the caller's)."""
        del self._vmas[vma.start]
        self.file.vma_count -= 1
        self.file.uid_account.objects -= 1
        if vma.bo is not None:
            starts = self._by_bo[vma.bo]
            starts.discard(vma.start)
            if not starts:
                del self._by_bo[vma.bo]
            residency.unbound(vma.bo, self)

    def _run(self, start: int, end: int) -> tuple[int, int]:
        """The indices [first, stop) in _starts of the VMAs overlapping [start, end)."""
        first = bisect.bisect_right(self._starts, start) - 1
        if first < 0 or self._vmas[self._starts[first]].end <= start:
            first += 1
        return first, max(first, bisect.bisect_left(self._starts, end))

    def _overlapping(self, start: int, end: int) -> Iterator[Vma]:
        first, stop = self._run(start, end)
        for index in range(first, stop):
            yield self._vmas[self._starts[index]]

    # --- device-side access ---------------------------------------------------------------
    def _spans(
        self,
        addr: int,
        length: int,
        write: bool,
        readonly_binds: bool = True,
        scratch: bool = True,
    ) -> Iterator[tuple[Vma, int, int]]:
        """(vma, offset in the vma, bytes) covering [addr, addr+length), or GpuFault
        (Unbound at a hole; with `scratch`, in a SCRATCH_PAGE VM, a NULL span instead).
        Without `readonly_binds` a READONLY binding takes a write (the debugger's: xe's
        eudebug writes through the BO or the user pages, whatever the VMA's flags)."""
        pos, end = addr, addr + length
        index = bisect.bisect_right(self._starts, pos) - 1
        scratch = scratch and bool(self.flags & DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE)
        while pos < end:
            vma = self._vmas[self._starts[index]] if 0 <= index < len(self._starts) else None
            if vma is None or not vma.start <= pos < vma.end:
                if not scratch:
                    raise Unbound(pos, write)
                # the hole, up to the next VMA: the scratch page (a NULL binding's rules)
                following = bisect.bisect_right(self._starts, pos)
                hole_end = self._starts[following] if following < len(self._starts) else end
                n = min(end, hole_end) - pos
                yield Vma(pos, pos + n, None, 0, 0), 0, n
                pos += n
                index = following
                continue
            if write and readonly_binds and vma.flags & DRM_XE_VM_BIND_FLAG_READONLY:
                raise GpuFault(pos, "write to a read-only binding", page=_WRITE, write=True)
            if write and vma.bo is not None and not vma.bo.writable:
                raise GpuFault(pos, "write to a read-only import", page=_WRITE, write=True)
            n = min(end, vma.end) - pos
            if self.touched is not None and vma.bo is not None:
                self.touched.add(vma.bo)
            yield vma, pos - vma.start, n
            pos += n
            index += 1

    def _memory(self, vma: Vma, offset: int, n: int) -> XeBo | HostArena | None:
        """What backs [offset, offset+n) of a VMA now: a userptr is checked against its
        notifier first (freed: a fault; being invalidated: UserptrBusy, wait and retry)."""
        if vma.host is not None:
            vma.host.check(vma.bo_offset + offset, n, vma.start + offset)
            return vma.host
        return vma.bo

    def binding_at(
        self, addr: int, length: int, write: bool, readonly_binds: bool = True
    ) -> tuple[Vma, int, int]:
        """The VMA at addr, the offset into it and how many of the `length` bytes from
        there it covers; GpuFault as _spans (nothing bound, a write it refuses; the
        scratch page is no binding: xe's eudebug finds no VMA there)."""
        return next(self._spans(addr, length, write, readonly_binds, scratch=False))

    @staticmethod
    def _view(memory: XeBo | HostArena, address: int, write: bool) -> mmap.mmap:
        """The device's mapping of `memory`, for reading or writing; a map the kernel
        refuses (no descriptor or memory left, a write seal on a foreign buffer: that one
        is read through a read-only map) is a fault on the access, as a page the GPU
        cannot reach would be."""
        try:
            return memory.view(write)
        except OSError as exc:
            raise _unmappable(address, exc) from exc

    @staticmethod
    def _words(memory: XeBo | HostArena, address: int) -> Words:
        try:
            return memory.words(write=True)
        except OSError as exc:
            raise _unmappable(address, exc) from exc

    def read(self, addr: int, length: int) -> bytes:
        parts = []
        for vma, offset, n in self._spans(addr, length, write=False):
            memory = self._memory(vma, offset, n)
            if memory is None:
                parts.append(bytes(n))
            else:
                start = vma.bo_offset + offset
                view = self._view(memory, vma.start + offset, write=False)
                parts.append(view[start : start + n])
        return b"".join(parts)

    def write_u64(self, addr: int, value: int) -> tuple[XeBo | HostArena, int] | None:
        """One 8-byte store (a user fence): a waiter never sees half of the value.
        Returns the memory and offset it landed at, to wake the waiters of that word
        (None where it was no single store: a NULL binding, a word split in two)."""
        spans = list(self._spans(addr, 8, write=True))
        vma, offset, n = spans[0]
        memory = self._memory(vma, offset, n)
        if n == 8 and memory is not None and (vma.bo_offset + offset) % 8 == 0:
            self._words(memory, addr).store_u64(vma.bo_offset + offset, value)
            return memory, vma.bo_offset + offset
        self.write(addr, value.to_bytes(8, "little"))
        return None

    def write(self, addr: int, data: bytes, readonly_binds: bool = True) -> None:
        """Store `data` at addr, across VMAs. Every span is checked before any byte is
        written (bound, writable, its userptr pages neither freed nor mid-change: so a
        UserptrBusy retry never finds half of it done). The views are made span by span,
        each used at once (views.py): one the kernel refuses past the first span is a
        GpuFault with the spans before it written, as a GPU's store faulting part way
        leaves them. The debugger does not come here across VMAs (eudebug.py)."""
        spans = list(self._spans(addr, len(data), True, readonly_binds))
        backing = [self._memory(vma, offset, n) for vma, offset, n in spans]
        pos = 0
        for (vma, offset, n), memory in zip(spans, backing, strict=True):
            if memory is not None:
                start = vma.bo_offset + offset
                view = self._view(memory, vma.start + offset, write=True)
                view[start : start + n] = data[pos : pos + n]
            pos += n


def _unmappable(address: int, exc: OSError) -> GpuFault:
    reason = f"the device cannot map it ({errno_name(exc.errno or 0)})"
    return GpuFault(address, reason, page=FAULT_TYPE_NOT_PRESENT)


def xe_vm_create_ioctl(xef: XeFile, args: m.DrmXeVmCreate) -> m.DrmXeVmCreateReply:
    """DRM_IOCTL_XE_VM_CREATE.

    Checks, in order:
    - extensions or reserved non-zero: EINVAL
    - unknown flags: EINVAL
    - SCRATCH_PAGE together with FAULT_MODE: EINVAL
    - FAULT_MODE without LR_MODE: EINVAL
    - the file holds limits.vms VMs already: ENOMEM
    """
    refuse_if(args.extensions, EINVAL, "extensions must be zero")
    refuse_if(any(args.reserved), EINVAL, "reserved must be zero")
    refuse_if(args.flags & ~DRM_XE_VM_CREATE_FLAGS, EINVAL, f"unknown flags {args.flags:#x}")
    fault = args.flags & DRM_XE_VM_CREATE_FLAG_FAULT_MODE
    refuse_if(
        fault and args.flags & DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
        EINVAL,
        "SCRATCH_PAGE and FAULT_MODE exclude each other",
    )
    refuse_if(
        fault and not args.flags & DRM_XE_VM_CREATE_FLAG_LR_MODE,
        EINVAL,
        "FAULT_MODE needs LR_MODE",
    )
    refuse_over(xef, "vms", len(xef.vms))
    vm = XeVm(xef, args.flags)
    vm_id = xef.vm_ids.alloc()
    xef.vms[vm_id] = vm
    vm.id = vm_id
    xef.log.debug("vm_created", vm_id=vm_id, flags=args.flags)
    debug_event(xef, "vm_create", vm_id=vm_id)
    return m.DrmXeVmCreateReply(vm_id=vm_id)


def xe_vm_destroy_ioctl(xef: XeFile, args: m.DrmXeVmDestroy) -> m.Empty:
    """DRM_IOCTL_XE_VM_DESTROY.

    Checks, in order:
    - pad or reserved non-zero: EINVAL
    - no such VM in this file: ENOENT
    - an LR-mode VM with exec queues still on it: EBUSY
    - the VM is exported, or registered with an aux driver: EBUSY
    The VM closes at once (its mappings go); exec queues that hold it see it closed.
    """
    refuse_if(args.pad or any(args.reserved), EINVAL, "pad and reserved must be zero")
    vm = xef.vms.get(args.vm_id)
    refuse_if(vm is None, ENOENT, f"no VM {args.vm_id}")
    assert vm is not None
    refuse_if(vm.lr_mode and vm.exec_queues, EBUSY, "exec queues still use this LR VM")
    if vm.export is not None:
        vm.export.settle()  # an export whose every descriptor is closed is gone already
    refuse_if(vm.shared, EBUSY, "the VM is exported or registered with an aux driver")
    xef.vm_destroy(args.vm_id)
    xef.log.debug("vm_destroyed", vm_id=args.vm_id)
    debug_event(xef, "vm_destroy", vm_id=args.vm_id)
    return m.Empty()
