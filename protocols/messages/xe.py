"""The records of xe's ioctls (xe_drm.h): device query, GEM, VM, exec queues and exec,
with the proposed MMIO regions and xed's mmap of a fake offset."""

from __future__ import annotations

from ..constants import MAX_USER_EXTENSIONS, PCI_BARRIER_ACKS_KEPT
from ..fields import array, blob, frozen, mbz, record, records, s64, string, u16, u32, u64, upto


# --- DRM_IOCTL_XE_DEVICE_QUERY -----------------------------------------------------------
@frozen
class DrmXeQueryUcFwVersion:
    """struct drm_xe_query_uc_fw_version: UC_FW_VERSION's data, which the caller fills with
    the firmware it asks about (uc_type) and the kernel with its version."""

    uc_type: int = u16("XE_QUERY_UC_TYPE_GUC_SUBMISSION (0) or _HUC (1)")
    pad: int = u16("must be zero")
    branch_ver: int = u32()
    major_ver: int = u32()
    minor_ver: int = u32()
    patch_ver: int = u32()
    pad2: int = u32("must be zero")
    reserved: int = u64("must be zero")


@frozen
class DrmXeDeviceQuery:
    extensions: int = u64("must be zero")
    query: int = u32("DRM_XE_DEVICE_QUERY_*")
    reserved: tuple[int, ...] = mbz(2)
    uc_fw_version: DrmXeQueryUcFwVersion = record(
        DrmXeQueryUcFwVersion, "UC_FW_VERSION: the data as the caller filled it (else zero)"
    )


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
class DrmXeQueryTopologyMask:
    """struct drm_xe_query_topology_mask: one mask of one GT (num_bytes is len(mask))."""

    gt_id: int = u16()
    type: int = u16("DRM_XE_TOPO_*: DSS_GEOMETRY 1, DSS_COMPUTE 2, L3_BANK 3, ...")
    mask: bytes = blob("a bit per unit, byte 0 first", max_len=64)


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
    topology: tuple[DrmXeQueryTopologyMask, ...] = records(
        DrmXeQueryTopologyMask, "GT_TOPOLOGY: every GT's masks, in the kernel's order"
    )
    uc_fw_version: DrmXeQueryUcFwVersion = record(DrmXeQueryUcFwVersion, "UC_FW_VERSION")


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


@frozen
class XedPciBarrierAcks:
    """When the device counted this file's barriers (no kernel equivalent: what the
    kernel's device does is the hardware's; here it is the daemon's to tell, as a
    debugfs file would)."""

    flags: int = u32("XED_PCI_BARRIER_ACKS_RECORD: go on recording (else stop)")
    pad: int = u32("must be zero")


@frozen
class XedPciBarrierAcksReply:
    seqs: tuple[int, ...] = upto(
        PCI_BARRIER_ACKS_KEPT, "u32", "the library's running number counted up to then"
    )
    counted_ns: tuple[int, ...] = upto(
        PCI_BARRIER_ACKS_KEPT, "u64", "when the device read it (CLOCK_MONOTONIC, ns)"
    )
    dropped: int = u64("counted since the last call but not kept (past the first 1024)")


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
class XeVmFault:
    """struct xe_vm_fault: one fault the VM's work met (its u8 fields are u16 here)."""

    address: int = u64("canonical address of the faulting page")
    address_precision: int = u32("bytes the address is exact to: 4096")
    access_type: int = u16("FAULT_ACCESS_TYPE_*: read 0, write 1, atomic 2")
    fault_type: int = u16("FAULT_TYPE_*: not present 0, write access 1, atomic access 2")
    fault_level: int = u16("FAULT_LEVEL_*: the page-table level, PTE 0")


@frozen
class DrmXeVmGetProperty:
    extensions: int = u64("must be zero")
    vm_id: int = u32()
    property: int = u32("DRM_XE_VM_GET_PROPERTY_FAULTS (0)")
    size: int = u32("0: how many bytes the property takes; else the bytes wanted")
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(3)


@frozen
class DrmXeVmGetPropertyReply:
    size: int = u32("asked with 0, the bytes the property takes; else as given")
    faults: tuple[XeVmFault, ...] = records(
        XeVmFault, "the first size / 48 faults (the C struct's `data`)", max_items=50
    )


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
class DrmXeExtSetProperty:
    """One link of EXEC_QUEUE_CREATE's extension chain (struct drm_xe_ext_set_property),
    as the library read it from the program; next_extension and reserved are not sent."""

    name: int = u32("the link's: DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY (0)")
    pad: int = u32("the link's: must be zero")
    property: int = u32("DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY (0) or _TIMESLICE (1)")
    pad2: int = u32("the property's pad: must be zero")
    value: int = u64("the priority (0-2), or the timeslice in us")


@frozen
class DrmXeExecQueueCreate:
    extensions: int = u64("non-zero: the chain below (the C struct's pointer to it)")
    width: int = u16("batch buffers per submission")
    num_placements: int = u16("engines the queue may run on")
    vm_id: int = u32()
    flags: int = u32("must be zero")
    exec_queue_id: int = u32("output in the kernel; ignored on input")
    instances: tuple[DrmXeEngineClassInstance, ...] = records(
        DrmXeEngineClassInstance, "width x num_placements engines", max_items=64
    )
    reserved: tuple[int, ...] = mbz(2)
    chain: tuple[DrmXeExtSetProperty, ...] = records(
        DrmXeExtSetProperty,
        "the links `extensions` leads to, in order",
        max_items=MAX_USER_EXTENSIONS,
    )
    chain_end: int = u32(
        "how the chain ends: 0 at its last link; CHAIN_LINK_FAULT, a next link that cannot "
        "be read; CHAIN_BODY_FAULT, the last link's property that cannot be read; "
        "CHAIN_TOO_LONG, a 17th link"
    )


@frozen
class DrmXeExecQueueCreateReply:
    exec_queue_id: int = u32()


@frozen
class DrmXeExecQueueDestroy:
    exec_queue_id: int = u32()
    pad: int = u32("must be zero")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeExecQueueGetProperty:
    extensions: int = u64("not checked (xe does not look at it)")
    exec_queue_id: int = u32()
    property: int = u32("DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN (0)")
    value: int = u64("output in the kernel; ignored on input")
    reserved: tuple[int, ...] = mbz(2)


@frozen
class DrmXeExecQueueGetPropertyReply:
    value: int = u64("BAN: 1 once the queue was banned (reset), else 0")


@frozen
class DrmXeExec:
    extensions: int = u64("must be zero")
    exec_queue_id: int = u32()
    syncs: tuple[DrmXeSync, ...] = records(DrmXeSync, "num_syncs / syncs", max_items=64)
    address: int = u64("GPU address of the batch buffer (a queue of width 1)")
    addresses: tuple[int, ...] = upto(
        9,
        "u64",
        "a parallel queue's batch addresses, one a lane: the u64 array `address` points at "
        "in the C struct, read by the library; empty for a queue of width 1",
    )
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
