"""The admin role's records: what `xed ctl` asks and the daemon answers."""

from __future__ import annotations

from ..fields import array, frozen, record, records, string, u32, u64


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
    sync_files: int = u32()
    syncobj_fds: int = u32()
    sw_sync_timelines: int = u32()
    uid_objects: int = u64("what every uid's account holds (limits.objects_per_uid), summed")


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
    blocking: int = u32("blocking requests under way over its connections (WAIT, ...)")
    vmas: int = u32("GPU mappings over all its VMs (limits.vmas)")
    uid_objects: int = u32("what all connections of its uid hold (limits.objects_per_uid)")


@frozen
class XedLimits:
    """The [limits] in force: what one client may hold, and the daemon's headroom."""

    bos: int = u64("GEM handles per client")
    vms: int = u64("VMs per client")
    exec_queues: int = u64("exec queues per client")
    vmas: int = u64("GPU mappings (VMAs) per client, over all its VMs")
    objects_per_uid: int = u64(
        "what one uid's connections may hold together: handles, VMs, queues, mappings, "
        "syncobjs, jobs not done, queued bind ops"
    )
    fence_waits: int = u64("waits per client asleep at once (fence, syncobj, invalidation)")
    syncobjs: int = u64("syncobj handles per client")
    timeline_points: int = u64("timeline points per client the daemon still holds")
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
class XedAdminGtReset:
    """Reset a GT, as debugfs gtN/force_reset does: its queues with a job under way are
    banned, the rest go on."""

    gt_id: int = u32("the GT")


@frozen
class XedAdminGtResetReply:
    banned: int = u32("queues banned: those with a job running")


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
