"""Unplug (drm_dev_unplug): with live client processes holding mappings (a BO, the info
block, a doorbell, the barrier page), every ioctl of theirs answers ENODEV, new
connections are refused but the admin's, EALREADY twice, and what a client holds is
released when it goes. What happens to the mappings: test_unplug_zap.py; what REPLUG
plugs in: test_replug.py.
"""

from __future__ import annotations

import errno
import gc
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Holder, baseline

from clients import Device, XeError
from clients.daemon import DaemonProcess
from clients.transport import SeqpacketTransport

TIMEOUT = 10.0
# Long enough for the device to have looked at a watched page many times over, were it
# watching (it looks at least every 50 ms): how long an unwatched write must stay.
UNWATCHED_WINDOW = 0.3


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `predicate` in short steps until it is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


# A client process holding one of each mapping, through the library and by hand (a
# descriptor from MMAP it maps itself), then running the snippets the test sends it (one
# JSON string a line; each sets `out`, answered as one JSON line).
def hello_errno(daemon: DaemonProcess, role: str) -> int:
    """HELLO on a new raw connection with `role`: 0 or the errno it is refused with."""
    transport = SeqpacketTransport.connect(daemon.socket_path)
    try:
        Device(transport, role)
    except XeError as exc:
        return exc.errno
    finally:
        transport.close()
    return 0


# The ops a holder tries while unplugged: each must answer ENODEV.
IOCTLS = {
    "VERSION": "dev.version()",
    "GEM_CREATE": "dev.gem_create(0x1000)",
    "GEM_MMAP_OFFSET": "dev.gem_mmap_offset(bo)",
    "MMAP of a new offset": "dev.mmap(spare_offset, 0x1000)",
    "MMAP of the barrier page": "dev.mmap(XE_PCI_BARRIER, PAGE_SIZE, PROT_WRITE)",
    "PCI_BARRIER offset": "dev.pci_barrier_offset()",
    "GEM_CLOSE": "dev.gem_close(spare)",
    "DEVICE_QUERY": "dev.query(Query.MMIO_REGIONS)",
    "MMIO_REGION_OPEN": (
        "dev.ioctl(Op.XE_MMIO_REGION_OPEN, m.DrmXeMmioRegionOpen(bar_offset=0, size=0x2000))"
    ),
    "MMIO_REGION_CLOSE": "dev.mmio_close(info_region.region_id)",
    "VM_CREATE": "dev.vm_create()",
    "PRIME_HANDLE_TO_FD": "dev.prime_handle_to_fd(bo)",
}


def ioctl_errnos(holder: Holder) -> dict[str, int]:
    code = (
        "from protocols.constants import XE_PCI_BARRIER_MMAP_OFFSET as XE_PCI_BARRIER\nout = {}\n"
    )
    for name, call in IOCTLS.items():
        code += f"out[{name!r}] = errno_of(lambda: {call})\n"
    result: dict[str, int] = holder.run(code)
    return result


# --- ENODEV ------------------------------------------------------------------------------------


def test_unplugged_every_ioctl_of_a_live_client_enodev(holder: Holder, fresh_admin: Device) -> None:
    """While unplugged every ioctl of a connected client (VERSION, GEM_CREATE, MMAP...): ENODEV."""
    fresh_admin.admin_unplug()
    assert ioctl_errnos(holder) == dict.fromkeys(IOCTLS, errno.ENODEV)
    assert holder.alive()


def test_unplugged_new_connections_enodev_but_admin_hello_works(
    fresh_daemon: DaemonProcess, fresh_admin: Device
) -> None:
    """While unplugged a new drm/aux/debugger HELLO is ENODEV; an admin HELLO is answered."""
    fresh_admin.admin_unplug()
    for role in ("drm", "aux", "debugger"):
        assert hello_errno(fresh_daemon, role) == errno.ENODEV, role
    with Device.open(fresh_daemon.socket_path, role="admin") as another:
        assert another.admin_status().unplugged == 1
        assert another.admin_clients()


def test_refused_open_leaves_no_socket_behind(
    fresh_daemon: DaemonProcess, fresh_admin: Device
) -> None:
    """Device.open() refused with ENODEV raises XeError and keeps no descriptor open."""
    fresh_admin.admin_unplug()
    fds_before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = leaked = None
        try:
            Device.open(fresh_daemon.socket_path)
        except XeError as exc:
            err = exc.errno
            leaked = len(os.listdir("/proc/self/fd")) - fds_before
        gc.collect()
    assert err == errno.ENODEV
    assert leaked == 0, "the refused connection's socket is still open"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_admin_ops_keep_working_while_unplugged(holder: Holder, fresh_admin: Device) -> None:
    """Admin status and clients are answered while unplugged, listing the live client."""
    fresh_admin.admin_unplug()
    status = fresh_admin.admin_status()
    assert status.unplugged == 1
    assert status.objects.files == 2
    (info,) = [c for c in fresh_admin.admin_clients() if c.client_id == holder.client_id]
    assert (info.bos, info.mmio_regions) == (2, 2)


