"""A host with 64 KiB pages, emulated ([device] page_size = 65536): the PCI barrier page
is refused (EINVAL, so that user space falls back to the ioctl path) and every rule that
follows the kernel's PAGE_SIZE follows it (GEM_CREATE sizes, VM_BIND alignment, mmap
offsets and lengths, min_page_size, host memory, MMIO regions). The memfds and the
mappings on the real 4 KiB host stay as they are.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER,
    DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    XE_BAR0_DOORBELL_OFFSET,
    XE_BAR0_INFO_OFFSET,
    XE_BAR0_INFO_SIZE,
    XE_PCI_BARRIER_MMAP_OFFSET,
    Query,
)
from tests.helpers import errno_of
from xed.config import ConfigError, DeviceConfig

SZ_4K = 4096
SZ_64K = 65536
VA = 0x1_0000_0000
PAGE_64K = "[device]\npage_size = 65536\n"


@pytest.fixture
def big(make_daemon: Any) -> DaemonProcess:
    """A daemon emulating a 64 KiB-page host."""
    daemon: DaemonProcess = make_daemon(PAGE_64K)
    return daemon


@pytest.fixture
def dev64(big: DaemonProcess) -> Iterator[Device]:
    with Device.open(big.socket_path) as dev:
        yield dev


def mmap_errno(dev: Device, offset: int, length: int, prot: int = PROT_READ | PROT_WRITE) -> int:
    return errno_of(
        dev.ioctl, Op.MMAP, m.XedMmap(offset=offset, length=length, prot=prot, flags=MAP_SHARED)
    )


def bind_errno(dev: Device, vm: int, bo: int, addr: int, range_: int, obj_offset: int = 0) -> int:
    op = m.DrmXeVmBindOp(
        obj=bo, obj_offset=obj_offset, range=range_, addr=addr, op=DRM_XE_VM_BIND_OP_MAP
    )
    return errno_of(dev.vm_bind_ops, vm, [op])


# --- the configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 8192, 16384, 1 << 21])
def test_page_size_other_than_4k_or_64k_refused(size: int) -> None:
    """[device] page_size other than 4096 or 65536 (0, 8 KiB, 16 KiB, 2 MiB): ConfigError."""
    with pytest.raises(ConfigError):
        DeviceConfig(page_size=size)


def test_64k_page_needs_64k_multiples_of_memory() -> None:
    """With 64 KiB pages, a region size that is not a multiple of 64 KiB: ConfigError."""
    assert DeviceConfig(page_size=SZ_64K).page_size == SZ_64K
    with pytest.raises(ConfigError):
        DeviceConfig(page_size=SZ_64K, system_memory=(1 << 30) + SZ_4K)


# --- the barrier page is refused --------------------------------------------------------------


def test_64k_pci_barrier_offset_einval(dev64: Device) -> None:
    """GEM_MMAP_OFFSET with PCI_BARRIER and handle 0 on a 64 KiB host: EINVAL."""
    assert errno_of(dev64.gem_mmap_offset, 0, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER) == errno.EINVAL
    assert errno_of(dev64.pci_barrier) == errno.EINVAL  # the library's barrier too


@pytest.mark.parametrize("length", [SZ_4K, SZ_64K])
def test_64k_pci_barrier_mmap_einval(dev64: Device, length: int) -> None:
    """MMAP of the barrier offset (known from a 4 KiB host) on a 64 KiB host: EINVAL."""
    assert mmap_errno(dev64, XE_PCI_BARRIER_MMAP_OFFSET, length, PROT_WRITE) == errno.EINVAL


def test_4k_pci_barrier_still_offered(dev: Device) -> None:
    """The default 4 KiB daemon keeps the barrier offset."""
    assert dev.gem_mmap_offset(0, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER) == XE_PCI_BARRIER_MMAP_OFFSET


# --- GEM_CREATE, VM_BIND ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SZ_4K, 0x8000, SZ_64K + SZ_4K])
def test_64k_gem_create_unaligned_size_einval(dev64: Device, size: int) -> None:
    """GEM_CREATE of a size that is 4 KiB but not 64 KiB aligned: EINVAL."""
    assert errno_of(dev64.gem_create, size) == errno.EINVAL


def test_64k_gem_create_aligned_size_works(dev64: Device) -> None:
    """GEM_CREATE of 64 KiB and 128 KiB works, and maps."""
    for size in (SZ_64K, 2 * SZ_64K):
        handle = dev64.gem_create(size)
        with dev64.mmap_bo(handle) as cpu:
            cpu[size - 4 : size] = b"last"
            assert bytes(cpu[size - 4 : size]) == b"last"


@pytest.mark.parametrize(
    "addr, range_, obj_offset",
    [(VA + SZ_4K, SZ_64K, 0), (VA, SZ_4K, 0), (VA, SZ_64K, SZ_4K)],
    ids=["addr", "range", "obj_offset"],
)
def test_64k_vm_bind_unaligned_einval(
    dev64: Device, addr: int, range_: int, obj_offset: int
) -> None:
    """VM_BIND with addr, range or obj_offset 4 KiB but not 64 KiB aligned: EINVAL."""
    vm = dev64.vm_create()
    bo = dev64.gem_create(2 * SZ_64K)
    assert bind_errno(dev64, vm, bo, addr, range_, obj_offset) == errno.EINVAL
    dev64.vm_bind(vm, bo, VA + SZ_64K, SZ_64K, obj_offset=SZ_64K)  # aligned: bound


def test_64k_userptr_bind_and_host_memory_follow_the_page(dev64: Device) -> None:
    """Host memory of 4 KiB: EINVAL; a MAP_USERPTR at a 4 KiB-aligned address: EINVAL."""
    assert errno_of(dev64.host_memory, SZ_4K) == errno.EINVAL
    host = dev64.host_memory(2 * SZ_64K)
    vm = dev64.vm_create()
    op = m.DrmXeVmBindOp(
        obj_offset=host.user_address(SZ_4K), range=SZ_64K, addr=VA, op=DRM_XE_VM_BIND_OP_MAP_USERPTR
    )
    assert errno_of(dev64.vm_bind_ops, vm, [op]) == errno.EINVAL
    dev64.vm_bind_userptr(vm, host, SZ_64K, VA, SZ_64K)


# --- mmap ---------------------------------------------------------------------------------------


def test_64k_mmap_offsets_are_64k_aligned(dev64: Device) -> None:
    """Fake offsets of BOs of a 64 KiB host are 64 KiB aligned; one 4 KiB in: EINVAL."""
    offsets = [dev64.gem_mmap_offset(dev64.gem_create(SZ_64K)) for _ in range(3)]
    assert [o % SZ_64K for o in offsets] == [0, 0, 0]
    assert mmap_errno(dev64, offsets[0] + SZ_4K, SZ_4K) == errno.EINVAL


def test_64k_mmap_length_is_rounded_to_the_page(dev64: Device) -> None:
    """MMAP of 4 KiB of a 64 KiB BO works (mmap maps the whole page); 64 KiB + 1 byte
    of it is two pages: EINVAL."""
    handle = dev64.gem_create(SZ_64K)
    offset = dev64.gem_mmap_offset(handle)
    with dev64.mmap(offset, SZ_4K) as cpu:
        cpu[0:2] = b"ok"
    assert mmap_errno(dev64, offset, SZ_64K + 1) == errno.EINVAL


def test_4k_mmap_length_is_rounded_to_the_page(dev: Device) -> None:
    """On a 4 KiB host, MMAP of 4 KiB + 1 byte of an 8 KiB BO works; of a 4 KiB BO: EINVAL."""
    offset = dev.gem_mmap_offset(dev.gem_create(2 * SZ_4K))
    dev.mmap(offset, SZ_4K + 1).close()
    assert mmap_errno(dev, dev.gem_mmap_offset(dev.gem_create(SZ_4K)), SZ_4K + 1) == errno.EINVAL


def test_64k_dma_buf_mmap_follows_the_page(dev64: Device) -> None:
    """dma-buf mmap at a 4 KiB offset of a 64 KiB host: EINVAL; past the end once
    rounded: EINVAL; at 0 for 4 KiB: works."""
    fd = dev64.prime_handle_to_fd(dev64.gem_create(2 * SZ_64K))
    try:
        assert errno_of(dev64.dmabuf_mmap, fd, SZ_4K, offset=SZ_4K) == errno.EINVAL
        assert errno_of(dev64.dmabuf_mmap, fd, SZ_4K, offset=2 * SZ_64K - SZ_4K) == errno.EINVAL
        dev64.dmabuf_mmap(fd, SZ_4K).close()
    finally:
        os.close(fd)


# --- queries, MMIO regions ---------------------------------------------------------------------


def test_64k_mem_regions_min_page_size(dev64: Device) -> None:
    """MEM_REGIONS reports min_page_size 65536 for every region (PAGE_SIZE in xe);
    CONFIG's MIN_ALIGNMENT stays the GPU's 4 KiB."""
    regions = dev64.mem_regions()
    assert len(regions) == 2
    assert [r.min_page_size for r in regions] == [SZ_64K, SZ_64K]
    assert dev64.query(Query.CONFIG).config[DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT] == SZ_4K


def test_64k_mmio_regions_none_exposable(dev64: Device) -> None:
    """On a 64 KiB host the 4 KiB register blocks are not page aligned: the query lists
    no region, and opening the info block or a doorbell page: EINVAL."""
    assert dev64.mmio_regions() == ()
    blocks = ((XE_BAR0_INFO_OFFSET, XE_BAR0_INFO_SIZE), (XE_BAR0_DOORBELL_OFFSET, SZ_4K))
    for offset, size in blocks:
        args = m.DrmXeMmioRegionOpen(bar_offset=offset, size=size)
        assert errno_of(dev64.ioctl, Op.XE_MMIO_REGION_OPEN, args) == errno.EINVAL


def test_64k_refusals_leave_the_daemon_serving(dev64: Device, big: DaemonProcess) -> None:
    """After every refusal above, the 64 KiB daemon still answers other clients."""
    assert errno_of(dev64.gem_create, SZ_4K) == errno.EINVAL
    with Device.open(big.socket_path) as other:
        assert other.version().name
        with pytest.raises(XeError):
            other.pci_barrier()
