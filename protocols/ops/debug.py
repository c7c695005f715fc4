"""Host memory the device can reach (userptr) and the debugger's ops (eudebug)."""

from __future__ import annotations

from errno import (
    EBUSY,
    EFAULT,
    EINVAL,
    EMFILE,
    ENOENT,
    ENOMEM,
    EPERM,
    ESRCH,
)

from .. import messages as m
from .spec import RESERVE, Op, OpSpec, Role

SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        op=Op.HOST_MEMORY_REGISTER,
        request=m.XedHostMemoryRegister,
        reply=m.XedHostMemoryRegisterReply,
        fds_in=1,
        doc=(
            "Register the attached memfd as this connection's host memory, which "
            "MAP_USERPTR binds may map and the device may reach."
        ),
        errors=(
            (EINVAL, "size zero, not page aligned, beyond the device, or not the memfd's"),
            (EINVAL, "not a memfd on shmem (a pipe, a file on disk, a hugetlbfs memfd)"),
            (EINVAL, "a memfd not sealed F_SEAL_SHRINK: it could shrink under the device"),
            (EINVAL, "a read-only descriptor, or a memfd sealed against writes"),
            (EBUSY, "this connection registered its host memory already"),
            RESERVE,
        ),
    ),
    OpSpec(
        op=Op.HOST_MEMORY_INVALIDATE,
        request=m.XedHostMemoryInvalidate,
        reply=m.Empty,
        blocking=True,
        doc=(
            "The client library's MMU notifier: host memory under [addr, addr+length) "
            "is freed or replaced; device access waits while it changes, freed pages are "
            "never read. "
            "START first waits (at most 5 s) for the jobs already submitted on VMs "
            "mapping those pages, as xe's notifier does, and returns once every aux "
            "driver that resolved those pages has let them go (AUX_VM_INVALIDATE_DONE, "
            "or its registration ended)."
        ),
        errors=(
            (EINVAL, "no host memory registered, or the range outside it"),
            (ENOMEM, "START: [limits] fence_waits waits of this file asleep already (xed)"),
        ),
    ),
    OpSpec(
        op=Op.DEBUG_ATTACH,
        request=m.XedDebugAttach,
        reply=m.XedDebugAttachReply,
        roles=frozenset({Role.DEBUGGER}),
        doc=(
            "Attach to the process that has the pid now (never to a later process given "
            "the same pid): its VMs and bindings now, and DEBUG_EVENT for what it does "
            "from here on, until it exits."
        ),
        errors=(
            RESERVE,
            (ESRCH, "no such process"),
            (EMFILE, "the daemon has no descriptor left for the process's pidfd"),
            (ESRCH, "no drm connection opened by that process (on this device)"),
            (EPERM, "a connection of it opened by a uid not ours, and we are not root"),
            (EBUSY, "another debugger is attached to it"),
        ),
    ),
    OpSpec(
        op=Op.DEBUG_DETACH,
        request=m.XedDebugDetach,
        reply=m.Empty,
        roles=frozenset({Role.DEBUGGER}),
        doc="Detach (disconnecting does it too).",
        errors=((ENOENT, "not attached to that pid"),),
    ),
    OpSpec(
        op=Op.DEBUG_VM_ACCESS,
        request=m.XedDebugVmAccess,
        reply=m.XedDebugVmAccessReply,
        roles=frozenset({Role.DEBUGGER}),
        blocking=True,
        doc=(
            "Read or write a target VM at GPU addresses, across its VMAs, BO and "
            "userptr alike, one VMA after the other as xe's eudebug VM file does. "
            "Each VMA's part is atomic against invalidation, as the kernel copies "
            "under the notifier lock: it sees one generation of a userptr's pages, "
            "and one meeting pages mid-change waits and starts over, whole. A VMA "
            "refused after others were done ends the access short, as pread/pwrite "
            "do: the reply's `length` (and for a read, its data) says how far it "
            "got, with no error; a VMA's error is the answer only if it is the first."
        ),
        errors=(
            (
                ENOENT,
                "not a connection opened by the process we are attached to, on this "
                "device (not one since unplugged)",
            ),
            (EPERM, "the connection was opened by a uid not ours, and we are not root"),
            (ENOENT, "no such VM"),
            (EINVAL, "length zero or above 32 KiB"),
            (EINVAL, "an address with nothing bound (xe: no VMA there)"),
            (EFAULT, "a NULL binding, or a write to a read-only import"),
            (EINVAL, "a userptr range while debugger.userptr_access = false"),
            (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
            (
                EFAULT,
                "freed host memory; a write to a foreign buffer sealed against writes "
                "(a read of it reads); memory the daemon cannot map",
            ),
        ),
    ),
)
