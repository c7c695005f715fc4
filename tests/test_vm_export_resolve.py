"""The aux driver's side of VM export once a VM is imported: AUX_VM_RESOLVE (zero copy:
the BOs' own pages), the AUX_RANGE_INVALIDATED events, AUX_VM_UNWATCH and RELEASE. A
resolve is what arms the watch an event reports on, so the two are tested together;
importing and aux disconnect are in test_vm_export_aux.py, whose helpers these tests use.

The test process is the application (drm connection `dev`) and the aux driver (a
connection of role `aux`). Whether an event was sent is judged after two round trips on
the aux connection: the daemon queues the event while it handles the bind, and its writer
has run by the time the aux connection's reader has yielded once more.
"""

from __future__ import annotations

import errno
import mmap
import os

import pytest
from test_vm_export import BASE, errno_of, vm_with_bo
from test_vm_export_aux import (
    ELSEWHERE,
    VA_BITS,
    back_to_back,
    close_all,
    export_import,
    invalidations,
    resolved,
)

from clients import Device
from clients.daemon import DaemonProcess
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    PAGE_SIZE,
)


def export_to(dev: Device, vm: int, *auxes: Device) -> list[int]:
    """Export `vm` once and import it on every aux connection: their vm_handles."""
    fd = dev.vm_export(vm)
    try:
        return [aux.aux_vm_import(fd, os.getpid()).vm_handle for aux in auxes]
    finally:
        os.close(fd)


# --- AUX_VM_RESOLVE ----------------------------------------------------------------------------


def test_aux_resolve_two_bos_back_to_back_is_zero_copy(dev: Device, aux: Device) -> None:
    """Two BOs bound back to back: two spans, two descriptors mapping the app's own pages."""
    vm, (one, two) = back_to_back(dev, 2, 2)
    handle = export_import(dev, aux, vm).vm_handle
    spans, fds = aux.aux_vm_resolve(handle, BASE + PAGE_SIZE, 2 * PAGE_SIZE)
    try:
        assert spans == (
            m.XedAuxSpan(va=BASE + PAGE_SIZE, length=PAGE_SIZE, fd_index=0, offset=PAGE_SIZE),
            m.XedAuxSpan(va=BASE + 2 * PAGE_SIZE, length=PAGE_SIZE, fd_index=1, offset=0),
        )
        assert len(fds) == 2
        with (
            mmap.mmap(fds[0], 2 * PAGE_SIZE) as aux_one,
            mmap.mmap(fds[1], 2 * PAGE_SIZE) as aux_two,
            dev.mmap_bo(one) as app_one,
            dev.mmap_bo(two) as app_two,
        ):
            aux_one[PAGE_SIZE : PAGE_SIZE + 8] = b"aux->app"
            assert app_one[PAGE_SIZE : PAGE_SIZE + 8] == b"aux->app"
            app_two[0:8] = b"app->aux"
            assert aux_two[0:8] == b"app->aux"
            app_one[PAGE_SIZE + 100] = 0x5A
            assert aux_one[PAGE_SIZE + 100] == 0x5A
    finally:
        close_all(fds)


def test_aux_resolve_from_the_middle_of_a_bo_gives_its_offset(dev: Device, aux: Device) -> None:
    """A range starting inside a BO bound with obj_offset: the span's offset adds both."""
    vm = dev.vm_create()
    bo = dev.gem_create(8 * PAGE_SIZE)
    dev.vm_bind(vm, bo, BASE, size=4 * PAGE_SIZE, obj_offset=2 * PAGE_SIZE)
    with dev.mmap_bo(bo) as app:
        app[5 * PAGE_SIZE + 16 : 5 * PAGE_SIZE + 22] = b"marker"
    handle = export_import(dev, aux, vm).vm_handle
    spans, fds = aux.aux_vm_resolve(handle, BASE + 3 * PAGE_SIZE + 16, 6)
    try:
        assert spans == (
            m.XedAuxSpan(va=BASE + 3 * PAGE_SIZE + 16, length=6, offset=5 * PAGE_SIZE + 16),
        )
        with mmap.mmap(fds[0], 0) as whole:
            assert whole[5 * PAGE_SIZE + 16 : 5 * PAGE_SIZE + 22] == b"marker"
    finally:
        close_all(fds)


