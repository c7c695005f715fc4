"""VM export and the auxiliary driver (the proposal for sharing VM info between XE
drivers)."""

from __future__ import annotations

from ..fields import frozen, mbz, records, s32, string, u32, u64


@frozen
class DrmXeVmExport:
    vm_id: int = u32()
    pad: int = u32("must be zero")
    fd: int = s32("output in the kernel (here the descriptor is attached to the reply)")
    pad1: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class XedAuxBinding:
    va: int = u64("GPU address")
    range: int = u64("bytes")
    bo_size: int = u64("size of the BO bound there (0: a NULL binding)")
    bo_offset: int = u64("offset into that BO")


@frozen
class XedAuxVmImport:
    """Import the attached VM descriptor on behalf of the application that exported it."""

    on_behalf_of_pid: int = u32("the application's pid, as the aux driver knows it")
    flags: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class XedAuxVmImportReply:
    vm_handle: int = u32("this aux connection's name for the VM")
    va_bits: int = u32()
    bindings: tuple[XedAuxBinding, ...] = records(
        XedAuxBinding, "the VM's bindings now (the first 512)"
    )


@frozen
class XedAuxVmResolve:
    """The memory behind [va, va+length), zero copy (a BO's pages, or for a userptr
    the host memory's); later binds and unbinds that touch the range, and changes of the
    host memory under it, send AUX_RANGE_INVALIDATED."""

    vm_handle: int = u32()
    va: int = u64()
    length: int = u64()


@frozen
class XedAuxSpan:
    va: int = u64()
    length: int = u64()
    fd_index: int = u32("which attached descriptor holds it")
    offset: int = u64("offset into that descriptor")


@frozen
class XedAuxVmResolveReply:
    spans: tuple[XedAuxSpan, ...] = records(XedAuxSpan, max_items=64)


@frozen
class XedAuxVmRange:
    """AUX_VM_UNWATCH: stop hearing about a range."""

    vm_handle: int = u32()
    va: int = u64()
    length: int = u64()


@frozen
class XedAuxVmRelease:
    vm_handle: int = u32()


@frozen
class AuxRangeInvalidated:
    """A bind or unbind touched a range the aux driver resolved (its backing is stale),
    or host memory under a userptr range it resolved is about to change (reason
    "userptr": let the pages go, then acknowledge; resolve again to use the range), or
    the VM closed with the file that created it (reason "vm_closed", once, over the
    whole address space: let everything go; nothing resolves any more, release it)."""

    vm_handle: int = u32()
    va: int = u64("start of the bind, unbind or userptr range")
    length: int = u64()
    reason: str = string(max_len=32)
    seqno: int = u64("this registration's invalidation count: AUX_VM_INVALIDATE_DONE takes it")


@frozen
class XedAuxVmInvalidateDone:
    """The aux driver let go of the pages of every range invalidated up to `seqno`."""

    vm_handle: int = u32()
    seqno: int = u64()
