"""The xe driver's ioctls (xe_drm.h), with the proposed MMIO region ioctls and xed's own
mmap of a fake offset and unplug notice page."""

from __future__ import annotations

from errno import (
    E2BIG,
    EACCES,
    EAGAIN,
    EBUSY,
    ECANCELED,
    EFAULT,
    EINVAL,
    EIO,
    ENODEV,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EOPNOTSUPP,
    EPERM,
    ETIME,
)

from .. import messages as m
from .spec import MBZ, RESERVE, RESERVE_FD, Op, OpSpec, Role

SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        op=Op.XE_DEVICE_QUERY,
        request=m.DrmXeDeviceQuery,
        reply=m.DrmXeDeviceQueryReply,
        roles=frozenset({Role.DRM, Role.ADMIN}),
        doc=(
            "Engines, memory regions (sizes and used bytes), config info[], the GT "
            "list, the hwconfig blob (empty), the GT's topology masks, the GuC's "
            "firmware version (UC_FW_VERSION: uc_fw_version as the caller filled it), "
            "OA units (none), or the proposal's MMIO "
            "regions, as a record; a C library lays it out as the uAPI's "
            "drm_xe_query_* (the size probe, `size` != that size: EINVAL, and a data "
            "pointer it cannot write: EFAULT, or ENOSPC for MEM_REGIONS, as xe does)."
        ),
        errors=(
            MBZ,
            (EINVAL, "unknown query; ENGINE_CYCLES: not emulated"),
            (EINVAL, "UC_FW_VERSION: pad, pad2 or reserved not zero, or an unknown uc_type"),
            (ENODEV, "UC_FW_VERSION of the HuC: none is running"),
            (ENODEV, "PXP_STATUS: the device has no PXP"),
            (ENODEV, "EU_STALL: the device has no EU stall sampling"),
        ),
    ),
    OpSpec(
        op=Op.XE_GEM_CREATE,
        request=m.DrmXeGemCreate,
        reply=m.DrmXeGemCreateReply,
        doc="Create a buffer object backed by its own memfd.",
        errors=(
            (EINVAL, "pad or reserved not zero"),
            (EINVAL, "placement empty or names a region the device lacks"),
            (EINVAL, "unknown flags"),
            (EINVAL, "handle not zero on input"),
            (EINVAL, "size zero or not a multiple of the page size ([device] page_size)"),
            (EINVAL, "NEEDS_VISIBLE_VRAM without a VRAM placement"),
            (EINVAL, "cpu_caching not WB or WC"),
            (EINVAL, "cpu_caching WB with a VRAM placement or SCANOUT"),
            (ENOENT, "vm_id names no VM of this file"),
            (ENOMEM, "larger than every region of the placement (VRAM, visible VRAM), or "
             "VRAM full and system memory too (past VRAM, a BO is made evicted); with "
             "DEFER_BACKING at its first use instead (VM_BIND, MMAP, PRIME_HANDLE_TO_FD)"),
            RESERVE,
            (ENOMEM, "limits.bos: this client holds that many GEM handles already"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
            (ENOSPC, "larger than the fake mmap offset space (about 1 TiB)"),
            (EINVAL, "extensions not zero (no extension is emulated; checked last)"),
        ),
    ),
    OpSpec(
        op=Op.XE_GEM_MMAP_OFFSET,
        request=m.DrmXeGemMmapOffset,
        reply=m.DrmXeGemMmapOffsetReply,
        doc=(
            "The fake offset at which MMAP maps the BO; allowed for this connection only. "
            "With DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER and handle 0: the offset of this "
            "file's PCI barrier page."
        ),
        errors=(
            MBZ,
            (EINVAL, "unknown flags"),
            (EINVAL, "PCI_BARRIER: a device without VRAM (not discrete), or handle not 0"),
            (EINVAL, "PCI_BARRIER: host pages over 4 KiB ([device] page_size = 65536)"),
            (ENOENT, "no such handle"),
            (
                ENODEV,
                "a foreign import with dma_buf.imported_mmap = refuse (i915's answer; "
                "the default, xe, gives the offset and the mapping faults: SIGBUS)",
            ),
        ),
    ),
    OpSpec(
        op=Op.MMAP,
        request=m.XedMmap,
        reply=m.XedMmapReply,
        fds_out=1,
        doc=(
            "mmap(2) of the DRM file: the daemon checks the request as the kernel's mmap "
            "handler would and answers with the descriptor to map. VRAM outside a small "
            "BAR (a BO created without NEEDS_VISIBLE_VRAM) answers an empty memfd: the "
            "map succeeds and every access is SIGBUS, as xe's fault handler answers."
        ),
        errors=(
            (EINVAL, "length zero, or offset not page aligned"),
            (EINVAL, "no object at this offset (or offset not at its start)"),
            (EACCES, "the offset belongs to another connection"),
            (EINVAL, "length larger than the object"),
            (EINVAL, "private (copy-on-write) mapping, or neither shared nor private"),
            (EINVAL, "unknown prot bits"),
            (EINVAL, "an MMIO region: length other than the region's size"),
            (EINVAL, "the barrier page: more than 4096 bytes, private, PROT_READ/EXEC"),
            (EINVAL, "the barrier offset with host pages over 4 KiB"),
            (ENOMEM, "a DEFER_BACKING BO larger than its placement, or system memory full too"),
            RESERVE_FD,
        ),
    ),
    OpSpec(
        op=Op.UNPLUG_NOTICE,
        request=m.XedUnplugNotice,
        reply=m.XedMmapReply,
        roles=frozenset({Role.DRM, Role.AUX, Role.DEBUGGER}),
        fds_out=1,
        doc=(
            "No kernel equivalent (the kernel zaps mappings itself; here clients map "
            "memory themselves, so they are told to). The device's unplug notice: a "
            "read-only page (map it shared, PROT_READ) whose first u32 reads 0 while "
            "the device lives and 1, for good, once it is unplugged; the daemon then "
            "wakes every futex waiter on that word (FUTEX_WAKE, not private). The "
            "unplug empties the memory under every mapping (it reads zeros); a client "
            "that puts private zero pages under its mappings when the word turns, as "
            "the client library does, also keeps what it writes afterwards from "
            "everyone else, as drm_dev_unplug's dummy page does. Each device has its "
            "own page: one plugged in by REPLUG has a new one."
        ),
        errors=(RESERVE_FD,),
    ),
    OpSpec(
        op=Op.PCI_BARRIER_ACKS,
        request=m.XedPciBarrierAcks,
        reply=m.XedPciBarrierAcksReply,
        doc=(
            "No kernel equivalent (on the hardware the device counts a barrier, and only "
            "it knows when; here it is the daemon, which can say). When the device read "
            "this file's barriers: with XED_PCI_BARRIER_ACKS_RECORD set, the device "
            "records, for every look that finds a barrier in the page, the library's "
            "running number counted up to then (a raw store leaves it as it was) and "
            "the time of that read (CLOCK_MONOTONIC, read "
            "between the read and the page reading 0xdeadbeef again), until a call "
            "without the flag. Each call answers what was recorded since the previous "
            "one (at most the first 1024; `dropped` counts the rest) and starts afresh. "
            "A barrier stored at time t was counted at the first time after t whose "
            "number reached the barrier's: the device's own acknowledgement latency, "
            "which `xec load barrier` prints."
        ),
        errors=(
            MBZ,
            (EINVAL, "unknown flags"),
            (ENOENT, "this file has no barrier page (map it first: GEM_MMAP_OFFSET with "
             "DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER, then MMAP)"),
        ),
    ),
    OpSpec(
        op=Op.XE_VM_CREATE,
        request=m.DrmXeVmCreate,
        reply=m.DrmXeVmCreateReply,
        doc="Create a GPU virtual address space.",
        errors=(
            MBZ,
            (EINVAL, "unknown flags"),
            (EINVAL, "SCRATCH_PAGE with FAULT_MODE, or FAULT_MODE without LR_MODE"),
            (ENOMEM, "limits.vms: this client holds that many VMs already"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
        ),
    ),
    OpSpec(
        op=Op.XE_VM_DESTROY,
        request=m.DrmXeVmDestroy,
        reply=m.Empty,
        doc="Close a VM; exec queues on it keep it alive but it refuses new work.",
        errors=(
            MBZ,
            (ENOENT, "no such VM"),
            (EBUSY, "an LR-mode VM with exec queues on it"),
            (EBUSY, "the VM is exported, or registered with an aux driver"),
        ),
    ),
    OpSpec(
        op=Op.XE_VM_GET_PROPERTY,
        request=m.DrmXeVmGetProperty,
        reply=m.DrmXeVmGetPropertyReply,
        doc="A VM's property: FAULTS, the page faults its work met (the first 50).",
        errors=(
            MBZ,
            (ENOENT, "no such VM"),
            (EINVAL, "unknown property"),
            (EINVAL, "size beyond the faults there are, or not a multiple of 48"),
            (EFAULT, "the C library cannot write `data` (the library's copy_to_user)"),
        ),
    ),
    OpSpec(
        op=Op.XE_VM_BIND,
        request=m.DrmXeVmBind,
        reply=m.Empty,
        blocking=True,
        doc=(
            "Map and unmap BOs in a VM (gpuvm semantics: a MAP replaces what it covers). "
            "A bind that must wait (a syncobj fence not signalled yet, an earlier bind "
            "queued on its queue or over its addresses) is queued and the ioctl answers "
            "at once, as xe's; with a user fence among its syncs, the ioctl answers once "
            "the binds are made."
        ),
        errors=(
            MBZ,
            (EINVAL, "more than 512 binds (none is a legal sync-only bind)"),
            (EINVAL, "op unknown"),
            (EINVAL, "PREFETCH with obj; a prefetch region outside PREFETCH, or not the device's"),
            (EINVAL, "PREFETCH to a region outside the placement of a BO in its range"),
            (ENOMEM, "PREFETCH: no room in its region for a BO in its range"),
            (EFAULT, "MAP_USERPTR outside this connection's registered host memory"),
            (EINVAL, "unknown bind flags"),
            (EINVAL, "obj given for UNMAP, or missing for MAP without NULL"),
            (EINVAL, "obj_offset with NULL"),
            (EINVAL, "addr, range or obj_offset not page aligned, or range zero"),
            (EINVAL, "range beyond the VM's address space"),
            (EINVAL, "no such VM"),
            (ENOENT, "VM closed"),
            (ENOENT, "exec_queue_id names no queue of this file"),
            (EINVAL, "exec_queue_id names a queue that is no bind queue, or another VM's"),
            (ENOENT, "no such BO handle"),
            (EINVAL, "range beyond the BO"),
            (EINVAL, "BO is private to another VM"),
            (EINVAL, "bad sync (see EXEC)"),
            (EOPNOTSUPP, "user fence on a bind without binds, or without SIGNAL"),
            (EFAULT, "user fence address not mapped by this connection"),
            (EFAULT, "user fence in a GEM mapping of a foreign import (it faults, as xe's)"),
            (
                EFAULT,
                "user fence in a BO the daemon cannot write (a read-only import, a "
                "foreign buffer sealed against writes)",
            ),
            (ENOMEM, "user fence in a BO the daemon cannot map (out of descriptors or memory)"),
            (ENOMEM, "a MAP of an evicted or unbacked BO no room can be made for (LR mode: "
             "the VM's own BOs stay)"),
            (EAGAIN, "it must wait, and 1024 binds (or 16384 address spans) of the VM are "
             "queued already, or 65536 bind ops over the connection's VMs"),
            (ENOMEM, "the binds could take the connection past limits.vmas GPU mappings "
             "(a MAP counts two, an UNMAP inside a mapping one: what each can add)"),
            (ENOMEM, "limits.objects_per_uid: with the mappings it may add, and its ops if "
             "it must wait, the uid's connections would hold more together (xed)"),
        ),
    ),
    OpSpec(
        op=Op.XE_EXEC_QUEUE_CREATE,
        request=m.DrmXeExecQueueCreate,
        reply=m.DrmXeExecQueueCreateReply,
        doc="Create a queue of batches for one engine class, bound to a VM.",
        errors=(
            MBZ,
            (EINVAL, "unknown flags"),
            (EINVAL, "width x num_placements zero, too large or not the instances given"),
            (EINVAL, "gt_id, class or instance names no engine, or classes or GTs differ"),
            (EINVAL, "width above 1: lanes not side by side (each lane's engines +1)"),
            (EINVAL, "width above 1 on a class without multi-LRC (all but the video ones)"),
            (EINVAL, "VM_BIND engine class (a bind queue): width, placements or instance"),
            (ENOENT, "no such VM, or VM closed"),
            (EINVAL, "an extension: a pad, a name other than SET_PROPERTY, a property "
             "other than PRIORITY or TIMESLICE"),
            (EINVAL, "priority above HIGH; a timeslice outside 1 us-10 s (no CAP_SYS_NICE)"),
            (EPERM, "priority HIGH without CAP_SYS_NICE"),
            (EFAULT, "an extension that cannot be read"),
            (E2BIG, "more than 16 extensions"),
            (ENOMEM, "limits.exec_queues: this client holds that many queues already"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
        ),
    ),
    OpSpec(
        op=Op.XE_EXEC_QUEUE_DESTROY,
        request=m.DrmXeExecQueueDestroy,
        reply=m.Empty,
        doc="Destroy an exec queue; batches already queued are dropped.",
        errors=(MBZ, (ENOENT, "no such exec queue")),
    ),
    OpSpec(
        op=Op.XE_EXEC_QUEUE_GET_PROPERTY,
        request=m.DrmXeExecQueueGetProperty,
        reply=m.DrmXeExecQueueGetPropertyReply,
        doc="An exec queue's property: BAN, whether it was banned (reset).",
        errors=(
            (EINVAL, "reserved not zero"),
            (ENOENT, "no such exec queue"),
            (EINVAL, "a property other than BAN"),
        ),
    ),
    OpSpec(
        op=Op.XE_EXEC,
        request=m.DrmXeExec,
        reply=m.Empty,
        doc="Queue the batch at a GPU address of the queue's VM; user fences signal when done.",
        errors=(
            MBZ,
            (ENOENT, "no such exec queue"),
            (EINVAL, "num_batch_buffer not the queue's width"),
            (EINVAL, "the queue is a bind queue"),
            (ECANCELED, "the queue was banned"),
            (EAGAIN, "4096 batches outstanding on the queue, or 65536 over the "
             "connection's queues"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many "
             "together, a job not done counting one (xed)"),
            (EINVAL, "sync: reserved, unknown flags or type; more than one user fence"),
            (EOPNOTSUPP, "sync: user fence without SIGNAL"),
            (EINVAL, "sync: user fence address not 8-byte aligned"),
            (ENOENT, "sync: syncobj handle unknown"),
            (EINVAL, "sync: a wait on a syncobj holding no fence, or a point not submitted"),
            (EINVAL, "sync: TIMELINE_SYNCOBJ with timeline_value 0"),
            (ENOMEM, "sync: TIMELINE_SYNCOBJ SIGNAL past limits.timeline_points (xed)"),
            (EINVAL, "addresses given for a queue of width 1"),
            (EFAULT, "a parallel queue's batch: not `width` addresses (array unreadable)"),
            (ECANCELED, "the VM was closed"),
            (ENOMEM, "the VM's evicted BOs do not fit VRAM back, other VMs' BOs evicted"),
        ),
    ),
    OpSpec(
        op=Op.XE_WAIT_USER_FENCE,
        request=m.DrmXeWaitUserFence,
        reply=m.DrmXeWaitUserFenceReply,
        blocking=True,
        doc="Wait until (*addr & mask) op (value & mask) holds, or the timeout passes.",
        errors=(
            MBZ,
            (EINVAL, "unknown flags or op"),
            (EINVAL, "addr not 8-byte aligned"),
            (ENOENT, "exec_queue_id names no queue"),
            (EFAULT, "addr not inside a mapping of this connection"),
            (EFAULT, "addr in a GEM mapping of a foreign import (it faults, as xe's)"),
            (ENOMEM, "addr in a BO the daemon cannot map (out of descriptors or memory)"),
            (EIO, "the exec queue was reset (banned) while waiting"),
            (ETIME, "the timeout passed"),
            (ENODEV, "the device was unplugged while waiting (it never writes again)"),
            (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
        ),
    ),
    OpSpec(
        op=Op.XE_MMIO_REGION_OPEN,
        request=m.DrmXeMmioRegionOpen,
        reply=m.DrmXeMmioRegionOpenReply,
        doc=(
            "Open a part of BAR0 for this file: the read-only info block (shared, sealed) "
            "or a doorbell page of its own. MMAP it at the returned offset."
        ),
        errors=(
            MBZ,
            (EINVAL, "flags not zero"),
            (EINVAL, "bar_offset or size zero or not page aligned, or beyond BAR0"),
            (EPERM, "the range touches registers that are never exposed"),
            (EINVAL, "not exactly a region DEVICE_QUERY(MMIO_REGIONS) lists"),
            (EBUSY, "this file already has its doorbell page"),
            (ENOMEM, "this file holds 64 regions open already: close one first (xed)"),
            (ENOSPC, "every doorbell page is taken"),
            RESERVE,
        ),
    ),
    OpSpec(
        op=Op.XE_MMIO_REGION_CLOSE,
        request=m.DrmXeMmioRegionClose,
        reply=m.Empty,
        doc=(
            "Close a region: its offset no longer maps, and a doorbell page is revoked "
            "(mappings of it fault, SIGBUS). Mappings of the shared read-only info "
            "block keep reading it."
        ),
        errors=((EINVAL, "pad or reserved not zero"), (ENOENT, "no such region")),
    ),
)
