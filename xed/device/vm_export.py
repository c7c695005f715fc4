"""VM export and the auxiliary driver's view of a VM (proposal: "drm/xe: support sharing
VM info between XE drivers").

An application exports its VM as a descriptor (an exported object, see export.py) and
hands it to an auxiliary driver (role `aux`), which imports it on behalf of that
application: the proposal shares a VM with another driver, not with another
application, so the importer must name the exporting process. The export and every
registration hold a reference to the VM object, not to its contents: when the file that
created the VM closes, the VM closes with it (xe_file_close -> xe_vm_close_and_put), its
bindings go, and a registered aux driver is told once, with an invalidation of the whole
address space (reason "vm_closed"). From then on the VM is closed: an import is ENOENT,
and so is a resolve. A registered aux driver resolves address ranges to the BOs behind
them (zero copy: their descriptors) and hears of every later bind or unbind that touches
a range it resolved, as an MMU notifier would tell it: its view of that range is stale.

A userptr range resolves to the host memory's own pages, as an on-demand-paging RDMA
driver maps user memory: nothing is pinned. Before those pages change, the notifier
(HOST_MEMORY_INVALIDATE START) tells the aux driver and waits until it acknowledges
that it let them go (AUX_VM_INVALIDATE_DONE), as mmu_interval_notifier's invalidate
callback waits for the device; a resolve that meets pages mid-change waits for the
change to end and revalidates, and one that meets freed pages fails with EFAULT.
"""

from __future__ import annotations

import os
from errno import E2BIG, EEXIST, EFAULT, EINVAL, ENOENT, EPERM
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocols import MAX_FDS
from protocols import messages as m
from protocols.ops import Event

from .errors import GpuFault, IoctlError, refuse_if
from .export import ExportedObject, exported_as
from .limits import charge_export, refuse_over
from .userptr import HostArena, UserptrBusy

if TYPE_CHECKING:
    from .bo import XeBo
    from .file import XeFile
    from .vm import XeVm


# the spans one AUX_VM_RESOLVE reply holds (its record refuses more); mypy sees records
# through dataclass_transform, not as attrs classes
_RESOLVE_REPLY: Any = m.XedAuxVmResolveReply
MAX_SPANS: int = attrs.fields(_RESOLVE_REPLY).spans.metadata["max_items"]
# the bindings one AUX_VM_IMPORT reply lists, likewise
_IMPORT_REPLY: Any = m.XedAuxVmImportReply
MAX_BINDINGS: int = attrs.fields(_IMPORT_REPLY).bindings.metadata["max_items"]


class XeVmExport(ExportedObject):
    kind = "vm_export"

    def __init__(self, vm: XeVm, exporter: XeFile) -> None:
        super().__init__(vm.device)
        self.vm = vm.get()
        self.exporter_pid = exporter.pid
        vm.export = self

    def info(self) -> m.XedExportedInfo:
        holders = [r.aux.client_id for r in self.vm.registrations][:8]
        return m.XedExportedInfo(
            kind=self.kind,
            ino=self.ino,
            exporter_pid=self.exporter_pid,
            registered_by=tuple(holders + [0] * (8 - len(holders))),
        )

    def release(self) -> None:
        """The last copy of the VM descriptor is closed: the export is cleared."""
        if self.vm.export is self:
            self.vm.export = None
        self.vm.put()


@attrs.frozen
class HostMap:
    """Host memory [lo, hi) the aux driver got from a resolve, seen at GPU address `va`;
    `since`: the invalidations sent before it was handed out (they do not cover it)."""

    arena: HostArena
    lo: int
    hi: int
    va: int
    since: int

    @property
    def va_end(self) -> int:
        return self.va + self.hi - self.lo

    def overlaps(self, start: int, end: int) -> bool:
        return self.va < end and start < self.va_end

    def outside(self, start: int, end: int) -> list[HostMap]:
        """What is left of this map once GPU range [start, end) is cut out of it."""
        left = [(self.va, min(start, self.va_end)), (max(end, self.va), self.va_end)]
        return [
            attrs.evolve(self, lo=self.lo + a - self.va, hi=self.lo + b - self.va, va=a)
            for a, b in left
            if a < b
        ]


