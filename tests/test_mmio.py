"""MMIO regions (proposal: drm/xe: support for mmap-ing mmio regions) as the ioctls see them:
what DEVICE_QUERY lists, XE_MMIO_REGION_OPEN/CLOSE checks in their documented order, what
closing does to a mapping, and the MMAP checks of a region. What a mapped region holds and
who can reach it is in test_mmio_mapped.py, which imports the shared helpers from here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import spawn_client

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    XE_BAR0_DOORBELL_OFFSET,
    XE_BAR0_GT_REGS_OFFSET,
    XE_BAR0_INFO_OFFSET,
    XE_BAR0_INFO_SIZE,
    XE_BAR0_IRQ_STATUS_OFFSET,
    XE_INFO_DEVICE_ID,
    XE_MMIO_ACCESS_PER_FILE,
    XE_MMIO_ACCESS_READ_ONLY,
    Query,
)

MiB = 1 << 20
F_SEAL_FUTURE_WRITE = 0x0010
DEFAULT_DOORBELL_PAGES = 64
BAR0_END = XE_BAR0_DOORBELL_OFFSET + DEFAULT_DOORBELL_PAGES * PAGE_SIZE
INFO = {"bar_offset": XE_BAR0_INFO_OFFSET, "size": XE_BAR0_INFO_SIZE}
TIMEOUT = 10.0


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


def open_errno(dev: Device, **fields: Any) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(Op.XE_MMIO_REGION_OPEN, m.DrmXeMmioRegionOpen(**fields))
    return e.value.errno


def close_errno(dev: Device, **fields: Any) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(Op.XE_MMIO_REGION_CLOSE, m.DrmXeMmioRegionClose(**fields))
    return e.value.errno


def mmap_errno(dev: Device, offset: int, length: int, prot: int, flags: int = MAP_SHARED) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(Op.MMAP, m.XedMmap(offset=offset, length=length, prot=prot, flags=flags))
    return e.value.errno


def client_info(admin: Device, client_id: int) -> m.XedClientInfo:
    (info,) = [c for c in admin.admin_clients() if c.client_id == client_id]
    return info


def regions_by_name(dev: Device) -> dict[str, m.DrmXeMmioRegion]:
    return {r.name: r for r in dev.mmio_regions()}


# --- DEVICE_QUERY(MMIO_REGIONS) ----------------------------------------------------------------


def test_query_lists_info_and_doorbell_only(dev: Device) -> None:
    """MMIO_REGIONS lists the read-only 2-page info block at BAR0 0 and the per-file doorbell."""
    reply = dev.query(Query.MMIO_REGIONS)
    assert reply.query == Query.MMIO_REGIONS
    assert not reply.engines and not reply.mem_regions and not reply.gt_list
    regions = {r.name: r for r in reply.mmio_regions}
    assert set(regions) == {"info", "doorbell"}
    info = regions["info"]
    assert (info.bar_offset, info.size) == (0, 2 * PAGE_SIZE)
    assert info.access == XE_MMIO_ACCESS_READ_ONLY
    assert info.count == 1
    doorbell = regions["doorbell"]
    assert (doorbell.bar_offset, doorbell.size) == (XE_BAR0_DOORBELL_OFFSET, PAGE_SIZE)
    assert doorbell.access == XE_MMIO_ACCESS_PER_FILE
    assert doorbell.count == DEFAULT_DOORBELL_PAGES - 1  # the last page is the barrier page


def test_query_doorbell_count_follows_config(make_daemon: Any) -> None:
    """The doorbell count is doorbell_pages - 1 of the configuration."""
    daemon = make_daemon("[device]\ndoorbell_pages = 9\n")
    with Device.open(daemon.socket_path) as dev:
        assert regions_by_name(dev)["doorbell"].count == 8


# --- XE_MMIO_REGION_OPEN: the checks in docstring order -------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"extensions": 1},
        {"pad": 1},
        {"reserved": (1, 0)},
        {"reserved": (0, 1)},
        {"flags": 1},
        {"flags": 1 << 31},
    ],
    ids=["extensions", "pad", "reserved0", "reserved1", "flags1", "flags31"],
)
def test_open_mbz_fields_and_flags_einval(dev: Device, fields: dict[str, Any]) -> None:
    """extensions, pad, reserved or flags non-zero on an otherwise valid open: EINVAL."""
    assert open_errno(dev, **INFO, **fields) == errno.EINVAL


def test_open_mbz_checked_before_range(dev: Device) -> None:
    """A non-zero pad is EINVAL even when the range would be EPERM."""
    assert open_errno(dev, bar_offset=XE_BAR0_IRQ_STATUS_OFFSET, size=PAGE_SIZE, pad=1) == (
        errno.EINVAL
    )


@pytest.mark.parametrize(
    ("bar_offset", "size"),
    [
        (1, XE_BAR0_INFO_SIZE),
        (PAGE_SIZE // 2, PAGE_SIZE),
        (0, XE_BAR0_INFO_SIZE + 1),
        (0, PAGE_SIZE - 1),
        (XE_BAR0_DOORBELL_OFFSET + 8, PAGE_SIZE),
        (0, 0),
        (XE_BAR0_DOORBELL_OFFSET, 0),
        (BAR0_END, PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET, (DEFAULT_DOORBELL_PAGES + 1) * PAGE_SIZE),
        (1 << 40, PAGE_SIZE),
        (0, 1 << 40),
        (XE_BAR0_GT_REGS_OFFSET, 1 << 40),
    ],
    ids=[
        "offset1",
        "offset-half-page",
        "size-plus1",
        "size-short",
        "doorbell-plus8",
        "size0",
        "doorbell-size0",
        "at-bar-end",
        "past-bar-end",
        "far-offset",
        "huge-size",
        "gt-regs-beyond-bar",
    ],
)
def test_open_unaligned_empty_or_beyond_bar0_einval(
    dev: Device, bar_offset: int, size: int
) -> None:
    """bar_offset/size unaligned, size 0, or past the end of BAR0 (checked before EPERM): EINVAL."""
    assert open_errno(dev, bar_offset=bar_offset, size=size) == errno.EINVAL


@pytest.mark.parametrize(
    ("bar_offset", "size"),
    [
        (XE_BAR0_IRQ_STATUS_OFFSET, PAGE_SIZE),
        (XE_BAR0_GT_REGS_OFFSET, PAGE_SIZE),
        (XE_BAR0_GT_REGS_OFFSET + 0x10000, PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET - PAGE_SIZE, PAGE_SIZE),
        (PAGE_SIZE, 2 * PAGE_SIZE),
        (0, 3 * PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET - PAGE_SIZE, 2 * PAGE_SIZE),
        (0, BAR0_END),
    ],
    ids=[
        "irq-status",
        "gt-regs-start",
        "gt-regs-middle",
        "gt-regs-end",
        "info-into-irq",
        "info-and-irq",
        "gt-regs-into-doorbell",
        "whole-bar",
    ],
)
def test_open_range_touching_never_exposed_registers_eperm(
    dev: Device, bar_offset: int, size: int
) -> None:
    """A range touching irq_status (read clears) or gt_regs: EPERM."""
    assert open_errno(dev, bar_offset=bar_offset, size=size) == errno.EPERM


@pytest.mark.parametrize(
    ("bar_offset", "size"),
    [
        (0, PAGE_SIZE),
        (PAGE_SIZE, PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET, 2 * PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET + PAGE_SIZE, PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET + (DEFAULT_DOORBELL_PAGES - 1) * PAGE_SIZE, PAGE_SIZE),
        (XE_BAR0_DOORBELL_OFFSET, DEFAULT_DOORBELL_PAGES * PAGE_SIZE),
    ],
    ids=[
        "info-first-page",
        "info-second-page",
        "two-doorbells",
        "second-doorbell-page",
        "barrier-page",
        "all-doorbells",
    ],
)
def test_open_exposable_but_not_a_listed_region_einval(
    dev: Device, bar_offset: int, size: int
) -> None:
    """A page-aligned range that is exposable but not exactly a listed region: EINVAL."""
    assert open_errno(dev, bar_offset=bar_offset, size=size) == errno.EINVAL


def test_open_info_replies_offset_size_and_bar_offset(dev: Device) -> None:
    """Opening the info block returns a page-aligned fake offset, its size and BAR offset 0."""
    reply = dev.mmio_open("info")
    assert reply.size == XE_BAR0_INFO_SIZE
    assert reply.bar_offset == XE_BAR0_INFO_OFFSET
    assert reply.offset and reply.offset % PAGE_SIZE == 0
    assert reply.region_id
    dev.mmio_close(reply.region_id)


def test_second_doorbell_for_same_file_ebusy(dev: Device) -> None:
    """A file that already has its doorbell page asking for another: EBUSY; after close, fine."""
    first = dev.mmio_open("doorbell")
    with pytest.raises(XeError) as e:
        dev.mmio_open("doorbell")
    assert e.value.errno == errno.EBUSY
    dev.mmio_close(first.region_id)
    again = dev.mmio_open("doorbell")
    dev.mmio_close(again.region_id)


def test_doorbells_run_out_enospc(make_daemon: Any) -> None:
    """doorbell_pages = 3: two files get a page each, the third ENOSPC until one is closed."""
    daemon = make_daemon("[device]\ndoorbell_pages = 3\n")
    with (
        Device.open(daemon.socket_path) as a,
        Device.open(daemon.socket_path) as b,
        Device.open(daemon.socket_path) as c,
    ):
        assert regions_by_name(a)["doorbell"].count == 2
        ra = a.mmio_open("doorbell")
        rb = b.mmio_open("doorbell")
        pages = {ra.bar_offset, rb.bar_offset}
        assert pages == {XE_BAR0_DOORBELL_OFFSET, XE_BAR0_DOORBELL_OFFSET + PAGE_SIZE}
        with pytest.raises(XeError) as e:
            c.mmio_open("doorbell")
        assert e.value.errno == errno.ENOSPC
        # the info block is not a doorbell: it still opens
        c.mmio_close(c.mmio_open("info").region_id)
        a.mmio_close(ra.region_id)
        rc = c.mmio_open("doorbell")
        assert rc.bar_offset == ra.bar_offset  # the page given back, never the barrier page


def test_disconnect_gives_doorbell_back(make_daemon: Any) -> None:
    """A file that disconnects holding a doorbell gives its page back to the next file."""
    daemon = make_daemon("[device]\ndoorbell_pages = 2\n")
    with Device.open(daemon.socket_path) as b:
        with Device.open(daemon.socket_path) as a:
            a.mmio_open("doorbell")
            with pytest.raises(XeError) as e:
                b.mmio_open("doorbell")
            assert e.value.errno == errno.ENOSPC

        def try_open() -> m.DrmXeMmioRegionOpenReply | None:
            try:
                return b.mmio_open("doorbell")
            except XeError as exc:
                assert exc.errno == errno.ENOSPC
                return None

        reply = wait_until(try_open, "the disconnected file's doorbell to be released")
        assert reply.bar_offset == XE_BAR0_DOORBELL_OFFSET


# --- XE_MMIO_REGION_CLOSE ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields", [{"pad": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1)}], ids=str
)
def test_close_pad_or_reserved_einval(dev: Device, fields: dict[str, Any]) -> None:
    """CLOSE with pad or reserved non-zero: EINVAL (and the region stays open)."""
    reply = dev.mmio_open("info")
    assert close_errno(dev, region_id=reply.region_id, **fields) == errno.EINVAL
    dev.mmio_close(reply.region_id)


def test_close_unknown_region_enoent(dev: Device) -> None:
    """CLOSE of a region id never opened, or already closed: ENOENT."""
    assert close_errno(dev, region_id=0xDEAD) == errno.ENOENT
    reply = dev.mmio_open("info")
    dev.mmio_close(reply.region_id)
    assert close_errno(dev, region_id=reply.region_id) == errno.ENOENT


def test_close_other_files_region_enoent(daemon: DaemonProcess, dev: Device) -> None:
    """A region id is the file's own name: another file closing it gets ENOENT."""
    reply = dev.mmio_open("info")
    with Device.open(daemon.socket_path) as other:
        assert close_errno(other, region_id=reply.region_id) == errno.ENOENT
    dev.mmio_close(reply.region_id)


