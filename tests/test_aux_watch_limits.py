"""What one aux registration may keep (xed/device/vm_export.py): MAX_WATCHES ranges
watched, MAX_HOST_MAPS pieces of host memory held, MAX_UNACKED invalidations of held
pages unacknowledged. Past each, AUX_VM_RESOLVE is ENOMEM and nothing is dropped; a range
watched or pages held already count once; an unwatch, a bind over a watched range or an
acknowledgement makes room again; a released registration leaves nothing behind.

The test process is the application (`dev`) and the aux driver (a connection of role
`aux`). Most tests run against a daemon whose bounds are lowered (LOW_BOUNDS), so that
reaching them takes a few calls; one reaches the real MAX_WATCHES.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import adjusted_xed, baseline
from helpers import errno_of
from ib_support import App, start_aux, stop_aux
from test_aux_userptr import next_invalidation
from test_vm_export import BASE, settle_to
from test_vm_export_aux import ELSEWHERE, export_import, invalidations, resolved

from clients import Device
from clients.daemon import DaemonProcess
from protocols import SPECS, Op
from protocols.constants import PAGE_SIZE
from xed.device import vm_export

P = PAGE_SIZE
WATCHES, HOST_MAPS, UNACKED = 8, 4, 2  # the lowered bounds
LOW_BOUNDS = adjusted_xed(
    "import xed.device.vm_export as v",
    f"v.MAX_WATCHES, v.MAX_HOST_MAPS, v.MAX_UNACKED = {WATCHES}, {HOST_MAPS}, {UNACKED}",
)


@pytest.fixture(scope="module")
def low(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with the lowered bounds, shared by this module's tests (each registration
    is its own connection's, so the tests do not see one another's)."""
    where: Path = tmp_path_factory.mktemp("low-bounds")
    daemon = DaemonProcess(socket_path=where / "xed.sock", entry=LOW_BOUNDS).start()
    yield daemon
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    daemon.cleanup()


@pytest.fixture
def pair(low: DaemonProcess) -> Iterator[tuple[Device, Device]]:
    """(app, aux) connections to the lowered daemon."""
    with Device.open(low.socket_path) as app, Device.open(low.socket_path, role="aux") as aux:
        yield app, aux


def bo_vm(app: Device, aux: Device, pages: int) -> tuple[int, int, int]:
    """(vm, bo, vm_handle): a BO of `pages` pages bound at BASE, imported by `aux`."""
    vm, bo = app.vm_create(), app.gem_create(pages * P)
    app.vm_bind(vm, bo, BASE)
    return vm, bo, export_import(app, aux, vm).vm_handle


def userptr_vm(app: Device, pages: int) -> int:
    """A VM with `pages` pages of the app's host memory bound as a userptr at BASE."""
    host = app.host_memory(pages * P)
    vm = app.vm_create()
    app.vm_bind_userptr(vm, host, 0, BASE, pages * P)
    return vm


def limits_hit(daemon: DaemonProcess) -> int:
    with Device.open(daemon.socket_path, role="admin") as adm:
        return adm.admin_status().limits_hit


# --- MAX_WATCHES ----------------------------------------------------------------------------------


def test_the_real_bound_is_max_watches_then_enomem(dev: Device, aux: Device) -> None:
    """With the daemon's own bounds: MAX_WATCHES distinct ranges resolve, the next is
    ENOMEM with no descriptor, and ranges watched already still resolve."""
    vm = dev.vm_create()
    dev.vm_bind(vm, dev.gem_create(2 * P), BASE)
    handle = export_import(dev, aux, vm).vm_handle
    for length in range(1, vm_export.MAX_WATCHES + 1):  # [BASE, BASE+length): all distinct
        resolved(aux, handle, BASE, length)
    assert errno_of(aux.aux_vm_resolve, handle, BASE, vm_export.MAX_WATCHES + 1) == errno.ENOMEM
    resolved(aux, handle, BASE, 1)
    resolved(aux, handle, BASE, vm_export.MAX_WATCHES)