class AuxRegistration:
    """One aux connection's hold on a VM, the ranges it watches, and the host memory
    pages it was handed and has not yet acknowledged letting go of."""

    def __init__(self, aux: XeFile, vm: XeVm, handle: int) -> None:
        self.aux = aux
        self.vm = vm.get()
        self.handle = handle
        self.watches: list[tuple[int, int]] = []
        self.host_maps: list[HostMap] = []
        self.seqno = 0  # invalidations sent
        self.acked = 0  # invalidations the aux driver has acknowledged
        self._unacked: dict[int, tuple[int, int]] = {}  # seqno -> its range
        self._ack = trio.Event()
        self.released = False
        vm.registrations.add(self)

    def watch(self, start: int, end: int) -> None:
        if (start, end) not in self.watches:
            self.watches.append((start, end))

    def touched(self, start: int, length: int, reason: str) -> None:
        """A bind or unbind covered [start, start+length): tell the aux driver once, and
        forget the watches it made stale (it resolves again if it still cares)."""
        end = start + length
        stale = [(s, e) for s, e in self.watches if s < end and start < e]
        if not stale:
            return
        self.watches = [w for w in self.watches if w not in stale]
        self._invalidate(start, length, reason)

    def vm_closed(self) -> None:
        """The VM closed under the aux driver (its creator's file is gone): everything it
        was handed is stale and nothing more can be resolved. It hears it once, as an
        invalidation of the whole address space with reason "vm_closed"; the pages it
        held are no longer held for it (nobody waits for an acknowledgement: the VM's
        memory goes now, as the kernel's notifier release does not wait either)."""
        self.watches.clear()
        self._keep_host_maps([])
        self._invalidate(0, self.vm.size, "vm_closed")

    def host_changing(self, arena: HostArena, lo: int, hi: int) -> int:
        """Host memory [lo, hi) is about to change: tell the aux driver of every range it
        holds there. The seqno to wait for, or 0 if it holds none of it."""
        last = 0
        for h in self.host_maps:
            if h.arena is arena and h.lo < hi and lo < h.hi:
                start, stop = max(lo, h.lo), min(hi, h.hi)
                last = self._invalidate(h.va + start - h.lo, stop - start, "userptr")
        return last

    def _invalidate(self, va: int, length: int, reason: str) -> int:
        self.seqno += 1
        if self.host_maps:  # an ack matters only to pages held before it was sent
            self._unacked[self.seqno] = (va, va + length)
        self.aux.send_event(
            Event.AUX_RANGE_INVALIDATED,
            m.AuxRangeInvalidated(
                vm_handle=self.handle, va=va, length=length, reason=reason, seqno=self.seqno
            ),
        )
        return self.seqno

    def acknowledge(self, seqno: int) -> None:
        """The aux driver let go of every range invalidated up to `seqno`."""
        for seq in [s for s in self._unacked if s <= seqno]:
            start, end = self._unacked.pop(seq)  # only these pages were let go
            self._keep_host_maps(
                [
                    part
                    for h in self.host_maps
                    for part in ([h] if h.since >= seq else h.outside(start, end))
                ]
            )
        self.acked = max(self.acked, seqno)
        self._ack.set()
        self._ack = trio.Event()

    async def wait_acknowledged(self, seqno: int) -> None:
        """Until the aux driver acknowledged `seqno`, or its registration ended."""
        while self.acked < seqno and not self.released:
            await self._ack.wait()

    def hold_host(self, arena: HostArena, lo: int, hi: int, va: int) -> None:
        """The aux driver was handed host memory [lo, hi) at `va`. Pages it held there
        already are held once, from now on: one invalidation each, not one per resolve."""
        new = HostMap(arena, lo, hi, va, self.seqno)
        kept = [
            part
            for h in self.host_maps
            for part in (
                h.outside(new.va, new.va_end)
                if h.arena is arena and h.va - h.lo == va - lo
                else [h]
            )
        ]
        self._keep_host_maps([*kept, new])
        arena.aux_users.add(self)

    def unwatch(self, start: int, end: int) -> None:
        """The aux driver no longer cares about what lies inside [start, end)."""
        self.watches = [(s, e) for s, e in self.watches if not (start <= s and e <= end)]
        self._keep_host_maps([h for h in self.host_maps if not (start <= h.va and h.va_end <= end)])

    def _keep_host_maps(self, kept: list[HostMap]) -> None:
        for arena in {h.arena for h in self.host_maps} - {h.arena for h in kept}:
            arena.aux_users.discard(self)
        self.host_maps = kept

    def release(self) -> None:
        self.vm.registrations.discard(self)
        self.watches.clear()
        self._keep_host_maps([])
        self.released = True
        self._ack.set()  # whoever waits for this aux driver waits no more
        self.vm.put()


