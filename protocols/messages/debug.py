"""userptr (host memory the device can reach) and the debugger (eudebug)."""

from __future__ import annotations

from ..fields import blob, frozen, records, string, u32, u64


@frozen
class XedHostMemoryRegister:
    """The attached memfd is this connection's host memory (once per connection)."""

    size: int = u64("bytes, page aligned: the whole memfd")


@frozen
class XedHostMemoryRegisterReply:
    offset: int = u64("user address of its first byte, as the daemon names user memory")


@frozen
class XedHostMemoryInvalidate:
    """The MMU notifier's report: [addr, addr+length) of host memory was unmapped,
    freed (`gone`: its pages must never be read again) or replaced (new contents)."""

    addr: int = u64("user address")
    length: int = u64()
    event: int = u32("1: START (about to change); 2: END, replaced; 3: END, freed")


@frozen
class XedDebugAttach:
    pid: int = u32("the target process")


@frozen
class XedDebugBinding:
    va: int = u64()
    range: int = u64()
    kind: str = string("bo | userptr | null", max_len=8)
    handle: int = u32("bo: the target's GEM handle (0 if it closed it)")
    userptr: int = u64("userptr: the user address it maps")


@frozen
class XedDebugVm:
    client_id: int = u32("which of the target's connections")
    vm_id: int = u32()
    bindings: tuple[XedDebugBinding, ...] = records(XedDebugBinding, max_items=256)


@frozen
class XedDebugAttachReply:
    vms: tuple[XedDebugVm, ...] = records(XedDebugVm, max_items=64)


@frozen
class XedDebugDetach:
    pid: int = u32()


@frozen
class XedDebugVmAccess:
    client_id: int = u32("the target connection that owns the VM")
    vm_id: int = u32()
    addr: int = u64("GPU address")
    length: int = u64("bytes to read (ignored when writing: the data's length)")
    write: int = u32("1: write `data` at addr")
    data: bytes = blob("what to write", max_len=32768)


@frozen
class XedDebugVmAccessReply:
    data: bytes = blob("what was read", max_len=32768)
    length: int = u64(
        "bytes read or written: fewer than asked when the access met, past its first "
        "binding, one it could not reach (a short count, as pread/pwrite)"
    )
    retries: int = u32("times the access met userptr pages mid-change and started over")


@frozen
class DebugEventInfo:
    """Something happened in a process a debugger is attached to."""

    kind: str = string(
        "open | close | vm_create | vm_destroy | bind | unbind | exec_queue_create | "
        "exec_queue_destroy | exec | detach",
        max_len=24,
    )
    pid: int = u32()
    client_id: int = u32()
    vm_id: int = u32()
    addr: int = u64()
    range: int = u64()
    detail: str = string(max_len=64)
