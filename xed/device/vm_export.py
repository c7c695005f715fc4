"""VM export and the auxiliary driver's view of a VM (proposal: "drm/xe: support sharing
VM info between XE drivers").

An application exports its VM as a descriptor (an exported object, see export.py) and
hands it to an auxiliary driver (role `aux`), which imports it on behalf of that
application: the proposal shares a VM with another driver, not with another
application, so the importer must name the exporting process. The export and every
registration hold a reference: the VM outlives its creator's file while either exists.
A registered aux driver resolves address ranges to the BOs behind them (zero copy:
their descriptors) and hears of every later bind or unbind that touches a range it
resolved, as an MMU notifier would tell it: its view of that range is stale.
"""

from __future__ import annotations

import os
from errno import E2BIG, EEXIST, EFAULT, EINVAL, ENOENT, EPERM
from typing import TYPE_CHECKING

from protocols import MAX_FDS
from protocols import messages as m
from protocols.ops import Event

from .errors import IoctlError, refuse_if
from .export import ExportedObject, lookup

if TYPE_CHECKING:
    from .file import XeFile
    from .vm import XeVm


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


class AuxRegistration:
    """One aux connection's hold on a VM, and the ranges it watches."""

    def __init__(self, aux: XeFile, vm: XeVm, handle: int) -> None:
        self.aux = aux
        self.vm = vm.get()
        self.handle = handle
        self.watches: list[tuple[int, int]] = []
        vm.registrations.add(self)

    def touched(self, start: int, length: int, reason: str) -> None:
        """A bind or unbind covered [start, start+length): tell the aux driver once, and
        forget the watches it made stale (it resolves again if it still cares)."""
        end = start + length
        stale = [(s, e) for s, e in self.watches if s < end and start < e]
        if not stale:
            return
        self.watches = [w for w in self.watches if w not in stale]
        self.aux.send_event(
            Event.AUX_RANGE_INVALIDATED,
            m.AuxRangeInvalidated(vm_handle=self.handle, va=start, length=length, reason=reason),
        )

    def release(self) -> None:
        self.vm.registrations.discard(self)
        self.watches.clear()
        self.vm.put()


def xe_vm_export_ioctl(xef: XeFile, args: m.DrmXeVmExport) -> tuple[m.Empty, list[int]]:
    """XE_VM_EXPORT (proposal): the VM as a descriptor for an auxiliary driver.

    Checks, in order:
    - pad, pad1 or reserved non-zero: EINVAL
    - no such VM: EINVAL
    - the VM is closed or banned: ENOENT
    - the VM is exported already, or registered with an aux driver: EEXIST
    """
    refuse_if(args.pad or args.pad1 or any(args.reserved), EINVAL, "pad/pad1/reserved")
    vm = xef.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(EINVAL, f"no VM {args.vm_id}")
    refuse_if(vm.closed or vm.banned, ENOENT, f"VM {args.vm_id} is closed or banned")
    refuse_if(vm.export is not None or vm.registrations, EEXIST, "already exported")
    export = XeVmExport(vm, xef)
    fd = export.new_fd()
    export.let_go()  # the descriptor's life is the clients' from now on
    xef.log.info("vm_exported", vm_id=args.vm_id, ino=export.ino)
    return m.Empty(), [fd]


