"""XE_DEVICE_QUERY and VERSION: what the device reports, as drm_xe_query_* lay it out."""

from __future__ import annotations

import collections
import errno
from typing import Any

import pytest

from clients import Device, XeError
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_GEM_CPU_CACHING_WB,
    DRM_XE_GEM_CPU_CACHING_WC,
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_MEM_REGION_CLASS_SYSMEM,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY,
    DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM,
    DRM_XE_QUERY_CONFIG_FLAGS,
    DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY,
    DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT,
    DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID,
    DRM_XE_QUERY_CONFIG_VA_BITS,
    DRM_XE_QUERY_GT_TYPE_MAIN,
    DRM_XE_TOPO_DSS_COMPUTE,
    DRM_XE_TOPO_DSS_GEOMETRY,
    DRM_XE_TOPO_L3_BANK,
    DRM_XE_TOPO_SIMD16_EU_PER_DSS,
    PAGE_SIZE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
    XE_QUERY_UC_TYPE_GUC_SUBMISSION,
    XE_QUERY_UC_TYPE_HUC,
    EngineClass,
    Query,
)
from xed.config import DeviceConfig

MiB = 1 << 20
GiB = 1 << 30
DEFAULT = DeviceConfig()

CUSTOM = """\
[device]
device_id = 0x64A0
revision = 3
vram_size = 2147483648
visible_vram_size = 268435456
system_memory = 1073741824
va_bits = 57

[device.engines]
render = 2
copy = 3
video_decode = 0
video_enhance = 1
compute = 4
"""

NO_VRAM = """\
[device]
vram_size = 0
visible_vram_size = 0
system_memory = 67108864
"""


def query_errno(dev: Device, **fields: Any) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(Op.XE_DEVICE_QUERY, m.DrmXeDeviceQuery(**fields))
    return e.value.errno


def engine_counts(dev: Device) -> dict[int, int]:
    return dict(collections.Counter(e.instance.engine_class for e in dev.engines()))


# --- ENGINES ----------------------------------------------------------------------------------


def test_query_engines_match_default_config(dev: Device) -> None:
    """ENGINES lists render 1, copy 1, video decode 1, video enhance 0, compute 2, on GT 0."""
    reply = dev.query(Query.ENGINES)
    assert reply.query == Query.ENGINES
    assert engine_counts(dev) == {
        EngineClass.RENDER: 1,
        EngineClass.COPY: 1,
        EngineClass.VIDEO_DECODE: 1,
        EngineClass.COMPUTE: 2,
    }
    assert all(e.instance.gt_id == 0 for e in reply.engines)
    assert all(e.instance.pad == 0 and not any(e.reserved) for e in reply.engines)
    compute = [e.instance.engine_instance for e in reply.engines if e.instance.engine_class == 4]
    assert sorted(compute) == [0, 1]


def test_query_engines_fills_only_engines(dev: Device) -> None:
    """An ENGINES reply carries no mem_regions and no gt_list."""
    reply = dev.query(Query.ENGINES)
    assert reply.engines
    assert reply.mem_regions == ()
    assert reply.gt_list == ()


def test_query_engines_follow_config(make_daemon: Any) -> None:
    """ENGINES reports the configured instances per class, numbered from 0."""
    d = make_daemon(CUSTOM)
    with Device.open(d.socket_path) as dev:
        assert engine_counts(dev) == {
            EngineClass.RENDER: 2,
            EngineClass.COPY: 3,
            EngineClass.VIDEO_ENHANCE: 1,
            EngineClass.COMPUTE: 4,
        }
        per_class: dict[int, list[int]] = collections.defaultdict(list)
        for e in dev.engines():
            per_class[e.instance.engine_class].append(e.instance.engine_instance)
        assert {k: sorted(v) for k, v in per_class.items()} == {
            EngineClass.RENDER: [0, 1],
            EngineClass.COPY: [0, 1, 2],
            EngineClass.VIDEO_ENHANCE: [0],
            EngineClass.COMPUTE: [0, 1, 2, 3],
        }


# --- MEM_REGIONS ------------------------------------------------------------------------------


