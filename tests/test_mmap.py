"""MMAP of fake offsets: the kernel's mmap checks, real shared mappings, per-file isolation."""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

import pytest
from conftest import run_client

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)

GiB = 1 << 30
MiB = 1 << 20
RW = PROT_READ | PROT_WRITE
F_SEAL_FUTURE_WRITE = 0x0010


def mmap_request(
    dev: Device, offset: int, length: int, prot: int = RW, flags: int = MAP_SHARED
) -> Any:
    return dev.ioctl(Op.MMAP, m.XedMmap(offset=offset, length=length, prot=prot, flags=flags))


def mmap_errno(
    dev: Device, offset: int, length: int, prot: int = RW, flags: int = MAP_SHARED
) -> int:
    with pytest.raises(XeError) as e:
        mmap_request(dev, offset, length, prot, flags)
    return e.value.errno


def new_bo(dev: Device, size: int = 2 * PAGE_SIZE) -> tuple[int, int]:
    """(handle, fake offset) of a fresh system-memory BO."""
    handle = dev.gem_create(size)
    return handle, dev.gem_mmap_offset(handle)


def vm_rss(pid: int | str) -> int:
    """Resident set size of a process in bytes, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


# --- the checks, in the order of xed/device/mmap.py -----------------------------------------


def test_mmap_zero_length_is_einval(dev: Device) -> None:
    """length 0: EINVAL."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, offset, 0) == errno.EINVAL


