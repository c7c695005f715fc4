"""MMIO regions once mapped (proposal: drm/xe: support for mmap-ing mmio regions): the
sealed read-only info block, per-file doorbell pages, isolation between processes and
MADV_DONTFORK. These tests need real mappings and often other processes, so they live
apart from test_mmio.py's checks of the ioctls; the helpers both use stay there.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from typing import Any

import pytest
from conftest import run_client, spawn_client
from test_mmio import DEFAULT_DOORBELL_PAGES, F_SEAL_FUTURE_WRITE, client_info, wait_until

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    XE_BAR0_INFO_SIZE,
    XE_INFO_DEVICE_ID,
    XE_INFO_DOORBELLS,
    XE_INFO_REVISION,
    XE_INFO_SYSTEM_MEMORY,
    XE_INFO_TIMESTAMP,
    XE_INFO_VA_BITS,
    XE_INFO_VRAM_SIZE,
)

GiB = 1 << 30


# --- the info block -----------------------------------------------------------------------


def read_info(mapping: Any) -> dict[str, int]:
    return {
        "device_id": mapping.read_u32(XE_INFO_DEVICE_ID),
        "revision": mapping.read_u32(XE_INFO_REVISION),
        "vram_size": mapping.read_u64(XE_INFO_VRAM_SIZE),
        "system_memory": mapping.read_u64(XE_INFO_SYSTEM_MEMORY),
        "va_bits": mapping.read_u32(XE_INFO_VA_BITS),
        "doorbells": mapping.read_u32(XE_INFO_DOORBELLS),
    }


def test_info_registers_match_default_config(dev: Device) -> None:
    """The info block of the default device: 0xE20B, rev 0, 4 GiB VRAM, 8 GiB, 48 bits, 63."""
    reply = dev.mmio_open("info")
    with dev.mmap_mmio(reply) as mapping:
        assert read_info(mapping) == {
            "device_id": 0xE20B,
            "revision": 0,
            "vram_size": 4 * GiB,
            "system_memory": 8 * GiB,
            "va_bits": 48,
            "doorbells": DEFAULT_DOORBELL_PAGES - 1,
        }
        assert dev.identity.device_id == mapping.read_u32(XE_INFO_DEVICE_ID)
    dev.mmio_close(reply.region_id)


def test_info_registers_follow_config(make_daemon: Any) -> None:
    """The info block's registers follow the device configuration."""
    daemon = make_daemon(
        """
        [device]
        device_id = 0x56A0
        revision = 3
        vram_size = 1073741824
        visible_vram_size = 268435456
        system_memory = 2147483648
        va_bits = 47
        doorbell_pages = 9
        """
    )
    with Device.open(daemon.socket_path) as dev:
        reply = dev.mmio_open("info")
        with dev.mmap_mmio(reply) as mapping:
            assert read_info(mapping) == {
                "device_id": 0x56A0,
                "revision": 3,
                "vram_size": 1 * GiB,
                "system_memory": 2 * GiB,
                "va_bits": 47,
                "doorbells": 8,
            }


def test_info_timestamp_moves(dev: Device) -> None:
    """The free-running timestamp at XE_INFO_TIMESTAMP changes and never goes back."""
    reply = dev.mmio_open("info")
    with dev.mmap_mmio(reply) as mapping:
        first = mapping.read_u64(XE_INFO_TIMESTAMP)
        second = wait_until(
            lambda: (v := mapping.read_u64(XE_INFO_TIMESTAMP)) != first and v,
            "the timestamp to move",
        )
        assert second > first
        third = wait_until(
            lambda: (v := mapping.read_u64(XE_INFO_TIMESTAMP)) != second and v,
            "the timestamp to move again",
        )
        assert third > second
    dev.mmio_close(reply.region_id)


def _info_fd(dev: Device) -> tuple[m.DrmXeMmioRegionOpenReply, int]:
    reply = dev.mmio_open("info")
    mm_reply, (fd,) = dev.ioctl_fds(
        Op.MMAP,
        m.XedMmap(offset=reply.offset, length=reply.size, prot=PROT_READ, flags=MAP_SHARED),
    )
    assert mm_reply.length == reply.size
    return reply, fd