# --- EALREADY and the state admin_status shows ---------------------------------------------


def test_unplug_twice_ealready(fresh_admin: Device) -> None:
    """A second unplug: EALREADY (the device stays unplugged)."""
    fresh_admin.admin_unplug()
    with pytest.raises(XeError) as e:
        fresh_admin.admin_unplug()
    assert e.value.errno == errno.EALREADY
    assert fresh_admin.admin_status().unplugged == 1


def test_replug_when_plugged_ealready(fresh_admin: Device) -> None:
    """Replug of a plugged device: EALREADY, before and after an unplug/replug cycle."""
    with pytest.raises(XeError) as e:
        fresh_admin.admin_replug()
    assert e.value.errno == errno.EALREADY
    fresh_admin.admin_unplug()
    fresh_admin.admin_replug()
    with pytest.raises(XeError) as e:
        fresh_admin.admin_replug()
    assert e.value.errno == errno.EALREADY


def test_admin_status_reflects_unplug_state(fresh_admin: Device) -> None:
    """admin_status().unplugged reads 0, 1 after unplug, 0 after replug."""
    assert fresh_admin.admin_status().unplugged == 0
    fresh_admin.admin_unplug()
    assert fresh_admin.admin_status().unplugged == 1
    fresh_admin.admin_replug()
    assert fresh_admin.admin_status().unplugged == 0


# --- release while unplugged, and after replug --------------------------------------------------


def test_client_leaving_while_unplugged_is_released(
    fresh_daemon: DaemonProcess, fresh_admin: Device
) -> None:
    """A client holding mappings that exits while unplugged has everything released: once
    a new device is plugged in, the daemon holds what it held before the client came
    (the device that went let go of its BAR0 and notice page with its last user)."""
    before = baseline(fresh_daemon)
    h = Holder(fresh_daemon)
    try:
        fds, counts = baseline(fresh_daemon)
        assert counts.files == before[1].files + 1
        assert counts.bos == 2
        fresh_admin.admin_unplug()
    finally:
        h.finish()  # exits without closing anything
    wait_until(lambda: baseline(fresh_daemon)[1] == before[1], "the departed client to be released")
    assert fresh_admin.admin_status().unplugged == 1
    fresh_admin.admin_replug()
    assert baseline(fresh_daemon) == before


def test_aux_driver_lets_go_of_a_vm_while_unplugged(fresh_daemon: DaemonProcess) -> None:
    """Unplugged, the aux driver is refused new work (ENODEV) but can still let go of
    what it holds (INVALIDATE_DONE, UNWATCH, RELEASE answer), so nothing outlives the
    application that exported the VM; after replug the application's connection is
    still one of the device that went (ENODEV) and its close releases everything."""
    from tests.helpers import errno_of as refused_with

    before = baseline(fresh_daemon)
    path = fresh_daemon.socket_path
    va = 0x10_0000
    with (
        Device.open(path) as app,
        Device.open(path, role="aux") as aux,
        Device.open(path, role="admin") as adm,
    ):
        vm = app.vm_create()
        bo = app.gem_create(4096)
        app.vm_bind(vm, bo, va)
        vm_fd = app.vm_export(vm)
        handle = aux.aux_vm_import(vm_fd, os.getpid()).vm_handle
        os.close(vm_fd)
        _spans, fds = aux.aux_vm_resolve(handle, va, 4096)
        for fd in fds:
            os.close(fd)
        app.vm_unbind(vm, va, 4096)  # the aux driver's watch is told, with a seqno
        seqno = aux.wait_event(timeout=TIMEOUT).data.seqno
        adm.admin_unplug()
        assert refused_with(aux.aux_vm_resolve, handle, va, 4096) == errno.ENODEV
        aux.aux_vm_invalidate_done(handle, seqno)
        aux.aux_vm_unwatch(handle, va, 4096)
        aux.aux_vm_release(handle)
        assert refused_with(app.vm_destroy, vm) == errno.ENODEV
        adm.admin_replug()
        assert refused_with(app.vm_destroy, vm) == errno.ENODEV
        assert refused_with(aux.aux_vm_release, handle) == errno.ENOENT  # let go already
    assert wait_until(lambda: baseline(fresh_daemon) == before, "everything released")