def test_aux_resolve_same_bo_twice_gives_one_descriptor(dev: Device, aux: Device) -> None:
    """One BO bound at two adjacent places: two spans sharing one descriptor."""
    vm = dev.vm_create()
    bo = dev.gem_create(2 * PAGE_SIZE)
    dev.vm_bind(vm, bo, BASE, size=PAGE_SIZE, obj_offset=PAGE_SIZE)
    dev.vm_bind(vm, bo, BASE + PAGE_SIZE, size=PAGE_SIZE)
    handle = export_import(dev, aux, vm).vm_handle
    spans, fds = aux.aux_vm_resolve(handle, BASE, 2 * PAGE_SIZE)
    try:
        assert len(fds) == 1
        assert spans == (
            m.XedAuxSpan(va=BASE, length=PAGE_SIZE, fd_index=0, offset=PAGE_SIZE),
            m.XedAuxSpan(va=BASE + PAGE_SIZE, length=PAGE_SIZE, fd_index=0, offset=0),
        )
    finally:
        close_all(fds)


@pytest.mark.parametrize(
    "va, length",
    [
        (BASE + PAGE_SIZE, 2 * PAGE_SIZE),  # crosses the hole between the two BOs
        (BASE + 2 * PAGE_SIZE, PAGE_SIZE),  # inside the hole
        (BASE + 4 * PAGE_SIZE, 2 * PAGE_SIZE),  # runs past the last binding
        (BASE - PAGE_SIZE, 2 * PAGE_SIZE),  # starts before the first
        (ELSEWHERE, PAGE_SIZE),  # nothing bound anywhere near
    ],
    ids=["across-hole", "in-hole", "past-end", "before-start", "unbound"],
)
def test_aux_resolve_unbound_address_is_efault(
    dev: Device, aux: Device, va: int, length: int
) -> None:
    """Any address of the range not bound: EFAULT, and no watch is left behind."""
    vm = dev.vm_create()
    dev.vm_bind(vm, dev.gem_create(2 * PAGE_SIZE), BASE)
    dev.vm_bind(vm, dev.gem_create(2 * PAGE_SIZE), BASE + 3 * PAGE_SIZE)
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_resolve, handle, va, length) == errno.EFAULT
    dev.vm_unbind(vm, BASE, 8 * PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == []


def test_aux_resolve_null_binding_is_efault(dev: Device, aux: Device) -> None:
    """A NULL binding has no memory behind it: EFAULT, also for a range that ends in one."""
    vm, _ = back_to_back(dev, 1)
    null = m.DrmXeVmBindOp(
        addr=BASE + PAGE_SIZE, range=PAGE_SIZE, op=DRM_XE_VM_BIND_OP_MAP,
        flags=DRM_XE_VM_BIND_FLAG_NULL,
    )  # fmt: skip
    dev.vm_bind_ops(vm, [null])
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_resolve, handle, BASE + PAGE_SIZE, PAGE_SIZE) == errno.EFAULT
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 2 * PAGE_SIZE) == errno.EFAULT
    spans, fds = aux.aux_vm_resolve(handle, BASE, PAGE_SIZE)  # the BO before it is fine
    close_all(fds)
    assert len(spans) == 1


@pytest.mark.parametrize(
    "va, length",
    [
        (BASE, 0),
        ((1 << VA_BITS) - PAGE_SIZE, 2 * PAGE_SIZE),
        (1 << VA_BITS, PAGE_SIZE),
        (BASE, 1 << VA_BITS),
    ],
    ids=["zero-length", "crosses-top", "at-top", "longer-than-vm"],
)
def test_aux_resolve_empty_or_beyond_the_vm_is_einval(
    dev: Device, aux: Device, va: int, length: int
) -> None:
    """AUX_VM_RESOLVE of length 0, or reaching past the VM's address space: EINVAL."""
    vm, _ = vm_with_bo(dev)
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_resolve, handle, va, length) == errno.EINVAL


def test_aux_unknown_vm_handle_is_enoent(dev: Device, aux: Device) -> None:
    """RESOLVE, UNWATCH and RELEASE of a vm_handle never given (or released): ENOENT."""
    for handle in (0, 1, 0xFFFF_FFFF):
        assert errno_of(aux.aux_vm_resolve, handle, BASE, PAGE_SIZE) == errno.ENOENT
        assert errno_of(aux.aux_vm_unwatch, handle, BASE, PAGE_SIZE) == errno.ENOENT
        assert errno_of(aux.aux_vm_release, handle) == errno.ENOENT
    vm, _ = vm_with_bo(dev)
    handle = export_import(dev, aux, vm).vm_handle
    aux.aux_vm_release(handle)
    assert errno_of(aux.aux_vm_resolve, handle, BASE, PAGE_SIZE) == errno.ENOENT
    assert errno_of(aux.aux_vm_release, handle) == errno.ENOENT


