"""The dispatch table: one handler per op, as drm_ioctl's table is for the kernel.

A handler takes the caller's XeFile and the decoded argument record and returns the
reply record, or (record, descriptors) when descriptors go back. It refuses with
IoctlError. Blocking ops have coroutine handlers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from errno import EALREADY, EINVAL
from typing import Any

import attrs

from protocols import messages as m
from protocols.ops import Op

from . import log as xlog
from .device import (
    bo,
    dma_buf,
    eudebug,
    exec_queue,
    flink,
    mmap,
    mmio,
    pages,
    query,
    sw_sync,
    sync_file,
    syncobj,
    syncobj_eventfd,
    syncobj_timeline,
    ufence,
    unplug,
    userptr,
    vm,
    vm_bind,
    vm_export,
    vm_faults,
)
from .device.errors import refuse_if
from .device.file import XeFile

DRIVER_VERSION = (1, 0, 0)


# the same for every caller, and records are immutable: built once
_VERSION = m.DrmVersionReply(
    version_major=DRIVER_VERSION[0],
    version_minor=DRIVER_VERSION[1],
    version_patchlevel=DRIVER_VERSION[2],
    name="xe",
    date="0",
    desc="Intel Xe2 Graphics (emulated by xed)",
)


def drm_version_ioctl(xef: XeFile, args: m.DrmVersion) -> m.DrmVersionReply:
    """DRM_IOCTL_VERSION: never fails."""
    return _VERSION


def admin_status_ioctl(xef: XeFile, args: m.XedAdminStatus) -> m.XedAdminStatusReply:
    """ADMIN_STATUS: counts of every kind of object, and the device's counters."""
    return xef.device.status()


# XedClientInfo is 322 bytes at its widest: one datagram holds 203 of them, and any uid
# may open that many connections. ADMIN_STATUS counts every one (objects.files).
ADMIN_CLIENTS_LISTED = 200


def admin_clients_ioctl(xef: XeFile, args: m.XedAdminClients) -> m.XedAdminClientsReply:
    """ADMIN_CLIENTS: every drm file and other connection (a channel shows as its file's
    count, not as a client), what it holds and what the device did for it, and the
    limits each is held to; the first ADMIN_CLIENTS_LISTED by client id, what one reply
    holds."""
    device = xef.device
    return m.XedAdminClientsReply(
        clients=tuple(f.info() for f in device.clients()[:ADMIN_CLIENTS_LISTED]),
        limits=m.XedLimits(**attrs.asdict(device.limits)),
    )


# XedExportedInfo is 143 bytes at its widest: one datagram holds 448 of them beside the
# counts, and any uid may create that many (limits.exported is per client). The counts
# (objects.dma_bufs, objects.vm_exports) say how many there are in all.
ADMIN_OBJECTS_LISTED = 448


def admin_objects_ioctl(xef: XeFile, args: m.XedAdminObjects) -> m.XedAdminObjectsReply:
    """ADMIN_OBJECTS: the object counts, and the first ADMIN_OBJECTS_LISTED exported
    objects, what one reply holds. Never fails."""
    device = xef.device
    listed = itertools.islice(device.exported.values(), ADMIN_OBJECTS_LISTED)
    exported = tuple(obj.info() for obj in listed)
    return m.XedAdminObjectsReply(objects=device.object_counts(), exported=exported)


def admin_stats_ioctl(xef: XeFile, args: m.XedAdminStats) -> m.XedAdminStatsReply:
    """ADMIN_STATS: never fails."""
    return m.XedAdminStatsReply(
        ops=xef.device.ioctl_stats.report(),
        events_dropped=xef.device.stats["events_dropped"],
        log_level=xlog.current_level(),
    )


def admin_log_level_ioctl(xef: XeFile, args: m.XedAdminLogLevel) -> m.Empty:
    """ADMIN_LOG_LEVEL. Checks: not one of debug, info, warning, error: EINVAL."""
    refuse_if(args.level not in xlog.LEVELS, EINVAL, f"unknown level {args.level!r}")
    xlog.set_level(args.level)
    xef.log.warning("log_level_changed", level=args.level)
    return m.Empty()


