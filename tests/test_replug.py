"""REPLUG plugs a new device in, as a driver rebind makes a new drm_device: connections
opened before the unplug stay ENODEV (their objects belong to the device that went),
their mappings stay on zero pages, that device's dma-bufs and exported VMs are ENODEV
wherever they are presented, and a debugger of the new device cannot reach them; new
connections get a device of their own (a new identity, empty memory, BAR0 as new), and
nothing of the old one is left once its clients are gone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent import Agent
from conftest import Holder, baseline
from test_unplug import IOCTLS, TIMEOUT, hello_errno, ioctl_errnos, wait_until

from clients import Device
from clients.daemon import DaemonProcess
from protocols.constants import (
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    PCI_BARRIER_IDLE,
    XE_INFO_DEVICE_ID,
)
from tests.helpers import errno_of


def replugged(daemon: DaemonProcess) -> None:
    with Device.open(daemon.socket_path, role="admin") as admin:
        admin.admin_unplug()
        admin.admin_replug()


def test_connections_of_the_unplugged_device_stay_enodev(
    fresh_daemon: DaemonProcess, holder: Holder
) -> None:
    """After unplug and replug, every ioctl of a connection opened before answers
    ENODEV, and its mappings still read zeros (nothing of the new device shows there)."""
    replugged(fresh_daemon)
    assert ioctl_errnos(holder) == dict.fromkeys(IOCTLS, errno.ENODEV)
    out = holder.run(
        f"assert dev.wait_unplugged({TIMEOUT})\n"
        "out = [bytes(bo_map[0:4]).decode(), info.read_u32(XE_INFO_DEVICE_ID), "
        "barrier.read_u32(0)]"
    )
    assert out == ["\0" * 4, 0, 0]
    assert hello_errno(fresh_daemon, "drm") == 0


def test_replug_plugs_a_new_device_in(fresh_daemon: DaemonProcess, holder: Holder) -> None:
    """A connection opened after replug reaches a new device: another identity instance,
    its BOs, MMIO info block and barrier page work, its barriers count from zero; the
    old connection's barrier page is not the new one's."""
    with Device.open(fresh_daemon.socket_path) as old_peer:
        old = old_peer.identity
    replugged(fresh_daemon)
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path, role="admin") as admin,
    ):
        assert dev.identity.instance != old.instance
        assert (dev.identity.name, dev.identity.device_id) == (old.name, old.device_id)
        with dev.mmap_bo(dev.gem_create(0x4000)) as cpu:
            assert bytes(cpu[0:0x4000]) == bytes(0x4000)
            cpu[0:2] = b"ok"
            assert bytes(cpu[0:2]) == b"ok"
        region = dev.mmio_open("info")
        with dev.mmap_mmio(region) as info:
            assert info.read_u32(XE_INFO_DEVICE_ID) == 0xE20B
        dev.pci_barrier()
        dev.pci_barrier_drain()
        assert dev.pci_barrier_mapping().read_u32(0) == PCI_BARRIER_IDLE
        (mine,) = [c for c in admin.admin_clients() if c.client_id == dev.client_id]
        assert mine.barriers == 1
        assert not dev.wait_unplugged(0)
    still = holder.run("barrier.write_u32(0, 0x77)\nout = barrier.read_u32(0)")
    assert still == 0x77, "the old connection's barrier page was watched by the new device"


EXPORTER = """
vm = dev.vm_create()
handle = dev.gem_create(PAGE_SIZE)
dev.vm_bind(vm, handle, 0x10_0000)
send = [dev.prime_handle_to_fd(handle), dev.vm_export(vm)]
"""


def test_exported_objects_of_the_unplugged_device_are_enodev(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A dma-buf and an exported VM of the device that went, presented to the new one:
    PRIME_FD_TO_HANDLE, DMA_BUF_MMAP, DMA_BUF_LLSEEK, DMA_BUF_IOCTL_SYNC and
    AUX_VM_IMPORT answer ENODEV; once every copy is closed nothing is left."""
    before = baseline(fresh_daemon)
    exporter = agents(fresh_daemon)
    _, (dma_buf, vm_fd) = exporter.run_fds(EXPORTER)
    try:
        replugged(fresh_daemon)
        with (
            Device.open(fresh_daemon.socket_path) as dev,
            Device.open(fresh_daemon.socket_path, role="aux") as aux,
        ):
            assert errno_of(dev.prime_fd_to_handle, dma_buf) == errno.ENODEV
            assert errno_of(dev.dmabuf_mmap, dma_buf, 4096) == errno.ENODEV
            assert errno_of(dev.dmabuf_size, dma_buf) == errno.ENODEV
            sync = DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW
            assert errno_of(dev.dmabuf_sync, dma_buf, sync) == errno.ENODEV
            assert errno_of(aux.aux_vm_import, vm_fd, exporter.pid) == errno.ENODEV
    finally:
        os.close(dma_buf)
        os.close(vm_fd)
    exporter.close()
    wait_until(lambda: baseline(fresh_daemon) == before, "the old device's objects released")


def test_a_debugger_of_the_new_device_cannot_reach_old_connections(
    fresh_daemon: DaemonProcess, holder: Holder
) -> None:
    """A debugger connected after replug attaching to a process whose only connection is
    of the device that went: ESRCH (no connection of that process on this device)."""
    replugged(fresh_daemon)
    with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
        assert errno_of(dbg.debug_attach, holder.proc.pid) == errno.ESRCH
