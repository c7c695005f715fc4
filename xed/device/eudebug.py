"""The debugger (eudebug): attach to a process, hear what it does, read and write its VMs.

A connection with role `debugger` attaches to a process by pid, one debugger per
process. From then on every drm connection of that process reports to it (open, close,
VM create/destroy, bind/unbind, exec queue create/destroy, exec) as DEBUG_EVENT, and the
debugger can read and write the process's VMs at GPU addresses, across VMAs, BO and
userptr alike, one VMA after the other as xe's eudebug VM file does: an access that
meets a VMA it cannot reach after others were done stops there with a short count.
Userptr access goes through the notifier (userptr.py): each VMA's part is copied whole
with no invalidation in between (the notifier lock, in the kernel); pages being
invalidated are waited for and that part starts over.
`[debugger] userptr_access = false` refuses userptr ranges, for those who hold that
reading another process's host memory through the GPU is a side channel.

What an attachment reaches is decided as the kernel decides it for ptrace:

- It names one process instance, not a pid: DEBUG_ATTACH takes a pidfd of the process
  and keeps it. A connection is the target's only if that very process opened it
  (process.py: its instance, recorded at accept), so a newcomer that inherits the pid
  is a stranger. When the pidfd reports the exit, the attachment is over (a detach
  event), even if a connection of the dead process lives on in a child it forked.
- Credentials are checked per connection, every time (ptrace_may_access): the debugger
  reaches a connection only if it runs as root or as the uid that opened it (SO_PEERCRED
  at connect). A target that was uid 65534 when the debugger attached and is root again
  when it opens its next connection keeps that connection to itself: DEBUG_VM_ACCESS
  refuses it (EPERM) and none of its events are forwarded.
"""

from __future__ import annotations

import itertools
import os
from errno import EBUSY, EFAULT, EINVAL, EMFILE, ENFILE, ENOENT, EPERM, ESRCH
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocols import messages as m
from protocols.ops import Event, Role

from . import process
from .errors import GpuFault, IoctlError, Unbound, refuse_if
from .userptr import UserptrBusy

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile
    from .vm import XeVm

MAX_ACCESS = 32768
EXITED = "the target exited"
UNPLUGGED = "the device was unplugged"


@attrs.define(eq=False)
class Attachment:
    """A debugger attached to one process instance (the pidfd keeps it from any other)."""

    debugger: XeFile
    pid: int
    process: process.Instance
    pidfd: int
    watch: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def close_pidfd(self) -> None:
        if self.pidfd >= 0:
            trio.lowlevel.notify_closing(self.pidfd)  # wakes the watcher, if it waits
            os.close(self.pidfd)
            self.pidfd = -1


def may_access(debugger: XeFile, target: XeFile) -> bool:
    """ptrace_may_access for a connection: root, or the uid that opened it."""
    return debugger.uid == 0 or debugger.uid == target.uid


def _attachment(xef: XeFile) -> Attachment | None:
    """The attachment to the process that opened this drm connection, if any (a
    debugger of the device that replaced the file's, unplugged, is not its)."""
    if xef.process is None or xef.role is not Role.DRM:
        return None
    found = xef.device.debuggers.get(xef.process)
    return found if found is not None and found.debugger.generation == xef.generation else None


def debug_event(xef: XeFile, kind: str, **fields: Any) -> None:
    """Tell the debugger attached to this file's process, if any, what just happened
    (not if the file was opened with a uid the debugger may not reach)."""
    attachment = _attachment(xef)
    if attachment is None or not may_access(attachment.debugger, xef):
        return
    attachment.debugger.send_event(
        Event.DEBUG_EVENT,
        m.DebugEventInfo(kind=kind, pid=xef.pid, client_id=xef.client_id, **fields),
    )


def target_closed(xef: XeFile) -> None:
    """The target's file is gone; with its last one, the debugger is detached cleanly."""
    attachment = _attachment(xef)
    if attachment is None:
        return
    debug_event(xef, "close")
    if not _targets(attachment.debugger, attachment.process, excluding=xef):
        _detach(attachment, EXITED)


