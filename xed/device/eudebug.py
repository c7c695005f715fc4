"""The debugger (eudebug): attach to a process, hear what it does, read and write its VMs.

A connection with role `debugger` attaches to a process by pid: allowed when the
debugger runs as the target's uid or as root, one debugger per target. From then on
every drm connection of that process reports to it (open, close, VM create/destroy,
bind/unbind, exec queue create/destroy, exec) as DEBUG_EVENT, and the debugger can read
and write the target's VMs at GPU addresses, across VMAs, BO and userptr alike. Userptr
access goes through the notifier (userptr.py): note the sequence, copy, let
invalidations in, retry if it moved. `[debugger] userptr_access = false` refuses userptr
ranges, for those who hold that reading another process's host memory through the GPU
is a side channel.
"""

from __future__ import annotations

from errno import EBUSY, EFAULT, EINVAL, ENOENT, EPERM, ESRCH
from typing import TYPE_CHECKING, Any

import trio

from protocols import messages as m
from protocols.ops import Event, Role

from .errors import GpuFault, IoctlError, refuse_if
from .userptr import UserptrBusy

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile
    from .vm import XeVm

MAX_ACCESS = 32768
CHUNK = 4096  # bytes copied between two chances for an invalidation to come in


def debug_event(xef: XeFile, kind: str, **fields: Any) -> None:
    """Tell the debugger attached to this file's process, if any, what just happened."""
    debugger = xef.device.debuggers.get(xef.pid)
    if debugger is None or xef.role is not Role.DRM:
        return
    debugger.send_event(
        Event.DEBUG_EVENT,
        m.DebugEventInfo(kind=kind, pid=xef.pid, client_id=xef.client_id, **fields),
    )


def target_closed(xef: XeFile) -> None:
    """The target's file is gone; with its last one, the debugger is detached cleanly."""
    device = xef.device
    if xef.pid not in device.debuggers or xef.role is not Role.DRM:
        return
    debug_event(xef, "close")
    if not _targets(device, xef.pid, excluding=xef):
        debugger = device.debuggers.pop(xef.pid)
        debugger.debugging.discard(xef.pid)
        debugger.send_event(
            Event.DEBUG_EVENT,
            m.DebugEventInfo(kind="detach", pid=xef.pid, detail="the target exited"),
        )


def debugger_closed(xef: XeFile) -> None:
    for pid in list(xef.debugging):
        xef.device.debuggers.pop(pid, None)
    xef.debugging.clear()


def _targets(device: XeDevice, pid: int, excluding: XeFile | None = None) -> list[XeFile]:
    return [
        f for f in device.clients() if f.pid == pid and f.role is Role.DRM and f is not excluding
    ]


def _vm_view(xef: XeFile) -> tuple[m.XedDebugVm, ...]:
    return tuple(
        m.XedDebugVm(
            client_id=xef.client_id,
            vm_id=vm_id,
            bindings=tuple(
                m.XedDebugBinding(
                    va=vma.start,
                    range=vma.end - vma.start,
                    kind=vma.kind,
                    handle=next((h for h, bo in xef.handles.items() if bo is vma.bo), 0),
                    userptr=vma.host.node.start + vma.bo_offset if vma.host else 0,
                )
                for vma in vm.vmas()[:256]
            ),
        )
        for vm_id, vm in list(xef.vms.items())[:64]
    )


def debug_attach_ioctl(xef: XeFile, args: m.XedDebugAttach) -> m.XedDebugAttachReply:
    """DEBUG_ATTACH.

    Checks, in order:
    - no drm connection of that pid: ESRCH
    - the debugger is neither root nor the target's uid: EPERM
    - another debugger is attached to it (or this one already): EBUSY
    """
    device = xef.device
    targets = _targets(device, args.pid)
    refuse_if(not targets, ESRCH, f"no drm connection of pid {args.pid}")
    refuse_if(
        xef.uid != 0 and xef.uid != targets[0].uid,
        EPERM,
        f"uid {xef.uid} may not debug a process of uid {targets[0].uid}",
    )
    refuse_if(args.pid in device.debuggers, EBUSY, f"pid {args.pid} has a debugger")
    device.debuggers[args.pid] = xef
    xef.debugging.add(args.pid)
    xef.log.info("debugger_attached", target=args.pid)
    return m.XedDebugAttachReply(vms=tuple(v for t in targets for v in _vm_view(t))[:64])