def xe_vm_export_ioctl(xef: XeFile, args: m.DrmXeVmExport) -> tuple[m.Empty, list[int]]:
    """XE_VM_EXPORT (proposal): the VM as a descriptor for an auxiliary driver.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - pad, pad1 or reserved non-zero: EINVAL
    - no such VM: EINVAL
    - the VM is closed: ENOENT
    - the VM is exported already, or registered with an aux driver: EEXIST
    - this file's live exports reach limits.exported: ENOMEM (the export counts against
      its creator until it is released, after the file is gone if need be)
    """
    refuse_if(args.pad or args.pad1 or any(args.reserved), EINVAL, "pad/pad1/reserved")
    vm = xef.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(EINVAL, f"no VM {args.vm_id}")
    refuse_if(vm.closed, ENOENT, f"VM {args.vm_id} is closed")
    refuse_if(vm.export is not None or vm.registrations, EEXIST, "already exported")
    refuse_over(xef, "exported", xef.account.exported)
    export = XeVmExport(vm, xef)
    charge_export(xef, export)
    try:
        fd = export.new_fd()
    finally:
        export.let_go()  # the descriptor's life is the clients' from now on (if it got one)
    xef.log.info("vm_exported", vm_id=args.vm_id, ino=export.ino)
    return m.Empty(), [fd]


def aux_vm_import_ioctl(
    xef: XeFile, args: m.XedAuxVmImport, fds: tuple[int, ...]
) -> m.XedAuxVmImportReply:
    """AUX_VM_IMPORT: register the attached VM descriptor with this aux driver.

    Checks, in order:
    - flags or reserved non-zero: EINVAL
    - not an exported VM of this daemon (a dma-buf, any other file, another daemon's
      VM descriptor): EINVAL; one of a device since unplugged (unplug.py): ENODEV
    - the VM is closed: ENOENT
    - on_behalf_of_pid is not the process that exported the VM: EPERM
    - this aux connection has registered it already: EEXIST
    The reply lists the VM's first MAX_BINDINGS bindings (what its record holds).
    """
    refuse_if(args.flags or any(args.reserved), EINVAL, "flags/reserved")
    (fd,) = fds
    export = exported_as(xef.device, fd, XeVmExport, EINVAL, "not an exported VM of this daemon")
    vm = export.vm
    refuse_if(vm.closed, ENOENT, "the VM is closed")
    refuse_if(
        args.on_behalf_of_pid != export.exporter_pid,
        EPERM,
        f"pid {args.on_behalf_of_pid} did not export this VM: a VM is shared with a "
        "driver, not with another application",
    )
    refuse_if(any(r.aux is xef for r in vm.registrations), EEXIST, "registered by this aux already")
    bindings = _bindings(vm)  # the reply is made before anything is registered
    handle = xef.aux_ids.alloc()
    xef.aux_vms[handle] = AuxRegistration(xef, vm, handle)
    xef.log.info("aux_vm_imported", vm_handle=handle, on_behalf_of=args.on_behalf_of_pid)
    return m.XedAuxVmImportReply(
        vm_handle=handle, va_bits=xef.device.config.va_bits, bindings=bindings
    )


def _bindings(vm: XeVm) -> tuple[m.XedAuxBinding, ...]:
    """The VM's first MAX_BINDINGS bindings, in address order (AUX_VM_RESOLVE reaches
    every one)."""
    return tuple(
        m.XedAuxBinding(
            va=vma.start,
            range=vma.end - vma.start,
            bo_size=vma.bo.size if vma.bo else 0,
            bo_offset=vma.bo_offset if vma.bo else 0,  # a NULL binding has no BO offset
        )
        for vma in vm.vmas()[:MAX_BINDINGS]
    )


def _registration(xef: XeFile, handle: int) -> AuxRegistration:
    registration = xef.aux_vms.get(handle)
    if registration is None:
        raise IoctlError(ENOENT, f"no vm_handle {handle}")
    return registration