def admin_unplug_ioctl(xef: XeFile, args: m.XedAdminUnplug) -> m.Empty:
    """ADMIN_UNPLUG. Checks: already unplugged: EALREADY."""
    refuse_if(xef.device.unplugged, EALREADY, "already unplugged")
    xef.device.unplug()
    xef.log.warning("device_unplugged")
    return m.Empty()


def admin_replug_ioctl(xef: XeFile, args: m.XedAdminReplug) -> m.Empty:
    """ADMIN_REPLUG. Checks: not unplugged: EALREADY."""
    refuse_if(not xef.device.unplugged, EALREADY, "not unplugged")
    xef.device.replug()
    xef.log.warning("device_replugged")
    return m.Empty()


def admin_gt_reset_ioctl(xef: XeFile, args: m.XedAdminGtReset) -> m.XedAdminGtResetReply:
    """ADMIN_GT_RESET. Checks: gt_id names no GT of the device: EINVAL."""
    device = xef.device
    gts = {engine.gt_id for engine in device.engines}
    refuse_if(args.gt_id not in gts, EINVAL, f"no GT {args.gt_id}")
    banned = device.gt_reset(args.gt_id)
    xef.log.warning("gt_reset", gt=args.gt_id, banned=banned)
    return m.XedAdminGtResetReply(banned=banned)