def test_query_mem_regions_default(dev: Device) -> None:
    """MEM_REGIONS: system memory is instance 0, VRAM instance 1, sizes from the config."""
    reply = dev.query(Query.MEM_REGIONS)
    assert reply.query == Query.MEM_REGIONS
    regions = {r.instance: r for r in reply.mem_regions}
    assert sorted(regions) == [0, 1]
    sysmem, vram = regions[0], regions[1]
    assert sysmem.mem_class == DRM_XE_MEM_REGION_CLASS_SYSMEM
    assert sysmem.total_size == DEFAULT.system_memory == 8 * GiB
    assert vram.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM
    assert vram.total_size == DEFAULT.vram_size == 4 * GiB
    assert vram.cpu_visible_size == DEFAULT.visible_vram_size == 256 * MiB
    assert (sysmem.cpu_visible_size, sysmem.cpu_visible_used) == (0, 0)  # as xe: VRAM's only
    for r in reply.mem_regions:
        assert r.min_page_size == PAGE_SIZE
        assert not any(r.reserved)


def test_query_mem_regions_follow_config(make_daemon: Any) -> None:
    """MEM_REGIONS reports configured sizes; a new device has nothing used."""
    d = make_daemon(CUSTOM)
    with Device.open(d.socket_path) as dev:
        regions = {r.instance: r for r in dev.mem_regions()}
        assert regions[0].mem_class == DRM_XE_MEM_REGION_CLASS_SYSMEM
        assert regions[0].total_size == GiB
        assert regions[1].mem_class == DRM_XE_MEM_REGION_CLASS_VRAM
        assert regions[1].total_size == 2 * GiB
        assert regions[1].cpu_visible_size == 256 * MiB
        for r in regions.values():
            assert r.used == 0
            assert r.cpu_visible_used == 0


def test_query_mem_regions_placement_bit_is_instance(make_daemon: Any) -> None:
    """A BO placed with bit N is accounted to the region whose instance is N."""
    d = make_daemon(CUSTOM)
    with Device.open(d.socket_path) as dev:
        dev.gem_create(
            3 * PAGE_SIZE,
            placement=XE_PLACEMENT_VRAM0,
            flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
        )
        dev.gem_create(5 * PAGE_SIZE, placement=XE_PLACEMENT_SYSMEM)
        regions = {r.instance: r for r in dev.mem_regions()}
        assert regions[1].used == 3 * PAGE_SIZE
        assert regions[1].cpu_visible_used == 3 * PAGE_SIZE
        assert regions[0].used == 5 * PAGE_SIZE


# --- CONFIG -----------------------------------------------------------------------------------


def test_query_config_default(dev: Device) -> None:
    """CONFIG info[]: device id | revision << 16, HAS_VRAM and HAS_LOW_LATENCY (set by xe
    on every device), 4 KiB alignment, 48 VA bits."""
    reply = dev.query(Query.CONFIG)
    assert reply.query == Query.CONFIG
    info = reply.config
    assert len(info) == 5
    assert info[DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID] == DEFAULT.device_id | DEFAULT.revision << 16
    assert info[DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID] & 0xFFFF == dev.identity.device_id
    assert info[DRM_XE_QUERY_CONFIG_FLAGS] == (
        DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM | DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY
    )
    assert info[DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT] == 4096
    assert info[DRM_XE_QUERY_CONFIG_VA_BITS] == 48
    assert info[DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY] > 0


def test_query_config_follows_config(make_daemon: Any) -> None:
    """CONFIG packs the configured revision above the device id and reports va_bits."""
    d = make_daemon(CUSTOM)
    with Device.open(d.socket_path) as dev:
        info = dev.query(Query.CONFIG).config
        assert info[DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID] == 0x64A0 | 3 << 16
        assert info[DRM_XE_QUERY_CONFIG_FLAGS] == (
            DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM | DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY
        )
        assert info[DRM_XE_QUERY_CONFIG_VA_BITS] == 57
        assert dev.identity.device_id == 0x64A0
        assert dev.identity.revision == 3


# --- GT_LIST ----------------------------------------------------------------------------------


def test_query_gt_list(dev: Device) -> None:
    """GT_LIST: one main GT 0 on tile 0, VRAM near, system memory far."""
    reply = dev.query(Query.GT_LIST)
    assert reply.query == Query.GT_LIST
    (gt,) = reply.gt_list
    assert gt.type == DRM_XE_QUERY_GT_TYPE_MAIN
    assert gt.tile_id == 0
    assert gt.gt_id == 0
    assert gt.reference_clock > 0
    assert gt.near_mem_regions == XE_PLACEMENT_VRAM0
    assert gt.far_mem_regions == XE_PLACEMENT_SYSMEM
    assert (gt.ip_ver_major, gt.ip_ver_minor) == (20, 1)  # Xe2 graphics IP
    assert not gt.pad2
    assert not any(gt.reserved)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [11, 0x1F, 0x21, 0x100, 0xFFFF_FFFF])