def aux_vm_import_ioctl(
    xef: XeFile, args: m.XedAuxVmImport, fds: tuple[int, ...]
) -> m.XedAuxVmImportReply:
    """AUX_VM_IMPORT: register the attached VM descriptor with this aux driver.

    Checks, in order:
    - flags or reserved non-zero: EINVAL
    - not an exported VM of this daemon (a dma-buf, any other file, another daemon's
      VM descriptor): EINVAL
    - the VM is closed or banned: ENOENT
    - on_behalf_of_pid is not the process that exported the VM: EPERM
    - this aux connection has registered it already: EEXIST
    """
    refuse_if(args.flags or any(args.reserved), EINVAL, "flags/reserved")
    (fd,) = fds
    export = lookup(xef.device, fd)
    refuse_if(not isinstance(export, XeVmExport), EINVAL, "not an exported VM of this daemon")
    assert isinstance(export, XeVmExport)
    vm = export.vm
    refuse_if(vm.closed or vm.banned, ENOENT, "the VM is closed or banned")
    refuse_if(
        args.on_behalf_of_pid != export.exporter_pid,
        EPERM,
        f"pid {args.on_behalf_of_pid} did not export this VM: a VM is shared with a "
        "driver, not with another application",
    )
    refuse_if(
        any(r.aux is xef for r in vm.registrations), EEXIST, "registered by this aux already"
    )
    handle = xef.aux_ids.alloc()
    xef.aux_vms[handle] = AuxRegistration(xef, vm, handle)
    xef.log.info("aux_vm_imported", vm_handle=handle, on_behalf_of=args.on_behalf_of_pid)
    return m.XedAuxVmImportReply(
        vm_handle=handle, va_bits=xef.device.config.va_bits, bindings=_bindings(vm)
    )


def _bindings(vm: XeVm) -> tuple[m.XedAuxBinding, ...]:
    return tuple(
        m.XedAuxBinding(
            va=vma.start,
            range=vma.end - vma.start,
            bo_size=vma.bo.size if vma.bo else 0,
            bo_offset=vma.bo_offset if vma.bo else 0,  # a NULL binding has no BO offset
        )
        for vma in vm.vmas()
    )


def _registration(xef: XeFile, handle: int) -> AuxRegistration:
    registration = xef.aux_vms.get(handle)
    if registration is None:
        raise IoctlError(ENOENT, f"no vm_handle {handle}")
    return registration


def aux_vm_resolve_ioctl(
    xef: XeFile, args: m.XedAuxVmResolve
) -> tuple[m.XedAuxVmResolveReply, list[int]]:
    """AUX_VM_RESOLVE: the BOs behind [va, va+length), and a watch on the range.

    Checks, in order:
    - no such vm_handle: ENOENT
    - length zero or the range beyond the VM: EINVAL
    - any address of the range unbound, or bound NULL: EFAULT
    - more than MAX_FDS distinct BOs: E2BIG
    """
    registration = _registration(xef, args.vm_handle)
    vm = registration.vm
    refuse_if(
        not args.length or args.va + args.length > vm.size, EINVAL, "empty or beyond the VM"
    )
    spans: list[m.XedAuxSpan] = []
    bos: list[object] = []
    pos, end = args.va, args.va + args.length
    for vma in vm.vmas():
        if vma.end <= pos or vma.start >= end:
            continue
        refuse_if(vma.start > pos or vma.bo is None, EFAULT, f"nothing usable at {pos:#x}")
        assert vma.bo is not None
        if vma.bo not in bos:
            bos.append(vma.bo)
        stop = min(end, vma.end)
        spans.append(
            m.XedAuxSpan(
                va=pos,
                length=stop - pos,
                fd_index=bos.index(vma.bo),
                offset=vma.bo_offset + (pos - vma.start),
            )
        )
        pos = stop
        if pos >= end:
            break
    refuse_if(pos < end, EFAULT, f"nothing bound at {pos:#x}")
    refuse_if(len(bos) > MAX_FDS, E2BIG, f"{len(bos)} BOs behind the range")
    registration.watches.append((args.va, end))
    fds = [os.dup(bo.memfd) for bo in bos]  # type: ignore[attr-defined]
    return m.XedAuxVmResolveReply(spans=tuple(spans)), fds


def aux_vm_unwatch_ioctl(xef: XeFile, args: m.XedAuxVmRange) -> m.Empty:
    """AUX_VM_UNWATCH. Checks: no such vm_handle: ENOENT."""
    registration = _registration(xef, args.vm_handle)
    end = args.va + args.length
    registration.watches = [
        (s, e) for s, e in registration.watches if not (args.va <= s and e <= end)
    ]
    return m.Empty()


def aux_vm_release_ioctl(xef: XeFile, args: m.XedAuxVmRelease) -> m.Empty:
    """AUX_VM_RELEASE. Checks: no such vm_handle: ENOENT."""
    registration = _registration(xef, args.vm_handle)
    xef.release_aux_vm(registration.handle)
    return m.Empty()