def test_past_max_watches_a_new_range_is_enomem(
    low: DaemonProcess, pair: tuple[Device, Device]
) -> None:
    """The bound reached: a new range is ENOMEM, counted as a limit hit."""
    app, aux = pair
    _, _, handle = bo_vm(app, aux, WATCHES + 1)
    for n in range(WATCHES):
        resolved(aux, handle, BASE + n * P, P)
    before = limits_hit(low)
    assert errno_of(aux.aux_vm_resolve, handle, BASE + WATCHES * P, P) == errno.ENOMEM
    assert limits_hit(low) == before + 1


def test_resolving_a_watched_range_again_does_not_count_twice(pair: tuple[Device, Device]) -> None:
    """Each watched range resolved again, several times, at the bound: all answer; a
    range that differs only in its length is a new one (ENOMEM)."""
    app, aux = pair
    _, _, handle = bo_vm(app, aux, WATCHES + 1)
    for _ in range(3):
        for n in range(WATCHES):
            resolved(aux, handle, BASE + n * P, P)
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 2 * P) == errno.ENOMEM


def test_unwatch_makes_room(pair: tuple[Device, Device]) -> None:
    """At the bound, AUX_VM_UNWATCH of one range lets exactly one new range in."""
    app, aux = pair
    _, _, handle = bo_vm(app, aux, WATCHES + 2)
    for n in range(WATCHES):
        resolved(aux, handle, BASE + n * P, P)
    aux.aux_vm_unwatch(handle, BASE + 3 * P, P)
    resolved(aux, handle, BASE + WATCHES * P, P)
    assert errno_of(aux.aux_vm_resolve, handle, BASE + (WATCHES + 1) * P, P) == errno.ENOMEM


def test_a_bind_over_watched_ranges_makes_room(pair: tuple[Device, Device]) -> None:
    """At the bound, the owner unbinding two watched pages: one invalidation, and two
    new ranges fit (a third does not)."""
    app, aux = pair
    vm, bo, handle = bo_vm(app, aux, WATCHES)
    for n in range(WATCHES):
        resolved(aux, handle, BASE + n * P, P)
    app.vm_unbind(vm, BASE, WATCHES * P)
    app.vm_bind(vm, bo, BASE)
    event = next_invalidation(aux)
    assert (event.va, event.length, event.reason) == (BASE, WATCHES * P, "unbind")
    # the unbind took every watch: the bound is far again
    for n in range(WATCHES):
        resolved(aux, handle, BASE + n * P, P)
    assert errno_of(aux.aux_vm_resolve, handle, BASE, 2 * P) == errno.ENOMEM


def test_a_long_watch_is_found_by_a_bind_far_from_its_start(pair: tuple[Device, Device]) -> None:
    """A watch over many pages and short ones inside it: a bind at its far end (past
    every short one's start) reports it, and leaves the short ones watched."""
    app, aux = pair
    vm, _, handle = bo_vm(app, aux, 6)
    resolved(aux, handle, BASE, 6 * P)
    for n in (1, 2):
        resolved(aux, handle, BASE + n * P, P)
    app.vm_unbind(vm, BASE + 5 * P, P)
    assert [(e.va, e.length) for e in invalidations(app, vm, aux, handle)] == [(BASE + 5 * P, P)]
    app.vm_unbind(vm, BASE + 2 * P, P)  # the short watch there was kept
    assert [(e.va, e.length) for e in invalidations(app, vm, aux, handle)] == [(BASE + 2 * P, P)]


# --- MAX_HOST_MAPS and MAX_UNACKED ----------------------------------------------------------------


def test_past_max_host_maps_a_new_piece_is_enomem(pair: tuple[Device, Device]) -> None:
    """Single userptr pages resolved one by one: HOST_MAPS of them are held, the next is
    ENOMEM though watches are left; one range over those pages (held once, as one piece)
    and a BO range (no host memory) still resolve."""
    app, aux = pair
    vm = userptr_vm(app, HOST_MAPS + 1)
    app.vm_bind(vm, app.gem_create(P), ELSEWHERE)
    handle = export_import(app, aux, vm).vm_handle
    for n in range(HOST_MAPS):
        resolved(aux, handle, BASE + n * P, P)
    assert errno_of(aux.aux_vm_resolve, handle, BASE + HOST_MAPS * P, P) == errno.ENOMEM
    resolved(aux, handle, BASE, HOST_MAPS * P)  # the pieces become one
    resolved(aux, handle, ELSEWHERE, P)
    resolved(aux, handle, BASE + HOST_MAPS * P, P)  # room again: two pieces held


