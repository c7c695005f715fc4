"""A device unplugged under a C program's mappings (clients/preload/unplug.c).

The program (tests/preload/unplug_zap.c, under `xec run`) maps a BO or a dma-buf and
says so; the test maps the same memory by hand in this process (flink, MMAP, mmap of the
memfd: no library watches over it), unplugs the device as admin and tells the program.
The program checks its own side: its mapping reads zeros, turns anonymous in
/proc/self/maps within a bound, keeps what it writes there, raises no SIGBUS. The test
checks the other side: what the program wrote after the unplug never reaches the
mapping made by hand, which reads the emptied memfd's zeros.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import Device, preload
from clients.daemon import DaemonProcess
from protocols.constants import PROT_READ, PROT_WRITE
from tests.test_preload import TIMEOUT, Programs, passes, spawn

SIZE = 0x4000


@pytest.fixture
def program(tmp_path: Path) -> Programs:
    preload.build()
    return Programs(tmp_path)


@contextlib.contextmanager
def running(daemon: DaemonProcess, exe: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """unplug_zap MODE under `xec run`; it must exit 0 once its stdin closes."""
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(daemon.socket_path)]
    with spawn([*cmd, "--", str(exe), mode]) as proc:
        yield proc
        _out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"unplug_zap {mode} failed ({proc.returncode}):\n{err}"


def said(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _out, err = proc.communicate(timeout=TIMEOUT)
        raise AssertionError(f"unplug_zap ended early ({proc.returncode}):\n{err}")
    return line.split()


def tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


@contextlib.contextmanager
def by_hand(daemon: DaemonProcess, name: int) -> Iterator[mmap.mmap]:
    """The BO flink `name` names, mapped here by hand: the memfd, with nothing watching."""
    with Device.open(daemon.socket_path) as dev:
        handle, size = dev.gem_open(name)
        fd, offset, length = dev.mmap_fd(dev.gem_mmap_offset(handle), size)
    try:
        view = mmap.mmap(fd, length, mmap.MAP_SHARED, PROT_READ | PROT_WRITE, offset=offset)
    finally:
        os.close(fd)
    with view:
        yield view


def unplugged_writes_stay_home(
    daemon: DaemonProcess, admin: Device, exe: Path, mode: str, written: bytes
) -> None:
    """The program maps (MODE), the device goes, the program writes `written` at 64: the
    mapping made by hand in this process reads zeros all along."""
    with running(daemon, exe, mode) as proc:
        word, name = said(proc)
        assert word == "mapped"
        with by_hand(daemon, int(name)) as view:
            assert view[0:6] == b"before"
            admin.admin_unplug()
            tell(proc)
            assert said(proc) == ["written"]
            assert view[0:SIZE] == bytes(SIZE), (
                f"the program's write after the unplug reached another mapping: "
                f"{view[64 : 64 + len(written)]!r}"
            )
        tell(proc)


def test_a_bo_mapping_falls_onto_a_private_zero_page(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """GEM mmap of the drm fd: zeros, then anonymous (rw-p), keeps the program's write,
    which no other process sees; the read-only info block falls too (r--p)."""
    unplugged_writes_stay_home(
        fresh_daemon, fresh_admin, program("unplug_zap"), "bo", b"after the unplug"
    )


def test_a_dma_buf_mapping_falls_onto_a_private_zero_page(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """mmap of a dma-buf descriptor: the same."""
    unplugged_writes_stay_home(
        fresh_daemon, fresh_admin, program("unplug_zap"), "dmabuf", b"after the unplug"
    )


def test_a_forked_childs_inherited_mapping_falls_too(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """A child forked after the mapping, making no device call afterwards: its mapping
    falls as its parent's does; neither sees the other's write, nor does this process.
    What the child maps where a MADV_DONTFORK mapping of its parent's was stays its own."""
    unplugged_writes_stay_home(
        fresh_daemon, fresh_admin, program("unplug_zap"), "fork", b"the child's"
    )


def test_the_barrier_page_after_the_unplug(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """A store to the barrier page after the unplug neither crashes nor reaches the
    daemon's page, the page reads 0xdeadbeef, munmap works; the file's count stays at
    the one store made before."""
    with running(fresh_daemon, program("unplug_zap"), "barrier") as proc:
        word, pid = said(proc)
        assert word == "mapped"
        fresh_admin.admin_unplug()
        tell(proc)
        assert said(proc) == ["written"]
        (mine,) = [c for c in fresh_admin.admin_clients() if c.pid == int(pid)]
        assert mine.barriers == 1
        tell(proc)


def test_mapping_after_the_unplug_is_enodev(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """mmap after the unplug, of a file that mapped before, of one that never did and of
    a dma-buf: ENODEV, and the program goes on and exits. A mapping moved or shrunk by
    mremap falls where it now is; what the program mapped where it was, or where the
    shrunk one's tail was, is not zapped."""
    with running(fresh_daemon, program("unplug_zap"), "after") as proc:
        assert said(proc)[0] == "mapped"
        fresh_admin.admin_unplug()
        tell(proc)
        assert said(proc) == ["written"]
        tell(proc)


def test_more_mappings_than_the_first_table_holds_all_fall(
    fresh_daemon: DaemonProcess, fresh_admin: Device, program: Programs
) -> None:
    """5000 mappings of one BO, past the 4096 the library's table starts with: the first,
    a middle one and the last all fall onto zero pages."""
    with running(fresh_daemon, program("unplug_zap"), "many") as proc:
        assert said(proc) == ["mapped"]
        fresh_admin.admin_unplug()
        tell(proc)
        assert said(proc) == ["written"]
        tell(proc)


def test_one_watcher_started_by_the_first_mapping_and_exit_while_it_waits(
    daemon: DaemonProcess, program: Programs
) -> None:
    """No thread at open; the first mapping starts one, every later mapping of the device
    (BO or dma-buf) reuses it; it blocks every signal but glibc's own (setgid() returns);
    the program exits 0 while it waits, at once."""
    passes(daemon.socket_path, program("unplug_zap"), "exit")
