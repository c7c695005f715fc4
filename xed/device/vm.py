"""XeVm: a GPU address space, its VMAs, and the VM ioctls.

Binding follows drm_gpuvm: a MAP over addresses already mapped replaces what it covers
(splitting VMAs at the edges), an UNMAP removes whatever lies in its range, mapped or
not. Device-side access (the command streamer, user fences) translates GPU addresses
through the VMAs to the BO pages; a hole is a GpuFault.
"""

from __future__ import annotations

import bisect
import mmap
from collections.abc import Iterator
from errno import EAGAIN, EBUSY, EFAULT, EINVAL, ENOENT
from typing import TYPE_CHECKING

import attrs

from protocols import errno_name
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_FLAG_READONLY,
    DRM_XE_VM_BIND_FLAGS,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    DRM_XE_VM_BIND_OP_PREFETCH,
    DRM_XE_VM_BIND_OP_UNMAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    DRM_XE_VM_CREATE_FLAG_FAULT_MODE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
    DRM_XE_VM_CREATE_FLAGS,
    FAULT_TYPE_NOT_PRESENT,
    FAULT_TYPE_WRITE_ACCESS,
    PAGE_SIZE,
    XE_MAX_BINDS_PER_IOCTL,
)
from protocols.words import Words

from . import residency
from .bind_queue import MAX_QUEUED_BINDS, BindQueue, QueuedBinds
from .errors import GpuFault, IoctlError, Unbound, refuse_if
from .eudebug import debug_event
from .limits import refuse_over
from .sync import parse_syncs, signal_user_fences
from .syncobj import Fence

if TYPE_CHECKING:
    from .bo import XeBo
    from .exec_queue import XeExecQueue
    from .file import XeFile
    from .userptr import HostArena
    from .vm_export import AuxRegistration, XeVmExport

XE_PAT_ENTRIES = 32