def test_info_descriptor_is_rdonly_and_writable_shared_mmap_eacces(dev: Device) -> None:
    """The info block comes as an O_RDONLY sealed memfd: a PROT_WRITE shared mmap is EACCES."""
    reply, fd = _info_fd(dev)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & F_SEAL_FUTURE_WRITE
        assert seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError) as e:
            mmap.mmap(fd, reply.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert e.value.errno == errno.EACCES
        with mmap.mmap(fd, reply.size, mmap.MAP_SHARED, mmap.PROT_READ) as ro:
            assert struct.unpack_from("<I", ro, XE_INFO_DEVICE_ID)[0] == 0xE20B
    finally:
        os.close(fd)
    dev.mmio_close(reply.region_id)


def test_info_writable_mmap_through_client_library_eacces(dev: Device) -> None:
    """mmap_mmio(info, writable=True) fails in the kernel with EACCES, leaking nothing."""
    reply = dev.mmio_open("info")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PermissionError) as e:
        dev.mmap_mmio(reply, writable=True)
    assert e.value.errno == errno.EACCES
    assert len(os.listdir("/proc/self/fd")) == before
    dev.mmio_close(reply.region_id)


def test_info_reopened_read_write_still_cannot_be_written(dev: Device) -> None:
    """Reopening the info memfd O_RDWR (root only) gives no write: mmap and write are EPERM."""
    reply, fd = _info_fd(dev)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError) as e:
                os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            assert e.value.errno == errno.EACCES
            return
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError) as e:
                mmap.mmap(rw, reply.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            assert e.value.errno == errno.EPERM
            with pytest.raises(PermissionError) as e:
                os.pwrite(rw, b"\xff\xff\xff\xff", XE_INFO_DEVICE_ID)
            assert e.value.errno == errno.EPERM
            with pytest.raises(PermissionError) as e:
                os.write(rw, b"\x00")
            assert e.value.errno == errno.EPERM
            with pytest.raises(PermissionError) as e:
                os.ftruncate(rw, 0)
            assert e.value.errno == errno.EPERM
            assert os.pread(rw, 4, XE_INFO_DEVICE_ID) == struct.pack("<I", 0xE20B)
        finally:
            os.close(rw)
    finally:
        os.close(fd)
    dev.mmio_close(reply.region_id)


def test_two_processes_see_the_same_info_bytes(daemon: DaemonProcess, dev: Device) -> None:
    """Another process's mapping of the info block holds the same bytes (timestamp aside)."""
    reply = dev.mmio_open("info")
    with dev.mmap_mmio(reply) as mapping:
        mine = bytes(mapping[0:XE_BAR0_INFO_SIZE])
    dev.mmio_close(reply.region_id)
    theirs = run_client(
        daemon.socket_path,
        """
        r = dev.mmio_open("info")
        with dev.mmap_mmio(r) as mp:
            result = bytes(mp[0:r.size]).hex()
        """,
    )
    theirs_bytes = bytes.fromhex(theirs)
    assert len(theirs_bytes) == XE_BAR0_INFO_SIZE

    def without_timestamp(block: bytes) -> bytes:
        return block[:XE_INFO_TIMESTAMP] + block[XE_INFO_TIMESTAMP + 8 :]

    assert without_timestamp(theirs_bytes) == without_timestamp(mine)


# --- isolation between processes -------------------------------------------------------------


@pytest.mark.parametrize("name", ["info", "doorbell"])
def test_region_of_another_process_eacces(daemon: DaemonProcess, dev: Device, name: str) -> None:
    """A process mapping the fake offset of a region another process opened: EACCES."""
    reply = dev.mmio_open(name)
    err = run_client(
        daemon.socket_path,
        """
        from protocols import Op, messages as m
        from protocols.constants import MAP_SHARED, PROT_READ
        try:
            dev.ioctl(Op.MMAP, m.XedMmap(offset=int(argv[0]), length=int(argv[1]),
                                         prot=PROT_READ, flags=MAP_SHARED))
            result = 0
        except XeError as exc:
            result = exc.errno
        """,
        str(reply.offset),
        str(reply.size),
    )
    assert err == errno.EACCES
    dev.mmio_close(reply.region_id)


def test_doorbell_cleared_and_counted_after_ring(dev: Device, admin: Device) -> None:
    """A non-zero word 0 rings the bell: the device clears it and counts one ring for the file."""
    reply = dev.mmio_open("doorbell")
    with dev.mmap_mmio(reply, writable=True) as bell:
        assert bytes(bell[0:PAGE_SIZE]) == bytes(PAGE_SIZE)
        assert client_info(admin, dev.client_id).doorbell_rings == 0
        for ring in (1, 2, 3):
            bell.write_u32(0, 0xC0FFEE + ring)
            wait_until(lambda: bell.read_u32(0) == 0, "the device to clear the doorbell")
            wait_until(
                lambda ring=ring: client_info(admin, dev.client_id).doorbell_rings == ring,
                f"{ring} rings counted",
            )
    dev.mmio_close(reply.region_id)


def _read_json_line(proc: Any) -> Any:
    import json

    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"client failed:\n{err}")
    return json.loads(line)