async def aux_vm_resolve_ioctl(
    xef: XeFile, args: m.XedAuxVmResolve
) -> tuple[m.XedAuxVmResolveReply, list[int]]:
    """AUX_VM_RESOLVE: the memory behind [va, va+length), and a watch on the range.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - no such vm_handle: ENOENT
    - the VM is closed (the file that created it is gone): ENOENT
    - length zero or the range beyond the VM: EINVAL
    - any address of the range unbound, or bound NULL: EFAULT
    - freed host memory under a userptr range: EFAULT
    - more than MAX_FDS distinct BOs and host memories, or more than MAX_SPANS spans
      (bindings: one BO bound many times over): E2BIG
    Host memory under a userptr range that is being invalidated is waited for (as
    hmm_range_fault retries), and the whole range is then resolved again; the wait
    counts against limits.fence_waits of the aux file (ENOMEM past it: wait_idle_for).
    """
    while True:
        registration = _registration(xef, args.vm_handle)  # again: it may end meanwhile
        vm = registration.vm
        refuse_if(vm.closed, ENOENT, "the VM is closed: the file that created it is gone")
        refuse_if(
            not args.length or args.va + args.length > vm.size, EINVAL, "empty or beyond the VM"
        )
        try:
            spans, backing = _resolve(vm, args.va, args.va + args.length)
        except UserptrBusy as busy:
            xef.device.stats["userptr_retries"] += 1
            await busy.arena.wait_idle_for(xef)  # ENOMEM past limits.fence_waits
            continue
        break
    fds: list[int] = []
    try:  # the descriptors first: running out of them must leave nothing watched or held
        for memory in backing:
            fds.append(os.dup(memory.memfd))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    registration.watch(args.va, args.va + args.length)
    for span in spans:
        memory = backing[span.fd_index]
        if isinstance(memory, HostArena):  # its pages are the aux driver's until it acks
            registration.hold_host(memory, span.offset, span.offset + span.length, span.va)
    return m.XedAuxVmResolveReply(spans=tuple(spans)), fds


def _resolve(vm: XeVm, pos: int, end: int) -> tuple[list[m.XedAuxSpan], list[XeBo | HostArena]]:
    """The spans of [pos, end) and what backs them; raises before anything is held."""
    spans: list[m.XedAuxSpan] = []
    backing: list[XeBo | HostArena] = []
    try:
        for vma, offset, n in vm._spans(pos, end - pos, write=False):
            memory = vm._memory(vma, offset, n)  # a userptr: freed faults, changing is busy
            va = vma.start + offset
            refuse_if(memory is None, EFAULT, f"NULL binding at {va:#x}")
            assert memory is not None
            if memory not in backing:
                backing.append(memory)
            spans.append(
                m.XedAuxSpan(
                    va=va, length=n, fd_index=backing.index(memory), offset=vma.bo_offset + offset
                )
            )
    except GpuFault as fault:  # a hole, or freed host memory
        raise IoctlError(EFAULT, f"{fault.reason} at {fault.address:#x}") from None
    refuse_if(len(backing) > MAX_FDS, E2BIG, f"{len(backing)} BOs behind the range")
    refuse_if(len(spans) > MAX_SPANS, E2BIG, f"{len(spans)} bindings behind the range")
    return spans, backing


def aux_vm_unwatch_ioctl(xef: XeFile, args: m.XedAuxVmRange) -> m.Empty:
    """AUX_VM_UNWATCH. Checks: no such vm_handle: ENOENT."""
    _registration(xef, args.vm_handle).unwatch(args.va, args.va + args.length)
    return m.Empty()


def aux_vm_invalidate_done_ioctl(xef: XeFile, args: m.XedAuxVmInvalidateDone) -> m.Empty:
    """AUX_VM_INVALIDATE_DONE: the aux driver let go of every range invalidated up to
    seqno (the return of mmu_interval_notifier's invalidate callback).

    Checks, in order:
    - no such vm_handle: ENOENT
    - seqno zero, or beyond the last invalidation sent: EINVAL
    """
    registration = _registration(xef, args.vm_handle)
    refuse_if(
        not 0 < args.seqno <= registration.seqno,
        EINVAL,
        f"seqno {args.seqno}: {registration.seqno} invalidations were sent",
    )
    registration.acknowledge(args.seqno)
    return m.Empty()


def aux_vm_release_ioctl(xef: XeFile, args: m.XedAuxVmRelease) -> m.Empty:
    """AUX_VM_RELEASE. Checks: no such vm_handle: ENOENT."""
    registration = _registration(xef, args.vm_handle)
    xef.release_aux_vm(registration.handle)
    return m.Empty()