@pytest.mark.parametrize("name", ["info", "doorbell"])
def test_closed_region_offset_no_longer_maps(dev: Device, name: str) -> None:
    """After CLOSE the offset no longer maps (EINVAL); an info mapping made before keeps
    reading the shared block (not revoked: a departure, see the reference)."""
    reply = dev.mmio_open(name)
    mapping = dev.mmap_mmio(reply, writable=name == "doorbell")
    dev.mmio_close(reply.region_id)
    assert mmap_errno(dev, reply.offset, reply.size, PROT_READ) == errno.EINVAL
    if name == "info":
        assert mapping.read_u32(XE_INFO_DEVICE_ID) == 0xE20B
    mapping.close()  # a revoked doorbell's mapping is never touched here: it faults


DOORBELL_TOUCHED_AFTER_CLOSE = """
import ctypes, resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
r = dev.mmio_open("doorbell")
bell = dev.mmap_mmio(r, writable=True)
bell.write_u32(0x10, 1)  # mapped and writable (not word 0: no ring)
address = bell.user_address(0x10)
dev.mmio_close(r.region_id)
print(json.dumps("closed"), flush=True)
if argv[0] == "read":
    ctypes.string_at(address, 4)
else:
    ctypes.memmove(address, b"ring", 4)
print(json.dumps("survived"), flush=True)
"""