def test_aux_vm_handle_is_per_connection(daemon: DaemonProcess, dev: Device, aux: Device) -> None:
    """Another aux connection's vm_handle means nothing on this one: ENOENT."""
    vm, _ = vm_with_bo(dev)
    handle = export_import(dev, aux, vm).vm_handle
    with Device.open(daemon.socket_path, role="aux") as other:
        assert errno_of(other.aux_vm_resolve, handle, BASE, PAGE_SIZE) == errno.ENOENT
        assert errno_of(other.aux_vm_release, handle) == errno.ENOENT
    spans, fds = aux.aux_vm_resolve(handle, BASE, PAGE_SIZE)
    close_all(fds)


def test_aux_resolve_more_than_8_bos_is_e2big(dev: Device, aux: Device) -> None:
    """Nine BOs behind the range: E2BIG; eight come back as eight descriptors."""
    vm, _ = back_to_back(dev, *[1] * 9)
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 9 * PAGE_SIZE) == errno.E2BIG
    spans, fds = aux.aux_vm_resolve(handle, BASE + PAGE_SIZE, 8 * PAGE_SIZE)
    try:
        assert len(fds) == 8
        assert [s.fd_index for s in spans] == list(range(8))
        assert len({os.fstat(fd).st_ino for fd in fds}) == 8
    finally:
        close_all(fds)


