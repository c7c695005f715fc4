"""The library reads like the uAPI it stands in for: buffers, every field, uAPI names."""

from __future__ import annotations

import errno
import mmap
import os
import struct
import subprocess
import sys

import pytest
from helpers import errno_of

from clients import Device, Mapping
from clients.daemon import DaemonProcess
from protocols.constants import PAGE_SIZE, XE_PLACEMENT_SYSMEM, XE_PLACEMENT_VRAM0


def test_a_mapping_is_a_buffer(dev: Device) -> None:
    """struct.pack_into, memoryview and bytes() take a Mapping as they take an mmap; the
    device sees what they wrote."""
    bo = dev.gem_create(PAGE_SIZE)
    with dev.mmap_bo(bo) as cpu:
        assert isinstance(cpu, mmap.mmap) and len(cpu) == PAGE_SIZE
        struct.pack_into("<II", cpu, 8, 0xC0FFEE, 0xBEEF)
        assert cpu.read_u32(8) == 0xC0FFEE and cpu.read_u32(12) == 0xBEEF
        view = memoryview(cpu)
        view[0:4] = b"view"
        view.release()
        assert bytes(cpu[0:4]) == b"view"
        assert struct.unpack_from("<I", cpu, 12) == (0xBEEF,)
    assert cpu.closed
    dev.gem_close(bo)


def test_a_mapping_closes_with_its_word_views_alive(dev: Device) -> None:
    """close() lets go of the views read_u32/write_u32 use: no BufferError, and the
    mapping is unmapped (its address no longer in /proc/self/maps)."""
    bo = dev.gem_create(PAGE_SIZE)
    cpu = dev.mmap_bo(bo)
    cpu.write_u64(0, 7)
    start = f"{cpu.address:x}-"
    cpu.close()
    with open("/proc/self/maps") as maps:
        assert not any(line.startswith(start) for line in maps)
    dev.gem_close(bo)


def test_a_read_only_mapping_refuses_python_writes(dev: Device) -> None:
    """A PROT_READ mapping is a read-only buffer: a write raises TypeError, no fault."""
    bo = dev.gem_create(PAGE_SIZE)
    with dev.mmap(dev.gem_mmap_offset(bo), PAGE_SIZE, prot=mmap.PROT_READ) as ro:
        with pytest.raises(TypeError):
            ro[0:4] = b"nope"
        assert ro[0:4] == bytes(4)
    dev.gem_close(bo)


def test_must_be_zero_fields_reach_the_daemon(dev: Device) -> None:
    """gem_mmap_offset takes extensions and reserved, vm_export pad, pad1 and reserved:
    each non-zero is the kernel's EINVAL, without building records by hand."""
    bo = dev.gem_create(PAGE_SIZE)
    vm = dev.vm_create()
    assert errno_of(lambda: dev.gem_mmap_offset(bo, extensions=1)) == errno.EINVAL
    assert errno_of(lambda: dev.gem_mmap_offset(bo, reserved=(0, 1))) == errno.EINVAL
    for fields in ({"pad": 1}, {"pad1": 1}, {"reserved": (1, 0)}):
        assert errno_of(dev.vm_export, vm, **fields) == errno.EINVAL, fields
    os.close(dev.vm_export(vm))  # and all zero: the export
    dev.gem_close(bo)  # the VM goes with the connection


def test_uapi_names_and_their_deprecated_spellings(dev: Device) -> None:
    """gem_create(vm_id=) and vm_bind/vm_unbind(size=) as the uAPI and IGT name them; the
    old vm= and range= still work, with a DeprecationWarning."""
    vm = dev.vm_create()
    private = dev.gem_create(PAGE_SIZE, vm_id=vm)
    dev.vm_bind(vm, private, 0x100000, size=PAGE_SIZE)
    dev.vm_unbind(vm, 0x100000, size=PAGE_SIZE)
    with pytest.deprecated_call():
        old = dev.gem_create(PAGE_SIZE, vm=vm)
    with pytest.deprecated_call():
        dev.vm_bind(vm, old, 0x200000, range=PAGE_SIZE)
    with pytest.deprecated_call():
        dev.vm_unbind(vm, 0x200000, range=PAGE_SIZE)
    with pytest.raises(TypeError):
        dev.vm_bind(vm, old, 0x200000, ragne=PAGE_SIZE)  # a typo is not taken for range
    for handle in (private, old):
        dev.gem_close(handle)
    dev.vm_destroy(vm)


_MAP_KEPT = """\
import mmap, sys
fd, offset, length = (int(a) for a in sys.argv[1:])
with mmap.mmap(fd, length, mmap.MAP_SHARED, offset=offset) as mm:
    print(mm[0:5].decode())
"""


def test_the_mmap_descriptor_can_be_kept_and_passed_on(dev: Device) -> None:
    """mmap_fd() hands over MMAP's descriptor to keep: mapped later, in another process,
    it is the BO's memory."""
    bo = dev.gem_create(PAGE_SIZE)
    with dev.mmap_bo(bo) as cpu:
        cpu[0:5] = b"kept!"
    fd, offset, length = dev.mmap_fd(dev.gem_mmap_offset(bo), PAGE_SIZE)
    try:
        assert length == PAGE_SIZE
        done = subprocess.run(
            [sys.executable, "-c", _MAP_KEPT, str(fd), str(offset), str(length)],
            pass_fds=[fd], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.stdout.strip() == "kept!", done.stderr
    finally:
        os.close(fd)
    dev.gem_close(bo)


def test_placement_and_alignment_by_name(dev: Device) -> None:
    """placement() names regions as the uAPI numbers them ("system" bit 0, "vram0" bit 1,
    "vram" every VRAM region); alignment() is their largest min_page_size."""
    assert dev.placement("system") == XE_PLACEMENT_SYSMEM
    assert dev.placement("vram0") == XE_PLACEMENT_VRAM0
    assert dev.placement("vram") == XE_PLACEMENT_VRAM0
    assert dev.placement("system", "vram0") == XE_PLACEMENT_SYSMEM | XE_PLACEMENT_VRAM0
    with pytest.raises(KeyError):
        dev.placement("vram7")
    assert dev.alignment() == PAGE_SIZE
    assert dev.alignment(dev.placement("vram")) == PAGE_SIZE


def test_alignment_follows_a_64k_page_host(make_daemon: type[DaemonProcess]) -> None:
    """With [device] page_size = 65536 every region's alignment is 64 KiB."""
    daemon = make_daemon("[device]\npage_size = 65536\n")
    with Device.open(daemon.socket_path) as dev:
        assert dev.alignment(dev.placement("system", "vram")) == 65536


def test_mapping_is_exported_by_the_package() -> None:
    """`from clients import Mapping` names the class mappings are."""
    assert Mapping.__mro__[1] is mmap.mmap