_WRITE = FAULT_TYPE_WRITE_ACCESS  # a write the binding refuses


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
        self.banned = False  # an LR-mode VM whose queue faulted (xe_vm_kill)
        self.export: XeVmExport | None = None
        self.registrations: set[AuxRegistration] = set()
        self.exec_queues = 0
        self.refs = 1
        self.touched: set[XeBo] | None = None  # BOs the device reached, while recording
        self.faults: list[m.XeVmFault] = []  # the first page faults (vm_faults.py)
        # VM_BINDs naming no bind queue that must wait go on the VM's own (made at the
        # first); binds queued on any of its queues, for later ones to wait for
        self.binds: BindQueue | None = None
        self.queued = QueuedBinds()
        self.evicted: dict[XeBo, None] = {}  # BOs bound here, evicted since (residency.py)
        self._starts: list[int] = []
        self._vmas: dict[int, Vma] = {}
        self.device.counts["vm"] += 1

    # --- lifetime ---------------------------------------------------------------------
    def get(self) -> XeVm:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.close()
            self.device.counts["vm"] -= 1
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

    # --- VMAs ---------------------------------------------------------------------------
    def vmas(self) -> list[Vma]:
        return [self._vmas[s] for s in self._starts]

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
        for vma in list(self._overlapping(addr, end)):
            self._remove(vma)
            if vma.start < addr:  # keep the head
                self._insert(attrs.evolve(vma, end=addr), get=True)
            if vma.end > end:  # keep the tail
                tail_offset = vma.bo_offset + (end - vma.start)
                self._insert(attrs.evolve(vma, start=end, bo_offset=tail_offset), get=True)
            if vma.bo is not None:
                vma.bo.put()

    def _insert(self, vma: Vma, get: bool) -> None:
        if vma.bo is not None:
            if get:
                vma.bo.get()
            residency.bound(vma.bo, self)
        bisect.insort(self._starts, vma.start)
        self._vmas[vma.start] = vma

    def _remove(self, vma: Vma) -> None:
        del self._starts[bisect.bisect_left(self._starts, vma.start)]
        del self._vmas[vma.start]
        if vma.bo is not None:
            residency.unbound(vma.bo, self)

    def _overlapping(self, start: int, end: int) -> Iterator[Vma]:
        index = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while index < len(self._starts):
            vma = self._vmas[self._starts[index]]
            if vma.start >= end:
                break
            if vma.end > start:
                yield vma
            index += 1

    # --- device-side access ---------------------------------------------------------------
    def _spans(
        self, addr: int, length: int, write: bool, readonly_binds: bool = True
    ) -> Iterator[tuple[Vma, int, int]]:
        """(vma, offset in the vma, bytes) covering [addr, addr+length), or GpuFault
        (Unbound at a hole).
        Without `readonly_binds` a READONLY binding takes a write (the debugger's: xe's
        eudebug writes through the BO or the user pages, whatever the VMA's flags)."""
        pos, end = addr, addr + length
        index = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if index < 0 or index >= len(self._starts):
                raise Unbound(pos, write)
            vma = self._vmas[self._starts[index]]
            if not vma.start <= pos < vma.end:
                raise Unbound(pos, write)
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
        there it covers; GpuFault as _spans (nothing bound, a write it refuses)."""
        return next(self._spans(addr, length, write, readonly_binds))

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
    - FAULT_MODE at all (the emulated device does not fault): EINVAL
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
    refuse_if(fault, EINVAL, "this device does not support page faults")
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


def _check_bind_op(op: m.DrmXeVmBindOp, page: int) -> None:
    """vm_bind_ioctl_check_args() for one bind: EINVAL for every malformed combination
    (alignment: to `page`, the host page size the device follows, as PAGE_MASK is)."""
    is_null = op.flags & DRM_XE_VM_BIND_FLAG_NULL
    refuse_if(op.extensions or op.pad or op.pad2 or any(op.reserved), EINVAL, "bind MBZ")
    refuse_if(op.pat_index >= XE_PAT_ENTRIES, EINVAL, f"pat_index {op.pat_index}")
    refuse_if(op.op > DRM_XE_VM_BIND_OP_PREFETCH, EINVAL, f"unknown bind op {op.op}")
    refuse_if(op.flags & ~DRM_XE_VM_BIND_FLAGS, EINVAL, f"unknown bind flags {op.flags:#x}")
    refuse_if(op.obj and is_null, EINVAL, "NULL binding with an object")
    refuse_if(op.obj_offset and is_null, EINVAL, "NULL binding with obj_offset")
    refuse_if(op.op != DRM_XE_VM_BIND_OP_MAP and is_null, EINVAL, "NULL flag outside MAP")
    refuse_if(
        not op.obj and op.op == DRM_XE_VM_BIND_OP_MAP and not is_null, EINVAL, "MAP needs obj"
    )
    refuse_if(
        op.op == DRM_XE_VM_BIND_OP_UNMAP_ALL and (not op.obj or op.addr or op.range),
        EINVAL,
        "UNMAP_ALL takes obj only",
    )
    refuse_if(op.obj and op.op == DRM_XE_VM_BIND_OP_UNMAP, EINVAL, "UNMAP takes no obj")
    refuse_if(op.obj and op.op == DRM_XE_VM_BIND_OP_MAP_USERPTR, EINVAL, "MAP_USERPTR takes no obj")
    refuse_if(op.op == DRM_XE_VM_BIND_OP_PREFETCH, EINVAL, "PREFETCH is not emulated")
    refuse_if(
        op.obj_offset % page or op.addr % page or op.range % page,
        EINVAL,
        "obj_offset, addr and range must be page aligned",
    )
    refuse_if(not op.range and op.op != DRM_XE_VM_BIND_OP_UNMAP_ALL, EINVAL, "range is zero")


def _check_userptr(xef: XeFile, op: m.DrmXeVmBindOp) -> None:
    """MAP_USERPTR: obj_offset is a user address in this file's host memory, every page
    of it still there (hmm_range_fault of freed memory fails): else EFAULT."""
    host = xef.host
    offset = op.obj_offset - host.node.start if host is not None else -1
    refuse_if(
        host is None or offset < 0 or offset + op.range > host.size,
        EFAULT,
        f"userptr {op.obj_offset:#x} is not inside this file's host memory",
    )
    assert host is not None
    refuse_if(
        1 in host.gone[offset // PAGE_SIZE : (offset + op.range) // PAGE_SIZE],
        EFAULT,
        "the userptr range holds freed host memory",
    )


class _MustWait(Exception):  # noqa: N818 - control flow, not an error
    """A VM_BIND whose every check passed waits on fences not signalled yet."""

    def __init__(self, fences: list[Fence]) -> None:
        super().__init__()
        self.fences = fences


async def xe_vm_bind_ioctl(xef: XeFile, args: m.DrmXeVmBind) -> m.Empty:
    """DRM_IOCTL_XE_VM_BIND: apply an array of binds, then signal the syncs.

    xe binds on a queue of its own, after the fences its syncs wait on. Here a bind with
    nothing to wait for is made at once. One that waits (a syncobj fence not signalled
    yet, a bind queued before it on its queue, or one of any queue over the same
    addresses or the same new page-table block: QueuedBinds.over) is queued on its bind
    queue (bind_queue.py) and the ioctl answers at once, its SIGNAL syncobjs holding
    the bind's fence; unless it has a user fence, which a C program's library writes
    when the ioctl answers: then the ioctl waits, and every check is made again.

    Checks, in order (all before anything changes):
    - no such VM: EINVAL
    - extensions, pad, pad2 or reserved non-zero: EINVAL
    - more than XE_MAX_BINDS_PER_IOCTL binds: EINVAL (none at all is a sync-only bind)
    - each bind: MBZ fields, pat_index, op, flags, obj/NULL/op combinations: EINVAL;
      PREFETCH: EINVAL (not emulated); addr, range or obj_offset not a multiple of the
      page size ([device] page_size), zero range: EINVAL
    - exec_queue_id naming no queue of this file: ENOENT; a queue that is not a bind
      queue, or a bind queue of another VM: EINVAL
    - VM closed or banned: ENOENT
    - each bind: range beyond the VM: EINVAL
    - each MAP_USERPTR: not inside this file's host memory, or over freed pages: EFAULT
    - each bind with obj: no such handle: ENOENT; range beyond the BO: EINVAL;
      BO private to another VM: EINVAL
    - syncs: as EXEC's (EINVAL, ENOENT, EOPNOTSUPP); a user fence on a bind with no
      binds: EOPNOTSUPP; a user fence address this file has not mapped, or in a GEM
      mapping of a foreign import that faults (imported_mmap = "xe"): EFAULT; in a BO
      the daemon cannot map: ENOMEM (out of descriptors or memory), else EFAULT; in a
      BO the daemon may not write (a read-only import, a write-sealed buffer): EFAULT
    - it must wait with a user fence, and this file has limits.fence_waits waits asleep
      already (a fence wait, as WAIT_USER_FENCE's and SYNCOBJ_WAIT's): ENOMEM
    - it must wait, and MAX_QUEUED_BINDS binds of the VM are queued already: EAGAIN
    - a MAP of a BO outside its placement (evicted, or DEFER_BACKING not backed yet)
      that no room can be made for, evicting other BOs (in LR mode: other VMs' BOs
      only): ENOMEM (residency.validate; xe validates it in the bind job; BOs of the
      earlier binds of the array stay validated, as xe's do)
    """
    while True:
        try:
            return _vm_bind(xef, args)
        except _MustWait as must:
            with xef.device.ufences.asleep(xef):
                for fence in must.fences:
                    await fence.wait()


def _vm_bind(xef: XeFile, args: m.DrmXeVmBind) -> m.Empty:
    """VM_BIND's checks and work; _MustWait before anything changes if it must wait."""
    vm = xef.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(EINVAL, f"no VM {args.vm_id}")
    refuse_if(args.pad or args.pad2 or any(args.reserved), EINVAL, "pad/reserved must be zero")
    refuse_if(args.extensions, EINVAL, "extensions must be zero")
    refuse_if(len(args.binds) > XE_MAX_BINDS_PER_IOCTL, EINVAL, "too many binds")
    for op in args.binds:
        _check_bind_op(op, xef.device.page_size)
    queue = None
    if args.exec_queue_id:
        queue = xef.exec_queues.get(args.exec_queue_id)
        if queue is None:
            raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
        refuse_if(not queue.bind or queue.vm is not vm, EINVAL, "not a bind queue of this VM")
    refuse_if(vm.closed or vm.banned, ENOENT, f"VM {args.vm_id} is closed or banned")
    bos: list[XeBo | None] = []
    for op in args.binds:
        refuse_if(op.range > vm.size or op.addr > vm.size - op.range, EINVAL, "range beyond the VM")
        if op.op == DRM_XE_VM_BIND_OP_MAP_USERPTR:
            _check_userptr(xef, op)
        bo = None
        if op.obj:
            bo = xef.handles.get(op.obj)
            if bo is None:
                raise IoctlError(ENOENT, f"no handle {op.obj}")
            if op.op == DRM_XE_VM_BIND_OP_MAP:
                refuse_if(
                    op.range > bo.size or op.obj_offset > bo.size - op.range,
                    EINVAL,
                    "range beyond the BO",
                )
            refuse_if(bo.vm is not None and bo.vm is not vm, EINVAL, "BO private to another VM")
        bos.append(bo)
    syncs = parse_syncs(
        xef, args.syncs, user_addresses=True, allow_ufence=bool(args.binds), lr_mode=vm.lr_mode
    )
    owner: XeExecQueue | XeVm = queue or vm  # whose bind queue it goes on
    binds = owner.binds
    waits = syncs.unsignalled() + vm.queued.over(args.binds, vm.size)
    if binds is not None and binds.busy:
        waits.append(binds.last_fence)
    if waits and syncs.user_fences:
        # a user fence in C memory is the library's to write when the ioctl answers:
        # the binds must be made by then
        raise _MustWait(waits)
    refuse_if(waits and vm.queued.full, EAGAIN, f"{MAX_QUEUED_BINDS} binds queued on this VM")
    keep = residency.bind_keep(vm)
    for op, bo in zip(args.binds, bos, strict=True):
        if bo is not None and op.op == DRM_XE_VM_BIND_OP_MAP:
            residency.validate(bo, keep)  # ENOMEM when no room can be made for it
    if not waits:
        _make_binds(xef, vm, args, bos)
        syncs.submit(Fence(True))  # done: SIGNAL syncobjs hold a signalled fence
        signal_user_fences(xef, syncs.user_fences)
        return m.Empty()
    fence = Fence()
    syncs.submit(fence)  # SIGNAL syncobjs hold the bind's fence from now on, as xe's
    held = [bo.get() for bo in bos if bo is not None]
    if binds is None:
        binds = owner.binds = BindQueue(xef)
    vm.queued.add(args.binds, fence, binds, vm)

    def make(apply: bool) -> None:
        try:
            # xe drops the binds of a killed VM, and of a file closed meanwhile
            if apply and not (vm.closed or vm.banned or xef not in xef.device.files):
                _make_binds(xef, vm, args, bos)
        finally:
            vm.queued.remove(fence)
            for bo in held:
                bo.put()

    binds.submit(waits, fence, make)
    return m.Empty()


def _make_binds(xef: XeFile, vm: XeVm, args: m.DrmXeVmBind, bos: list[XeBo | None]) -> None:
    """Make a VM_BIND's binds, in order (every check made)."""
    for op, bo in zip(args.binds, bos, strict=True):
        if op.op == DRM_XE_VM_BIND_OP_MAP:
            vm.map(op.addr, op.range, bo, op.obj_offset, op.flags)
            vm.notify_aux(op.addr, op.range, "bind")
        elif op.op == DRM_XE_VM_BIND_OP_MAP_USERPTR:
            assert xef.host is not None
            offset = op.obj_offset - xef.host.node.start
            vm.map(op.addr, op.range, None, offset, op.flags, host=xef.host)
            vm.notify_aux(op.addr, op.range, "bind")
        elif op.op == DRM_XE_VM_BIND_OP_UNMAP:
            vm.unmap(op.addr, op.range)
            vm.notify_aux(op.addr, op.range, "unbind")
        else:  # UNMAP_ALL: every VMA of this BO
            for vma in vm.vmas():
                if vma.bo is bo:
                    vm.unmap(vma.start, vma.end - vma.start)
                    vm.notify_aux(vma.start, vma.end - vma.start, "unbind")
        xef.log.debug("vm_bind", vm_id=args.vm_id, op=op.op, addr=op.addr, range=op.range)
        debug_event(
            xef,
            "unbind" if op.op in (DRM_XE_VM_BIND_OP_UNMAP, DRM_XE_VM_BIND_OP_UNMAP_ALL) else "bind",
            vm_id=args.vm_id,
            addr=op.addr,
            range=op.range,
            detail="userptr" if op.op == DRM_XE_VM_BIND_OP_MAP_USERPTR else f"bo {op.obj}",
        )
