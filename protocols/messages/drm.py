"""The DRM core's records (the handshake, VERSION, GEM names, binary syncobjs,
PRIME) and the dma-buf file's."""

from __future__ import annotations

from ..fields import array, frozen, record, records, s32, s64, string, u32, u64, upto


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


@frozen
class DrmSyncobjTimelineWait:
    """struct drm_syncobj_timeline_wait: SYNCOBJ_WAIT with a point per handle."""

    handles: tuple[DrmSyncobjHandle, ...] = records(DrmSyncobjHandle, max_items=4096)
    points: tuple[int, ...] = upto(4096, "u64", "each handle's point (none sent: 0 for each)")
    timeout_nsec: int = s64("absolute CLOCK_MONOTONIC deadline; 0 looks once")
    flags: int = u32("WAIT_ALL | WAIT_FOR_SUBMIT | WAIT_AVAILABLE | WAIT_DEADLINE")
    first_signaled: int = u32("written back (not read)")
    pad: int = u32("not checked, as in DRM")
    deadline_nsec: int = u64("WAIT_DEADLINE: a hint for the driver (ignored)")


@frozen
class DrmSyncobjTimelineArray:
    """struct drm_syncobj_timeline_array (QUERY, TIMELINE_SIGNAL)."""

    handles: tuple[DrmSyncobjHandle, ...] = records(DrmSyncobjHandle, max_items=4096)
    points: tuple[int, ...] = upto(4096, "u64", "TIMELINE_SIGNAL: each handle's point (none: 0)")
    flags: int = u32("QUERY: LAST_SUBMITTED; TIMELINE_SIGNAL: must be zero")


@frozen
class DrmSyncobjQueryReply:
    points: tuple[int, ...] = upto(4096, "u64", "each handle's point, as QUERY tells it")


@frozen
class DrmSyncobjTransfer:
    """struct drm_syncobj_transfer: the fence of src_handle's src_point becomes
    dst_handle's dst_point (0: the fence a binary syncobj holds)."""

    src_handle: int = u32()
    dst_handle: int = u32()
    src_point: int = u64()
    dst_point: int = u64()
    flags: int = u32("WAIT_FOR_SUBMIT: wait (up to 5 s) for src_point to be submitted")
    pad: int = u32("must be zero")


@frozen
class DrmSyncobjFd:
    """struct drm_syncobj_handle (HANDLE_TO_FD, FD_TO_HANDLE). The descriptor travels
    attached: FD_TO_HANDLE's in the request, HANDLE_TO_FD's in the reply."""

    handle: int = u32("the syncobj (HANDLE_TO_FD; FD_TO_HANDLE with IMPORT_SYNC_FILE)")
    flags: int = u32("EXPORT_SYNC_FILE (| TIMELINE) / IMPORT_SYNC_FILE")
    fd: int = s32("the caller's number for the attached descriptor; informational")
    pad: int = u32("must be zero")
    point: int = u64("HANDLE_TO_FD with TIMELINE: the timeline point (0 on a binary one)")


@frozen
class DrmSyncobjFdReply:
    handle: int = u32("FD_TO_HANDLE: the new handle (IMPORT_SYNC_FILE: the one given)")


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
class DmaBufSyncFile:
    """struct dma_buf_export_sync_file / dma_buf_import_sync_file on the attached
    dma-buf (IMPORT: the sync file attached second)."""

    flags: int = u32("DMA_BUF_SYNC_READ / WRITE / RW")
    fd: int = s32("the caller's number for the sync file; informational")


@frozen
class SyncMerge:
    """struct sync_merge_data (SYNC_IOC_MERGE) on the sync file attached first; the
    other (`fd2`'s) is attached second, the merged one comes back."""

    name: str = string("the merged sync file's name (31 bytes kept, as the kernel)", max_len=32)
    fd2: int = s32("the caller's number for the second sync file; informational")
    flags: int = u32("must be zero")
    pad: int = u32("must be zero")


@frozen
class SyncFileInfo:
    """struct sync_file_info (SYNC_IOC_FILE_INFO) on the attached sync file."""

    num_fences: int = u32("0: ask only how many; else room for that many fence infos")
    flags: int = u32("must be zero")
    pad: int = u32("must be zero")


@frozen
class SyncFenceInfo:
    """struct sync_fence_info: one fence of a sync file."""

    obj_name: str = string("its timeline", max_len=32)
    driver_name: str = string("its driver", max_len=32)
    status: int = s32("1 signalled, 0 active")
    flags: int = u32()
    timestamp_ns: int = u64("when it was signalled, CLOCK_MONOTONIC ns (0: active)")


@frozen
class SyncFileInfoReply:
    name: str = string("the sync file's name", max_len=32)
    status: int = s32("1 every fence signalled, 0 some active")
    num_fences: int = u32("how many fences it holds")
    fences: tuple[SyncFenceInfo, ...] = records(SyncFenceInfo, max_items=256)


# --- sw_sync (drivers/dma-buf/sw_sync.c): timelines a program advances itself ---------------
@frozen
class SwSyncTimelineCreate:
    """open(2) of debugfs's sync/sw_sync: a new timeline at 0, named after the caller's
    command; it comes back as a descriptor."""


@frozen
class SwSyncCreateFence:
    """struct sw_sync_create_fence_data (SW_SYNC_IOC_CREATE_FENCE) on the attached
    timeline: a sync file of the point `value`, which comes back."""

    value: int = u32("the point: signalled once the timeline reaches it")
    name: str = string("ignored, as by the kernel", max_len=32)


@frozen
class SwSyncInc:
    """SW_SYNC_IOC_INC on the attached timeline."""

    value: int = u32("how far to advance the timeline (it wraps at 2^32)")


@frozen
class SyncobjEventfdRegister:
    """What a SYNCOBJ_EVENTFD registration waits for (struct drm_syncobj_eventfd but the
    eventfd, which never reaches the daemon)."""

    handle: int = u32("the syncobj")
    flags: int = u32("0 or WAIT_AVAILABLE")
    point: int = u64("the point (0: the fence the syncobj holds)")
    pad: int = u32("must be zero")


@frozen
class SwSyncClosed:
    """The library closed a descriptor of the timeline whose inode is `ino`."""

    ino: int = u64("the timeline descriptor's inode (fstat before the close)")


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