def debugger_closed(xef: XeFile) -> None:
    for attachment in list(xef.debugging):
        _end(attachment)


def device_unplugged(device: XeDevice) -> None:
    """drm_dev_unplug: every attachment ends, and each debugger is told (its connection
    answers ENODEV from now on; one of the next device attaches anew)."""
    for attachment in list(device.debuggers.values()):
        _detach(attachment, UNPLUGGED)


def _end(attachment: Attachment) -> None:
    """Forget the attachment, stop its watcher and let its pidfd go (no event)."""
    attachment.debugger.device.debuggers.pop(attachment.process, None)
    attachment.debugger.debugging.discard(attachment)
    attachment.watch.cancel()
    attachment.close_pidfd()


def _detach(attachment: Attachment, detail: str) -> None:
    """The attachment ended without the debugger asking: end it and say so."""
    _end(attachment)
    attachment.debugger.send_event(
        Event.DEBUG_EVENT, m.DebugEventInfo(kind="detach", pid=attachment.pid, detail=detail)
    )


async def _watch(attachment: Attachment) -> None:
    """Wait for the target process to exit; then the attachment is over.

    Its own connections were closed before its pidfd said so (the kernel closes a
    process's files before it notifies its exit): the daemon reads their EOF at any
    moment, and the last one's release detaches after its close event, in order. A
    connection of the process still open by someone else (a child it forked) is no
    reason to stay attached to a process that is gone: detach now.
    """
    with attachment.watch:
        if attachment.pidfd < 0:
            return
        try:
            await trio.lowlevel.wait_readable(attachment.pidfd)
        except trio.ClosedResourceError:
            return  # detached meanwhile
        attachment.close_pidfd()
        if any(not f.peer_gone() for f in _targets(attachment.debugger, attachment.process)):
            _detach(attachment, EXITED)


def _targets(
    debugger: XeFile, instance: process.Instance | None, excluding: XeFile | None = None
) -> list[XeFile]:
    """The drm connections the process instance opened on the debugger's device (none
    for a process that is gone; those of a device since unplugged are not reached)."""
    if instance is None:
        return []
    return [
        f
        for f in debugger.device.clients()
        if f.process == instance
        and f.role is Role.DRM
        and f is not excluding
        and f.generation == debugger.generation
    ]


# What DEBUG_ATTACH lists: XedDebugAttachReply holds 64 VMs of 256 bindings at most, but
# one datagram holds fewer than 900 bindings (71 bytes each at worst), so the reply lists
# the VMs in order and their bindings in order until VIEW_BINDINGS are listed in all.
VIEW_VMS = 64
VIEW_BINDINGS_PER_VM = 256
VIEW_BINDINGS = 768


def _first_handles(xef: XeFile) -> dict[int, int]:
    """id(BO) -> its first handle in the file. One pass: looking each binding's BO up
    among the handles was VIEW_BINDINGS x limits.bos steps (768 x 65536, over a second
    with every other client waiting) for a target that opens one BO's name 65535 times."""
    first: dict[int, int] = {}
    for handle, bo in xef.handles.items():
        first.setdefault(id(bo), handle)
    return first


def _vm_view(targets: list[XeFile]) -> tuple[m.XedDebugVm, ...]:
    vms: list[m.XedDebugVm] = []
    left = VIEW_BINDINGS
    for xef in targets:
        handles: dict[int, int] | None = None
        for vm_id, vm in list(xef.vms.items())[: VIEW_VMS - len(vms)]:
            shown = list(itertools.islice(vm.iter_vmas(), min(VIEW_BINDINGS_PER_VM, left)))
            left -= len(shown)
            if shown and handles is None:
                handles = _first_handles(xef)
            bindings = tuple(
                m.XedDebugBinding(
                    va=vma.start,
                    range=vma.end - vma.start,
                    kind=vma.kind,
                    handle=handles.get(id(vma.bo), 0) if handles else 0,
                    userptr=vma.host.node.start + vma.bo_offset if vma.host else 0,
                )
                for vma in shown
            )
            vms.append(m.XedDebugVm(client_id=xef.client_id, vm_id=vm_id, bindings=bindings))
    return tuple(vms)


