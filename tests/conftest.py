"""Fixtures: a real daemon process on a temporary socket, real client connections.

Every daemon a test starts is checked when it stops: it must not have logged a crashed
ioctl or a traceback, whatever the clients threw at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import Device
from clients.daemon import DaemonProcess

# the support modules the tests share: their asserts explain a failure as a test's own do
pytest.register_assert_rewrite(
    "agent", "debugger_support", "dma_buf_support", "helpers", "ib_support"
)
from helpers import Gpu  # noqa: E402  (after the registration, or it has no effect)
from zygote import Zygote  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# this worker's fork server for the daemons the fixtures start (tests/zygote.py says why)
ZYGOTE = Zygote()


def pytest_unconfigure() -> None:
    ZYGOTE.close()


def _check_log(daemon: DaemonProcess) -> None:
    text = daemon.log_text()
    bad = [line for line in text.splitlines() if "ioctl_crashed" in line or "Traceback" in line]
    assert not bad, "daemon logged an internal error:\n" + "\n".join(bad[:20])


def start_daemon(
    tmp_path: Path, config: str | None = None, nofile: int | None = None
) -> DaemonProcess:
    config_path = None
    if config is not None:
        config_path = tmp_path / "xed.toml"
        config_path.write_text(textwrap.dedent(config))
    return DaemonProcess(
        socket_path=tmp_path / "xed.sock",
        config=config_path,
        log_path=tmp_path / "daemon.log",
        extra_args=("--log-level", "debug"),
        nofile=nofile,
        spawn=ZYGOTE.spawn,
    ).start()


@contextlib.contextmanager
def serving(where: Path, config: str | None = None) -> Iterator[DaemonProcess]:
    """A daemon for the length of the block: alive at its end, and its log clean."""
    proc = start_daemon(where, config)
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None, "the daemon died"
    proc.stop()
    _check_log(proc)
    proc.cleanup()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon shared by the tests that only need a connection of their own."""
    with serving(tmp_path_factory.mktemp("shared-daemon")) as proc:
        yield proc


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of this test's own, for counting objects and descriptors."""
    with serving(tmp_path) as proc:
        yield proc


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:
    """Start daemons with a configuration of the test's choosing."""
    started: list[DaemonProcess] = []

    def make(
        config: str | None = None, name: str = "d", nofile: int | None = None
    ) -> DaemonProcess:
        """`nofile`: the daemon's descriptor limit (soft = hard), to reach it quickly."""
        where = tmp_path / f"{name}{len(started)}"
        where.mkdir()
        proc = start_daemon(where, config, nofile)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()
        _check_log(proc)
        proc.cleanup()


@pytest.fixture
def agents() -> Iterator[Any]:
    """Start agent processes (tests/agent.py) connected to a daemon: `agents(daemon)`
    gives one; they are ended, and checked, after the test."""
    from agent import agent_pool  # here, not at the top: agent.py imports this module

    yield from agent_pool()


@pytest.fixture
def gpu(dev: Device) -> Iterator[Gpu]:
    """A VM with a batch BO bound and an exec queue, on `dev` (helpers.Gpu)."""
    g = Gpu(dev)
    yield g
    g.close()


@pytest.fixture
def dev(daemon: DaemonProcess) -> Iterator[Device]:
    """A drm connection to the shared daemon. Its barrier page is unmapped when the test
    is done, so that the daemon lets go of the page with the file, not when this process
    next collects garbage and the daemon next sweeps (a later test would see it go)."""
    device = Device.open(daemon.socket_path)
    yield device
    device.pci_barrier_unmap()
    device.close()


@pytest.fixture
def aux(daemon: DaemonProcess) -> Iterator[Device]:
    """An aux-role connection to the shared daemon (an auxiliary driver's)."""
    device = Device.open(daemon.socket_path, role="aux")
    yield device
    device.close()


@pytest.fixture
def admin(daemon: DaemonProcess) -> Iterator[Device]:
    device = Device.open(daemon.socket_path, role="admin")
    yield device
    device.close()


