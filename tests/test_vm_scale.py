"""VMs holding many mappings: what UNMAP_ALL, a large UNMAP and PREFETCH arrays do there
(xed/device/vm.py keeps an index from each BO to its VMAs and removes a run of VMAs at
once; residency.prepare_binds walks what a VM_BIND's PREFETCHes cover once). The answers
are the ones the one-VMA-at-a-time code gave: which mappings go and which pieces stay
(read from an aux driver's import of the VM), the invalidations in address order, the
per-file counts (admin view), and which BO a PREFETCH array leaves in which region (read
from the memory-region query as each BO is freed).
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from conftest import baseline
from helpers import errno_of
from test_evict import FULL_BAR, HALF, VA, prefetch, used
from test_limits import client_info
from test_vm_export import BASE, settle_to
from test_vm_export_aux import ELSEWHERE, export_import, invalidations, resolved

from clients import Device
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    PAGE_SIZE,
    XE_PLACEMENT_VRAM0,
)
from tests.test_gem import BOTH, MiB

P = PAGE_SIZE
SYSTEM, VRAM = 0, 1  # the region instances of the default device


def page_map(bo: int, addr: int, offset: int = 0) -> m.DrmXeVmBindOp:
    return m.DrmXeVmBindOp(obj=bo, obj_offset=offset, range=P, addr=addr, op=DRM_XE_VM_BIND_OP_MAP)


def null_map(addr: int, size: int) -> m.DrmXeVmBindOp:
    return m.DrmXeVmBindOp(
        addr=addr, range=size, op=DRM_XE_VM_BIND_OP_MAP, flags=DRM_XE_VM_BIND_FLAG_NULL
    )


def unmap_all(bo: int) -> m.DrmXeVmBindOp:
    return m.DrmXeVmBindOp(obj=bo, op=DRM_XE_VM_BIND_OP_UNMAP_ALL)


def counted(daemon: Any, dev: Device) -> tuple[int, int]:
    """(the file's mappings, its uid's objects), from the admin view."""
    info = client_info(daemon, dev.client_id)
    return info.vmas, info.uid_objects


# --- UNMAP_ALL --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [5, 100])  # few VMAs of the BO, and many
def test_unmap_all_removes_exactly_that_bos_mappings(make_daemon: Any, count: int) -> None:
    """UNMAP_ALL of a BO whose page mappings alternate with another BO's removes its
    own only (and only in that VM), each with an "unbind" invalidation in address
    order; a second UNMAP_ALL of it in the same array finds nothing; the counts drop by
    exactly its mappings, and everything goes back to the daemon's baseline."""
    daemon = make_daemon()
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev, Device.open(daemon.socket_path, role="aux") as aux:
        vm, other_vm = dev.vm_create(), dev.vm_create()
        a, b = dev.gem_create(4 * P), dev.gem_create(4 * P)
        pages = 2 * count  # a at the even pages, b at the odd ones
        dev.vm_bind_ops(
            vm, [page_map(a if i % 2 == 0 else b, BASE + i * P, (i % 4) * P) for i in range(pages)]
        )
        dev.vm_bind(vm, a, ELSEWHERE, size=2 * P)
        dev.vm_bind_ops(vm, [null_map(ELSEWHERE + 16 * P, 4 * P)])
        dev.vm_bind(other_vm, a, BASE)
        handle = export_import(dev, aux, vm).vm_handle
        for i in range(pages):
            resolved(aux, handle, BASE + i * P, P)
        resolved(aux, handle, ELSEWHERE, 2 * P)
        vmas, objects = counted(daemon, dev)
        assert vmas == pages + 3
        dev.vm_bind_ops(vm, [unmap_all(a), unmap_all(a)])
        assert counted(daemon, dev) == (vmas - count - 1, objects - count - 1)
        events = invalidations(dev, vm, aux, handle)
        assert [(e.va, e.length, e.reason) for e in events] == [
            *((BASE + i * P, P, "unbind") for i in range(0, pages, 2)),
            (ELSEWHERE, 2 * P, "unbind"),
        ]
        aux.aux_vm_release(handle)
        reply = export_import(dev, aux, vm)
        assert reply.bindings == (
            *(
                m.XedAuxBinding(va=BASE + i * P, range=P, bo_size=4 * P, bo_offset=(i % 4) * P)
                for i in range(1, pages, 2)
            ),
            m.XedAuxBinding(va=ELSEWHERE + 16 * P, range=4 * P, bo_size=0),
        )
        aux.aux_vm_release(reply.vm_handle)
        other = export_import(dev, aux, other_vm)  # the other VM keeps its mapping of a
        assert other.bindings == (m.XedAuxBinding(va=BASE, range=4 * P, bo_size=4 * P),)
        aux.aux_vm_release(other.vm_handle)
        dev.vm_bind_ops(other_vm, [unmap_all(a)])
        dev.vm_bind_ops(vm, [unmap_all(b)])
        assert counted(daemon, dev) == (1, objects - pages - 2)  # the NULL binding left
        reply = export_import(dev, aux, vm)
        assert reply.bindings == (m.XedAuxBinding(va=ELSEWHERE + 16 * P, range=4 * P, bo_size=0),)
        aux.aux_vm_release(reply.vm_handle)
    assert settle_to(daemon, before) == before


