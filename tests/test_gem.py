"""GEM objects made and let go: XE_GEM_CREATE and GEM_CLOSE, checked as xe checks them.
Mapping them (XE_GEM_MMAP_OFFSET, and what the CPU reaches through a mapping) is in
test_gem_mmap.py, which uses the helpers here.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_GEM_CPU_CACHING_WB,
    DRM_XE_GEM_CPU_CACHING_WC,
    DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING,
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_GEM_CREATE_FLAG_SCANOUT,
    PAGE_SIZE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
)

MiB = 1 << 20
BOTH = XE_PLACEMENT_SYSMEM | XE_PLACEMENT_VRAM0

SMALL_BAR = """\
[device]
vram_size = 1048576
visible_vram_size = 524288
"""

SMALL_SYSMEM = """\
[device]
vram_size = 1048576
visible_vram_size = 524288
system_memory = 1048576
"""


def create(dev: Device, **fields: Any) -> int:
    """GEM_CREATE with a valid 4 KiB system-memory WB request, `fields` overriding it."""
    args = dict(
        size=PAGE_SIZE, placement=XE_PLACEMENT_SYSMEM, cpu_caching=DRM_XE_GEM_CPU_CACHING_WB
    )
    args.update(fields)
    reply: m.DrmXeGemCreateReply = dev.ioctl(Op.XE_GEM_CREATE, m.DrmXeGemCreate(**args))
    return reply.handle


def create_errno(dev: Device, **fields: Any) -> int:
    with pytest.raises(XeError) as e:
        create(dev, **fields)
    return e.value.errno


def regions(dev: Device) -> dict[int, m.DrmXeMemRegion]:
    return {r.instance: r for r in dev.mem_regions()}


def mmap_offset(dev: Device, **fields: Any) -> int:
    reply: m.DrmXeGemMmapOffsetReply = dev.ioctl(
        Op.XE_GEM_MMAP_OFFSET, m.DrmXeGemMmapOffset(**fields)
    )
    return reply.offset


# --- GEM_CREATE: success --------------------------------------------------------------------


def test_gem_create_first_handle_is_one(dev: Device) -> None:
    """A new file's first GEM handle is 1, the next ones count up."""
    assert create(dev) == 1
    assert create(dev) == 2
    assert create(dev) == 3


def test_gem_create_reuses_lowest_free_handle(dev: Device) -> None:
    """After GEM_CLOSE the lowest free handle id is handed out again (idr_alloc)."""
    handles = [create(dev) for _ in range(4)]
    assert handles == [1, 2, 3, 4]
    dev.gem_close(3)
    dev.gem_close(2)
    assert create(dev) == 2
    assert create(dev) == 3
    assert create(dev) == 5


def test_gem_create_handles_are_per_file(daemon: DaemonProcess, dev: Device) -> None:
    """Handle ids are per connection: another file also starts at 1."""
    assert create(dev) == 1
    with Device.open(daemon.socket_path) as other:
        assert create(other) == 1


