"""Message records, named after the xe_drm.h structs whose fields they carry.

Each ioctl has its argument record (what user space fills in) and its result record
(the fields the kernel writes back). Field names are the kernel's, MBZ fields included,
so the daemon checks `pad`, `reserved` and `extensions` exactly as xe does. Where the C
struct has a user pointer plus a count (`syncs`/`num_syncs`, `instances`, the bind
vector), the record has a list: the count is its length.
"""

from __future__ import annotations

import typing

import attrs

from .fields import (
    array,
    blob,
    generate_methods,
    mbz,
    record,
    records,
    s32,
    s64,
    string,
    u16,
    u32,
    u64,
)

_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def frozen(cls: type[_T]) -> type[_T]:
    """attrs.frozen(kw_only=True), spelled so that type checkers see each record's __init__;
    its methods are ours (fields.py), written at their first call."""
    record_cls = attrs.frozen(kw_only=True, repr=False, eq=False, slots=False)(cls)
    generate_methods(record_cls)
    return record_cls


# --- handshake and DRM core ------------------------------------------------------------
@frozen
class Hello:
    """First message on a connection: protocol version and role; for role drm, which
    device node was opened, or the drm file this connection is to be a channel of."""

    version: tuple[int, int] = array(2, "u16", "protocol (major, minor)")
    role: str = string("drm | aux | debugger | admin", max_len=16)
    node: str = string(
        "primary (/dev/dri/card0) | render (renderD128): render refuses GEM_FLINK/GEM_OPEN",
        default="primary",
        max_len=16,
    )
    join: str = string(
        "role drm: a token from another connection's HELLO: act on that drm file (a channel)",
        max_len=64,
    )


@frozen
class DeviceIdentity:
    name: str = string("device name")
    device_id: int = u32("PCI device id")
    revision: int = u32("revision id")
    instance: str = string("unique per daemon run: tells two daemons' objects apart")


@frozen
class HelloReply:
    version: tuple[int, int] = array(2, "u16", "the daemon's protocol (major, minor)")
    device: DeviceIdentity = record(DeviceIdentity, "who answered")
    client_id: int = u32("the drm file's id, as the admin view shows it")
    token: str = string(
        "role drm, not a channel: a secret naming this drm file, for HELLO.join",
        max_len=64,
    )


@frozen
class DrmVersion:
    """struct drm_version (DRM_IOCTL_VERSION), with no input fields."""


@frozen
class DrmVersionReply:
    version_major: int = u32()
    version_minor: int = u32()
    version_patchlevel: int = u32()
    name: str = string()
    date: str = string()
    desc: str = string()


@frozen
class DrmGemClose:
    """struct drm_gem_close."""

    handle: int = u32("GEM handle to release")
    pad: int = u32("not checked (DRM ignores it)")


@frozen
class DrmGemFlink:
    """struct drm_gem_flink: a global name for a GEM object."""

    handle: int = u32("GEM handle to name")
    name: int = u32("output in the kernel; ignored on input")


@frozen
class DrmGemFlinkReply:
    name: int = u32("the object's global name (the same for every FLINK of it)")


@frozen
class DrmGemOpen:
    """struct drm_gem_open: a new handle to the object a global name names."""

    name: int = u32("a name from GEM_FLINK")
    handle: int = u32("output in the kernel; ignored on input")
    size: int = u64("output in the kernel; ignored on input")


@frozen
class DrmGemOpenReply:
    handle: int = u32("a new handle in this file (a new one on every GEM_OPEN)")
    size: int = u64("the object's size")


@frozen
class Empty:
    """An ioctl that writes nothing back."""


# --- DRM_IOCTL_XE_DEVICE_QUERY -----------------------------------------------------------
@frozen
class DrmXeDeviceQuery:
    extensions: int = u64("must be zero")
    query: int = u32("DRM_XE_DEVICE_QUERY_*")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeEngineClassInstance:
    engine_class: int = u16("DRM_XE_ENGINE_CLASS_*")
    engine_instance: int = u16()
    gt_id: int = u16()
    pad: int = u16("must be zero")


@frozen
class DrmXeEngine:
    instance: DrmXeEngineClassInstance = record(DrmXeEngineClassInstance)
    reserved: tuple[int, ...] = mbz(3)


