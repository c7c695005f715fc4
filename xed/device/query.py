"""DRM_IOCTL_XE_DEVICE_QUERY: what the device has, as drm_xe_query_* report it.

The reply is the query's data as a record; the size probe (size 0, then a buffer of
exactly that size) and the copy to user memory are the C library's, which lays the
record out as the uAPI struct. What xe answers on a part without the feature is answered
here as well: an empty hwconfig table, no OA unit, no HuC, ENODEV for PXP and EU stall
sampling.
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
    DRM_XE_TOPO_DSS_COMPUTE,
    DRM_XE_TOPO_DSS_GEOMETRY,
    DRM_XE_TOPO_L3_BANK,
    DRM_XE_TOPO_SIMD16_EU_PER_DSS,
    SZ_4K,
    XE_QUERY_UC_TYPE_GUC_SUBMISSION,
    XE_QUERY_UC_TYPE_HUC,
    Query,
)

from .errors import IoctlError, refuse_if

if TYPE_CHECKING:
    from .device import XeDevice
    from .file import XeFile

XE_MAX_EXEC_QUEUE_PRIORITY = 2  # DRM_SCHED_PRIORITY_HIGH for an unprivileged client
REFERENCE_CLOCK_HZ = 19_200_000
GRAPHICS_IP_VERSION = (20, 1, 0)  # GMD_ID of an Xe2 (Battlemage) graphics GT
# GT_TOPOLOGY of that GT: 20 Xe cores (DSS) for geometry and compute alike, 16 L3 banks,
# 8 SIMD16 EUs a core; each mask as long as xe's bitmap of it (xe_gt_types.h)
TOPOLOGY = (
    (DRM_XE_TOPO_DSS_GEOMETRY, 20, 16),
    (DRM_XE_TOPO_DSS_COMPUTE, 20, 16),
    (DRM_XE_TOPO_L3_BANK, 16, 8),
    (DRM_XE_TOPO_SIMD16_EU_PER_DSS, 8, 8),  # last, as xe writes it
)
GUC_VERSION = (70, 44, 1)  # the GuC submission interface version UC_FW_VERSION reports


def _engines(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    engines = tuple(m.DrmXeEngine(instance=eci) for eci in xe.engines)
    return m.DrmXeDeviceQueryReply(query=Query.ENGINES, engines=engines)


def _mem_regions(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
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


def _config(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
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


def _gt_list(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
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


def _hwconfig(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """The GuC's hwconfig table: the emulated device has none, so it is empty (size 0,
    as xe reports on platforms without one)."""
    return m.DrmXeDeviceQueryReply(query=Query.HWCONFIG)


def _oa_units(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """No OA unit: the header only, num_oa_units 0."""
    return m.DrmXeDeviceQueryReply(query=Query.OA_UNITS)


def _pxp_status(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    raise IoctlError(ENODEV, "the device has no PXP")  # xe_pxp_get_readiness_status


def _eu_stall(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    raise IoctlError(ENODEV, "no EU stall sampling on this device")


def _mmio_regions(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    return m.DrmXeDeviceQueryReply(query=Query.MMIO_REGIONS, mmio_regions=xe.bar0.regions())


def _gt_topology(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """The one GT's masks: DSS geometry and compute, L3 banks, then EUs per DSS."""
    masks = tuple(
        m.DrmXeQueryTopologyMask(
            gt_id=0, type=kind, mask=((1 << bits) - 1).to_bytes(size, "little")
        )
        for kind, bits, size in TOPOLOGY
    )
    return m.DrmXeDeviceQueryReply(query=Query.GT_TOPOLOGY, topology=masks)


def _uc_fw_version(xe: XeDevice, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """query_uc_fw_version: pad, pad2 or reserved non-zero, or an unknown uc_type: EINVAL;
    the HuC: ENODEV (none is running: the emulated media engines need none)."""
    asked = args.uc_fw_version
    refuse_if(asked.pad or asked.pad2 or asked.reserved, EINVAL, "uc_fw_version MBZ not zero")
    if asked.uc_type == XE_QUERY_UC_TYPE_HUC:
        raise IoctlError(ENODEV, "no HuC is running")
    refuse_if(asked.uc_type != XE_QUERY_UC_TYPE_GUC_SUBMISSION, EINVAL, f"uc_type {asked.uc_type}")
    major, minor, patch = GUC_VERSION
    version = m.DrmXeQueryUcFwVersion(
        uc_type=asked.uc_type, major_ver=major, minor_ver=minor, patch_ver=patch
    )
    return m.DrmXeDeviceQueryReply(query=Query.UC_FW_VERSION, uc_fw_version=version)


_QUERIES: dict[int, Callable[[XeDevice, m.DrmXeDeviceQuery], m.DrmXeDeviceQueryReply]] = {
    Query.ENGINES: _engines,
    Query.MEM_REGIONS: _mem_regions,
    Query.CONFIG: _config,
    Query.GT_LIST: _gt_list,
    Query.HWCONFIG: _hwconfig,
    Query.GT_TOPOLOGY: _gt_topology,
    Query.UC_FW_VERSION: _uc_fw_version,
    Query.OA_UNITS: _oa_units,
    Query.PXP_STATUS: _pxp_status,
    Query.EU_STALL: _eu_stall,
    Query.MMIO_REGIONS: _mmio_regions,
}


def xe_query_ioctl(xef: XeFile, args: m.DrmXeDeviceQuery) -> m.DrmXeDeviceQueryReply:
    """DRM_IOCTL_XE_DEVICE_QUERY.

    Checks, in order:
    - extensions or reserved non-zero: EINVAL
    - query not one this device answers: unknown, or ENGINE_CYCLES (not emulated): EINVAL
    - UC_FW_VERSION: pad, pad2 or reserved non-zero, or an unknown uc_type: EINVAL; the
      HuC: ENODEV (none running)
    - PXP_STATUS: the device has no PXP: ENODEV
    - EU_STALL: the device has no EU stall sampling: ENODEV
    """
    refuse_if(args.extensions or any(args.reserved), EINVAL, "extensions/reserved not zero")
    answer = _QUERIES.get(args.query)
    if answer is None:
        raise IoctlError(EINVAL, f"query {args.query} is not answered")
    return answer(xef.device, args)
