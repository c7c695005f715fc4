"""What xed cannot enforce, pinned as the reference says it (protocols/departures.py):
the kernel's mmap handler sets VM_DONTEXPAND, clears VM_MAYREAD on the barrier page and
sets VM_DONTCOPY on MMIO regions; xed hands out memfds that clients map themselves, so
mremap() growth, mprotect(PROT_READ) of the barrier page and a doorbell mapping kept
across fork() are not refused, and none reaches memory the descriptor did not.

Mappings here are made with libc's mmap(2) through ctypes, as a C client would make
them, so that mremap() moving one never leaves a Python mmap object pointing at nothing.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from clients import Device
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    MAP_SHARED,
    PAGE_SIZE,
    PCI_BARRIER_IDLE,
    PROT_READ,
    PROT_WRITE,
)
from protocols.reference import render

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value
MREMAP_MAYMOVE = 1


def descriptor(dev: Device, offset: int, length: int, prot: int) -> int:
    """MMAP of a fake offset: the descriptor the daemon answers with (caller closes)."""
    args = m.XedMmap(offset=offset, length=length, prot=prot, flags=MAP_SHARED)
    _, (fd,) = dev.ioctl_fds(Op.MMAP, args)
    return fd


def libc_mmap(fd: int, length: int, prot: int) -> int:
    address = _libc.mmap(None, length, prot, MAP_SHARED, fd, 0)
    assert address not in (None, MAP_FAILED), os.strerror(ctypes.get_errno())
    return int(address)


def test_reference_lists_what_cannot_be_enforced() -> None:
    """The reference's departures name VM_DONTEXPAND, VM_MAYREAD and VM_DONTCOPY."""
    text = render()
    departures = text[text.index("## Departures from the kernel") : text.index("## Ops")]
    for flag in ("VM_DONTEXPAND", "VM_MAYREAD", "VM_DONTCOPY", "XE_MMIO_REGION_CLOSE"):
        assert f"`{flag}`" in departures, flag


def test_mremap_growth_of_a_bo_mapping_reaches_only_that_bo(dev: Device) -> None:
    """A one-page mapping of a two-page BO grown with mremap() is not refused (no
    VM_DONTEXPAND): the page it gains is the same BO's second page."""
    bo = dev.gem_create(2 * PAGE_SIZE)
    with dev.mmap_bo(bo) as cpu:
        cpu[PAGE_SIZE : PAGE_SIZE + 8] = b"2nd page"
    fd = descriptor(dev, dev.gem_mmap_offset(bo), PAGE_SIZE, PROT_READ | PROT_WRITE)
    try:
        address = libc_mmap(fd, PAGE_SIZE, PROT_READ | PROT_WRITE)
    finally:
        os.close(fd)
    grown = _libc.mremap(address, PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE)
    if grown in (None, MAP_FAILED):
        _libc.munmap(address, PAGE_SIZE)
        pytest.fail(f"mremap refused: {os.strerror(ctypes.get_errno())}")
    try:
        assert ctypes.string_at(grown + PAGE_SIZE, 8) == b"2nd page"
    finally:
        _libc.munmap(grown, 2 * PAGE_SIZE)
    dev.gem_close(bo)


def test_mprotect_read_of_the_barrier_mapping_reads_deadbeef(dev: Device) -> None:
    """mprotect(PROT_READ) of a write-only barrier mapping is not refused (VM_MAYREAD is
    not cleared): it reads 0xdeadbeef, nothing of anyone's."""
    fd = descriptor(dev, dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE)
    try:
        address = libc_mmap(fd, PAGE_SIZE, PROT_WRITE)
    finally:
        os.close(fd)
    try:
        assert _libc.mprotect(address, PAGE_SIZE, PROT_READ | PROT_WRITE) == 0
        assert ctypes.string_at(address, 4) == struct.pack("<I", PCI_BARRIER_IDLE)
    finally:
        _libc.munmap(address, PAGE_SIZE)


def test_doorbell_mapped_without_the_library_is_kept_across_fork(dev: Device) -> None:
    """A doorbell page mapped without the library's MADV_DONTFORK stays mapped in a
    forked child (no VM_DONTCOPY): the child sees its parent's page, and only that."""
    region = dev.mmio_open("doorbell")
    fd = descriptor(dev, region.offset, region.size, PROT_READ | PROT_WRITE)
    try:
        address = libc_mmap(fd, region.size, PROT_READ | PROT_WRITE)
    finally:
        os.close(fd)
    try:
        ctypes.memmove(address + 0x40, b"parent's", 8)  # not word 0: no ring
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            os._exit(0 if ctypes.string_at(address + 0x40, 8) == b"parent's" else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        _libc.munmap(address, region.size)
    dev.mmio_close(region.region_id)