HANDLERS: dict[Op, Callable[..., Any]] = {
    Op.VERSION: drm_version_ioctl,
    Op.GEM_CLOSE: bo.drm_gem_close_ioctl,
    Op.GEM_FLINK: flink.drm_gem_flink_ioctl,
    Op.GEM_OPEN: flink.drm_gem_open_ioctl,
    Op.XE_DEVICE_QUERY: query.xe_query_ioctl,
    Op.XE_GEM_CREATE: bo.xe_gem_create_ioctl,
    Op.XE_GEM_MMAP_OFFSET: bo.xe_gem_mmap_offset_ioctl,
    Op.XE_VM_CREATE: vm.xe_vm_create_ioctl,
    Op.XE_VM_DESTROY: vm.xe_vm_destroy_ioctl,
    Op.XE_VM_BIND: vm_bind.xe_vm_bind_ioctl,
    Op.XE_VM_GET_PROPERTY: vm_faults.xe_vm_get_property_ioctl,
    Op.XE_EXEC_QUEUE_CREATE: exec_queue.xe_exec_queue_create_ioctl,
    Op.XE_EXEC_QUEUE_DESTROY: exec_queue.xe_exec_queue_destroy_ioctl,
    Op.XE_EXEC_QUEUE_GET_PROPERTY: exec_queue.xe_exec_queue_get_property_ioctl,
    Op.XE_EXEC: exec_queue.xe_exec_ioctl,
    Op.XE_WAIT_USER_FENCE: ufence.xe_wait_user_fence_ioctl,
    Op.SYNCOBJ_CREATE: syncobj.drm_syncobj_create_ioctl,
    Op.SYNCOBJ_DESTROY: syncobj.drm_syncobj_destroy_ioctl,
    Op.SYNCOBJ_WAIT: syncobj.drm_syncobj_wait_ioctl,
    Op.SYNCOBJ_RESET: syncobj.drm_syncobj_reset_ioctl,
    Op.SYNCOBJ_SIGNAL: syncobj.drm_syncobj_signal_ioctl,
    Op.SYNCOBJ_TIMELINE_WAIT: syncobj_timeline.drm_syncobj_timeline_wait_ioctl,
    Op.SYNCOBJ_QUERY: syncobj_timeline.drm_syncobj_query_ioctl,
    Op.SYNCOBJ_TRANSFER: syncobj_timeline.drm_syncobj_transfer_ioctl,
    Op.SYNCOBJ_TIMELINE_SIGNAL: syncobj_timeline.drm_syncobj_timeline_signal_ioctl,
    Op.SYNCOBJ_HANDLE_TO_FD: syncobj.drm_syncobj_handle_to_fd_ioctl,
    Op.SYNCOBJ_FD_TO_HANDLE: syncobj.drm_syncobj_fd_to_handle_ioctl,
    Op.MMAP: mmap.xed_mmap_ioctl,
    Op.UNPLUG_NOTICE: unplug.xed_unplug_notice_ioctl,
    Op.PCI_BARRIER_ACKS: pages.xed_pci_barrier_acks_ioctl,
    Op.ADMIN_STATUS: admin_status_ioctl,
    Op.PRIME_HANDLE_TO_FD: dma_buf.drm_prime_handle_to_fd_ioctl,
    Op.PRIME_FD_TO_HANDLE: dma_buf.drm_prime_fd_to_handle_ioctl,
    Op.DMA_BUF_MMAP: dma_buf.dma_buf_mmap_ioctl,
    Op.DMA_BUF_IOCTL_SYNC: dma_buf.dma_buf_sync_ioctl,
    Op.DMA_BUF_LLSEEK: dma_buf.dma_buf_llseek_ioctl,
    Op.DMA_BUF_EXPORT_SYNC_FILE: dma_buf.dma_buf_export_sync_file_ioctl,
    Op.DMA_BUF_IMPORT_SYNC_FILE: dma_buf.dma_buf_import_sync_file_ioctl,
    Op.SYNC_FILE_MERGE: sync_file.sync_file_merge_ioctl,
    Op.SYNC_FILE_INFO: sync_file.sync_file_info_ioctl,
    Op.SW_SYNC_TIMELINE_CREATE: sw_sync.sw_sync_timeline_create_ioctl,
    Op.SW_SYNC_CREATE_FENCE: sw_sync.sw_sync_create_fence_ioctl,
    Op.SW_SYNC_INC: sw_sync.sw_sync_inc_ioctl,
    Op.SW_SYNC_CLOSED: sw_sync.sw_sync_closed_ioctl,
    Op.SYNCOBJ_EVENTFD_REGISTER: syncobj_eventfd.syncobj_eventfd_register_ioctl,
    Op.SYNCOBJ_EVENTFD_WAIT: syncobj_eventfd.syncobj_eventfd_wait_ioctl,
    Op.XE_MMIO_REGION_OPEN: mmio.xe_mmio_region_open_ioctl,
    Op.XE_MMIO_REGION_CLOSE: mmio.xe_mmio_region_close_ioctl,
    Op.XE_VM_EXPORT: vm_export.xe_vm_export_ioctl,
    Op.AUX_VM_IMPORT: vm_export.aux_vm_import_ioctl,
    Op.AUX_VM_RESOLVE: vm_export.aux_vm_resolve_ioctl,
    Op.AUX_VM_UNWATCH: vm_export.aux_vm_unwatch_ioctl,
    Op.AUX_VM_RELEASE: vm_export.aux_vm_release_ioctl,
    Op.AUX_VM_INVALIDATE_DONE: vm_export.aux_vm_invalidate_done_ioctl,
    Op.HOST_MEMORY_REGISTER: userptr.host_memory_register_ioctl,
    Op.HOST_MEMORY_INVALIDATE: userptr.host_memory_invalidate_ioctl,
    Op.DEBUG_ATTACH: eudebug.debug_attach_ioctl,
    Op.DEBUG_DETACH: eudebug.debug_detach_ioctl,
    Op.DEBUG_VM_ACCESS: eudebug.debug_vm_access_ioctl,
    Op.ADMIN_CLIENTS: admin_clients_ioctl,
    Op.ADMIN_UNPLUG: admin_unplug_ioctl,
    Op.ADMIN_STATS: admin_stats_ioctl,
    Op.ADMIN_OBJECTS: admin_objects_ioctl,
    Op.ADMIN_LOG_LEVEL: admin_log_level_ioctl,
    Op.ADMIN_REPLUG: admin_replug_ioctl,
    Op.ADMIN_GT_RESET: admin_gt_reset_ioctl,
}