@frozen
class DrmXeMemRegion:
    mem_class: int = u16("DRM_XE_MEM_REGION_CLASS_SYSMEM / _VRAM")
    instance: int = u16("bit number in GEM_CREATE.placement")
    min_page_size: int = u32()
    total_size: int = u64()
    used: int = u64()
    cpu_visible_size: int = u64()
    cpu_visible_used: int = u64()
    reserved: tuple[int, ...] = mbz(6)


@frozen
class DrmXeGt:
    type: int = u16("DRM_XE_QUERY_GT_TYPE_*")
    tile_id: int = u16()
    gt_id: int = u16()
    pad: tuple[int, ...] = array(3, "u16")
    reference_clock: int = u32()
    near_mem_regions: int = u64()
    far_mem_regions: int = u64()
    ip_ver_major: int = u16("graphics IP version (GMD_ID), major")
    ip_ver_minor: int = u16()
    ip_ver_rev: int = u16()
    pad2: int = u16("must be zero")
    reserved: tuple[int, ...] = mbz(7)


@frozen
class DrmXeMmioRegion:
    """An exposable part of BAR0 (proposal: drm/xe: support for mmap-ing mmio regions)."""

    name: str = string(max_len=32)
    bar_offset: int = u64()
    size: int = u64()
    access: int = u32("XE_MMIO_ACCESS_READ_ONLY or _PER_FILE")
    count: int = u32("per-file regions: how many the device has in all")


@frozen
class DrmXeOaUnit:
    """struct drm_xe_oa_unit (the emulated device has none: OA_UNITS lists no unit)."""

    oa_unit_id: int = u32()
    oa_unit_type: int = u32()
    capabilities: int = u64()
    oa_timestamp_freq: int = u64()
    reserved: tuple[int, ...] = mbz(4)
    eci: tuple[DrmXeEngineClassInstance, ...] = records(
        DrmXeEngineClassInstance, "num_engines / eci[]", max_items=64
    )


@frozen
class DrmXeDeviceQueryReply:
    """The query's data, structured: exactly one field is filled, the one `query` asked
    for (its C layout is the uAPI's drm_xe_query_* struct, whose size the kernel's size
    probe reports). CONFIG: num_params is len(config)."""

    query: int = u32()
    engines: tuple[DrmXeEngine, ...] = records(DrmXeEngine)
    mem_regions: tuple[DrmXeMemRegion, ...] = records(DrmXeMemRegion)
    config: tuple[int, ...] = array(5, "u64", "drm_xe_query_config.info[]")
    gt_list: tuple[DrmXeGt, ...] = records(DrmXeGt)
    hwconfig: bytes = blob("HWCONFIG: the GuC's hwconfig table (empty: size 0)", max_len=4096)
    oa_units: tuple[DrmXeOaUnit, ...] = records(DrmXeOaUnit, "OA_UNITS", max_items=16)
    mmio_regions: tuple[DrmXeMmioRegion, ...] = records(DrmXeMmioRegion)


@frozen
class DrmXeMmioRegionOpen:
    extensions: int = u64("must be zero")
    bar_offset: int = u64("page aligned: a region DEVICE_QUERY(MMIO_REGIONS) lists")
    size: int = u64("page aligned: that region's size")
    flags: int = u32("must be zero")
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeMmioRegionOpenReply:
    region_id: int = u32("this file's name for the region")
    offset: int = u64("fake offset to MMAP it at, exactly `size` bytes")
    size: int = u64()
    bar_offset: int = u64("where in BAR0 it lies (per-file regions: this file's page)")


@frozen
class DrmXeMmioRegionClose:
    region_id: int = u32()
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