def test_gem_create_accepts_every_valid_combination(dev: Device) -> None:
    """WB in system memory, WC anywhere, SCANOUT with WC, DEFER_BACKING and visible VRAM work."""
    create(dev)
    create(dev, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
    create(dev, placement=XE_PLACEMENT_VRAM0, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
    create(dev, placement=BOTH, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
    create(dev, flags=DRM_XE_GEM_CREATE_FLAG_SCANOUT, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
    create(dev, flags=DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING)
    create(
        dev,
        placement=XE_PLACEMENT_VRAM0,
        flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
        cpu_caching=DRM_XE_GEM_CPU_CACHING_WC,
    )


def test_gem_create_with_own_vm_id_succeeds(dev: Device) -> None:
    """A BO private to an open VM of this file is created."""
    vm = dev.vm_create()
    assert create(dev, vm_id=vm) == 1


# --- GEM_CREATE: errors, in the handler's order ------------------------------------------------


def test_gem_create_nonzero_extensions_is_einval(dev: Device) -> None:
    """extensions non-zero: EINVAL (no extension is emulated), and no handle is made."""
    assert create_errno(dev, extensions=1) == errno.EINVAL
    assert create(dev) == 1


def test_gem_create_extensions_are_checked_last(fresh_daemon: DaemonProcess) -> None:
    """xe walks the extension chain once the BO exists: an unknown vm_id (ENOENT), a size
    beyond the mmap offset space (ENOSPC) and a size no region holds (ENOMEM) are
    answered before a non-zero extensions."""
    with Device.open(fresh_daemon.socket_path) as dev:
        assert create_errno(dev, extensions=1, vm_id=999) == errno.ENOENT
        assert create_errno(dev, extensions=1, size=1 << 50) == errno.ENOSPC
        assert create_errno(dev, extensions=1, size=1 << 39) == errno.ENOMEM
        assert create_errno(dev, extensions=1, cpu_caching=0) == errno.EINVAL


@pytest.mark.parametrize("pad", [(1, 0, 0), (0, 1, 0), (0, 0, 0xFFFF)])
def test_gem_create_nonzero_pad_is_einval(dev: Device, pad: tuple[int, ...]) -> None:
    """Any non-zero pad[] word: EINVAL."""
    assert create_errno(dev, pad=pad) == errno.EINVAL


@pytest.mark.parametrize("reserved", [(1, 0), (0, 1)])
def test_gem_create_nonzero_reserved_is_einval(dev: Device, reserved: tuple[int, ...]) -> None:
    """Any non-zero reserved[] word: EINVAL."""
    assert create_errno(dev, reserved=reserved) == errno.EINVAL


def test_gem_create_empty_placement_is_einval(dev: Device) -> None:
    """placement 0 names no region: EINVAL."""
    assert create_errno(dev, placement=0) == errno.EINVAL


@pytest.mark.parametrize("placement", [1 << 2, 1 << 31, XE_PLACEMENT_SYSMEM | 1 << 5])
def test_gem_create_placement_of_unknown_region_is_einval(dev: Device, placement: int) -> None:
    """A placement bit naming a region the device lacks: EINVAL, even beside a valid one."""
    assert create_errno(dev, placement=placement) == errno.EINVAL


@pytest.mark.parametrize("flags", [1 << 3, 1 << 31, DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING | 1 << 4])
def test_gem_create_unknown_flags_is_einval(dev: Device, flags: int) -> None:
    """Flags outside DEFER_BACKING | SCANOUT | NEEDS_VISIBLE_VRAM: EINVAL."""
    assert create_errno(dev, flags=flags) == errno.EINVAL


def test_gem_create_nonzero_handle_is_einval(dev: Device) -> None:
    """handle is output only: non-zero on input is EINVAL."""
    assert create_errno(dev, handle=1) == errno.EINVAL


def test_gem_create_zero_size_is_einval(dev: Device) -> None:
    """size 0: EINVAL."""
    assert create_errno(dev, size=0) == errno.EINVAL


@pytest.mark.parametrize("size", [1, PAGE_SIZE - 1, PAGE_SIZE + 1, 3 * PAGE_SIZE + 512])
def test_gem_create_unaligned_size_is_einval(dev: Device, size: int) -> None:
    """size not a multiple of the page size: EINVAL."""
    assert create_errno(dev, size=size) == errno.EINVAL


def test_gem_create_needs_visible_vram_without_vram_placement_is_einval(dev: Device) -> None:
    """NEEDS_VISIBLE_VRAM with a system-memory-only placement: EINVAL."""
    assert (
        create_errno(
            dev,
            flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
            cpu_caching=DRM_XE_GEM_CPU_CACHING_WC,
        )
        == errno.EINVAL
    )


@pytest.mark.parametrize("caching", [0, 3])
def test_gem_create_unknown_cpu_caching_is_einval(dev: Device, caching: int) -> None:
    """cpu_caching neither WB (1) nor WC (2): EINVAL."""
    assert create_errno(dev, cpu_caching=caching) == errno.EINVAL


@pytest.mark.parametrize("placement", [XE_PLACEMENT_VRAM0, BOTH])
def test_gem_create_wb_caching_with_vram_placement_is_einval(dev: Device, placement: int) -> None:
    """cpu_caching WB with any VRAM bit in the placement: EINVAL."""
    assert (
        create_errno(dev, placement=placement, cpu_caching=DRM_XE_GEM_CPU_CACHING_WB)
        == errno.EINVAL
    )


def test_gem_create_wb_caching_with_scanout_is_einval(dev: Device) -> None:
    """cpu_caching WB with SCANOUT, even in system memory: EINVAL."""
    assert (
        create_errno(
            dev, flags=DRM_XE_GEM_CREATE_FLAG_SCANOUT, cpu_caching=DRM_XE_GEM_CPU_CACHING_WB
        )
        == errno.EINVAL
    )


def test_gem_create_unknown_vm_id_is_enoent(dev: Device) -> None:
    """vm_id naming no VM of this file: ENOENT."""
    assert create_errno(dev, vm_id=12345) == errno.ENOENT


def test_gem_create_destroyed_vm_id_is_enoent(dev: Device) -> None:
    """vm_id of a VM this file destroyed: ENOENT."""
    vm = dev.vm_create()
    dev.vm_destroy(vm)
    assert create_errno(dev, vm_id=vm) == errno.ENOENT


def test_gem_create_other_files_vm_id_is_enoent(daemon: DaemonProcess, dev: Device) -> None:
    """vm_id of another connection's VM: ENOENT (VM ids are per file)."""
    with Device.open(daemon.socket_path) as other:
        other.vm_create()
        other.vm_create()
        other_vm = other.vm_create()
        assert create_errno(dev, vm_id=other_vm) == errno.ENOENT


def test_gem_create_einval_checks_come_before_vm_lookup(dev: Device) -> None:
    """A bad cpu_caching with an unknown vm_id is EINVAL, not ENOENT (the handler's order)."""
    assert create_errno(dev, placement=XE_PLACEMENT_VRAM0, cpu_caching=3, vm_id=999) == errno.EINVAL


def test_gem_create_vm_lookup_comes_before_allocation(dev: Device) -> None:
    """An unknown vm_id with a size no region holds is ENOENT, not ENOMEM."""
    assert create_errno(dev, size=1 << 50, vm_id=999) == errno.ENOENT


@pytest.mark.parametrize("size", [(1 << 40) + (1 << 32), 1 << 50, -(1 << 32) & (2**64 - 1)])
@pytest.mark.parametrize("placement", [XE_PLACEMENT_SYSMEM, XE_PLACEMENT_VRAM0])
def test_gem_create_beyond_the_mmap_offset_space_is_enospc(
    dev: Device, size: int, placement: int
) -> None:
    """A BO larger than the whole fake offset space (DRM_FILE_PAGE_OFFSET_SIZE, 1 TiB less
    256 pages) cannot get its mmap offset: ENOSPC in every region, before the placement
    is tried (IGT's create-massive-size asks 0xffffffff00000000 bytes); just under it,
    the region's ENOMEM. Nothing is created."""
    wc = DRM_XE_GEM_CPU_CACHING_WC
    assert create_errno(dev, size=size, placement=placement, cpu_caching=wc) == errno.ENOSPC
    space = ((0xFFFFFFFF >> 12) * 256) << 12
    assert create_errno(dev, size=space, placement=placement, cpu_caching=wc) == errno.ENOMEM
    assert create_errno(dev, size=space + PAGE_SIZE, cpu_caching=wc) == errno.ENOSPC


def test_gem_create_refusal_creates_nothing(dev: Device) -> None:
    """A refused GEM_CREATE consumes no handle id."""
    create_errno(dev, size=0)
    create_errno(dev, vm_id=77)
    assert create(dev) == 1


# --- GEM_CREATE: memory regions ---------------------------------------------------------------


def test_gem_create_larger_than_vram_is_enomem(make_daemon: Any) -> None:
    """A VRAM-only BO larger than all of VRAM: ENOMEM (TTM's ENOSPC). One larger than
    what is left is made, evicted to system memory (test_evict.py)."""
    d = make_daemon(SMALL_BAR)
    with Device.open(d.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        assert (
            create_errno(dev, size=MiB + PAGE_SIZE, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
            == errno.ENOMEM
        )
        create(dev, size=MiB, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
        create(dev, size=PAGE_SIZE, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
        assert regions(dev)[1].used == MiB


def test_gem_create_needs_visible_vram_beyond_visible_vram_is_enomem(make_daemon: Any) -> None:
    """On a small BAR a NEEDS_VISIBLE_VRAM BO larger than visible VRAM is ENOMEM; without
    the flag the same size fits VRAM."""
    d = make_daemon(SMALL_BAR)
    with Device.open(d.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        visible = DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
        size = 512 * 1024 + PAGE_SIZE
        assert (
            create_errno(
                dev, size=size, placement=XE_PLACEMENT_VRAM0, flags=visible, cpu_caching=wc
            )
            == errno.ENOMEM
        )
        create(dev, size=size, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
        assert regions(dev)[1].used == size


def test_gem_create_falls_back_to_system_memory(make_daemon: Any) -> None:
    """A BO that fits no VRAM but whose placement allows system memory lands there."""
    d = make_daemon(SMALL_BAR)
    with Device.open(d.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        before = regions(dev)
        create(dev, size=2 * MiB, placement=BOTH, cpu_caching=wc)
        after = regions(dev)
        assert after[1].used == before[1].used
        assert after[0].used == before[0].used + 2 * MiB
        # a small one still prefers VRAM
        create(dev, size=PAGE_SIZE, placement=BOTH, cpu_caching=wc)
        last = regions(dev)
        assert last[1].used == after[1].used + PAGE_SIZE
        assert last[0].used == after[0].used


def test_gem_create_needs_visible_vram_falls_back_to_system_memory(make_daemon: Any) -> None:
    """NEEDS_VISIBLE_VRAM beyond the small BAR, with system memory allowed, lands there."""
    d = make_daemon(SMALL_BAR)
    with Device.open(d.socket_path) as dev:
        before = regions(dev)
        create(
            dev,
            size=768 * 1024,
            placement=BOTH,
            flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
            cpu_caching=DRM_XE_GEM_CPU_CACHING_WC,
        )
        after = regions(dev)
        assert after[1].used == before[1].used
        assert after[1].cpu_visible_used == before[1].cpu_visible_used
        assert after[0].used == before[0].used + 768 * 1024


def test_gem_create_beyond_system_memory_is_enomem(make_daemon: Any) -> None:
    """System memory exhausted: ENOMEM, also when VRAM is allowed but full as well."""
    d = make_daemon(SMALL_SYSMEM)
    with Device.open(d.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        assert create_errno(dev, size=MiB + PAGE_SIZE) == errno.ENOMEM
        create(dev, size=MiB)
        assert create_errno(dev, size=PAGE_SIZE) == errno.ENOMEM
        create(dev, size=MiB, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
        assert create_errno(dev, size=PAGE_SIZE, placement=BOTH, cpu_caching=wc) == errno.ENOMEM


def test_gem_create_enomem_leaves_accounting_unchanged(make_daemon: Any) -> None:
    """A refused allocation charges no region."""
    d = make_daemon(SMALL_SYSMEM)
    with Device.open(d.socket_path) as dev:
        before = regions(dev)
        create_errno(dev, size=4 * MiB, placement=BOTH, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
        assert regions(dev) == before


def test_gem_create_and_close_move_used_bytes(fresh_daemon: DaemonProcess) -> None:
    """MEM_REGIONS used goes up by the BO size on create and back down on close."""
    with Device.open(fresh_daemon.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        start = regions(dev)
        sys_bo = create(dev, size=3 * PAGE_SIZE)
        vram_bo = create(dev, size=5 * PAGE_SIZE, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
        vis_bo = create(
            dev,
            size=2 * PAGE_SIZE,
            placement=XE_PLACEMENT_VRAM0,
            flags=DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
            cpu_caching=wc,
        )
        now = regions(dev)
        assert now[0].used == start[0].used + 3 * PAGE_SIZE
        assert now[1].used == start[1].used + 7 * PAGE_SIZE
        assert now[1].cpu_visible_used == start[1].cpu_visible_used + 2 * PAGE_SIZE
        dev.gem_close(vis_bo)
        now = regions(dev)
        assert now[1].used == start[1].used + 5 * PAGE_SIZE
        assert now[1].cpu_visible_used == start[1].cpu_visible_used
        dev.gem_close(sys_bo)
        dev.gem_close(vram_bo)
        assert regions(dev) == start


# --- GEM_CLOSE --------------------------------------------------------------------------------


def test_gem_close_unknown_handle_is_einval(dev: Device) -> None:
    """GEM_CLOSE of a handle this file never had: EINVAL."""
    with pytest.raises(XeError) as e:
        dev.gem_close(42)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(XeError) as e:
        dev.gem_close(0)
    assert e.value.errno == errno.EINVAL


def test_gem_close_twice_is_einval(dev: Device) -> None:
    """The second GEM_CLOSE of the same handle: EINVAL."""
    handle = create(dev)
    dev.gem_close(handle)
    with pytest.raises(XeError) as e:
        dev.gem_close(handle)
    assert e.value.errno == errno.EINVAL


def test_gem_close_other_files_handle_is_einval(daemon: DaemonProcess, dev: Device) -> None:
    """Handles are per file: closing another connection's handle is EINVAL and leaves it."""
    with Device.open(daemon.socket_path) as other:
        theirs = create(other)
        with pytest.raises(XeError) as e:
            dev.gem_close(theirs)
        assert e.value.errno == errno.EINVAL
        assert mmap_offset(other, handle=theirs)


def test_gem_close_nonzero_pad_is_accepted(dev: Device) -> None:
    """GEM_CLOSE does not check pad, as DRM does not: the handle is released."""
    handle = create(dev)
    dev.ioctl(Op.GEM_CLOSE, m.DrmGemClose(handle=handle, pad=0xDEADBEEF))
    with pytest.raises(XeError) as e:
        dev.gem_close(handle)
    assert e.value.errno == errno.EINVAL
