"""TTM's eviction, as xed keeps it (xed/device/residency.py): VRAM past its room makes
BOs evicted to system memory rather than refused; a bind brings its BO back, evicting
the least recently used; EXEC brings back its VM's evicted BOs, evicting other VMs'
only; an LR-mode VM's bind never evicts that VM's own BOs; a VM in page-fault mode
needs no room; PREFETCH moves a BO's charge. What is charged where is read from the
memory-region query, as a user with perfmon rights would.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from conftest import baseline
from test_lifecycle import wait_for_baseline

from clients import Batch, Device
from protocols import messages as m
from protocols.constants import (
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_VM_BIND_OP_PREFETCH,
    DRM_XE_VM_CREATE_FLAG_FAULT_MODE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    PAGE_SIZE,
    XE_PLACEMENT_VRAM0,
)
from tests.helpers import Gpu, errno_of
from tests.test_gem import BOTH, SMALL_BAR, SMALL_SYSMEM, MiB, regions

HALF = 512 * 1024  # half of the 1 MiB of VRAM (of SMALL_BAR: all of its visible part)
FULL_BAR = """\
[device]
vram_size = 1048576
visible_vram_size = 1048576
"""
VA = 0x20_0000_0000
LR = DRM_XE_VM_CREATE_FLAG_LR_MODE
VISIBLE = DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM


def used(dev: Device) -> tuple[int, int, int]:
    """(system memory, VRAM, CPU-visible VRAM) charged."""
    found = regions(dev)
    return found[0].used, found[1].used, found[1].cpu_visible_used


def vram_bo(dev: Device, size: int = HALF, flags: int = 0) -> int:
    return dev.gem_create(size, placement=XE_PLACEMENT_VRAM0, flags=flags)


@pytest.fixture
def small(make_daemon: Any) -> Any:
    """A device with 1 MiB of VRAM, half of it CPU-visible; the test leaves nothing
    behind in the daemon."""
    d = make_daemon(SMALL_BAR)
    before = baseline(d)
    with Device.open(d.socket_path) as dev:
        yield dev
    assert wait_for_baseline(d, before) == before


@pytest.fixture
def full(make_daemon: Any) -> Any:
    """A device with 1 MiB of VRAM, all of it CPU-visible (the CPU maps every BO)."""
    d = make_daemon(FULL_BAR)
    before = baseline(d)
    with Device.open(d.socket_path) as dev:
        yield dev
    assert wait_for_baseline(d, before) == before


def test_vram_only_bo_past_vram_is_made_evicted(small: Device) -> None:
    """Past VRAM's room a VRAM-only BO is made, charged to system memory; one larger
    than VRAM itself, or than CPU-visible VRAM with NEEDS_VISIBLE_VRAM, is ENOMEM."""
    system, _, _ = used(small)
    vram_bo(small, MiB)
    assert used(small) == (system, MiB, 0)
    vram_bo(small, HALF)
    assert used(small) == (system + HALF, MiB, 0)
    assert errno_of(vram_bo, small, MiB + PAGE_SIZE) == errno.ENOMEM
    assert errno_of(vram_bo, small, HALF + PAGE_SIZE, VISIBLE) == errno.ENOMEM
    vram_bo(small, HALF, VISIBLE)
    assert used(small) == (system + MiB, MiB, 0)


def test_past_vram_and_system_memory_is_enomem(make_daemon: Any) -> None:
    """With system memory full too, there is nowhere to evict to: ENOMEM."""
    d = make_daemon(SMALL_SYSMEM)
    with Device.open(d.socket_path) as dev:
        system, vram, _ = used(dev)
        dev.gem_create(MiB - system)  # all of system memory
        vram_bo(dev, MiB)
        assert errno_of(vram_bo, dev, PAGE_SIZE) == errno.ENOMEM


def test_bind_evicts_the_least_recently_used(full: Device) -> None:
    """A bind of an evicted BO brings it into VRAM and evicts the BO least recently
    bound; in a VM not in LR mode, its own BOs too (allow_res_evict)."""
    vm = full.vm_create()
    a, b, c = vram_bo(full), vram_bo(full), vram_bo(full)  # c: made evicted
    system, _, _ = used(full)
    full.vm_bind(vm, a, VA)
    full.vm_bind(vm, b, VA + MiB)
    full.vm_bind(vm, c, VA + 2 * MiB)  # a goes
    assert used(full) == (system, MiB, 0)
    full.vm_bind(vm, a, VA + 3 * MiB)  # a comes back, b (least recently used) goes
    full.vm_unbind(vm, VA + 3 * MiB, HALF)
    full.vm_bind(vm, b, VA + 3 * MiB)  # b back: c went, not a, used after it
    full.vm_unbind(vm, VA + 3 * MiB, HALF)
    assert used(full) == (system, MiB, 0)


def test_visible_bos_evict_visible_ones(small: Device) -> None:
    """A NEEDS_VISIBLE_VRAM BO brought into a full CPU-visible part evicts a visible BO,
    not one outside the BAR that frees none of it."""
    vm = small.vm_create()
    hidden, shown = vram_bo(small), vram_bo(small, flags=VISIBLE)
    late = vram_bo(small, PAGE_SIZE, VISIBLE)  # made evicted: the visible part is full
    system, _, _ = used(small)
    assert used(small)[1:] == (MiB, HALF)
    small.vm_bind(vm, hidden, VA)
    small.vm_bind(vm, shown, VA + MiB)
    small.vm_bind(vm, late, VA + 2 * MiB)
    assert used(small) == (system - PAGE_SIZE + HALF, HALF + PAGE_SIZE, PAGE_SIZE)


def test_exec_brings_the_vm_back_or_is_enomem(full: Device) -> None:
    """EXEC validates every evicted BO bound in its VM, evicting other VMs' BOs only:
    a VM whose BOs alone outgrow VRAM is ENOMEM at EXEC; once one is unbound, EXEC
    runs, and the stores reach the BOs whose pages went through system memory."""
    gpu = Gpu(full)
    other = full.vm_create()
    a, b, c = vram_bo(full), vram_bo(full), vram_bo(full)
    full.vm_bind(gpu.vm, a, VA)
    full.vm_bind(gpu.vm, b, VA + MiB)
    with full.mmap_bo(a) as view:
        view[:8] = b"evicted!"
    full.vm_bind(gpu.vm, c, VA + 2 * MiB)  # a evicted: a, b and c outgrow VRAM
    store = Batch().store_dword(VA + 8, 0xC0FFEE).end()
    assert errno_of(gpu.submit, store) == errno.ENOMEM
    full.vm_unbind(gpu.vm, VA + 2 * MiB, HALF)
    full.vm_bind(other, c, VA)  # c is another VM's now: EXEC may evict it
    gpu.run(store)
    with full.mmap_bo(a) as view:
        assert bytes(view[:8]) == b"evicted!"
        assert int.from_bytes(view[8:12], "little") == 0xC0FFEE
    gpu.close()


def test_lr_vm_keeps_its_own_and_others_give_way(full: Device) -> None:
    """An LR-mode VM's bind past VRAM is ENOMEM while VRAM holds only its own BOs (IGT's
    overcommit-nonfault-vram-lr-*); another LR VM's bind evicts them, and the first
    VM's next EXEC brings them back, evicting the other's."""
    gpu = Gpu(full, LR)
    other = full.vm_create(LR)
    a, b, c = vram_bo(full), vram_bo(full), vram_bo(full)
    full.vm_bind(gpu.vm, a, VA)
    full.vm_bind(gpu.vm, b, VA + MiB)
    assert errno_of(full.vm_bind, gpu.vm, c, VA + 2 * MiB) == errno.ENOMEM
    system, _, _ = used(full)
    full.vm_bind(other, c, VA)  # evicts a, the least recently used
    assert used(full) == (system, MiB, 0)
    gpu.run(Batch().store_dword(VA + 4, 7).end())  # a back, c evicted
    full.vm_unbind(other, VA, HALF)
    assert errno_of(full.vm_bind, gpu.vm, c, VA + 2 * MiB) == errno.ENOMEM
    with full.mmap_bo(a) as view:
        assert int.from_bytes(view[4:8], "little") == 7
    gpu.close()


def test_fault_mode_binds_past_vram(full: Device) -> None:
    """A VM in page-fault mode needs no room: its binds past VRAM are made (the BO that
    finds none counts in system memory), its EXEC validates nothing, and the stores
    reach every BO."""
    gpu = Gpu(full, LR | DRM_XE_VM_CREATE_FLAG_FAULT_MODE)
    bos = [vram_bo(full) for _ in range(3)]
    for i, bo in enumerate(bos):
        full.vm_bind(gpu.vm, bo, VA + i * MiB)
    batch = Batch()
    for i in range(3):
        batch.store_dword(VA + i * MiB, 0xF00 + i)
    gpu.run(batch.end())
    for i, bo in enumerate(bos):
        with full.mmap_bo(bo) as view:
            assert int.from_bytes(view[:4], "little") == 0xF00 + i
    gpu.close()


def test_prefetch_moves_a_bo_between_its_regions(full: Device) -> None:
    """PREFETCH charges the BOs in its range to its region, if their placement has it:
    to system memory and back; to a VRAM an LR VM's own BOs fill, ENOMEM."""
    vm = full.vm_create(LR)
    both = full.gem_create(HALF, placement=BOTH)
    full.vm_bind(vm, both, VA)
    system, _, _ = used(full)
    assert used(full) == (system, HALF, 0)
    full.vm_bind_ops(vm, [prefetch(VA, HALF, 0)])
    assert used(full) == (system + HALF, 0, 0)
    full.vm_bind(vm, vram_bo(full, MiB), VA + MiB)  # the VM's own: VRAM is full
    assert errno_of(full.vm_bind_ops, vm, [prefetch(VA, HALF, 1)]) == errno.ENOMEM
    full.vm_unbind(vm, VA + MiB, MiB)
    full.vm_bind_ops(vm, [prefetch(VA, HALF, 1)])
    assert used(full)[1] == HALF


def prefetch(addr: int, size: int, region: int) -> m.DrmXeVmBindOp:
    return m.DrmXeVmBindOp(
        op=DRM_XE_VM_BIND_OP_PREFETCH, addr=addr, range=size, prefetch_mem_region_instance=region
    )
