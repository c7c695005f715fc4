"""Mapping GEM objects: XE_GEM_MMAP_OFFSET, checked as xe checks it, and whether the CPU
reaches a BO through the mapping, which depends on where the BO lives (VRAM outside a
small BAR faults SIGBUS, as on hardware). Creating and closing BOs is in test_gem.py,
whose helpers these tests use.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import itertools
import os
import resource
import signal
import subprocess
import sys
from typing import Any

import pytest
from test_gem import BOTH, MiB, create, mmap_offset

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_GEM_CPU_CACHING_WC,
    DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM,
    DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER,
    PAGE_SIZE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
)

# --- GEM_MMAP_OFFSET --------------------------------------------------------------------------


def test_gem_mmap_offset_unknown_handle_is_enoent(dev: Device) -> None:
    """MMAP_OFFSET of a handle this file does not hold: ENOENT."""
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=7)
    assert e.value.errno == errno.ENOENT


def test_gem_mmap_offset_closed_handle_is_enoent(dev: Device) -> None:
    """MMAP_OFFSET after GEM_CLOSE of the handle: ENOENT."""
    handle = create(dev)
    dev.gem_close(handle)
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=handle)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("flags", [DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER, 1 << 1, 1 << 31])
def test_gem_mmap_offset_flags_is_einval(dev: Device, flags: int) -> None:
    """Any flag, PCI_BARRIER (bit 0) included, is EINVAL for a BO handle."""
    handle = create(dev)
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=handle, flags=flags)
    assert e.value.errno == errno.EINVAL


def test_gem_mmap_offset_flags_checked_before_handle(dev: Device) -> None:
    """Unknown flags with an unknown handle: EINVAL, not ENOENT (flags come first)."""
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=99, flags=1 << 1)
    assert e.value.errno == errno.EINVAL


def test_gem_mmap_offset_nonzero_extensions_is_einval(dev: Device) -> None:
    """extensions non-zero: EINVAL."""
    handle = create(dev)
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=handle, extensions=1)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("reserved", [(1, 0), (0, 1)])
def test_gem_mmap_offset_nonzero_reserved_is_einval(dev: Device, reserved: tuple[int, ...]) -> None:
    """reserved[] non-zero: EINVAL."""
    handle = create(dev)
    with pytest.raises(XeError) as e:
        mmap_offset(dev, handle=handle, reserved=reserved)
    assert e.value.errno == errno.EINVAL


def test_gem_mmap_offset_is_stable_for_a_bo(dev: Device) -> None:
    """Asking twice for the same BO's offset gives the same page-aligned offset."""
    handle = create(dev, size=4 * PAGE_SIZE)
    first = mmap_offset(dev, handle=handle)
    assert first == mmap_offset(dev, handle=handle)
    assert first % PAGE_SIZE == 0
    assert first != 0


def test_gem_mmap_offset_differs_between_bos(dev: Device) -> None:
    """Different BOs have different offsets whose ranges do not overlap."""
    sizes = [PAGE_SIZE, 3 * PAGE_SIZE, PAGE_SIZE, 2 * PAGE_SIZE]
    spans = []
    for size in sizes:
        handle = create(dev, size=size)
        offset = mmap_offset(dev, handle=handle)
        spans.append((offset, offset + size))
    spans.sort()
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert len({start for start, _ in spans}) == len(sizes)


# --- CPU visibility: VRAM outside a small BAR ---------------------------------------------------

FULL_BAR = """\
[device]
vram_size = 1048576
visible_vram_size = 1048576
"""

# a program that maps the descriptor it is given and stores to it, as C does: mmap(2)
# succeeds, the store faults where the kernel's fault handler answers SIGBUS
_TOUCH = """\
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd, length = int(sys.argv[1]), int(sys.argv[2])
address = libc.mmap(None, length, 2, 1, fd, 0)  # PROT_WRITE, MAP_SHARED
assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
ctypes.memset(address, 0xAB, 4)
print("stored")
"""