# --- UNMAP of a large range, VM_DESTROY, close ------------------------------------------------


def test_unmap_of_many_mappings_keeps_the_head_and_tail(make_daemon: Any) -> None:
    """An UNMAP from inside one mapping, over 400 page mappings, to inside another keeps
    the head of the first and the tail of the last (its BO offset moved on), and what
    lies outside; the counts drop by exactly the mappings gone. VM_DESTROY of a VM with
    many mappings, and the close of a connection holding another, leave the daemon at
    its baseline."""
    daemon = make_daemon()
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev, Device.open(daemon.socket_path, role="aux") as aux:
        vm = dev.vm_create()
        big, page = dev.gem_create(8 * P), dev.gem_create(P)
        dev.vm_bind(vm, page, BASE - P)
        dev.vm_bind(vm, big, BASE)
        dev.vm_bind_ops(vm, [page_map(page, BASE + (8 + i) * P) for i in range(400)])
        dev.vm_bind(vm, big, BASE + 408 * P)
        dev.vm_bind(vm, page, BASE + 500 * P)
        vmas, objects = counted(daemon, dev)
        assert vmas == 404
        dev.vm_unbind(vm, BASE + 3 * P, 410 * P)  # to BASE + 413 pages
        assert counted(daemon, dev) == (4, objects - 400)
        reply = export_import(dev, aux, vm)
        assert reply.bindings == (
            m.XedAuxBinding(va=BASE - P, range=P, bo_size=P),
            m.XedAuxBinding(va=BASE, range=3 * P, bo_size=8 * P),
            m.XedAuxBinding(va=BASE + 413 * P, range=3 * P, bo_size=8 * P, bo_offset=5 * P),
            m.XedAuxBinding(va=BASE + 500 * P, range=P, bo_size=P),
        )
        aux.aux_vm_release(reply.vm_handle)
        dev.vm_unbind(vm, BASE + 414 * P, P)  # the middle of the tail: split again
        reply = export_import(dev, aux, vm)
        assert reply.bindings[2:4] == (
            m.XedAuxBinding(va=BASE + 413 * P, range=P, bo_size=8 * P, bo_offset=5 * P),
            m.XedAuxBinding(va=BASE + 415 * P, range=P, bo_size=8 * P, bo_offset=7 * P),
        )
        aux.aux_vm_release(reply.vm_handle)
        assert counted(daemon, dev)[0] == 5
        doomed = dev.vm_create()
        dev.vm_bind_ops(doomed, [page_map(page, BASE + i * P) for i in range(500)])
        assert counted(daemon, dev)[0] == 505
        dev.vm_destroy(doomed)
        assert counted(daemon, dev)[0] == 5
        left = dev.vm_create()  # the connection's close takes it
        dev.vm_bind_ops(left, [page_map(big, BASE + i * P, (i % 8) * P) for i in range(500)])
        assert counted(daemon, dev)[0] == 505
    assert settle_to(daemon, before) == before


# --- PREFETCH arrays --------------------------------------------------------------------------