def run_client(socket_path: Path, code: str, *args: str, timeout: float = 60) -> Any:
    """Run `code` in a separate Python process with `dev` connected to the daemon.

    The snippet sets `result` to anything JSON-able; it comes back as the return value.
    `argv` holds the extra arguments. A failure in the child fails the test with its
    stderr.
    """
    code = "result = None\n" + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
    proc = spawn_client(socket_path, code, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    assert proc.returncode == 0, f"client failed:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def spawn_client(socket_path: Path, code: str, *args: str) -> Any:
    """Like run_client, but running: talk to it over stdin/stdout lines.

    Both fork the process from this worker's fork server (tests/zygote.py), which has
    imported `clients` already; it behaves as `subprocess.Popen([python, -c, ...],
    stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True)` would.
    """
    program = (
        "import json, sys\n"
        "from clients import Device, Batch, XeError, user_fence\n"
        f"dev = Device.open({str(socket_path)!r})\n"
        "argv = sys.argv[1:]\n" + textwrap.dedent(code)
    )
    return ZYGOTE.spawn_python(program, args, dict(os.environ, PYTHONPATH=str(ROOT)), ROOT)


def adjusted_xed(*setup: str) -> tuple[str, str]:
    """DaemonProcess(entry=...) for a daemon that runs the lines of `setup` (a test's
    adjustments: a constant changed, a function wrapped) before xed starts as usual."""
    return ("-c", "\n".join(("import sys", *setup, "from xed.cli import main", "sys.exit(main())")))


def baseline(daemon: DaemonProcess) -> tuple[int, Any]:
    """(open descriptors, object counts) of a daemon, seen from a short admin visit."""
    with Device.open(daemon.socket_path, role="admin") as adm:
        counts = adm.admin_status().objects
        fds = daemon.open_fds()
    return fds, counts


# --- unplug: a live client holding every kind of mapping (test_unplug*.py) ----------------
HOLDER = """
import mmap, os, time
from protocols import Op, messages as m
from protocols.constants import (
    MAP_SHARED, PAGE_SIZE, PCI_BARRIER_IDLE, PROT_READ, PROT_WRITE, XE_INFO_DEVICE_ID,
    XE_INFO_TIMESTAMP, XE_PCI_BARRIER_MMAP_OFFSET, Query,
)
from protocols.words import Words

def errno_of(fn, *args):
    try:
        fn(*args)
    except XeError as exc:
        return exc.errno
    return 0

def stays(read, value, window):
    # True if read() keeps returning value for the whole window
    end = time.monotonic() + window
    while time.monotonic() < end:
        if read() != value:
            return False
        time.sleep(0.001)
    return True

def until(read, value, timeout=10):
    end = time.monotonic() + timeout
    while read() != value:
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True

bo = dev.gem_create(0x4000)
bo_map = dev.mmap_bo(bo)
bo_map[0:4] = b"live"
spare = dev.gem_create(0x1000)
spare_offset = dev.gem_mmap_offset(spare)
info_region = dev.mmio_open("info")
info = dev.mmap_mmio(info_region)
bell_region = dev.mmio_open("doorbell")
bell = dev.mmap_mmio(bell_region, writable=True)
barrier = dev.mmap(dev.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE)
barrier.write_u32(0, 1)
assert until(lambda: barrier.read_u32(0), PCI_BARRIER_IDLE)

def by_hand(offset, length, prot):
    # what a program that maps the descriptor itself holds: no library watches over it
    reply, (fd,) = dev.ioctl_fds(
        Op.MMAP, m.XedMmap(offset=offset, length=length, prot=prot, flags=MAP_SHARED)
    )
    mm = mmap.mmap(fd, length, mmap.MAP_SHARED, prot)
    os.close(fd)
    return Words(mm)

bo_hand = by_hand(dev.gem_mmap_offset(bo), 0x4000, PROT_READ | PROT_WRITE)
bell_hand = by_hand(bell_region.offset, bell_region.size, PROT_READ | PROT_WRITE)
barrier_hand = by_hand(XE_PCI_BARRIER_MMAP_OFFSET, PAGE_SIZE, PROT_WRITE)
print(json.dumps(dev.client_id), flush=True)
for line in sys.stdin:
    out = None
    try:
        exec(json.loads(line))
        reply = {"out": out}
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(reply), flush=True)
"""


class Holder:
    """A live client process holding a BO mapping, the info block, a doorbell and the
    barrier page, that runs the snippets it is sent."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.proc = spawn_client(daemon.socket_path, HOLDER)
        self.client_id = self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"holder died:\n{err}")
        return json.loads(line)

    def run(self, code: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        assert "error" not in reply, reply["error"]
        return reply["out"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self) -> None:
        """Close its stdin: it leaves without closing anything; it must exit cleanly."""
        if self.proc.poll() is None:
            try:
                _, err = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
        else:
            _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, f"holder failed:\n{err}"


@pytest.fixture
def holder(fresh_daemon: DaemonProcess) -> Iterator[Holder]:
    h = Holder(fresh_daemon)
    try:
        yield h
    finally:
        h.finish()


@pytest.fixture
def fresh_admin(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path, role="admin") as adm:
        yield adm
        if adm.admin_status().unplugged:
            adm.admin_replug()  # leave the daemon as it was for the fixture's checks