def touch(fd: int, length: int) -> int:
    """Map `fd` in another process and store to it; its exit status (-SIGBUS: faulted)."""
    done = subprocess.run(
        [sys.executable, "-c", _TOUCH, str(fd), str(length)],
        pass_fds=[fd],
        capture_output=True,
        timeout=60,
    )
    return done.returncode


def mmap_descriptor(dev: Device, handle: int, length: int = PAGE_SIZE) -> int:
    reply, (fd,) = dev.ioctl_fds(
        Op.MMAP,
        m.XedMmap(offset=mmap_offset(dev, handle=handle), length=length, prot=2, flags=1),
    )
    assert reply.length == length
    return fd


def test_vram_outside_a_small_bar_faults_sigbus(fresh_daemon: DaemonProcess) -> None:
    """A VRAM BO created without NEEDS_VISIBLE_VRAM on a small-BAR device maps, but every
    store to the mapping is SIGBUS (xe_mmap's small-bar subtest), however large the BO."""
    with Device.open(fresh_daemon.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        for size in (PAGE_SIZE, 300 * MiB):  # below and beyond the 256 MiB BAR
            bo = create(dev, size=size, placement=XE_PLACEMENT_VRAM0, cpu_caching=wc)
            fd = mmap_descriptor(dev, bo)
            try:
                assert touch(fd, PAGE_SIZE) == -signal.SIGBUS
            finally:
                os.close(fd)
            dev.gem_close(bo)


def test_visible_vram_and_system_memory_map_their_pages(fresh_daemon: DaemonProcess) -> None:
    """NEEDS_VISIBLE_VRAM BOs, and BOs in system memory (or allowed it and placed there),
    map their own pages: stores land."""
    with Device.open(fresh_daemon.socket_path) as dev:
        wc = DRM_XE_GEM_CPU_CACHING_WC
        visible = DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
        for fields in (
            dict(placement=XE_PLACEMENT_VRAM0, flags=visible, cpu_caching=wc),
            dict(placement=BOTH, flags=visible, cpu_caching=wc),
            dict(placement=XE_PLACEMENT_SYSMEM),
        ):
            bo = create(dev, **fields)
            fd = mmap_descriptor(dev, bo)
            try:
                assert touch(fd, PAGE_SIZE) == 0
            finally:
                os.close(fd)
            with dev.mmap_bo(bo, PAGE_SIZE) as cpu:
                assert cpu[0:4] == b"\xab" * 4


def test_vram_on_a_full_bar_maps_its_pages(make_daemon: Any) -> None:
    """With the whole of VRAM visible, a VRAM BO without NEEDS_VISIBLE_VRAM maps."""
    daemon = make_daemon(FULL_BAR)
    with Device.open(daemon.socket_path) as dev:
        bo = create(dev, placement=XE_PLACEMENT_VRAM0, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
        with dev.mmap_bo(bo, PAGE_SIZE) as cpu:
            cpu[0:4] = b"full"
            assert cpu[0:4] == b"full"


def test_python_library_maps_it_as_mmap_does(dev: Device) -> None:
    """The Python library maps VRAM the CPU cannot reach as mmap(2) does (no error), and
    a touch faults SIGBUS, through the GEM mapping and the dma-buf's own alike."""
    bo = create(dev, placement=XE_PLACEMENT_VRAM0, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC)
    fd = dev.prime_handle_to_fd(bo)
    try:
        with dev.mmap_bo(bo, PAGE_SIZE) as gem, dev.dmabuf_mmap(fd, PAGE_SIZE) as buf:
            for mapping in (gem, buf):
                pid = os.fork()
                if pid == 0:  # the store faults in the child; the parent only waits
                    faulthandler.disable()  # pytest's would print the child's stack
                    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                    ctypes.memmove(mapping.address, b"fail", 4)
                    os._exit(0)
                _, status = os.waitpid(pid, 0)
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS
    finally:
        os.close(fd)
        dev.gem_close(bo)