@pytest.mark.parametrize("access", ["read", "write"])
def test_closed_doorbell_mapping_faults_sigbus(
    daemon: DaemonProcess, dev: Device, admin: Device, access: str
) -> None:
    """A client touching its doorbell mapping after closing the region dies of SIGBUS (the
    page is revoked); the daemon lives, and another client's doorbell keeps ringing."""
    mine = dev.mmio_open("doorbell")
    with dev.mmap_mmio(mine, writable=True) as bell:
        proc = spawn_client(daemon.socket_path, DOORBELL_TOUCHED_AFTER_CLOSE, access)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        assert out.split() == ['"closed"'], err
        assert proc.returncode == -signal.SIGBUS, err
        rings = client_info(admin, dev.client_id).doorbell_rings
        bell.write_u32(0, 0xBE11)
        wait_until(lambda: bell.read_u32(0) == 0, "the device to clear our doorbell")
        wait_until(
            lambda: client_info(admin, dev.client_id).doorbell_rings == rings + 1, "our ring"
        )
    dev.mmio_close(mine.region_id)


def test_doorbell_cut_by_its_owner_harms_no_one_else(
    daemon: DaemonProcess, dev: Device, admin: Device
) -> None:
    """A client may cut its own doorbell's memfd (it must stay revocable): the daemon does
    not fault, other doorbells ring; the owner cannot grow it back nor seal it (EPERM)."""
    mine = dev.mmio_open("doorbell")
    with Device.open(daemon.socket_path) as owner, dev.mmap_mmio(mine, writable=True) as bell:
        region = owner.mmio_open("doorbell")
        args = m.XedMmap(
            offset=region.offset, length=region.size, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED
        )
        _, (fd,) = owner.ioctl_fds(Op.MMAP, args)
        try:
            os.pwrite(fd, struct.pack("<I", 7), 0)  # one ring, through the descriptor
            wait_until(lambda: client_info(admin, owner.client_id).doorbell_rings == 1, "its ring")
            os.pwrite(fd, struct.pack("<I", 8), 0)  # a ring the device may never see
            os.ftruncate(fd, 0)
            with pytest.raises(PermissionError):
                os.ftruncate(fd, PAGE_SIZE)
            for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_WRITE, F_SEAL_FUTURE_WRITE):
                with pytest.raises(PermissionError):
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seal)
            rings = client_info(admin, dev.client_id).doorbell_rings
            for ring in (1, 2):  # the device looks at the cut page between these
                bell.write_u32(0, 0xBE11 + ring)
                wait_until(lambda: bell.read_u32(0) == 0, "the device to clear our doorbell")
                wait_until(
                    lambda ring=ring: (
                        client_info(admin, dev.client_id).doorbell_rings == rings + ring
                    ),
                    "our ring",
                )
            owner.mmio_close(region.region_id)
        finally:
            os.close(fd)
    dev.mmio_close(mine.region_id)


