"""VM export (the proposal for sharing VM info between XE drivers) and the ops the
auxiliary driver sends the daemon about an exported VM."""

from __future__ import annotations

from errno import (
    E2BIG,
    EEXIST,
    EFAULT,
    EINVAL,
    ENOENT,
    ENOMEM,
    EPERM,
)

from .. import messages as m
from .spec import ANY_FDS, EXPORTED, GONE, RESERVE_FD, Op, OpSpec, Role

SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        op=Op.XE_VM_EXPORT,
        request=m.DrmXeVmExport,
        reply=m.Empty,
        fds_out=1,
        doc=(
            "Export a VM as a descriptor for an auxiliary driver (proposal). The export "
            "keeps the VM object, not its contents: the VM closes with the file that "
            "created it (its bindings go, an aux driver that registered it gets "
            "AUX_RANGE_INVALIDATED of the whole range, reason vm_closed). Closing every "
            "copy of the descriptor clears the export."
        ),
        errors=(
            (EINVAL, "pad, pad1 or reserved not zero"),
            (EINVAL, "no such VM"),
            (ENOENT, "the VM is closed"),
            (EEXIST, "already exported, or registered with an aux driver"),
            RESERVE_FD,
            EXPORTED,
        ),
    ),
    OpSpec(
        op=Op.AUX_VM_IMPORT,
        request=m.XedAuxVmImport,
        reply=m.XedAuxVmImportReply,
        roles=frozenset({Role.AUX}),
        fds_in=1,
        doc=(
            "Register the attached exported VM with this aux driver, on behalf of the "
            "application that exported it; the reply lists its bindings."
        ),
        errors=(
            (EINVAL, "flags or reserved not zero"),
            (EINVAL, "not a VM descriptor of this daemon (another daemon's included)"),
            GONE,
            (ENOENT, "the VM is closed (the file that created it is gone, included)"),
            (EPERM, "on_behalf_of_pid is not the process that exported it"),
            (EEXIST, "this aux connection has it registered already"),
        ),
    ),
    OpSpec(
        op=Op.AUX_VM_RESOLVE,
        request=m.XedAuxVmResolve,
        reply=m.XedAuxVmResolveReply,
        roles=frozenset({Role.AUX}),
        fds_out=ANY_FDS,
        blocking=True,
        doc=(
            "The memory behind [va, va+length) of a registered VM: one descriptor per "
            "BO, or per host memory under userptr ranges, attached (at most 8), and "
            "where each span lies in them. Watches the range. Host memory being "
            "invalidated is waited for, then revalidated."
        ),
        errors=(
            (ENOENT, "no such vm_handle"),
            (ENOENT, "the VM is closed: the file that created it is gone"),
            (EINVAL, "length zero, or the range beyond the VM"),
            (EFAULT, "a hole: some address in the range is not bound (or NULL)"),
            (EFAULT, "freed host memory under a userptr range"),
            (E2BIG, "more than 8 BOs behind the range, or more than 64 bindings"),
            (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
            (
                ENOMEM,
                "the registration would watch more than 4096 ranges or hold more than 4096 "
                "pieces of host memory, or 4096 invalidations of held pages are "
                "unacknowledged (xed: nothing is dropped to make room)",
            ),
            RESERVE_FD,
        ),
    ),
    OpSpec(
        op=Op.AUX_VM_UNWATCH,
        while_unplugged=True,
        request=m.XedAuxVmRange,
        reply=m.Empty,
        roles=frozenset({Role.AUX}),
        doc="Stop the invalidation events for watches inside [va, va+length).",
        errors=((ENOENT, "no such vm_handle"),),
    ),
    OpSpec(
        op=Op.AUX_VM_RELEASE,
        while_unplugged=True,
        request=m.XedAuxVmRelease,
        reply=m.Empty,
        roles=frozenset({Role.AUX}),
        doc="Unregister a VM (disconnecting does it for every VM the aux driver held).",
        errors=((ENOENT, "no such vm_handle"),),
    ),
    OpSpec(
        op=Op.AUX_VM_INVALIDATE_DONE,
        while_unplugged=True,
        request=m.XedAuxVmInvalidateDone,
        reply=m.Empty,
        roles=frozenset({Role.AUX}),
        doc=(
            "The aux driver let go of the pages of every range invalidated up to "
            "seqno: a host-memory change waiting on it (HOST_MEMORY_INVALIDATE START) "
            "goes on."
        ),
        errors=(
            (ENOENT, "no such vm_handle"),
            (EINVAL, "seqno zero, or beyond the last invalidation sent"),
        ),
    ),
)
