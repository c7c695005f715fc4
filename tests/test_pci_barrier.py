"""The PCI memory-barrier page (proposal: drm/xe/mmap: mmap support for PCI memory barrier),
mirroring IGT's xe_mmap pci-membarrier subtests: the special offset, the mmap checks, the
page that reads 0xdeadbeef and swallows writes, per-file pages and per-file counting, and
what an idle daemon with many pages mapped costs.
"""

from __future__ import annotations

import errno
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import run_client, spawn_client

from clients import Device, XeError
from clients.daemon import DaemonProcess
from clients.measure import cpu_seconds
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PCI_BARRIER_IDLE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    XE_PCI_BARRIER_MMAP_OFFSET,
)
from xed.device.watcher import COST_CLAMP, COST_WEIGHT, LOOK_RATIO, look_cost

TIMEOUT = 10.0
WORDS = PAGE_SIZE // 4
INTEGRATED = "[device]\nvram_size = 0\nvisible_vram_size = 0\n"


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


def offset_errno(dev: Device, handle: int, flags: int) -> int:
    with pytest.raises(XeError) as e:
        dev.gem_mmap_offset(handle, flags)
    return e.value.errno


def mmap_errno(dev: Device, length: int, prot: int, flags: int = MAP_SHARED) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(
            Op.MMAP,
            m.XedMmap(offset=XE_PCI_BARRIER_MMAP_OFFSET, length=length, prot=prot, flags=flags),
        )
    return e.value.errno


def barriers_of(admin: Device, client_id: int) -> int:
    (info,) = [c for c in admin.admin_clients() if c.client_id == client_id]
    return info.barriers


def _read_line(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"client failed:\n{err}")
    return json.loads(line)


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _finish(proc: subprocess.Popen[str]) -> None:
    """Let a client leave (its stdin closes) and reap it; a failure in it fails the test."""
    if proc.poll() is None:
        try:
            _, err = proc.communicate("\n", timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=30)
    else:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"client failed:\n{err}"


# --- GEM_MMAP_OFFSET with DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER -------------------------------


def test_pci_barrier_offset_is_the_special_offset(daemon: DaemonProcess, dev: Device) -> None:
    """PCI_BARRIER with handle 0 returns XE_PCI_BARRIER_MMAP_OFFSET, for every file."""
    assert dev.pci_barrier_offset() == XE_PCI_BARRIER_MMAP_OFFSET
    with Device.open(daemon.socket_path) as other:
        assert other.pci_barrier_offset() == XE_PCI_BARRIER_MMAP_OFFSET


@pytest.mark.parametrize("real_bo", [False, True], ids=["made-up", "real-bo"])
def test_pci_barrier_with_handle_einval(dev: Device, real_bo: bool) -> None:
    """PCI_BARRIER with a handle other than 0 (even a real BO's): EINVAL."""
    handle = dev.gem_create(PAGE_SIZE) if real_bo else 1234
    assert offset_errno(dev, handle, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER) == errno.EINVAL


@pytest.mark.parametrize(
    "flags",
    [1 << 1, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER | 1 << 1, 1 << 31, 0xFFFF_FFFF],
    ids=["bit1", "barrier+bit1", "bit31", "all"],
)
def test_pci_barrier_unknown_flag_bits_einval(dev: Device, flags: int) -> None:
    """Any flag bit other than PCI_BARRIER, alone or beside it, with handle 0 or a BO: EINVAL."""
    assert offset_errno(dev, 0, flags) == errno.EINVAL
    handle = dev.gem_create(PAGE_SIZE)
    assert offset_errno(dev, handle, flags) == errno.EINVAL


def test_pci_barrier_offset_without_vram_einval(make_daemon: Any) -> None:
    """On a device without VRAM (integrated: vram_size = 0) PCI_BARRIER is EINVAL."""
    daemon = make_daemon(INTEGRATED)
    with Device.open(daemon.socket_path) as dev:
        assert offset_errno(dev, 0, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER) == errno.EINVAL


def test_pci_barrier_mmap_without_vram_einval(make_daemon: Any) -> None:
    """MMAP of the barrier offset on a device without VRAM: EINVAL (xe_pci_barrier_mmap's
    !IS_DGFX check), however the client came by the offset."""
    daemon = make_daemon(INTEGRATED)
    with Device.open(daemon.socket_path) as dev:
        assert mmap_errno(dev, PAGE_SIZE, PROT_WRITE) == errno.EINVAL


# --- MMAP of the barrier offset ---------------------------------------------------------------


@pytest.mark.parametrize("length", [PAGE_SIZE + 1, 2 * PAGE_SIZE, 1 << 20])
def test_pci_barrier_mmap_more_than_a_page_einval(dev: Device, length: int) -> None:
    """MMAP of the barrier page longer than 4096 bytes (e.g. 8192): EINVAL."""
    assert mmap_errno(dev, length, PROT_WRITE) == errno.EINVAL