def debug_detach_ioctl(xef: XeFile, args: m.XedDebugDetach) -> m.Empty:
    """DEBUG_DETACH. Checks: not attached to that pid: ENOENT."""
    refuse_if(args.pid not in xef.debugging, ENOENT, f"not attached to pid {args.pid}")
    xef.debugging.discard(args.pid)
    xef.device.debuggers.pop(args.pid, None)
    return m.Empty()


async def debug_vm_access_ioctl(xef: XeFile, args: m.XedDebugVmAccess) -> m.XedDebugVmAccessReply:
    """DEBUG_VM_ACCESS: read `length` bytes at addr, or write `data` there.

    Checks, in order:
    - client_id is not a connection of a process we are attached to, or no such VM:
      ENOENT
    - length (or the data's) zero or above 32 KiB: EINVAL
    - an address with nothing bound, a NULL binding, freed host memory: EFAULT
    - a userptr range while [debugger] userptr_access is false: EINVAL
    """
    target = next((f for f in xef.device.files if f.client_id == args.client_id), None)
    refuse_if(
        target is None or target.pid not in xef.debugging or target.role is not Role.DRM,
        ENOENT,
        f"no debugged connection {args.client_id}",
    )
    assert target is not None
    vm = target.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(ENOENT, f"no VM {args.vm_id} in connection {args.client_id}")
    length = len(args.data) if args.write else args.length
    refuse_if(not length or length > MAX_ACCESS, EINVAL, f"access of {length} bytes")
    data, retries = await _access(xef, vm, args.addr, length, args.data if args.write else None)
    if retries:
        xef.device.stats["userptr_retries"] += retries
    return m.XedDebugVmAccessReply(data=data, retries=retries)


async def _access(
    xef: XeFile, vm: XeVm, addr: int, length: int, data: bytes | None
) -> tuple[bytes, int]:
    allowed = xef.device.debugger_config.userptr_access
    try:
        spans = list(vm._spans(addr, length, write=data is not None))
    except GpuFault as fault:
        raise IoctlError(EFAULT, f"{fault.reason} at {fault.address:#x}") from None
    for vma, offset, n in spans:  # all checks before any byte is touched
        refuse_if(vma.bo is None and vma.host is None, EFAULT, f"NULL binding at {vma.start:#x}")
        refuse_if(vma.host is not None and not allowed, EINVAL, "userptr access is disabled")
        if vma.host is not None:
            refuse_if(
                vma.host.is_gone(vma.bo_offset + offset, n),
                EFAULT,
                f"freed host memory at {vma.start + offset:#x}",
            )
    out = bytearray()
    retries = 0
    for vma, offset, n in spans:
        for start in range(offset, offset + n, CHUNK):
            size = min(CHUNK, offset + n - start)
            gpu = vma.start + start
            done = len(out) if data is None else gpu - addr
            while True:
                host = vma.host
                begun = host.read_begin(vma.bo_offset + start, size) if host else 0
                try:
                    if data is None:
                        chunk = vm.read(gpu, size)
                    else:
                        vm.write(gpu, data[done : done + size])
                except UserptrBusy as busy:
                    retries += 1
                    await busy.arena.wait_idle()
                    continue
                except GpuFault as fault:
                    raise IoctlError(EFAULT, f"{fault.reason} at {fault.address:#x}") from None
                if host is not None:
                    await trio.lowlevel.checkpoint()  # the notifier lock is dropped here
                    if host.read_retry(vma.bo_offset + start, size, begun):
                        retries += 1
                        continue
                break
            if data is None:
                out += chunk
    return bytes(out), retries
