"""DRM_IOCTL_XE_VM_BIND: the checks of a bind array, and its binds made at once or
queued behind their fences (bind_queue.py), their BOs validated first (residency.py).
"""

from __future__ import annotations

from errno import EAGAIN, EFAULT, EINVAL, ENOENT
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_FLAGS,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    DRM_XE_VM_BIND_OP_PREFETCH,
    DRM_XE_VM_BIND_OP_UNMAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    PAGE_SIZE,
    XE_MAX_BINDS_PER_IOCTL,
)

from . import residency
from .bind_queue import MAX_QUEUED_BIND_OPS, MAX_QUEUED_BINDS, MAX_QUEUED_SPANS, BindQueue
from .errors import IoctlError, refuse_if
from .eudebug import debug_event
from .fence import Fence
from .limits import refuse_over, refuse_over_uid
from .sync import parse_syncs, signal_user_fences

if TYPE_CHECKING:
    from .bo import XeBo
    from .exec_queue import XeExecQueue
    from .file import XeFile
    from .vm import XeVm

XE_PAT_ENTRIES = 32


def _check_bind_op(op: m.DrmXeVmBindOp, page: int, regions: int) -> None:
    """vm_bind_ioctl_check_args() for one bind: EINVAL for every malformed combination
    (alignment: to `page`, the host page size the device follows, as PAGE_MASK is;
    `regions`: the device's memory-region mask)."""
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
    prefetch = op.op == DRM_XE_VM_BIND_OP_PREFETCH
    refuse_if(op.obj and prefetch, EINVAL, "PREFETCH takes no obj")
    region = op.prefetch_mem_region_instance
    refuse_if(region and not prefetch, EINVAL, "a prefetch region outside PREFETCH")
    refuse_if(region >= 32 or not regions & (1 << region), EINVAL, f"no memory region {region}")
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
    - each bind: MBZ fields, pat_index, op, flags, obj/NULL/op combinations (PREFETCH
      with obj, a prefetch region outside PREFETCH): EINVAL; a prefetch region the
      device lacks: EINVAL; addr, range or obj_offset not a multiple of the page size
      ([device] page_size), zero range: EINVAL
    - exec_queue_id naming no queue of this file: ENOENT; a queue that is not a bind
      queue, or a bind queue of another VM: EINVAL
    - VM closed: ENOENT
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
    - it must wait, and MAX_QUEUED_BINDS binds (or MAX_QUEUED_SPANS address spans) of
      the VM are queued already, or its ops would take the file's queued bind ops past
      MAX_QUEUED_BIND_OPS over all its VMs (a bind of none counts one): EAGAIN
    - the binds could take this file past limits.vmas mappings over all its VMs: ENOMEM.
      A MAP counts two (itself, and the tail of a mapping it lands inside), an UNMAP
      strictly inside a mapping one (it splits it), others none; judged against the
      mappings when the ioctl is made, so the last array before the limit may pass it
      by what its MAPs split of each other, and binds queued meanwhile (at most
      MAX_QUEUED_BIND_OPS a file) by theirs. A file at its limit can always unmap
    - the mappings it may add, and its ops if it must wait, would take the file's uid
      past limits.objects_per_uid over all its connections: ENOMEM
    - a MAP of a BO outside its placement (evicted, or DEFER_BACKING not backed yet)
      that no room can be made for, evicting other BOs (in LR mode: other VMs' BOs
      only; in fault mode none is needed): ENOMEM; a PREFETCH to a region outside the
      placement of a BO in its range: EINVAL, one with no room there: ENOMEM
      (residency.prepare_binds; xe validates in the bind job; BOs of the earlier binds
      of the array stay validated, as xe's do)
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
        _check_bind_op(op, xef.device.page_size, xef.device.mem_region_mask)
    queue = None
    if args.exec_queue_id:
        queue = xef.exec_queues.get(args.exec_queue_id)
        if queue is None:
            raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
        refuse_if(not queue.bind or queue.vm is not vm, EINVAL, "not a bind queue of this VM")
    refuse_if(vm.closed, ENOENT, f"VM {args.vm_id} is closed")
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
    refuse_if(
        waits and vm.queued.full(len(args.binds)),
        EAGAIN,
        f"{MAX_QUEUED_BINDS} binds or {MAX_QUEUED_SPANS} spans queued on this VM, or "
        f"{MAX_QUEUED_BIND_OPS} bind ops over this file's VMs",
    )
    added = _most_vmas_added(vm, args.binds)
    if added:
        refuse_over(xef, "vmas", xef.vma_count, added)
    queued = max(len(args.binds), 1) if waits else 0
    if added or queued:
        refuse_over_uid(xef, added + queued)
    residency.prepare_binds(vm, args.binds, bos)  # ENOMEM, EINVAL: see there
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
            # xe drops the binds of a closed VM, and of a file closed meanwhile
            if apply and not (vm.closed or xef not in xef.device.files):
                _make_binds(xef, vm, args, bos)
        finally:
            vm.queued.remove(fence)
            for bo in held:
                bo.put()

    binds.submit(waits, fence, make)
    return m.Empty()


def _most_vmas_added(vm: XeVm, binds: tuple[m.DrmXeVmBindOp, ...]) -> int:
    """The mappings `binds` may add (limits.vmas): a MAP or MAP_USERPTR two (itself, and
    the tail of a mapping it lands inside), an UNMAP one if it splits a mapping."""
    added = 0
    for op in binds:
        if op.op in (DRM_XE_VM_BIND_OP_MAP, DRM_XE_VM_BIND_OP_MAP_USERPTR):
            added += 2
        elif op.op == DRM_XE_VM_BIND_OP_UNMAP and vm.splits(op.addr, op.range):
            added += 1
    return added


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
        elif op.op == DRM_XE_VM_BIND_OP_PREFETCH:
            pass  # its BOs were migrated when it was checked (residency.prepare_binds)
        elif op.op == DRM_XE_VM_BIND_OP_UNMAP:
            vm.unmap(op.addr, op.range)
            vm.notify_aux(op.addr, op.range, "unbind")
        else:  # UNMAP_ALL: every VMA of this BO, in address order
            assert bo is not None
            vm.unmap_bo(bo, lambda start, end: vm.notify_aux(start, end - start, "unbind"))
        xef.log.debug("vm_bind", vm_id=args.vm_id, op=op.op, addr=op.addr, range=op.range)
        debug_event(
            xef,
            "unbind" if op.op in (DRM_XE_VM_BIND_OP_UNMAP, DRM_XE_VM_BIND_OP_UNMAP_ALL) else "bind",
            vm_id=args.vm_id,
            addr=op.addr,
            range=op.range,
            detail="userptr" if op.op == DRM_XE_VM_BIND_OP_MAP_USERPTR else f"bo {op.obj}",
        )
