"""The PCI barrier page's mapping holds the device, not the file (xe maps it without
VM_DONTCOPY and its vma holds the drm_device): after the file is closed the page still
reads 0xdeadbeef and swallows writes, until no process maps it; across fork the child's
barriers work and count for the file, as many as were made, from parent and child at
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import adjusted_xed, baseline, spawn_client
from test_pci_barrier import _finish, _read_line, _send

from clients import Device
from clients.daemon import DaemonProcess

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
        time.sleep(0.005)


def listed(admin: Device, client_id: int) -> bool:
    return any(c.client_id == client_id for c in admin.admin_clients())


def barriers_of(admin: Device, client_id: int) -> int:
    (info,) = [c for c in admin.admin_clients() if c.client_id == client_id]
    return info.barriers


# Maps the barrier page, makes one barrier, closes the DRM file and waits for "go"; then
# writes one word of the page and reports whether it came back to 0xdeadbeef; at
# "unmap" unmaps the page.
AFTER_CLOSE = """
import time
from protocols.constants import PAGE_SIZE, PCI_BARRIER_IDLE, PROT_WRITE

def until_idle(page, index, timeout=10):
    end = time.monotonic() + timeout
    while page.read_u32(4 * index) != PCI_BARRIER_IDLE:
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True

page = dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE)
page.write_u32(0, 1)
assert until_idle(page, 0)
print(json.dumps(dev.client_id), flush=True)
dev.close()
sys.stdin.readline()
out = {"idle": [page.read_u32(4 * i) for i in range(PAGE_SIZE // 4)] == [PCI_BARRIER_IDLE] * 1024}
page.write_u32(4 * 9, 0x0BADF00D)
out["restored"] = until_idle(page, 9)
print(json.dumps(out), flush=True)
sys.stdin.readline()
page.close()
print(json.dumps("unmapped"), flush=True)
sys.stdin.readline()
"""


def test_barrier_page_after_close_reads_deadbeef_and_swallows_writes(
    fresh_daemon: DaemonProcess,
) -> None:
    """After the DRM file is closed (the daemon released it), a mapping made before still
    reads 0xdeadbeef and a write to it is swallowed (the word reads 0xdeadbeef again),
    counted for the device; once unmapped, the daemon lets the page go."""
    before = baseline(fresh_daemon)
    proc = spawn_client(fresh_daemon.socket_path, AFTER_CLOSE)
    try:
        client_id = _read_line(proc)
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            wait_until(lambda: not listed(admin, client_id), "the file to be released")
            counted = admin.admin_status().barriers
            assert counted == 1
            _send(proc, "go")
            assert _read_line(proc) == {"idle": True, "restored": True}
            wait_until(lambda: admin.admin_status().barriers == 2, "the write counted")
        _send(proc, "unmap")
        assert _read_line(proc) == "unmapped"
        wait_until(lambda: baseline(fresh_daemon) == before, "the page to be let go")
    finally:
        _finish(proc)


def test_barrier_page_of_a_process_that_died_goes_with_it(fresh_daemon: DaemonProcess) -> None:
    """A process that maps the barrier page and exits without closing anything leaves
    nothing behind in the daemon (its mappings went with it)."""
    before = baseline(fresh_daemon)
    code = "dev.pci_barrier()\ndev.pci_barrier_drain()\nprint(json.dumps(1), flush=True)\n"
    proc = spawn_client(fresh_daemon.socket_path, code)
    _read_line(proc)
    _finish(proc)
    wait_until(lambda: baseline(fresh_daemon) == before, "the page to be let go")


# Makes `argv[0]` barriers, forks; the child makes `argv[1]` and drains, the parent makes
# `argv[2]` meanwhile (both at once; with `argv[3]` "remap", after unmapping its page, so
# that its barriers map it again), waits for the child, drains; reports.
FORKED = """
import os
before, in_child, in_parent = (int(a) for a in argv[:3])
remap = argv[3:] == ["remap"]
for _ in range(before):
    dev.pci_barrier()
pid = os.fork()
if pid == 0:
    try:
        for _ in range(in_child):
            dev.pci_barrier()
        dev.pci_barrier_drain()
    finally:
        os._exit(0)
if remap:
    dev.pci_barrier_unmap()
for _ in range(in_parent):
    dev.pci_barrier()
_, status = os.waitpid(pid, 0)
dev.pci_barrier_drain()
print(json.dumps({"client_id": dev.client_id, "child_status": status,
                  "written": dev.barriers_written}), flush=True)
sys.stdin.readline()
"""


def run_forked(
    daemon: DaemonProcess, before: int, in_child: int, in_parent: int, *how: str
) -> None:
    args = (str(before), str(in_child), str(in_parent), *how)
    proc = spawn_client(daemon.socket_path, FORKED, *args)
    try:
        out = _read_line(proc)
        total = before + in_child + in_parent
        assert out["child_status"] == 0, "the child died of its barriers"
        assert out["written"] == total
        with Device.open(daemon.socket_path, role="admin") as admin:
            assert barriers_of(admin, out["client_id"]) == total
    finally:
        _finish(proc)


def test_forked_child_barriers_count_for_the_file(fresh_daemon: DaemonProcess) -> None:
    """A child forked after the barrier page was mapped makes barriers through the
    inherited mapping (no crash) and every one counts for the file: 300 + 500 + 0."""
    run_forked(fresh_daemon, 300, 500, 0)


def test_parent_and_child_barriers_at_once_count_exactly(fresh_daemon: DaemonProcess) -> None:
    """Parent and child storing barriers at the same time: the running number never goes
    backwards, so the device counts exactly 10 + 20 000 + 20 000."""
    run_forked(fresh_daemon, 10, 20_000, 20_000)


def test_parent_mapping_its_page_again_goes_on_sharing_the_count(
    fresh_daemon: DaemonProcess,
) -> None:
    """The parent unmaps its page (pci_barrier_unmap) while the child stores through the
    inherited mapping, then maps it again with its next barrier: the running number is
    still the one they share, so the device counts exactly 10 + 5 000 + 5 000."""
    run_forked(fresh_daemon, 10, 5_000, 5_000, "remap")


# A daemon whose sweep for closed files' pages nobody maps any more comes an hour apart:
# a page let go within a test's bounds went with its file.
SLOW_SWEEP = adjusted_xed("import xed.device.watcher", "xed.device.watcher.ORPHAN_SWEEP = 3600.0")


def test_library_unmaps_its_barrier_page_and_goes_on_counting(tmp_path: Path) -> None:
    """pci_barrier_unmap() before close: the daemon lets go of the page with the file (its
    sweep is an hour away). A barrier after an unmap maps the page again, and the running
    number goes on: every barrier counts, before and after."""
    daemon = DaemonProcess(socket_path=tmp_path / "xed.sock", entry=SLOW_SWEEP)
    daemon.start()
    try:
        with Device.open(daemon.socket_path) as first:
            first.unplug_watch()  # the device's notice page, made once and kept
        before = baseline(daemon)
        with Device.open(daemon.socket_path, role="admin") as admin:
            dev = Device.open(daemon.socket_path)
            for _ in range(100):
                dev.pci_barrier()
            dev.pci_barrier_unmap()
            assert dev.barriers_written == 100
            dev.pci_barrier_unmap()  # nothing mapped: nothing to do
            for _ in range(50):
                dev.pci_barrier()
            dev.pci_barrier_drain()
            assert dev.barriers_written == 150
            assert barriers_of(admin, dev.client_id) == 150
            dev.pci_barrier_unmap()
            dev.close()
        wait_until(lambda: baseline(daemon) == before, "the page to be let go")
    finally:
        daemon.stop()
        daemon.cleanup()