def test_doorbell_is_per_file_across_processes(
    daemon: DaemonProcess, dev: Device, admin: Device
) -> None:
    """A's doorbell ring is counted for A only and B's own page never shows A's value."""
    b_reply = dev.mmio_open("doorbell")
    b_bell = dev.mmap_mmio(b_reply, writable=True)
    proc = spawn_client(
        daemon.socket_path,
        """
        import time
        r = dev.mmio_open("doorbell")
        bell = dev.mmap_mmio(r, writable=True)
        print(json.dumps([dev.client_id, r.bar_offset]), flush=True)
        sys.stdin.readline()
        bell.write_u32(0, 0xA11CE)
        deadline = time.monotonic() + 10
        while bell.read_u32(0) != 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        print(json.dumps(bell.read_u32(0)), flush=True)
        sys.stdin.readline()
        bell.close()
        dev.close()
        """,
    )
    try:
        a_id, a_bar_offset = _read_json_line(proc)
        assert a_bar_offset != b_reply.bar_offset
        assert proc.stdin is not None
        proc.stdin.write("ring\n")
        proc.stdin.flush()
        assert _read_json_line(proc) == 0  # the device cleared A's bell
        wait_until(lambda: client_info(admin, a_id).doorbell_rings == 1, "A's ring counted")
        assert client_info(admin, dev.client_id).doorbell_rings == 0
        assert bytes(b_bell[0:PAGE_SIZE]) == bytes(PAGE_SIZE)
        proc.communicate("done\n", timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        b_bell.close()
    dev.mmio_close(b_reply.region_id)


# --- MADV_DONTFORK ---------------------------------------------------------------------------


def test_region_mappings_are_dontfork_in_smaps(daemon: DaemonProcess) -> None:
    """Region mappings carry VmFlags "dc" (VM_DONTCOPY, set by MADV_DONTFORK); a BO's do not."""
    flags = run_client(
        daemon.socket_path,
        """
        info = dev.mmap_mmio(dev.mmio_open("info"))
        bell = dev.mmap_mmio(dev.mmio_open("doorbell"), writable=True)
        bo = dev.mmap_bo(dev.gem_create(4096))
        result = {}
        current = None
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:
                    current = fields[5] if len(fields) > 5 else ""
                elif fields[0] == "VmFlags:" and current.startswith("/memfd:xe-"):
                    result.setdefault(current, []).append(fields[1:])
        """,
    )
    (info_flags,) = flags["/memfd:xe-bar0-info"]
    (bell_flags,) = flags["/memfd:xe-doorbell"]
    assert "dc" in info_flags
    assert "dc" in bell_flags
    assert "mw" not in info_flags  # no write possible, ever (VM_MAYWRITE cleared)
    bo_flags = [v for k, v in flags.items() if k.startswith("/memfd:xe-bo")]
    assert bo_flags, sorted(flags)
    assert all("dc" not in f for (f,) in bo_flags)


def test_forked_child_does_not_inherit_doorbell_mapping(daemon: DaemonProcess) -> None:
    """A forked child touching the doorbell mapping dies of SIGSEGV; the parent's mapping works."""
    outcome = run_client(
        daemon.socket_path,
        """
        import ctypes, os, resource
        bell = dev.mmap_mmio(dev.mmio_open("doorbell"), writable=True)
        bell.write_u32(0x10, 0x5A5A5A5A)  # not word 0: no ring
        address = bell.user_address(0x10)
        pid = os.fork()
        if pid == 0:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            ctypes.string_at(address, 4)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        result = {
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "parent": bell.read_u32(0x10),
        }
        """,
    )
    import signal

    assert outcome == {"signal": signal.SIGSEGV, "exit": None, "parent": 0x5A5A5A5A}