def test_aux_resolve_more_than_64_spans_is_e2big(dev: Device, aux: Device) -> None:
    """65 bindings of one BO behind the range (one descriptor, more spans than a reply
    lists): E2BIG, as for too many BOs; 64 of them resolve."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    for i in range(65):
        dev.vm_bind(vm, bo, BASE + i * PAGE_SIZE)
    handle = export_import(dev, aux, vm).vm_handle
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 65 * PAGE_SIZE) == errno.E2BIG
    spans, fds = aux.aux_vm_resolve(handle, BASE, 64 * PAGE_SIZE)
    close_all(fds)
    assert (len(spans), len(fds)) == (64, 1)


# --- invalidation --------------------------------------------------------------------------------


def test_unbind_in_resolved_range_sends_one_invalidation(
    daemon: DaemonProcess, dev: Device, aux: Device
) -> None:
    """An unbind inside a resolved range: one event (va, length, "unbind") to that aux only."""
    vm, _ = back_to_back(dev, 4)
    with Device.open(daemon.socket_path, role="aux") as bystander:
        handle, other = export_to(dev, vm, aux, bystander)  # the bystander resolves nothing
        resolved(aux, handle, BASE, 4 * PAGE_SIZE)
        resolved(aux, handle, BASE + PAGE_SIZE, PAGE_SIZE)  # two watches, still one event
        dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)
        assert invalidations(dev, vm, aux, handle) == [
            m.AuxRangeInvalidated(
                vm_handle=handle, va=BASE + PAGE_SIZE, length=PAGE_SIZE, reason="unbind"
            )
        ]
        assert invalidations(dev, vm, bystander, other) == []


def test_bind_over_resolved_range_sends_invalidation(dev: Device, aux: Device) -> None:
    """A MAP that replaces part of a resolved range: one event with reason "bind"."""
    vm, _ = back_to_back(dev, 2)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE + PAGE_SIZE, PAGE_SIZE)
    other = dev.gem_create(4 * PAGE_SIZE)
    dev.vm_bind(vm, other, BASE + PAGE_SIZE, size=2 * PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == [
        m.AuxRangeInvalidated(
            vm_handle=handle, va=BASE + PAGE_SIZE, length=2 * PAGE_SIZE, reason="bind"
        )
    ]


def test_unmap_all_of_a_bo_in_resolved_range_sends_invalidation(dev: Device, aux: Device) -> None:
    """UNMAP_ALL of the BO behind a resolved range: an "unbind" event for its VMA."""
    vm, (_, second) = back_to_back(dev, 1, 2)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE + PAGE_SIZE, PAGE_SIZE)
    dev.vm_bind_ops(vm, [m.DrmXeVmBindOp(obj=second, op=DRM_XE_VM_BIND_OP_UNMAP_ALL)])
    assert invalidations(dev, vm, aux, handle) == [
        m.AuxRangeInvalidated(
            vm_handle=handle, va=BASE + PAGE_SIZE, length=2 * PAGE_SIZE, reason="unbind"
        )
    ]


def test_binds_outside_resolved_range_send_nothing(dev: Device, aux: Device) -> None:
    """Binds and unbinds next to (not in) a resolved range send no event."""
    vm, _ = back_to_back(dev, 1, 1, 1)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE + PAGE_SIZE, PAGE_SIZE)
    dev.vm_unbind(vm, BASE, PAGE_SIZE)  # ends where the range starts
    dev.vm_unbind(vm, BASE + 2 * PAGE_SIZE, PAGE_SIZE)  # starts where it ends
    dev.vm_bind(vm, dev.gem_create(PAGE_SIZE), ELSEWHERE)
    dev.vm_bind(vm, dev.gem_create(PAGE_SIZE), BASE + 2 * PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == []
    dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)  # the watch was still there
    assert [e.reason for e in invalidations(dev, vm, aux, handle)] == ["unbind"]


def test_unwatch_stops_invalidations(dev: Device, aux: Device) -> None:
    """After AUX_VM_UNWATCH of the range, an unbind inside it sends nothing."""
    vm, _ = back_to_back(dev, 4)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE + PAGE_SIZE, PAGE_SIZE)
    resolved(aux, handle, BASE + 2 * PAGE_SIZE, PAGE_SIZE)
    aux.aux_vm_unwatch(handle, BASE, 4 * PAGE_SIZE)
    dev.vm_unbind(vm, BASE, 4 * PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == []


def test_unwatch_leaves_watches_outside_its_range(dev: Device, aux: Device) -> None:
    """AUX_VM_UNWATCH of one range keeps the watch on another."""
    vm, _ = back_to_back(dev, 4)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, PAGE_SIZE)
    resolved(aux, handle, BASE + 3 * PAGE_SIZE, PAGE_SIZE)
    aux.aux_vm_unwatch(handle, BASE, PAGE_SIZE)
    dev.vm_unbind(vm, BASE, 4 * PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == [
        m.AuxRangeInvalidated(vm_handle=handle, va=BASE, length=4 * PAGE_SIZE, reason="unbind")
    ]


def test_invalidation_ends_the_watch_until_resolved_again(dev: Device, aux: Device) -> None:
    """After one invalidation a second unbind sends nothing, until the range is resolved."""
    vm, _ = back_to_back(dev, 4)
    handle = export_import(dev, aux, vm).vm_handle
    resolved(aux, handle, BASE, 2 * PAGE_SIZE)
    dev.vm_unbind(vm, BASE, PAGE_SIZE)
    assert len(invalidations(dev, vm, aux, handle)) == 1
    dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)
    dev.vm_bind(vm, dev.gem_create(2 * PAGE_SIZE), BASE)
    assert invalidations(dev, vm, aux, handle) == []
    resolved(aux, handle, BASE, 2 * PAGE_SIZE)
    dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)
    assert invalidations(dev, vm, aux, handle) == [
        m.AuxRangeInvalidated(
            vm_handle=handle, va=BASE + PAGE_SIZE, length=PAGE_SIZE, reason="unbind"
        )
    ]


def test_released_vm_sends_no_invalidation(dev: Device, aux: Device) -> None:
    """After AUX_VM_RELEASE, binds in a range resolved before send nothing (nor later)."""
    vm, _ = back_to_back(dev, 2)
    fd = dev.vm_export(vm)
    try:
        handle = aux.aux_vm_import(fd, os.getpid()).vm_handle
        resolved(aux, handle, BASE, 2 * PAGE_SIZE)
        aux.aux_vm_release(handle)
        dev.vm_unbind(vm, BASE, PAGE_SIZE)
        again = aux.aux_vm_import(fd, os.getpid()).vm_handle  # a new registration, no watch
        dev.vm_unbind(vm, BASE + PAGE_SIZE, PAGE_SIZE)
        assert invalidations(dev, vm, aux, again) == []
    finally:
        os.close(fd)


def test_each_aux_hears_only_of_its_own_watches(
    daemon: DaemonProcess, dev: Device, aux: Device
) -> None:
    """Two aux drivers watching different ranges of one VM each hear of their own only."""
    vm, _ = back_to_back(dev, 4)
    with Device.open(daemon.socket_path, role="aux") as second:
        mine, theirs = export_to(dev, vm, aux, second)
        resolved(aux, mine, BASE, PAGE_SIZE)
        resolved(second, theirs, BASE + 2 * PAGE_SIZE, PAGE_SIZE)
        dev.vm_unbind(vm, BASE + 2 * PAGE_SIZE, 2 * PAGE_SIZE)
        assert invalidations(dev, vm, aux, mine) == []
        assert invalidations(dev, vm, second, theirs) == [
            m.AuxRangeInvalidated(
                vm_handle=theirs, va=BASE + 2 * PAGE_SIZE, length=2 * PAGE_SIZE, reason="unbind"
            )
        ]