def test_pci_barrier_mmap_zero_length_einval(dev: Device) -> None:
    """MMAP of the barrier page with length 0: EINVAL, as mmap(2) answers any zero length."""
    assert mmap_errno(dev, 0, PROT_WRITE) == errno.EINVAL


def test_pci_barrier_mmap_private_einval(dev: Device) -> None:
    """A private (copy-on-write) mapping of the barrier page: EINVAL."""
    assert mmap_errno(dev, PAGE_SIZE, PROT_WRITE, MAP_PRIVATE) == errno.EINVAL


@pytest.mark.parametrize(
    "prot",
    [
        PROT_READ,
        PROT_READ | PROT_WRITE,
        PROT_EXEC,
        PROT_WRITE | PROT_EXEC,
        PROT_READ | PROT_WRITE | PROT_EXEC,
    ],
    ids=["r", "rw", "x", "wx", "rwx"],
)
def test_pci_barrier_mmap_read_or_exec_einval(dev: Device, prot: int) -> None:
    """MMAP of the barrier page asking for PROT_READ or PROT_EXEC: EINVAL."""
    assert mmap_errno(dev, PAGE_SIZE, prot) == errno.EINVAL


def test_pci_barrier_mmap_write_only_reads_deadbeef(dev: Device) -> None:
    """A PROT_WRITE shared mapping works and every word reads 0xdeadbeef."""
    with dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE) as page:
        assert len(page) == PAGE_SIZE
        assert [page.read_u32(4 * i) for i in range(WORDS)] == [PCI_BARRIER_IDLE] * WORDS


def test_pci_barrier_mapping_is_inherited_across_fork(daemon: DaemonProcess) -> None:
    """The library maps the barrier page write-only and without MADV_DONTFORK, as the
    kernel maps it without VM_DONTCOPY: VmFlags has neither "rd" nor "dc"."""
    flags = run_client(
        daemon.socket_path,
        """
        dev.pci_barrier()
        dev.pci_barrier_drain()
        result = []
        current = ""
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:
                    current = fields[5] if len(fields) > 5 else ""
                elif fields[0] == "VmFlags:" and current == "/memfd:xe-pci-barrier":
                    result.append(fields[1:])
        """,
    )
    assert len(flags) == 1, flags
    assert "dc" not in flags[0]
    assert "rd" not in flags[0]


# --- the device swallowing writes ---------------------------------------------------------------


def test_each_word_written_returns_to_deadbeef(dev: Device, admin: Device) -> None:
    """Writing each of the 1024 words (one at a time) sees it return to 0xdeadbeef; 1024 counted."""
    with dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE) as page:
        assert barriers_of(admin, dev.client_id) == 0
        for i in range(WORDS):
            value = 0x1000_0000 + i * 7919  # arbitrary, never 0xdeadbeef
            page.write_u32(4 * i, value)
            wait_until(
                lambda i=i: page.read_u32(4 * i) == PCI_BARRIER_IDLE,
                f"word {i} to read 0xdeadbeef again",
            )
        assert [page.read_u32(4 * i) for i in range(WORDS)] == [PCI_BARRIER_IDLE] * WORDS
        assert barriers_of(admin, dev.client_id) == WORDS