# --- GEM ------------------------------------------------------------------------------
@frozen
class DrmXeGemCreate:
    extensions: int = u64("must be zero (checked last, as xe walks the chain last)")
    size: int = u64("bytes, a multiple of the page size")
    placement: int = u32("bitmask of memory region instances")
    flags: int = u32("DRM_XE_GEM_CREATE_FLAG_*")
    vm_id: int = u32("non-zero: the BO is private to this VM and never exportable")
    handle: int = u32("output in the kernel; must be zero on input")
    cpu_caching: int = u16("DRM_XE_GEM_CPU_CACHING_WB / _WC")
    pad: tuple[int, ...] = array(3, "u16", "must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeGemCreateReply:
    handle: int = u32()


@frozen
class DrmXeGemMmapOffset:
    extensions: int = u64("must be zero")
    handle: int = u32()
    flags: int = u32("DRM_XE_MMAP_OFFSET_FLAG_*")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeGemMmapOffsetReply:
    offset: int = u64("fake offset to pass to MMAP; valid for this connection only")


@frozen
class XedMmap:
    """mmap(2) of the DRM file at a fake offset: the checks the kernel's mmap handler makes."""

    offset: int = u64("fake offset from GEM_MMAP_OFFSET")
    length: int = u64("bytes to map")
    prot: int = u32("PROT_READ | PROT_WRITE | PROT_EXEC")
    flags: int = u32("MAP_SHARED or MAP_PRIVATE")


@frozen
class XedMmapReply:
    """The attached descriptor is mapped at `offset` for `length` bytes."""

    offset: int = u64("offset into the attached descriptor")
    length: int = u64()


@frozen
class XedUnplugNotice:
    """The device's unplug notice page, to map read-only (no kernel equivalent: the
    kernel zaps mappings itself; here clients map memory themselves, so they are told)."""


# --- VM -------------------------------------------------------------------------------
@frozen
class DrmXeVmCreate:
    extensions: int = u64("must be zero")
    flags: int = u32("DRM_XE_VM_CREATE_FLAG_*")
    vm_id: int = u32("output in the kernel; ignored on input")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeVmCreateReply:
    vm_id: int = u32()


@frozen
class DrmXeVmDestroy:
    vm_id: int = u32()
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeSync:
    extensions: int = u64("not checked (xe ignores it)")
    type: int = u32("DRM_XE_SYNC_TYPE_*")
    flags: int = u32("DRM_XE_SYNC_FLAG_SIGNAL")
    handle: int = u32("syncobj handle (syncobj types)")
    addr: int = u64(
        "user fence: GPU address in the VM (EXEC) or user address (VM_BIND), 8-byte aligned"
    )
    timeline_value: int = u64("value written to a user fence / timeline point")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeVmBindOp:
    extensions: int = u64("must be zero")
    obj: int = u32("GEM handle (MAP) or 0")
    pat_index: int = u16()
    pad: int = u16("must be zero")
    obj_offset: int = u64("offset into the BO (MAP) / user address (MAP_USERPTR)")
    range: int = u64("bytes, page aligned")
    addr: int = u64("GPU virtual address, page aligned")
    op: int = u32("DRM_XE_VM_BIND_OP_*")
    flags: int = u32("DRM_XE_VM_BIND_FLAG_*")
    prefetch_mem_region_instance: int = u32()
    pad2: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(3)


@frozen
class DrmXeVmBind:
    extensions: int = u64("must be zero")
    vm_id: int = u32()
    exec_queue_id: int = u32("0: the VM's default bind queue")
    pad: int = u32("must be zero")
    binds: tuple[DrmXeVmBindOp, ...] = records(DrmXeVmBindOp, "num_binds / vector_of_binds")
    pad2: int = u32("must be zero")
    syncs: tuple[DrmXeSync, ...] = records(DrmXeSync, "num_syncs / syncs", max_items=64)
    reserved: tuple[int, ...] = mbz(2)


# --- exec queues and exec ---------------------------------------------------------------
@frozen
class DrmXeExecQueueCreate:
    extensions: int = u64("must be zero")
    width: int = u16("batch buffers per submission")
    num_placements: int = u16("engines the queue may run on")
    vm_id: int = u32()
    flags: int = u32("must be zero")
    exec_queue_id: int = u32("output in the kernel; ignored on input")
    instances: tuple[DrmXeEngineClassInstance, ...] = records(
        DrmXeEngineClassInstance, "width x num_placements engines", max_items=64
    )
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeExecQueueCreateReply:
    exec_queue_id: int = u32()


@frozen
class DrmXeExecQueueDestroy:
    exec_queue_id: int = u32()
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeExec:
    extensions: int = u64("must be zero")
    exec_queue_id: int = u32()
    syncs: tuple[DrmXeSync, ...] = records(DrmXeSync, "num_syncs / syncs", max_items=64)
    address: int = u64("GPU address of the batch buffer")
    num_batch_buffer: int = u16("must equal the queue's width (or 0)")
    pad: tuple[int, ...] = array(3, "u16", "must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeWaitUserFence:
    extensions: int = u64("must be zero")
    addr: int = u64("user address of the fence, 8-byte aligned (see REFERENCE: user addresses)")
    op: int = u16("DRM_XE_UFENCE_WAIT_OP_*")
    flags: int = u16("DRM_XE_UFENCE_WAIT_FLAG_ABSTIME")
    pad: int = u32("must be zero")
    value: int = u64()
    mask: int = u64("compared bits", default=0xFFFF_FFFF_FFFF_FFFF)
    timeout: int = s64("ns; negative waits forever; absolute CLOCK_MONOTONIC with ABSTIME")
    exec_queue_id: int = u32("non-zero: fail with EIO if this queue is reset while waiting")
    pad2: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeWaitUserFenceReply:
    timeout: int = s64("time left (relative waits), as the kernel writes back")


# --- DRM syncobjs (binary; drm_syncobj.c) -------------------------------------------------
@frozen
class DrmSyncobjCreate:
    """struct drm_syncobj_create."""

    handle: int = u32("written back (not read)")
    flags: int = u32("DRM_SYNCOBJ_CREATE_SIGNALED: born with a signalled fence")


@frozen
class DrmSyncobjCreateReply:
    handle: int = u32()


@frozen
class DrmSyncobjDestroy:
    """struct drm_syncobj_destroy."""

    handle: int = u32()
    pad: int = u32("must be zero")


@frozen
class DrmSyncobjHandle:
    """One element of a syncobj ioctl's handles[] (a user pointer and count_handles)."""

    handle: int = u32()


@frozen
class DrmSyncobjWait:
    """struct drm_syncobj_wait; handles is the array count_handles long."""

    handles: tuple[DrmSyncobjHandle, ...] = records(DrmSyncobjHandle, max_items=4096)
    timeout_nsec: int = s64("absolute CLOCK_MONOTONIC deadline; 0 looks once")
    flags: int = u32("WAIT_ALL | WAIT_FOR_SUBMIT | WAIT_DEADLINE")
    first_signaled: int = u32("written back (not read)")
    pad: int = u32("not checked, as in DRM")
    deadline_nsec: int = u64("WAIT_DEADLINE: a hint for the driver (ignored)")


@frozen
class DrmSyncobjWaitReply:
    first_signaled: int = u32("the first signalled of handles[], ~0 if none was at the start")


@frozen
class DrmSyncobjArray:
    """struct drm_syncobj_array (RESET, SIGNAL); handles is the array count_handles long."""

    handles: tuple[DrmSyncobjHandle, ...] = records(DrmSyncobjHandle, max_items=4096)
    pad: int = u32("must be zero")


# --- PRIME and dma-buf ------------------------------------------------------------------
@frozen
class DrmPrimeHandle:
    """struct drm_prime_handle. The dma-buf itself travels as an attached descriptor."""

    handle: int = u32("GEM handle (HANDLE_TO_FD)")
    flags: int = u32("DRM_CLOEXEC | DRM_RDWR (HANDLE_TO_FD)")
    fd: int = s32("the caller's number for the attached descriptor; informational")


@frozen
class DrmPrimeHandleReply:
    handle: int = u32("GEM handle (FD_TO_HANDLE)")
    size: int = u64("xed: the buffer's size, as lseek(SEEK_END) on the dma-buf tells")


@frozen
class DmaBufSync:
    """struct dma_buf_sync (DMA_BUF_IOCTL_SYNC) on the attached dma-buf."""

    flags: int = u64("DMA_BUF_SYNC_START/END | READ/WRITE/RW")


@frozen
class DmaBufLlseek:
    """lseek(2) on the attached dma-buf: only the size can be asked for."""

    offset: int = s64()
    whence: int = u32("SEEK_SET or SEEK_END")


@frozen
class DmaBufLlseekReply:
    offset: int = u64("the resulting position")


@frozen
class DmaBufAttach:
    """Sent by a daemon on a dma-buf of another daemon: give me your pages."""


@frozen
class DmaBufAttachReply:
    """The attached descriptor is the memory; map it shared at offset 0."""

    size: int = u64()
    writable: int = u32("1 if the dma-buf was exported with DRM_RDWR")
    device: DeviceIdentity = record(DeviceIdentity, "the exporter")


# --- VM export and the auxiliary driver (proposal: sharing VM info between XE drivers) --
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


# --- userptr: host memory the device can reach, and the debugger (eudebug) -----------------
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


# --- verbs: an application and the IB-like aux driver (its own socket) ----------------
@frozen
class IbvOpenContext:
    """Hand the aux driver our exported VM (attached): it imports it on our behalf."""


@frozen
class IbvOpenContextReply:
    va_bits: int = u32()


@frozen
class IbvRegMr:
    addr: int = u64("GPU virtual address in our VM")
    length: int = u64()
    access: int = u32("IBV_ACCESS_LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ; 0: local only")


@frozen
class IbvRegMrReply:
    lkey: int = u32()
    rkey: int = u32("random: give it to the connected peer to let it reach this region")


@frozen
class IbvDeregMr:
    lkey: int = u32()


@frozen
class IbvCreateQp:
    """A queue pair with its completion queue."""


@frozen
class IbvCreateQpReply:
    """The attached descriptor is the QP's completion ring (clients/ib/cq.py): polling
    it is a read of shared memory, as with real verbs."""

    qp_num: int = u32()
    cq_entries: int = u32()


@frozen
class IbvConnectQp:
    qp_num: int = u32()
    remote_qp_num: int = u32("a QP on this aux driver, that must name ours too")


@frozen
class IbvPostSend:
    qp_num: int = u32()
    wr_id: int = u64("comes back in the completion")
    opcode: int = u32("IBV_WR_RDMA_WRITE or IBV_WR_RDMA_READ")
    lkey: int = u32()
    local_addr: int = u64()
    length: int = u64()
    remote_addr: int = u64()
    rkey: int = u32()


@frozen
class IbvWc:
    """One completion, as the ring holds it."""

    wr_id: int = u64()
    status: int = u32("IBV_WC_*")
    opcode: int = u32()
    byte_len: int = u64()


# --- admin -----------------------------------------------------------------------------
@frozen
class XedAdminStatus:
    """Counters of the whole device, for `xed ctl` and for leak tests."""


@frozen
class XedObjectCounts:
    files: int = u32()
    bos: int = u32()
    vms: int = u32()
    exec_queues: int = u32()
    mmap_offsets: int = u32()
    bo_bytes: int = u64()
    dma_bufs: int = u32()
    vm_exports: int = u32()
    aux_registrations: int = u32()
    syncobjs: int = u32()


@frozen
class XedAdminClients:
    """Every connection: who, what it holds, what it did."""


@frozen
class XedClientInfo:
    client_id: int = u32()
    pid: int = u32()
    uid: int = u32()
    gid: int = u32()
    role: str = string(max_len=16)
    comm: str = string("the process's command name", max_len=16)
    bos: int = u32()
    bo_bytes: int = u64()
    vms: int = u32()
    exec_queues: int = u32()
    mmio_regions: int = u32()
    barriers: int = u64("PCI barrier page writes the device counted for this file")
    doorbell_rings: int = u64("doorbell page writes the device acted on for this file")
    vm_exports: int = u32("VMs this file exported that are still exported")
    aux_vms: int = u32("role aux: VMs it holds registered")
    exported: int = u32("dma-bufs and VM exports it created that are alive (limits.exported)")
    node: str = string("role drm: primary | render", max_len=16)
    channels: int = u32("role drm: connections of other processes acting on this file")


@frozen
class XedLimits:
    """The [limits] in force: what one client may hold, and the daemon's headroom."""

    bos: int = u64("GEM handles per client")
    vms: int = u64("VMs per client")
    exec_queues: int = u64("exec queues per client")
    fence_waits: int = u64("WAIT_USER_FENCE calls per client at once")
    exported: int = u64("dma-bufs and VM exports per client, while they live")
    unread_descriptors: int = u64("descriptors in replies a client has not read yet")
    unread_descriptors_per_uid: int = u64("the same, for all connections of one uid")
    descriptor_reserve: int = u64("descriptors kept free for new connections and admin")
    connections_per_uid: int = u64("connections one uid may have open at once")
    lent_descriptors_per_uid: int = u64(
        "descriptors one uid's blocking requests may hold, over all its connections"
    )


@frozen
class XedAdminClientsReply:
    clients: tuple[XedClientInfo, ...] = records(XedClientInfo)
    limits: XedLimits = record(XedLimits, "the limits every client is held to")


@frozen
class XedAdminObjects:
    """Object counts, and every object that left a process as a descriptor."""


@frozen
class XedExportedInfo:
    kind: str = string("dma_buf | vm_export", max_len=16)
    ino: int = u64("inode of the handed-out descriptor")
    size: int = u64("dma-buf: bytes")
    exporter_pid: int = u32("vm_export: the application that exported it")
    held_by_daemon: int = u32("1 while the daemon keeps a copy (the BO has handles)")
    registered_by: tuple[int, ...] = array(8, "u32", "vm_export: aux client ids (0 = none)")


@frozen
class XedAdminObjectsReply:
    objects: XedObjectCounts = record(XedObjectCounts)
    exported: tuple[XedExportedInfo, ...] = records(XedExportedInfo, max_items=512)


@frozen
class XedAdminStats:
    """Per-op counts, refusals by errno and latency percentiles."""


@frozen
class XedErrnoCount:
    errno: str = string(max_len=16)
    count: int = u64()


@frozen
class XedOpStats:
    op: str = string(max_len=32)
    count: int = u64()
    errors: tuple[XedErrnoCount, ...] = records(XedErrnoCount, max_items=64)
    p50_us: int = u64("over the latest 2048 calls")
    p99_us: int = u64()


@frozen
class XedAdminStatsReply:
    ops: tuple[XedOpStats, ...] = records(XedOpStats, max_items=128)
    events_dropped: int = u64("events a slow client fell behind on")
    log_level: str = string(max_len=16)


@frozen
class XedAdminLogLevel:
    level: str = string("debug | info | warning | error", max_len=16)


@frozen
class XedAdminUnplug:
    """Unplug the device (drm_dev_unplug): ioctls and new mmaps fail with ENODEV, and
    every mapping of its memory reads zeros."""


@frozen
class XedAdminReplug:
    """Plug a new device in (an emulator's convenience, as a driver rebind): files
    opened before the unplug stay ENODEV."""


@frozen
class XedAdminStatusReply:
    pid: int = u32("daemon pid")
    objects: XedObjectCounts = record(XedObjectCounts)
    execs: int = u64("batches executed")
    bans: int = u64("exec queues banned")
    refused: int = u64("ioctls answered with an errno")
    sync_violations: int = u64("device access while a CPU write window was open (strict)")
    unplugged: int = u32("1 while the device is unplugged")
    barriers: int = u64("PCI barrier page writes counted, all files")
    task_crashes: int = u64("device tasks (queues, exported objects) ended by a bug of ours")
    ioctl_crashes: int = u64("ioctls that failed with EIO by a bug of ours")
    limits_hit: int = u64("requests refused because a client reached one of its limits")
    log_dropped: int = u64("log events dropped: rate-limited, or the log could not keep up")


# --- events ----------------------------------------------------------------------------
@frozen
class ExecQueueBanned:
    """The command streamer stopped a queue: bad address, unknown opcode, runaway batch."""

    exec_queue_id: int = u32()
    address: int = u64("GPU address that faulted: the instruction's, or the data it reached")
    reason: str = string()


@frozen
class ProtocolErrorInfo:
    """Sent instead of a reply when the request's id could not be read."""

    errno: int = u32()
    message: str = string(max_len=1024)


@frozen
class DaemonStopping:
    """The daemon is stopping: finish up and disconnect within `seconds`."""

    seconds: int = u32("how long the daemon waits for clients to leave")
    reason: str = string(max_len=64)


@frozen
class ErrorInfo:
    """Result of a failed request: errno travels in the reply; this says why."""

    message: str = string(max_len=1024)


__all__ = [name for name in dir() if name[:1].isupper() and name != "Any"]