def test_query_unknown_query_is_einval(dev: Device, query: int) -> None:
    """A query number xe does not know: EINVAL."""
    assert query_errno(dev, query=query) == errno.EINVAL


def test_query_engine_cycles_is_not_emulated(dev: Device) -> None:
    """ENGINE_CYCLES (a CS timestamp read beside the CPU's): not emulated, EINVAL."""
    assert query_errno(dev, query=Query.ENGINE_CYCLES) == errno.EINVAL


def test_query_gt_topology_lists_each_mask_in_xes_order(dev: Device) -> None:
    """GT_TOPOLOGY: the GT's DSS geometry and compute masks, its L3 banks, then its EUs
    per DSS, last (SIMD16 on an Xe2 part, which IGT checks on the last entry)."""
    reply = dev.query(Query.GT_TOPOLOGY)
    kinds = [(t.gt_id, t.type) for t in reply.topology]
    assert kinds == [
        (0, DRM_XE_TOPO_DSS_GEOMETRY),
        (0, DRM_XE_TOPO_DSS_COMPUTE),
        (0, DRM_XE_TOPO_L3_BANK),
        (0, DRM_XE_TOPO_SIMD16_EU_PER_DSS),
    ]
    bits = {t.type: sum(bin(b).count("1") for b in t.mask) for t in reply.topology}
    assert bits == {
        DRM_XE_TOPO_DSS_GEOMETRY: 20,
        DRM_XE_TOPO_DSS_COMPUTE: 20,
        DRM_XE_TOPO_L3_BANK: 16,
        DRM_XE_TOPO_SIMD16_EU_PER_DSS: 8,
    }


def uc_fw(dev: Device, **fields: int) -> m.DrmXeDeviceQueryReply:
    asked = m.DrmXeQueryUcFwVersion(**fields)
    reply: m.DrmXeDeviceQueryReply = dev.ioctl(
        Op.XE_DEVICE_QUERY, m.DrmXeDeviceQuery(query=Query.UC_FW_VERSION, uc_fw_version=asked)
    )
    return reply


def test_query_uc_fw_version_of_the_guc(dev: Device) -> None:
    """UC_FW_VERSION of the GuC: its submission version (branch 0, major > 0)."""
    version = uc_fw(dev, uc_type=XE_QUERY_UC_TYPE_GUC_SUBMISSION).uc_fw_version
    assert version.uc_type == XE_QUERY_UC_TYPE_GUC_SUBMISSION
    assert (version.branch_ver, version.major_ver > 0) == (0, True)


@pytest.mark.parametrize(
    ("fields", "err"),
    [
        pytest.param({"uc_type": XE_QUERY_UC_TYPE_HUC}, errno.ENODEV, id="huc-not-running"),
        pytest.param({"uc_type": 2}, errno.EINVAL, id="unknown-uc-type"),
        pytest.param({"pad": 1}, errno.EINVAL, id="pad"),
        pytest.param({"pad2": 1}, errno.EINVAL, id="pad2"),
        pytest.param({"reserved": 1}, errno.EINVAL, id="reserved"),
        pytest.param({"uc_type": XE_QUERY_UC_TYPE_HUC, "pad": 1}, errno.EINVAL, id="mbz-first"),
    ],
)
def test_query_uc_fw_version_refusals(dev: Device, fields: dict[str, int], err: int) -> None:
    """query_uc_fw_version: a non-zero pad, pad2 or reserved is EINVAL before uc_type is
    looked at; an unknown uc_type EINVAL; the HuC, which nothing runs here, ENODEV."""
    with pytest.raises(XeError) as caught:
        uc_fw(dev, **fields)
    assert caught.value.errno == err


@pytest.mark.parametrize("query", [Query.PXP_STATUS, Query.EU_STALL])
def test_query_absent_feature_is_enodev(dev: Device, query: int) -> None:
    """PXP_STATUS and EU_STALL on a device without PXP or EU stall sampling: ENODEV, as
    xe answers on such a platform (IGT's xe_query treats both as optional)."""
    assert query_errno(dev, query=query) == errno.ENODEV