def test_igt_values_each_word_returns_to_deadbeef(dev: Device, admin: Device) -> None:
    """IGT's values (word i gets i, word 0 gets 0) each return to 0xdeadbeef and count once."""
    with dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE) as page:
        for i in (0, 1, 2, WORDS // 2, WORDS - 1):
            page.write_u32(4 * i, i)
            wait_until(lambda i=i: page.read_u32(4 * i) == PCI_BARRIER_IDLE, f"word {i}")
        assert barriers_of(admin, dev.client_id) == 5


def test_library_barriers_counted_exactly(dev: Device, admin: Device) -> None:
    """10 000 dev.pci_barrier() in a tight loop, then drain: the device counts exactly 10 000."""
    n = 10_000
    for _ in range(n):
        dev.pci_barrier()
    dev.pci_barrier_drain()
    assert dev.barriers_written == n
    assert barriers_of(admin, dev.client_id) == n
    # a second burst continues the running number and the count
    for _ in range(123):
        dev.pci_barrier()
    dev.pci_barrier_drain()
    assert barriers_of(admin, dev.client_id) == n + 123


def test_drain_without_barriers_is_a_no_op(dev: Device, admin: Device) -> None:
    """pci_barrier_drain() before any barrier maps nothing and counts nothing."""
    dev.pci_barrier_drain()
    assert barriers_of(admin, dev.client_id) == 0


# Each writer hammers one word index of its own page with its own value, waiting for the
# restore after each write, and records every value it reads that is neither 0xdeadbeef
# nor its own.
WRITER = """
import time
from protocols.constants import PAGE_SIZE, PROT_WRITE, PCI_BARRIER_IDLE
index, value, count = int(argv[0]), int(argv[1], 0), int(argv[2])
page = dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE)
print(json.dumps(dev.client_id), flush=True)
sys.stdin.readline()
foreign = []
for _ in range(count):
    page.write_u32(4 * index, value)
    deadline = time.monotonic() + 10
    while True:
        seen = page.read_u32(4 * index)
        if seen == PCI_BARRIER_IDLE:
            break
        if seen != value:
            foreign.append(seen)
        if time.monotonic() > deadline:
            raise SystemExit("the word was not restored")
        time.sleep(0.0002)
print(json.dumps(foreign[:20]), flush=True)
sys.stdin.readline()
page.close()
dev.close()
"""


def test_concurrent_writers_never_see_each_other_and_counts_are_per_file(
    fresh_daemon: DaemonProcess,
) -> None:
    """Two processes writing the same word index concurrently never observe each other's
    values; each file's count is its own writes and the admin total is their sum."""
    writes = {"a": 400, "b": 250}
    values = {"a": "0x11111111", "b": "0x22222222"}
    procs = {
        name: spawn_client(fresh_daemon.socket_path, WRITER, "17", values[name], str(count))
        for name, count in writes.items()
    }
    try:
        ids = {name: _read_line(proc) for name, proc in procs.items()}
        for proc in procs.values():
            _send(proc, "go")
        foreign = {name: _read_line(proc) for name, proc in procs.items()}
        assert foreign == {"a": [], "b": []}
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            counts = {name: barriers_of(admin, ids[name]) for name in procs}
            assert counts == writes
            assert admin.admin_status().barriers == sum(writes.values())
    finally:
        for proc in procs.values():
            _finish(proc)


def test_library_barriers_from_two_processes_attributed_to_each(
    fresh_daemon: DaemonProcess,
) -> None:
    """dev.pci_barrier() bursts from two processes are counted for each file exactly."""
    code = """
    n = int(argv[0])
    print(json.dumps(dev.client_id), flush=True)
    sys.stdin.readline()
    for _ in range(n):
        dev.pci_barrier()
    dev.pci_barrier_drain()
    print(json.dumps(dev.barriers_written), flush=True)
    sys.stdin.readline()
    dev.close()
    """
    writes = {"a": 20_000, "b": 7_000}
    procs = {
        name: spawn_client(fresh_daemon.socket_path, code, str(n)) for name, n in writes.items()
    }
    try:
        ids = {name: _read_line(proc) for name, proc in procs.items()}
        for proc in procs.values():
            _send(proc, "go")
        written = {name: _read_line(proc) for name, proc in procs.items()}
        assert written == writes
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            assert {name: barriers_of(admin, ids[name]) for name in procs} == writes
            assert admin.admin_status().barriers == sum(writes.values())
    finally:
        for proc in procs.values():
            _finish(proc)


# --- idle cost ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_daemon_with_32_barrier_pages_costs_little_cpu(fresh_daemon: DaemonProcess) -> None:
    """32 processes holding the barrier page mapped, nobody writing: daemon CPU < 10% of a core."""
    code = """
    dev.pci_barrier()
    dev.pci_barrier_drain()
    print(json.dumps(dev.client_id), flush=True)
    sys.stdin.readline()
    dev.close()
    """
    procs = [spawn_client(fresh_daemon.socket_path, code) for _ in range(32)]
    try:
        ids = [_read_line(proc) for proc in procs]
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            assert [barriers_of(admin, i) for i in ids] == [1] * 32
        cpu0, t0 = cpu_seconds(fresh_daemon.pid), time.monotonic()
        time.sleep(2.0)  # the measurement window itself
        cpu1, t1 = cpu_seconds(fresh_daemon.pid), time.monotonic()
        percent = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        print(f"idle daemon with 32 barrier pages: {percent:.2f}% of one core")
        assert percent < 10.0
    finally:
        for proc in procs:
            _finish(proc)


def test_a_stall_in_the_watcher_thread_does_not_hold_back_its_next_looks() -> None:
    """The watcher sleeps LOOK_RATIO times what a look costs on average. A rare stall in
    its thread (the cyclic GC collecting there: 1.5 ms) counts as at most COST_CLAMP
    times the average, so the next look still comes within a millisecond; when it
    counted in full, the next look waited 21 ms, and a barrier written meanwhile with it."""
    usual = 25e-6  # what a look at 65 busy pages costs
    mean = look_cost(0.0, usual)
    assert mean == usual  # the first look is taken as it is
    stalled = look_cost(mean, 1.5e-3)
    assert stalled == pytest.approx(usual * (1 + (COST_CLAMP - 1) * COST_WEIGHT))
    assert stalled * LOOK_RATIO < 1e-3
    for _ in range(40):  # and it is forgotten as the looks go on
        stalled = look_cost(stalled, usual)
    assert stalled == pytest.approx(usual, rel=0.01)


def test_looks_that_grow_dearer_raise_the_average_within_a_few_looks() -> None:
    """More pages make every look dearer: the average follows within some twenty looks
    (about 12 ms while hot), so the watcher's CPU stays near 1/LOOK_RATIO of a core."""
    mean = 25e-6
    for _ in range(20):
        mean = look_cost(mean, 100e-6)
    assert 90e-6 < mean <= 100e-6