def test_unacknowledged_invalidations_past_max_unacked_are_enomem(
    pair: tuple[Device, Device],
) -> None:
    """Holding host pages, the aux leaves UNACKED invalidations unacknowledged: every
    resolve is ENOMEM, a range it watches included, until it acknowledges them."""
    app, aux = pair
    vm = userptr_vm(app, 1)
    bo = app.gem_create(P)
    handle = export_import(app, aux, vm).vm_handle
    resolved(aux, handle, BASE, P)  # host pages held from now on
    for _ in range(UNACKED):
        app.vm_bind(vm, bo, ELSEWHERE)
        resolved(aux, handle, ELSEWHERE, P)
        app.vm_unbind(vm, ELSEWHERE, P)
        last = next_invalidation(aux).seqno
    app.vm_bind(vm, bo, ELSEWHERE)
    assert errno_of(aux.aux_vm_resolve, handle, BASE, P) == errno.ENOMEM
    assert errno_of(aux.aux_vm_resolve, handle, ELSEWHERE, P) == errno.ENOMEM
    aux.aux_vm_invalidate_done(handle, last)
    resolved(aux, handle, ELSEWHERE, P)


# --- lifetimes and the documentation --------------------------------------------------------------


def test_registrations_at_every_bound_leave_nothing_behind(low: DaemonProcess) -> None:
    """Registrations filled to each bound and refused, then released or disconnected:
    the daemon's descriptors and objects are back where they were."""
    start = baseline(low)
    for release in (True, False):
        with Device.open(low.socket_path) as app, Device.open(low.socket_path, role="aux") as aux:
            vm = userptr_vm(app, HOST_MAPS + 1)
            app.vm_bind(vm, app.gem_create(WATCHES * P), ELSEWHERE)
            handle = export_import(app, aux, vm).vm_handle
            for n in range(HOST_MAPS):
                resolved(aux, handle, BASE + n * P, P)
            assert errno_of(aux.aux_vm_resolve, handle, BASE + HOST_MAPS * P, P) == errno.ENOMEM
            for n in range(WATCHES - HOST_MAPS):
                resolved(aux, handle, ELSEWHERE + n * P, P)
            assert errno_of(aux.aux_vm_resolve, handle, ELSEWHERE, 2 * P) == errno.ENOMEM
            if release:  # else the registration goes with the aux connection
                aux.aux_vm_release(handle)
        assert settle_to(low, start) == start


def test_the_op_table_states_the_bounds() -> None:
    """The ENOMEM line of AUX_VM_RESOLVE names the module's bounds."""
    (line,) = [text for _, text in SPECS[Op.AUX_VM_RESOLVE].errors if "watch" in text]
    assert [int(n) for n in re.findall(r"\d+", line)] == [
        vm_export.MAX_WATCHES,
        vm_export.MAX_HOST_MAPS,
        vm_export.MAX_UNACKED,
    ]


def test_the_ib_driver_unwatches_what_it_deregisters(low: DaemonProcess) -> None:
    """The IB-like driver lets the daemon stop watching a region's range when it
    deregisters it (as the kernel removes the region's notifier), so a context that
    registers and deregisters many distinct ranges, with no bind between, never meets
    MAX_WATCHES (before, the ninth registration here was ENOMEM)."""
    aux = start_aux(low)
    try:
        with Device.open(low.socket_path) as dev:
            app = App(dev, sizes=(4 * WATCHES * P,))
            try:
                app.open(aux.socket_path)
                assert app.ib is not None
                for n in range(3 * WATCHES):  # each a range of its own
                    app.ib.dereg_mr(app.ib.reg_mr(BASE + n * P, P))
            finally:
                app.close()
    finally:
        stop_aux(aux)