def test_query_hwconfig_is_empty(dev: Device) -> None:
    """HWCONFIG succeeds with an empty table (size 0, which IGT takes as "none")."""
    reply = dev.query(Query.HWCONFIG)
    assert reply.query == Query.HWCONFIG
    assert reply.hwconfig == b""


def test_query_oa_units_lists_none(dev: Device) -> None:
    """OA_UNITS succeeds with no unit (num_oa_units 0)."""
    reply = dev.query(Query.OA_UNITS)
    assert reply.query == Query.OA_UNITS
    assert reply.oa_units == ()


def test_query_every_answer_fills_only_its_field(dev: Device) -> None:
    """Each answered query fills its own field; the rest keep their zero defaults."""
    empty = m.DrmXeDeviceQueryReply()
    fields = {
        Query.ENGINES: "engines",
        Query.MEM_REGIONS: "mem_regions",
        Query.CONFIG: "config",
        Query.GT_LIST: "gt_list",
        Query.MMIO_REGIONS: "mmio_regions",
        Query.GT_TOPOLOGY: "topology",
        Query.UC_FW_VERSION: "uc_fw_version",
    }
    others = ("engines", "mem_regions", "config", "gt_list", "hwconfig", "oa_units", "topology")
    for query, field in fields.items():
        reply = dev.query(query)
        for other in (*others, "uc_fw_version"):
            if other != field:
                assert getattr(reply, other) == getattr(empty, other), (query, other)


def test_query_nonzero_extensions_is_einval(dev: Device) -> None:
    """extensions non-zero: EINVAL."""
    assert query_errno(dev, query=Query.ENGINES, extensions=1) == errno.EINVAL


@pytest.mark.parametrize("reserved", [(1, 0), (0, 1)])
def test_query_nonzero_reserved_is_einval(dev: Device, reserved: tuple[int, ...]) -> None:
    """reserved[] non-zero: EINVAL."""
    assert query_errno(dev, query=Query.CONFIG, reserved=reserved) == errno.EINVAL


def test_query_allowed_for_admin(admin: Device) -> None:
    """The admin role may query the device too."""
    assert admin.query(Query.MEM_REGIONS).mem_regions


# --- a device without VRAM --------------------------------------------------------------------


def test_no_vram_device_reports_only_system_memory(make_daemon: Any) -> None:
    """vram_size 0: MEM_REGIONS has system memory alone, CONFIG lacks HAS_VRAM, GT near sysmem;
    GEM_CREATE naming placement bit 1 is EINVAL."""
    d = make_daemon(NO_VRAM)
    with Device.open(d.socket_path) as dev:
        (region,) = dev.mem_regions()
        assert region.instance == 0
        assert region.mem_class == DRM_XE_MEM_REGION_CLASS_SYSMEM
        assert region.total_size == 64 * MiB
        info = dev.query(Query.CONFIG).config
        assert info[DRM_XE_QUERY_CONFIG_FLAGS] == DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY
        (gt,) = dev.query(Query.GT_LIST).gt_list
        assert gt.near_mem_regions == XE_PLACEMENT_SYSMEM
        assert gt.far_mem_regions == 0
        for placement in (XE_PLACEMENT_VRAM0, XE_PLACEMENT_SYSMEM | XE_PLACEMENT_VRAM0):
            with pytest.raises(XeError) as e:
                dev.gem_create(
                    PAGE_SIZE, placement=placement, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC
                )
            assert e.value.errno == errno.EINVAL
        with pytest.raises(XeError) as e:
            dev.gem_create(
                PAGE_SIZE,
                flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
                cpu_caching=DRM_XE_GEM_CPU_CACHING_WC,
            )
        assert e.value.errno == errno.EINVAL
        dev.gem_create(PAGE_SIZE, cpu_caching=DRM_XE_GEM_CPU_CACHING_WB)


# --- VERSION ----------------------------------------------------------------------------------


def test_version_reply_fields(dev: Device) -> None:
    """VERSION names the driver "xe", version 1.0.0, with a date and a description."""
    reply = dev.version()
    assert reply.name == "xe"
    assert (reply.version_major, reply.version_minor, reply.version_patchlevel) == (1, 0, 0)
    assert reply.date
    assert reply.desc


def test_version_allowed_for_admin(admin: Device) -> None:
    """VERSION answers any role, the admin one included, with the same fields."""
    assert admin.version().name == "xe"