# --- MMAP of a region -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [PAGE_SIZE, 3 * PAGE_SIZE], ids=["short", "long"])
def test_mmap_info_length_other_than_region_size_einval(dev: Device, length: int) -> None:
    """MMAP of the info block with a length other than its size: EINVAL."""
    reply = dev.mmio_open("info")
    assert mmap_errno(dev, reply.offset, length, PROT_READ) == errno.EINVAL
    dev.mmio_close(reply.region_id)


def test_mmap_doorbell_length_other_than_page_einval(dev: Device) -> None:
    """MMAP of a doorbell with 2 pages: EINVAL."""
    reply = dev.mmio_open("doorbell")
    rw = PROT_READ | PROT_WRITE
    assert mmap_errno(dev, reply.offset, 2 * PAGE_SIZE, rw) == errno.EINVAL
    dev.mmio_close(reply.region_id)


@pytest.mark.parametrize("name", ["info", "doorbell"])
def test_mmap_region_private_einval(dev: Device, name: str) -> None:
    """A private (copy-on-write) mapping of a region: EINVAL."""
    reply = dev.mmio_open(name)
    assert mmap_errno(dev, reply.offset, reply.size, PROT_READ, MAP_PRIVATE) == errno.EINVAL
    dev.mmio_close(reply.region_id)
