"""DRM_IOCTL_XE_DEVICE_QUERY: what the device has, as drm_xe_query_* report it."""

from __future__ import annotations

from errno import EINVAL
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import (
    DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM,
    DRM_XE_QUERY_GT_TYPE_MAIN,
    SZ_4K,
    Query,
)

from .errors import refuse_if

if TYPE_CHECKING:
    from .file import XeFile

XE_MAX_EXEC_QUEUE_PRIORITY = 2  # DRM_SCHED_PRIORITY_HIGH for an unprivileged client
REFERENCE_CLOCK_HZ = 19_200_000


def xe_query_ioctl(xef: XeFile, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """DRM_IOCTL_XE_DEVICE_QUERY.

    Checks, in order:
    - extensions or reserved non-zero: EINVAL
    - query not one this device answers (ENGINES, MEM_REGIONS, CONFIG, GT_LIST, and the
      proposal's MMIO_REGIONS): EINVAL
    The kernel's size probing is not needed: the reply carries the data itself.
    """
    refuse_if(args.extensions or any(args.reserved), EINVAL, "extensions/reserved not zero")
    refuse_if(args.query not in set(Query), EINVAL, f"unknown query {args.query}")
    xe = xef.device
    query = Query(args.query)
    if query is Query.ENGINES:
        engines = tuple(m.DrmXeEngine(instance=eci) for eci in xe.engines)
        return m.DrmXeDeviceQueryReply(query=query, engines=engines)
    if query is Query.MEM_REGIONS:
        regions = tuple(
            m.DrmXeMemRegion(
                mem_class=r.mem_class,
                instance=r.instance,
                min_page_size=xe.page_size,  # PAGE_SIZE: the host's
                total_size=r.total,
                used=r.used,
                cpu_visible_size=r.cpu_visible,
                cpu_visible_used=r.cpu_visible_used,
            )
            for r in xe.regions.values()
        )
        return m.DrmXeDeviceQueryReply(query=query, mem_regions=regions)
    if query is Query.CONFIG:
        cfg = xe.config
        flags = DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM if cfg.vram_size else 0
        info = (
            cfg.device_id | cfg.revision << 16,
            flags,
            SZ_4K,  # MIN_ALIGNMENT: the GPU's (SZ_64K only for NEED64K VRAM)
            cfg.va_bits,
            XE_MAX_EXEC_QUEUE_PRIORITY,
        )
        return m.DrmXeDeviceQueryReply(query=query, config=info)
    if query is Query.MMIO_REGIONS:
        return m.DrmXeDeviceQueryReply(query=query, mmio_regions=xe.bar0.regions())
    near = xe.mem_region_mask & ~1 if xe.config.vram_size else 1
    gt = m.DrmXeGt(
        type=DRM_XE_QUERY_GT_TYPE_MAIN,
        tile_id=0,
        gt_id=0,
        reference_clock=REFERENCE_CLOCK_HZ,
        near_mem_regions=near,
        far_mem_regions=xe.mem_region_mask ^ near,
    )
    return m.DrmXeDeviceQueryReply(query=query, gt_list=(gt,))