def debug_attach_ioctl(xef: XeFile, args: m.XedDebugAttach) -> m.XedDebugAttachReply:
    """DEBUG_ATTACH: attach to the process that has pid `pid` now (a pidfd pins it).

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve, checked
      by the server first: the pidfd is kept while attached): ENOMEM
    - no such process (or a thread id): ESRCH
    - no descriptor left in the daemon for its pidfd: EMFILE
    - no drm connection opened by that process (one opened by an earlier process that
      had its pid is not its, nor one of a device since unplugged): ESRCH
    - one of its drm connections was opened with a uid the debugger may not reach: it
      is neither root nor that uid (ptrace_may_access): EPERM
    - another debugger is attached to it (or this one already): EBUSY
    The reply lists the target's VMs (VIEW_VMS) and their bindings in order, as many as
    one datagram holds (VIEW_BINDINGS in all); DEBUG_VM_ACCESS reaches every one.
    """
    device = xef.device
    try:
        pidfd = process.pidfd_open(args.pid)
    except OSError as exc:
        if exc.errno not in (EMFILE, ENFILE):
            raise
        raise IoctlError(EMFILE, "no descriptor left for a pidfd") from None
    refuse_if(pidfd is None, ESRCH, f"no process {args.pid}")
    assert pidfd is not None
    try:
        instance = process.instance(pidfd, args.pid)
        targets = _targets(xef, instance)
        refuse_if(not targets, ESRCH, f"no drm connection of pid {args.pid}")
        assert instance is not None
        for target in targets:
            refuse_if(
                not may_access(xef, target),
                EPERM,
                f"uid {xef.uid} may not debug connection {target.client_id} (uid {target.uid})",
            )
        refuse_if(instance in device.debuggers, EBUSY, f"pid {args.pid} has a debugger")
    except BaseException:
        os.close(pidfd)
        raise
    attachment = Attachment(debugger=xef, pid=args.pid, process=instance, pidfd=pidfd)
    device.debuggers[instance] = attachment
    xef.debugging.add(attachment)
    device.start_soon(lambda: _watch(attachment), what="debug_watch", log=xef.log)
    xef.log.info("debugger_attached", target=args.pid)
    return m.XedDebugAttachReply(vms=_vm_view(targets))


def debug_detach_ioctl(xef: XeFile, args: m.XedDebugDetach) -> m.Empty:
    """DEBUG_DETACH. Checks: not attached to that pid: ENOENT."""
    attached = [a for a in xef.debugging if a.pid == args.pid]
    refuse_if(not attached, ENOENT, f"not attached to pid {args.pid}")
    for attachment in attached:
        _end(attachment)
    return m.Empty()


