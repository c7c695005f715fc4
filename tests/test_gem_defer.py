"""GEM_CREATE with DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING: no region is charged until the
BO's first use (a MAP bind, a CPU mapping, a PRIME export), where xe's ttm_bo_validate
backs it: the first region of its placement with room, VRAM first. A bind that finds
none evicts other BOs, but an LR-mode VM's bind not its own: ENOMEM, as IGT's xe_vm
out-of-memory expects; a CPU mapping or an export that finds none is backed evicted, in
system memory (test_evict.py has the rest of eviction).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from clients import Device, XeError
from protocols.constants import (
    DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING,
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
)
from tests.sandbox import wait_until
from tests.test_gem import BOTH, SMALL_BAR, MiB, regions

DEFER = DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING
VISIBLE = DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
VA = 0x100000
LR = DRM_XE_VM_CREATE_FLAG_LR_MODE


def vram_used(dev: Device) -> tuple[int, int]:
    vram = regions(dev)[1]
    return vram.used, vram.cpu_visible_used


def refused(call: Any, *args: Any) -> int:
    with pytest.raises(XeError) as e:
        call(*args)
    return e.value.errno


@pytest.fixture
def small(make_daemon: Any) -> Any:
    """A device with 1 MiB of VRAM, 512 KiB of it CPU-visible."""
    d = make_daemon(SMALL_BAR)
    with Device.open(d.socket_path) as dev:
        yield dev


def test_deferred_bos_charge_nothing_when_made(small: Device) -> None:
    """Deferred VRAM BOs past all of VRAM are made; no region is charged for them."""
    before = regions(small)
    for _ in range(4):
        small.gem_create(MiB, placement=XE_PLACEMENT_VRAM0, flags=DEFER | VISIBLE)
    assert regions(small) == before
    # without the flag the same request is refused at once
    assert refused(small.gem_create, 2 * MiB, XE_PLACEMENT_VRAM0) == errno.ENOMEM


def test_bind_backs_and_is_enomem_once_vram_is_full(small: Device) -> None:
    """A MAP bind backs the BO (VRAM used grows by its size); in an LR-mode VM, whose
    own BOs its binds do not evict, a bind of one that fits no region now is ENOMEM,
    binds nothing and charges nothing; once room is made, it binds."""
    vm = small.vm_create(LR)
    first = small.gem_create(768 * 1024, placement=XE_PLACEMENT_VRAM0, flags=DEFER)
    second = small.gem_create(512 * 1024, placement=XE_PLACEMENT_VRAM0, flags=DEFER)
    small.vm_bind(vm, first, VA)
    assert vram_used(small) == (768 * 1024, 0)
    small.vm_bind(vm, first, VA + MiB)  # bound twice, backed once
    assert vram_used(small) == (768 * 1024, 0)
    assert refused(small.vm_bind, vm, second, VA + 4 * MiB) == errno.ENOMEM
    assert vram_used(small) == (768 * 1024, 0)
    small.vm_unbind(vm, VA, 768 * 1024)
    small.vm_unbind(vm, VA + MiB, 768 * 1024)
    small.gem_close(first)
    assert vram_used(small) == (0, 0)
    small.vm_bind(vm, second, VA + 4 * MiB)  # the same address: the refusal bound nothing
    assert vram_used(small) == (512 * 1024, 0)


def test_needs_visible_vram_is_backed_in_the_bar(small: Device) -> None:
    """NEEDS_VISIBLE_VRAM counts against the CPU-visible part when backed: past it an LR
    VM's bind is ENOMEM on a VRAM-only placement, and lands in system memory on a
    placement that allows it."""
    vm = small.vm_create(LR)
    a = small.gem_create(384 * 1024, placement=XE_PLACEMENT_VRAM0, flags=DEFER | VISIBLE)
    b = small.gem_create(384 * 1024, placement=XE_PLACEMENT_VRAM0, flags=DEFER | VISIBLE)
    c = small.gem_create(384 * 1024, placement=BOTH, flags=DEFER | VISIBLE)
    small.vm_bind(vm, a, VA)
    assert vram_used(small) == (384 * 1024, 384 * 1024)
    assert refused(small.vm_bind, vm, b, VA + MiB) == errno.ENOMEM
    sysmem = regions(small)[0].used
    small.vm_bind(vm, c, VA + 2 * MiB)
    assert vram_used(small) == (384 * 1024, 384 * 1024)
    assert regions(small)[0].used == sysmem + 384 * 1024


def test_cpu_mapping_backs_it_in_vram_or_evicted(small: Device) -> None:
    """MMAP of a deferred BO backs it (and maps its pages); one that fits no region of
    its placement now is backed evicted, in system memory, and maps all the same."""
    a = small.gem_create(512 * 1024, placement=XE_PLACEMENT_VRAM0, flags=DEFER | VISIBLE)
    b = small.gem_create(4096, placement=XE_PLACEMENT_VRAM0, flags=DEFER | VISIBLE)
    with small.mmap_bo(a) as view:
        view[:4] = b"\x01\x02\x03\x04"
        assert view[:4] == b"\x01\x02\x03\x04"
    assert vram_used(small) == (512 * 1024, 512 * 1024)
    system = regions(small)[0].used
    with small.mmap_bo(b) as view:
        view[:4] = b"\x05\x06\x07\x08"
        assert view[:4] == b"\x05\x06\x07\x08"
    assert vram_used(small) == (512 * 1024, 512 * 1024)
    assert regions(small)[0].used == system + 4096


def test_export_backs_it_and_closing_gives_it_back(small: Device) -> None:
    """PRIME_HANDLE_TO_FD backs a deferred BO (an importer may map it at once), in
    system memory if VRAM is full; closing a backed BO gives its bytes back, an
    unbacked one changes nothing."""
    a = small.gem_create(MiB, placement=XE_PLACEMENT_VRAM0, flags=DEFER)
    b = small.gem_create(4096, placement=XE_PLACEMENT_VRAM0, flags=DEFER)
    c = small.gem_create(4096, placement=XE_PLACEMENT_VRAM0, flags=DEFER)
    system = regions(small)[0].used
    fd = small.prime_handle_to_fd(a)
    os.close(fd)
    assert vram_used(small) == (MiB, 0)
    os.close(small.prime_handle_to_fd(b))
    assert regions(small)[0].used == system + 4096
    small.gem_close(c)
    small.gem_close(b)
    wait_until(lambda: regions(small)[0].used == system, 10, "the exported BO freed")
    small.gem_close(a)  # the dma-buf goes once the daemon reads its last close
    wait_until(lambda: vram_used(small) == (0, 0), 10, "the exported BO freed")


def test_system_memory_deferred_bo_is_backed_at_bind(small: Device) -> None:
    """A deferred system-memory BO is charged to system memory at its bind, not before."""
    vm = small.vm_create()
    before = regions(small)[0].used
    bo = small.gem_create(MiB, placement=XE_PLACEMENT_SYSMEM, flags=DEFER)
    assert regions(small)[0].used == before
    small.vm_bind(vm, bo, VA)
    assert regions(small)[0].used == before + MiB
