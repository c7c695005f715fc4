"""The ops of the roles beside drm, on a Device opened with that role: the auxiliary
driver's ("aux"), the debugger's ("debugger") and the admin's ("admin"). Device has them
all (a role's ops are refused with EACCES on a connection of another role)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from protocols import Op
from protocols import messages as m


class Ioctls(Protocol):
    """What a mixin of Device's ops uses of it: the one way to talk to the daemon."""

    def ioctl(self, op: Op, args: Any, fds: Sequence[int] = ()) -> Any: ...

    def ioctl_fds(
        self, op: Op, args: Any, fds: Sequence[int] = ()
    ) -> tuple[Any, tuple[int, ...]]: ...


class RoleOps:
    """Mixed into Device."""

    # --- the auxiliary driver's side (role "aux") --------------------------------------------
    def aux_vm_import(self: Ioctls, vm_fd: int, on_behalf_of_pid: int) -> m.XedAuxVmImportReply:
        reply: m.XedAuxVmImportReply = self.ioctl(
            Op.AUX_VM_IMPORT, m.XedAuxVmImport(on_behalf_of_pid=on_behalf_of_pid), fds=[vm_fd]
        )
        return reply

    def aux_vm_resolve(
        self: Ioctls, vm_handle: int, va: int, length: int
    ) -> tuple[tuple[m.XedAuxSpan, ...], tuple[int, ...]]:
        """The spans behind [va, va+length) and one descriptor per BO or host memory
        (caller closes)."""
        reply, fds = self.ioctl_fds(
            Op.AUX_VM_RESOLVE, m.XedAuxVmResolve(vm_handle=vm_handle, va=va, length=length)
        )
        return reply.spans, fds

    def aux_vm_unwatch(self: Ioctls, vm_handle: int, va: int, length: int) -> None:
        self.ioctl(Op.AUX_VM_UNWATCH, m.XedAuxVmRange(vm_handle=vm_handle, va=va, length=length))

    def aux_vm_release(self: Ioctls, vm_handle: int) -> None:
        self.ioctl(Op.AUX_VM_RELEASE, m.XedAuxVmRelease(vm_handle=vm_handle))

    def aux_vm_invalidate_done(self: Ioctls, vm_handle: int, seqno: int) -> None:
        """Every range invalidated up to `seqno` is let go (a host-memory change waits)."""
        self.ioctl(
            Op.AUX_VM_INVALIDATE_DONE, m.XedAuxVmInvalidateDone(vm_handle=vm_handle, seqno=seqno)
        )

    # --- the debugger's side (role "debugger") ------------------------------------------------
    def debug_attach(self: Ioctls, pid: int) -> m.XedDebugAttachReply:
        reply: m.XedDebugAttachReply = self.ioctl(Op.DEBUG_ATTACH, m.XedDebugAttach(pid=pid))
        return reply

    def debug_detach(self: Ioctls, pid: int) -> None:
        self.ioctl(Op.DEBUG_DETACH, m.XedDebugDetach(pid=pid))

    def debug_vm_read(self: Ioctls, client_id: int, vm: int, addr: int, length: int) -> bytes:
        """The bytes at addr: fewer than `length` if the read met a binding it could
        not reach after the first (pread's short count)."""
        reply: m.XedDebugVmAccessReply = self.ioctl(
            Op.DEBUG_VM_ACCESS,
            m.XedDebugVmAccess(client_id=client_id, vm_id=vm, addr=addr, length=length),
        )
        return reply.data

    def debug_vm_write(self: Ioctls, client_id: int, vm: int, addr: int, data: bytes) -> int:
        """Write `data` at addr; return the bytes written: fewer than len(data) if the
        write met a binding it could not reach after the first (pwrite's short count)."""
        reply: m.XedDebugVmAccessReply = self.ioctl(
            Op.DEBUG_VM_ACCESS,
            m.XedDebugVmAccess(client_id=client_id, vm_id=vm, addr=addr, write=1, data=data),
        )
        return reply.length

    # --- admin ------------------------------------------------------------------------------
    def admin_status(self: Ioctls) -> m.XedAdminStatusReply:
        reply: m.XedAdminStatusReply = self.ioctl(Op.ADMIN_STATUS, m.XedAdminStatus())
        return reply

    def admin_clients(self: Ioctls) -> tuple[m.XedClientInfo, ...]:
        reply: m.XedAdminClientsReply = self.ioctl(Op.ADMIN_CLIENTS, m.XedAdminClients())
        return reply.clients

    def admin_gt_reset(self: Ioctls, gt_id: int = 0) -> int:
        """Reset a GT: its queues with a job running are banned. How many were."""
        reply: m.XedAdminGtResetReply = self.ioctl(
            Op.ADMIN_GT_RESET, m.XedAdminGtReset(gt_id=gt_id)
        )
        return reply.banned

    def admin_unplug(self: Ioctls) -> None:
        self.ioctl(Op.ADMIN_UNPLUG, m.XedAdminUnplug())

    def admin_replug(self: Ioctls) -> None:
        self.ioctl(Op.ADMIN_REPLUG, m.XedAdminReplug())