A, B, C = VA, VA + MiB, VA + 2 * MiB  # where the BOs a, b and c are bound
B_SIZE = 384 * 1024  # a and c are HALF: VRAM (1 MiB) holds a and b, or b and c, not a and c
SCENARIOS = {
    # a and b to VRAM; c evicts a; the third op brings a back (evicting b), then b (c)
    "again_after_an_eviction": (
        [prefetch(A, 2 * MiB, VRAM), prefetch(C, MiB, VRAM), prefetch(A, 2 * MiB, VRAM)],
        {"a": VRAM, "b": VRAM, "c": SYSTEM},
    ),
    # b first (the first op), then a: c evicts b, the least recently migrated
    "the_first_op_first": (
        [prefetch(B, MiB, VRAM), prefetch(A, 2 * MiB, VRAM), prefetch(C, MiB, VRAM)],
        {"a": VRAM, "b": SYSTEM, "c": VRAM},
    ),
    # a leaves VRAM for system memory between two VRAM prefetches of it
    "between_regions": (
        [prefetch(A, 2 * MiB, VRAM), prefetch(A, MiB, SYSTEM), prefetch(A, 2 * MiB, VRAM)],
        {"a": VRAM, "b": VRAM, "c": SYSTEM},
    ),
    # overlapping ranges, all of them in VRAM's way: c evicts a, a evicts b, b evicts c
    "the_same_range_over_and_over": (
        [prefetch(A, 3 * MiB, VRAM)] * 400,
        {"a": SYSTEM, "b": VRAM, "c": VRAM},
    ),
    # pieces of the ranges covered already, others not
    "overlapping_pieces": (
        [
            prefetch(A + HALF - P, 2 * P, VRAM),
            prefetch(C, 2 * P, VRAM),
            prefetch(A, MiB + P, VRAM),
            prefetch(B - P, MiB, SYSTEM),
            prefetch(A, 3 * MiB, VRAM),
        ],
        {"a": SYSTEM, "b": VRAM, "c": VRAM},
    ),
}


def where(dev: Device, vm: int, bos: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    """The region each BO is charged to: unbound and closed one by one (freed), the
    region whose use drops by its size."""
    found = {}
    for name, (bo, addr, size) in bos.items():
        was = used(dev)
        dev.vm_unbind(vm, addr, size)
        dev.gem_close(bo)
        now = used(dev)
        (found[name],) = [r for r in (SYSTEM, VRAM) if was[r] - now[r] == size]
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prefetch_array_migrates_as_op_by_op(make_daemon: Any, scenario: str) -> None:
    """A PREFETCH array migrates what its ops, made one after another, would: each op's
    BOs in the order of their first mapping in its range, an op again over BOs it or
    another one moved already a no-op only while they stay where it moved them."""
    ops, expected = SCENARIOS[scenario]
    daemon = make_daemon(FULL_BAR)
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev:
        vm = dev.vm_create()
        bos = {}
        for name, addr, size in (("a", A, HALF), ("b", B, B_SIZE), ("c", C, HALF)):
            bo = dev.gem_create(size, placement=BOTH)
            # mapped page by page, but for the last pages: many VMAs over every range
            dev.vm_bind_ops(vm, [page_map(bo, addr + i * P, i * P) for i in range(64)])
            dev.vm_bind(vm, bo, addr + 64 * P, size=size - 64 * P, obj_offset=64 * P)
            bos[name] = (bo, addr, size)
        dev.vm_bind_ops(vm, [prefetch(A, 3 * MiB, SYSTEM)])
        assert used(dev)[VRAM] == 0
        dev.vm_bind_ops(vm, ops)
        assert where(dev, vm, bos) == expected
    assert settle_to(daemon, before) == before


def test_prefetch_array_refused_part_way_keeps_what_it_moved(make_daemon: Any) -> None:
    """A PREFETCH to system memory over a VRAM-only BO is EINVAL, after the ops before
    it and the BOs before that one in its range were migrated: they stay where they
    went (b to VRAM, evicting a; a to system memory, there already)."""
    daemon = make_daemon(FULL_BAR)
    before = baseline(daemon)
    with Device.open(daemon.socket_path) as dev:
        vm = dev.vm_create()
        a = dev.gem_create(HALF, placement=BOTH)  # VRAM
        v = dev.gem_create(HALF, placement=XE_PLACEMENT_VRAM0)  # VRAM, full now
        b = dev.gem_create(B_SIZE, placement=BOTH)  # system memory
        dev.vm_bind_ops(vm, [page_map(a, A + i * P, i * P) for i in range(128)])
        dev.vm_bind(vm, v, B)
        dev.vm_bind(vm, b, C)
        refused = [prefetch(C, MiB, VRAM), prefetch(A, 2 * MiB, SYSTEM), prefetch(C, MiB, SYSTEM)]
        assert errno_of(dev.vm_bind_ops, vm, refused) == errno.EINVAL
        bos = {"a": (a, A, HALF), "b": (b, C, B_SIZE), "v": (v, B, HALF)}
        assert where(dev, vm, bos) == {"a": SYSTEM, "b": VRAM, "v": VRAM}
    assert settle_to(daemon, before) == before