async def debug_vm_access_ioctl(xef: XeFile, args: m.XedDebugVmAccess) -> m.XedDebugVmAccessReply:
    """DEBUG_VM_ACCESS: read `length` bytes at addr, or write `data` there.

    Checks, in order:
    - client_id is not a drm connection opened by a process we are attached to (a
      process that has since been given the pid of one is not), on this device (not
      on one since unplugged): ENOENT
    - the connection was opened with a uid we may not reach: we are neither root nor
      that uid (ptrace_may_access, checked on every access): EPERM
    - no such VM in it: ENOENT
    - length (or the data's) zero or above 32 KiB: EINVAL
    Then binding by binding from addr, as xe's eudebug VM file reads and writes (one
    VMA per step, each step all of its part or nothing):
    - nothing bound at the address: EINVAL (xe_eudebug_vm_access finds no VMA there)
    - a write to a read-only import: EFAULT (a READONLY binding is written, as xe's
      eudebug writes through the BO or the user pages whatever the VMA's flags)
    - a NULL binding: EFAULT
    - a userptr range while [debugger] userptr_access is false: EINVAL
    - freed host memory: EFAULT
    - host memory mid-change is waited for (then the step starts over), a wait asleep
      like any other: limits.fence_waits of this file asleep already: ENOMEM
    - a write to a foreign buffer its owner sealed against writes (the daemon cannot map
      it writable; a read of it reads), or memory the daemon cannot map at all (out of
      descriptors or maps): EFAULT
    A step that fails after others were done ends the access short, as pread/pwrite do:
    the reply carries the bytes read, or written (`length`), before that binding, and
    no error; the error is the answer only when no byte was.
    """
    target = next((f for f in xef.device.files if f.client_id == args.client_id), None)
    attached = {a.process for a in xef.debugging}
    refuse_if(
        target is None
        or target.process not in attached
        or target.role is not Role.DRM
        or target.generation != xef.generation,
        ENOENT,
        f"no debugged connection {args.client_id}",
    )
    assert target is not None
    refuse_if(
        not may_access(xef, target),
        EPERM,
        f"uid {xef.uid} may not debug connection {args.client_id} (uid {target.uid})",
    )
    vm = target.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(ENOENT, f"no VM {args.vm_id} in connection {args.client_id}")
    length = len(args.data) if args.write else args.length
    refuse_if(not length or length > MAX_ACCESS, EINVAL, f"access of {length} bytes")
    data, done, retries = await _access(
        xef, vm, args.addr, length, args.data if args.write else None
    )
    if retries:
        xef.device.stats["userptr_retries"] += retries
    return m.XedDebugVmAccessReply(data=data, length=done, retries=retries)


async def _access(
    xef: XeFile, vm: XeVm, addr: int, length: int, data: bytes | None
) -> tuple[bytes, int, int]:
    """The copy, one VMA at a time, as xe_eudebug_vm_access copies: each VMA's part is
    checked and then copied with no await in between, atomic against invalidation as
    the kernel's copy under the notifier lock is, so it sees one generation of a
    userptr's pages. Pages being invalidated are waited for and that part starts again,
    whole (a write lands once in the pages there are after the change), from the
    binding found there then. The first part refused ends the access: its error if it
    was the first, else the bytes done so far. Returns the bytes read (none for a
    write), the bytes done and the restarts."""
    parts: list[bytes] = []
    done = retries = 0
    while done < length:
        try:
            rest = None if data is None else data[done:]
            n, got = _access_vma(xef, vm, addr + done, length - done, rest)
        except UserptrBusy as busy:
            retries += 1
            await busy.arena.wait_idle_for(xef)  # then that part again; ENOMEM past the limit
            continue
        except IoctlError:
            if not done:
                raise
            break  # a short count, as the kernel's read/write returns `copied`
        parts.append(got)
        done += n
    return b"".join(parts), done, retries


def _access_vma(
    xef: XeFile, vm: XeVm, addr: int, left: int, data: bytes | None
) -> tuple[int, bytes]:
    """Read, or write from `data` (the rest of the access), the part of [addr, addr+left)
    that the VMA at addr holds, whole or not at all; return its length and the bytes
    read (none for a write). IoctlError if refused, UserptrBusy if mid-change."""
    try:  # nothing bound there: EINVAL; a write refused, pages not mapped: EFAULT
        vma, offset, n = vm.binding_at(addr, left, data is not None, readonly_binds=False)
        refuse_if(vma.bo is None and vma.host is None, EFAULT, f"NULL binding at {vma.start:#x}")
        if vma.host is not None:
            allowed = xef.device.debugger_config.userptr_access
            refuse_if(not allowed, EINVAL, "userptr access is disabled")
            gone = vma.host.is_gone(vma.bo_offset + offset, n)
            refuse_if(gone, EFAULT, f"freed host memory at {addr:#x}")
        if data is None:
            return n, vm.read(addr, n)
        vm.write(addr, data[:n], readonly_binds=False)
    except Unbound as hole:  # xe_eudebug_vm_access finds no VMA there
        raise IoctlError(EINVAL, f"nothing bound at {hole.address:#x}") from None
    except GpuFault as fault:
        raise IoctlError(EFAULT, f"{fault.reason} at {fault.address:#x}") from None
    return n, b""
