"""DRM_IOCTL_XE_DEVICE_QUERY: what the device has, as drm_xe_query_* report it.

The reply is the query's data as a record; the size probe (size 0, then a buffer of
exactly that size) and the copy to user memory are the C library's, which lays the
record out as the uAPI struct. What xe answers on a part without the feature is answered
here as well: an empty hwconfig table, no OA unit, ENODEV for PXP and EU stall sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from errno import EINVAL, ENODEV
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import (
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY,
    DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM,
    DRM_XE_QUERY_GT_TYPE_MAIN,
    SZ_4K,
    Query,
)

from .errors import IoctlError, refuse_if

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile

XE_MAX_EXEC_QUEUE_PRIORITY = 2  # DRM_SCHED_PRIORITY_HIGH for an unprivileged client
REFERENCE_CLOCK_HZ = 19_200_000
GRAPHICS_IP_VERSION = (20, 1, 0)  # GMD_ID of an Xe2 (Battlemage) graphics GT


def _engines(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    engines = tuple(m.DrmXeEngine(instance=eci) for eci in xe.engines)
    return m.DrmXeDeviceQueryReply(query=Query.ENGINES, engines=engines)


def _mem_regions(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    """Indexed by instance, which is the region's bit in GEM_CREATE.placement. The
    CPU-visible fields are VRAM's only: xe leaves them zero for system memory."""
    regions = tuple(
        m.DrmXeMemRegion(
            mem_class=r.mem_class,
            instance=r.instance,
            min_page_size=xe.page_size,  # PAGE_SIZE: the host's
            total_size=r.total,
            used=r.used,
            cpu_visible_size=r.cpu_visible if r.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM else 0,
            cpu_visible_used=(
                r.cpu_visible_used if r.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM else 0
            ),
        )
        for r in xe.regions.values()
    )
    return m.DrmXeDeviceQueryReply(query=Query.MEM_REGIONS, mem_regions=regions)


def _config(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    cfg = xe.config
    flags = DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY  # unconditional in xe
    if cfg.vram_size:
        flags |= DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM
    info = (
        cfg.device_id | cfg.revision << 16,
        flags,
        SZ_4K,  # MIN_ALIGNMENT: the GPU's (SZ_64K only for NEED64K VRAM)
        cfg.va_bits,
        XE_MAX_EXEC_QUEUE_PRIORITY,
    )
    return m.DrmXeDeviceQueryReply(query=Query.CONFIG, config=info)


def _gt_list(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    """One main GT on tile 0; VRAM is near it on a discrete part, system memory else."""
    near = xe.mem_region_mask & ~1 if xe.config.vram_size else 1
    major, minor, rev = GRAPHICS_IP_VERSION
    gt = m.DrmXeGt(
        type=DRM_XE_QUERY_GT_TYPE_MAIN,
        tile_id=0,
        gt_id=0,
        reference_clock=REFERENCE_CLOCK_HZ,
        near_mem_regions=near,
        far_mem_regions=xe.mem_region_mask ^ near,
        ip_ver_major=major,
        ip_ver_minor=minor,
        ip_ver_rev=rev,
    )
    return m.DrmXeDeviceQueryReply(query=Query.GT_LIST, gt_list=(gt,))


def _hwconfig(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    """The GuC's hwconfig table: the emulated device has none, so it is empty (size 0,
    as xe reports on platforms without one)."""
    return m.DrmXeDeviceQueryReply(query=Query.HWCONFIG)


def _oa_units(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    """No OA unit: the header only, num_oa_units 0."""
    return m.DrmXeDeviceQueryReply(query=Query.OA_UNITS)


def _pxp_status(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    raise IoctlError(ENODEV, "the device has no PXP")  # xe_pxp_get_readiness_status


def _eu_stall(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    raise IoctlError(ENODEV, "no EU stall sampling on this device")


def _mmio_regions(xe: XeDevice) -> m.DrmXeDeviceQueryReply:
    return m.DrmXeDeviceQueryReply(query=Query.MMIO_REGIONS, mmio_regions=xe.bar0.regions())


_QUERIES: dict[int, Callable[[XeDevice], m.DrmXeDeviceQueryReply]] = {
    Query.ENGINES: _engines,
    Query.MEM_REGIONS: _mem_regions,
    Query.CONFIG: _config,
    Query.GT_LIST: _gt_list,
    Query.HWCONFIG: _hwconfig,
    Query.OA_UNITS: _oa_units,
    Query.PXP_STATUS: _pxp_status,
    Query.EU_STALL: _eu_stall,
    Query.MMIO_REGIONS: _mmio_regions,
}


def xe_query_ioctl(xef: XeFile, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """DRM_IOCTL_XE_DEVICE_QUERY.

    Checks, in order:
    - extensions or reserved non-zero: EINVAL
    - query not one this device answers: unknown, or GT_TOPOLOGY, ENGINE_CYCLES,
      UC_FW_VERSION (not emulated): EINVAL
    - PXP_STATUS: the device has no PXP: ENODEV
    - EU_STALL: the device has no EU stall sampling: ENODEV
    """
    refuse_if(args.extensions or any(args.reserved), EINVAL, "extensions/reserved not zero")
    answer = _QUERIES.get(args.query)
    if answer is None:
        raise IoctlError(EINVAL, f"query {args.query} is not answered")
    return answer(xef.device)