@pytest.mark.parametrize("delta", [1, 8, PAGE_SIZE // 2, PAGE_SIZE - 1])
def test_mmap_unaligned_offset_is_einval(dev: Device, delta: int) -> None:
    """An offset that is not page aligned: EINVAL."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, offset + delta, PAGE_SIZE) == errno.EINVAL


@pytest.mark.parametrize(
    "flags",
    [0, MAP_SHARED | MAP_PRIVATE, 0x10, MAP_SHARED | 0x10, MAP_SHARED | 0x20, 0x03 | 0x100],
    ids=["neither", "both", "other", "shared+fixed", "shared+anon", "both+other"],
)
def test_mmap_flags_not_exactly_shared_or_private_is_einval(dev: Device, flags: int) -> None:
    """flags must be exactly MAP_SHARED or MAP_PRIVATE: neither, both or extra bits are EINVAL."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, offset, PAGE_SIZE, flags=flags) == errno.EINVAL


@pytest.mark.parametrize("prot", [0x8, RW | 0x8, RW | 0x1000, PROT_READ | 1 << 31])
def test_mmap_unknown_prot_bits_is_einval(dev: Device, prot: int) -> None:
    """prot bits outside READ | WRITE | EXEC: EINVAL."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, offset, PAGE_SIZE, prot=prot) == errno.EINVAL


def test_mmap_offset_of_nothing_is_einval(dev: Device) -> None:
    """An aligned offset where no object starts (zero, a guard page, far away): EINVAL."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, 0, PAGE_SIZE) == errno.EINVAL
    assert mmap_errno(dev, PAGE_SIZE, PAGE_SIZE) == errno.EINVAL
    assert mmap_errno(dev, offset + 2 * PAGE_SIZE, PAGE_SIZE) == errno.EINVAL
    assert mmap_errno(dev, offset - PAGE_SIZE, PAGE_SIZE) == errno.EINVAL
    assert mmap_errno(dev, 1 << 60, PAGE_SIZE) == errno.EINVAL


def test_mmap_offset_inside_a_bo_is_einval(dev: Device) -> None:
    """An offset in the middle of a BO, not at its start: EINVAL (exact lookup)."""
    _, offset = new_bo(dev, 4 * PAGE_SIZE)
    for page in (1, 2, 3):
        assert mmap_errno(dev, offset + page * PAGE_SIZE, PAGE_SIZE) == errno.EINVAL


@pytest.mark.parametrize("extra", [1, PAGE_SIZE, 1 << 40])
def test_mmap_length_beyond_bo_is_einval(dev: Device, extra: int) -> None:
    """A length running past the end of the BO: EINVAL."""
    _, offset = new_bo(dev, 2 * PAGE_SIZE)
    assert mmap_errno(dev, offset, 2 * PAGE_SIZE + extra) == errno.EINVAL


def test_mmap_other_files_offset_is_eacces(daemon: DaemonProcess, dev: Device) -> None:
    """The offset of another connection's BO: EACCES (it exists, but is not allowed)."""
    with Device.open(daemon.socket_path) as other:
        _, offset = new_bo(other)
        assert mmap_errno(dev, offset, PAGE_SIZE) == errno.EACCES
        assert mmap_errno(dev, offset, 2 * PAGE_SIZE, prot=PROT_READ) == errno.EACCES


def test_mmap_private_mapping_is_einval(dev: Device) -> None:
    """MAP_PRIVATE (copy-on-write) of a BO: EINVAL, whatever the prot."""
    _, offset = new_bo(dev)
    assert mmap_errno(dev, offset, PAGE_SIZE, flags=MAP_PRIVATE) == errno.EINVAL
    assert mmap_errno(dev, offset, PAGE_SIZE, prot=PROT_READ, flags=MAP_PRIVATE) == errno.EINVAL


def test_mmap_argument_checks_come_before_permission(daemon: DaemonProcess, dev: Device) -> None:
    """At another file's offset, a bad length, flags, prot or overrun is still EINVAL."""
    with Device.open(daemon.socket_path) as other:
        _, offset = new_bo(other, 2 * PAGE_SIZE)
        assert mmap_errno(dev, offset, 0) == errno.EINVAL
        assert mmap_errno(dev, offset, PAGE_SIZE, flags=0) == errno.EINVAL
        assert mmap_errno(dev, offset, PAGE_SIZE, prot=0x8) == errno.EINVAL
        assert mmap_errno(dev, offset, 3 * PAGE_SIZE) == errno.EINVAL


def test_mmap_permission_comes_before_private_check(daemon: DaemonProcess, dev: Device) -> None:
    """MAP_PRIVATE of another file's offset: EACCES (permission is checked first)."""
    with Device.open(daemon.socket_path) as other:
        _, offset = new_bo(other)
        assert mmap_errno(dev, offset, PAGE_SIZE, flags=MAP_PRIVATE) == errno.EACCES


# --- what a mapping is ------------------------------------------------------------------------


def test_mmap_whole_bo_is_readable_and_writable(dev: Device) -> None:
    """A shared read-write mapping of a whole BO starts zeroed and keeps what is written."""
    handle, _ = new_bo(dev, 4 * PAGE_SIZE)
    with dev.mmap_bo(handle) as mp:
        assert len(mp) == 4 * PAGE_SIZE
        assert mp[0 : 4 * PAGE_SIZE] == bytes(4 * PAGE_SIZE)
        mp[0:5] = b"hello"
        mp[4 * PAGE_SIZE - 1] = 0x7F
        assert mp[0:5] == b"hello"
        assert mp[4 * PAGE_SIZE - 1] == 0x7F


def test_mmap_shorter_than_object_maps(dev: Device) -> None:
    """A length shorter than the BO maps its first bytes, sharing them with a full mapping."""
    handle, offset = new_bo(dev, 4 * PAGE_SIZE)
    reply = mmap_request(dev, offset, PAGE_SIZE)
    assert reply.length == PAGE_SIZE
    with dev.mmap(offset, PAGE_SIZE) as short, dev.mmap_bo(handle) as full:
        assert len(short) == PAGE_SIZE
        short[100:104] = b"abcd"
        assert full[100:104] == b"abcd"


def test_mmap_read_only_prot_maps(dev: Device) -> None:
    """PROT_READ alone maps, and the mapping refuses writes."""
    handle, offset = new_bo(dev)
    with dev.mmap_bo(handle) as rw:
        rw[0:3] = b"xyz"
        with dev.mmap(offset, 2 * PAGE_SIZE, prot=PROT_READ) as ro:
            assert ro[0:3] == b"xyz"
            with pytest.raises(TypeError):
                ro[0:3] = b"abc"


def test_two_mappings_of_a_bo_share_pages(dev: Device) -> None:
    """Two mappings of the same BO in one process see each other's writes."""
    handle, _ = new_bo(dev, 2 * PAGE_SIZE)
    with dev.mmap_bo(handle) as a, dev.mmap_bo(handle) as b:
        assert a.address != b.address
        a.write_u64(PAGE_SIZE + 8, 0x1122334455667788)
        assert b.read_u64(PAGE_SIZE + 8) == 0x1122334455667788
        b.write_u32(0, 0xCAFEF00D)
        assert a.read_u32(0) == 0xCAFEF00D


def test_mapping_outlives_gem_close(dev: Device) -> None:
    """After GEM_CLOSE of its only handle, an existing mapping stays readable and writable."""
    handle, _ = new_bo(dev, 2 * PAGE_SIZE)
    with dev.mmap_bo(handle) as mp:
        mp[0:4] = b"keep"
        dev.gem_close(handle)
        assert mp[0:4] == b"keep"
        mp[PAGE_SIZE : PAGE_SIZE + 5] = b"still"
        assert mp[PAGE_SIZE : PAGE_SIZE + 5] == b"still"


def test_mmap_after_gem_close_is_einval(dev: Device) -> None:
    """Once the last handle is closed, its old offset maps nothing: EINVAL."""
    handle, offset = new_bo(dev)
    with dev.mmap_bo(handle):
        dev.gem_close(handle)
        assert mmap_errno(dev, offset, PAGE_SIZE) == errno.EINVAL
    assert mmap_errno(dev, offset, PAGE_SIZE) == errno.EINVAL


def test_replayed_offset_in_other_process_is_eacces(dev: Device, daemon: DaemonProcess) -> None:
    """Another process that replays this process's offset gets EACCES."""
    handle, offset = new_bo(dev)
    with dev.mmap_bo(handle) as mp:
        mp[0:6] = b"secret"
        code = """
        try:
            dev.mmap(int(argv[0]), 4096)
            result = "mapped"
        except XeError as e:
            result = e.errno
        """
        assert run_client(daemon.socket_path, code, str(offset)) == errno.EACCES
        assert mp[0:6] == b"secret"


def test_guessed_offsets_never_reach_other_process_bo(fresh_daemon: DaemonProcess) -> None:
    """A process that tries every page offset around its own BO maps only its own BO."""
    with Device.open(fresh_daemon.socket_path) as dev:
        handle, theirs = new_bo(dev, 2 * PAGE_SIZE)
        with dev.mmap_bo(handle) as mp:
            mp[0:6] = b"secret"
            code = """
            handle = dev.gem_create(4096)
            own = dev.gem_mmap_offset(handle)
            outcomes = {}
            seen_secret = False
            for page in range(-64, 65):
                offset = own + page * 4096
                for length in (4096, 8192):
                    try:
                        with dev.mmap(offset, length) as mp:
                            seen_secret |= mp[0:6] == b"secret"
                        outcomes[f"{offset}:{length}"] = "mapped"
                    except XeError as e:
                        outcomes[f"{offset}:{length}"] = e.errno
            result = {"own": own, "outcomes": outcomes, "seen_secret": seen_secret}
            """
            result = run_client(fresh_daemon.socket_path, code)
    own = result["own"]
    outcomes = result["outcomes"]
    assert not result["seen_secret"]
    mapped = sorted(key for key, value in outcomes.items() if value == "mapped")
    assert mapped == [f"{own}:4096"]
    assert set(outcomes.values()) <= {"mapped", errno.EINVAL, errno.EACCES}
    # the guesses did reach the other BO's offset, and were refused there
    assert outcomes[f"{theirs}:4096"] == errno.EACCES
    assert outcomes[f"{theirs}:8192"] == errno.EACCES
    assert outcomes[f"{theirs + PAGE_SIZE}:4096"] == errno.EINVAL


def test_one_gib_bo_maps_without_touching_pages(dev: Device, daemon: DaemonProcess) -> None:
    """Creating and mapping a 1 GiB BO makes neither the daemon nor the client resident."""
    daemon_before = vm_rss(daemon.pid)
    client_before = vm_rss("self")
    handle = dev.gem_create(GiB)
    with dev.mmap_bo(handle) as mp:
        assert len(mp) == GiB
        assert mp[0] == 0
        assert mp[GiB - 1] == 0
        daemon_growth = vm_rss(daemon.pid) - daemon_before
        client_growth = vm_rss("self") - client_before
    assert daemon_growth < 8 * MiB, f"daemon RSS grew by {daemon_growth} bytes"
    assert client_growth < 8 * MiB, f"client RSS grew by {client_growth} bytes"


def test_mmap_socket_bytes_do_not_depend_on_size(dev: Device) -> None:
    """Mapping a 1 GiB BO costs only a few more bytes on the socket than a 4 KiB one."""
    _, small = new_bo(dev, PAGE_SIZE)
    _, big = new_bo(dev, GiB)

    def cost(offset: int, length: int) -> int:
        sent, received = dev.transport.bytes_sent, dev.transport.bytes_received
        with dev.mmap(offset, length):
            pass
        return dev.transport.bytes_sent - sent + dev.transport.bytes_received - received

    small_cost = cost(small, PAGE_SIZE)
    big_cost = cost(big, GiB)
    assert abs(big_cost - small_cost) < 16, (small_cost, big_cost)


def test_mmap_descriptor_is_sealed_memfd(dev: Device) -> None:
    """The descriptor MMAP sends is a memfd of exactly the BO, sealed against resizing."""
    _, offset = new_bo(dev, 4 * PAGE_SIZE)
    reply, fds = dev.ioctl_fds(
        Op.MMAP, m.XedMmap(offset=offset, length=PAGE_SIZE, prot=RW, flags=MAP_SHARED)
    )
    assert len(fds) == 1
    (fd,) = fds
    try:
        assert reply.offset == 0
        assert reply.length == PAGE_SIZE
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
        assert os.fstat(fd).st_size == 4 * PAGE_SIZE
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK
        assert seals & fcntl.F_SEAL_GROW
        assert not seals & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)
        for size in (0, PAGE_SIZE, 8 * PAGE_SIZE):
            with pytest.raises(OSError) as e:
                os.ftruncate(fd, size)
            assert e.value.errno == errno.EPERM
        assert os.fstat(fd).st_size == 4 * PAGE_SIZE
    finally:
        os.close(fd)


def test_mmap_descriptor_refuses_new_seals(dev: Device) -> None:
    """A client cannot add seals to the memfd it was sent (F_SEAL_SEAL): EPERM."""
    _, offset = new_bo(dev)
    _, fds = dev.ioctl_fds(
        Op.MMAP, m.XedMmap(offset=offset, length=PAGE_SIZE, prot=RW, flags=MAP_SHARED)
    )
    (fd,) = fds
    try:
        with pytest.raises(OSError) as e:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
        assert e.value.errno == errno.EPERM
    finally:
        os.close(fd)


def test_mmap_exec_prot_is_accepted(dev: Device) -> None:
    """PROT_EXEC is a known prot bit: the daemon answers with a descriptor."""
    _, offset = new_bo(dev)
    reply = mmap_request(dev, offset, PAGE_SIZE, prot=PROT_READ | PROT_EXEC)
    assert reply.length == PAGE_SIZE
