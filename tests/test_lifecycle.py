"""Lifetimes: what a client held is released however it goes, and the daemon's own
start, refusal to start, socket file and stop behave as an operator expects.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, baseline, run_client, spawn_client

from clients import Batch, Device, XeError, user_fence
from clients.daemon import DaemonProcess
from protocols import Op, encode_request
from protocols import messages as m

BASE = 0x1_0000_0000
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
for _name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "XED_SOCKET"):
    ENV.pop(_name, None)


def xed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m xed ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "xed", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
    )


def wait_for_baseline(daemon: DaemonProcess, expected: tuple[int, Any]) -> tuple[int, Any]:
    """Poll (up to ~10 s) until the daemon is back to `expected`; return what it shows."""
    current = baseline(daemon)
    for _ in range(1000):
        if current == expected:
            break
        time.sleep(0.01)
        current = baseline(daemon)
    return current


def _read_line(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"client failed:\n{err}")
    return json.loads(line)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


# A client that holds one of everything and ends blocked in an endless WAIT_USER_FENCE.
# The wait is sent by hand, then a VERSION round trip proves the daemon has started it
# (requests are read in order, and blocking ones run beside the reader).
HOLD_EVERYTHING = f"""
from protocols import Op, encode_request, messages as m
bos = [dev.gem_create(0x10000) for _ in range(4)]
vm = dev.vm_create()
vm2 = dev.vm_create()
for i, bo in enumerate(bos):
    dev.vm_bind(vm, bo, {BASE} + i * 0x10000)
dev.vm_bind(vm2, bos[0], {BASE})
queues = [dev.exec_queue_create(vm), dev.exec_queue_create(vm2)]
maps = [dev.mmap_bo(bo) for bo in bos]
batch = Batch().store_dword({BASE} + 0x1000, 7).end()
maps[0][0x100:0x100 + len(batch)] = batch.tobytes()
dev.exec(queues[0], {BASE} + 0x100, syncs=[user_fence({BASE} + 0x2000, 1)])
dev.wait_user_fence(maps[0].user_address(0x2000), 1)
wait = m.DrmXeWaitUserFence(addr=dev.user_address(maps[1].user_address(0x800)), value=1,
                            timeout=-1)
dev.transport.sock.send(encode_request(0xFFFF0000, Op.XE_WAIT_USER_FENCE, wait))
dev.version()
print(json.dumps("blocked"), flush=True)
MODE = argv[0]
if MODE == "close":
    sys.stdin.readline()
    dev.close()
    print(json.dumps("closed"), flush=True)
    sys.stdin.readline()
    result = [m_.read_u32(0x1000) for m_ in maps[:1]]  # mappings outlive the file
    print(json.dumps(result), flush=True)
elif MODE == "exit":
    sys.exit(0)  # without closing anything
else:
    sys.stdin.readline()  # until killed
"""


def _assert_held(daemon: DaemonProcess, before: tuple[int, Any]) -> None:
    fds, counts = baseline(daemon)
    assert counts.files == before[1].files + 1
    assert (counts.bos, counts.vms, counts.exec_queues) == (4, 2, 2)
    assert counts.mmap_offsets == 4
    assert fds > before[0]


def test_sigkilled_client_releases_everything(fresh_daemon: DaemonProcess) -> None:
    """A client SIGKILLed while holding everything and blocked in a wait leaks nothing."""
    before = baseline(fresh_daemon)
    proc = spawn_client(fresh_daemon.socket_path, HOLD_EVERYTHING, "kill")
    try:
        assert _read_line(proc) == "blocked"
        _assert_held(fresh_daemon, before)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        _reap(proc)
    assert wait_for_baseline(fresh_daemon, before) == before


def test_closed_connection_releases_everything(fresh_daemon: DaemonProcess) -> None:
    """A client that closes its connection (and lives on) has everything released."""
    before = baseline(fresh_daemon)
    proc = spawn_client(fresh_daemon.socket_path, HOLD_EVERYTHING, "close")
    try:
        assert _read_line(proc) == "blocked"
        _assert_held(fresh_daemon, before)
        assert proc.stdin is not None
        proc.stdin.write("close\n")
        proc.stdin.flush()
        assert _read_line(proc) == "closed"
        assert proc.poll() is None
        assert wait_for_baseline(fresh_daemon, before) == before
        out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == [7]
    finally:
        _reap(proc)


def test_exited_client_releases_everything(fresh_daemon: DaemonProcess) -> None:
    """A client that exits normally without closing anything has everything released."""
    before = baseline(fresh_daemon)
    proc = spawn_client(fresh_daemon.socket_path, HOLD_EVERYTHING, "exit")
    try:
        assert _read_line(proc) == "blocked"
        proc.wait(30)
        assert proc.returncode == 0
    finally:
        _reap(proc)
    assert wait_for_baseline(fresh_daemon, before) == before


def test_released_wait_does_not_disturb_other_clients(fresh_daemon: DaemonProcess) -> None:
    """Killing a blocked client leaves another client's objects and waits working."""
    with Device.open(fresh_daemon.socket_path) as other:
        bo = other.gem_create(0x10000)
        vm = other.vm_create()
        other.vm_bind(vm, bo, BASE)
        queue = other.exec_queue_create(vm)
        before = baseline(fresh_daemon)
        proc = spawn_client(fresh_daemon.socket_path, HOLD_EVERYTHING, "kill")
        try:
            assert _read_line(proc) == "blocked"
            proc.kill()
            proc.wait(30)
        finally:
            _reap(proc)
        assert wait_for_baseline(fresh_daemon, before) == before
        with other.mmap_bo(bo) as mapping:
            batch = Batch().store_dword(BASE + 0x1000, 0x600D).end()
            mapping[0x100 : 0x100 + len(batch)] = batch.tobytes()
            other.exec(queue, BASE + 0x100, syncs=[user_fence(BASE + 0x2000, 1)])
            other.wait_user_fence(mapping.user_address(0x2000), 1)
            assert mapping.read_u32(0x1000) == 0x600D


def test_fifty_clients_leave_baseline_intact(fresh_daemon: DaemonProcess) -> None:
    """50 clients connecting, creating objects and disconnecting leave the baseline intact."""
    before = baseline(fresh_daemon)
    devices: list[Device] = []
    try:
        for i in range(50):
            dev = Device.open(fresh_daemon.socket_path)
            devices.append(dev)
            bo = dev.gem_create(0x2000 * (1 + i % 3))
            vm = dev.vm_create()
            dev.vm_bind(vm, bo, BASE)
            dev.exec_queue_create(vm)
            dev.gem_mmap_offset(bo)
            if i % 2:
                dev.mmap_bo(bo).close()
            if i % 5 == 0:  # some leave while others are still arriving
                devices.pop().close()
        _, counts = baseline(fresh_daemon)
        assert counts.files == before[1].files + 40
        assert counts.bos == 40
    finally:
        for dev in devices:
            dev.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_clients_in_separate_processes_leave_baseline_intact(
    fresh_daemon: DaemonProcess,
) -> None:
    """Client processes that exit with objects held leave the daemon at its baseline."""
    before = baseline(fresh_daemon)
    code = f"""
conns = [Device.open(argv[0]) for _ in range(9)] + [dev]
for d in conns:
    bo = d.gem_create(0x4000)
    vm = d.vm_create()
    d.vm_bind(vm, bo, {BASE})
    d.exec_queue_create(vm)
result = len(conns)
"""
    assert run_client(fresh_daemon.socket_path, code, str(fresh_daemon.socket_path)) == 10
    assert wait_for_baseline(fresh_daemon, before) == before


# --- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("[device]\nvram_sise = 4096\n", "device.vram_sise"),
        ("[device.engines]\nblitter = 1\n", "device.engines.blitter"),
        ("[daemon]\nx = 1\n", "daemon"),
        ("[device]\nvram_size = -4096\n", "vram_size"),
        ("[device]\nsystem_memory = 0\n", "system_memory"),
        ("[device]\nvram_size = '4G'\n", "vram_size"),
        ("[device]\nvram_size = 8192\nvisible_vram_size = 16384\n", "visible_vram_size"),
        ("[device]\nvram_size = 4096 oops\n", "xed.toml"),
        ("[device\n", "xed.toml"),
        ("[device]\nengines = 3\n", "device.engines"),
        ("[device]\nvram_size = 1000\n", "vram_size"),
    ],
    ids=[
        "unknown-key",
        "unknown-engine",
        "unknown-section",
        "negative-size",
        "zero-sysmem",
        "string-size",
        "visible-over-vram",
        "unparsable-value",
        "unparsable-header",
        "table-expected",
        "unaligned-size",
    ],
)
def test_bad_config_exits_78_naming_problem(tmp_path: Path, config: str, needle: str) -> None:
    """`xed serve` with a bad config exits with EX_CONFIG (78), saying what is wrong."""
    config_path = tmp_path / "xed.toml"
    config_path.write_text(config)
    sock = tmp_path / "xed.sock"
    done = xed("serve", "--socket", str(sock), "--config", str(config_path))
    assert done.returncode == 78, done.stderr
    assert needle in done.stderr
    assert done.stderr.startswith("xed: ")
    assert not sock.exists()


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    """`xed serve` with a config file that does not exist exits 78 naming the file."""
    missing = tmp_path / "nowhere.toml"
    done = xed("serve", "--socket", str(tmp_path / "s"), "--config", str(missing))
    assert done.returncode == 78
    assert str(missing) in done.stderr


def test_good_config_is_applied(make_daemon: Any) -> None:
    """A valid config reaches the device: the VRAM region has the configured sizes."""
    daemon = make_daemon("[device]\nvram_size = 0x4000000\nvisible_vram_size = 0x1000000\n")
    with Device.open(daemon.socket_path) as dev:
        vram = [r for r in dev.mem_regions() if r.mem_class == 1]
        assert [(r.total_size, r.cpu_visible_size) for r in vram] == [(0x4000000, 0x1000000)]


# --- the socket file ---------------------------------------------------------------------------
def test_second_daemon_on_live_socket_refuses(fresh_daemon: DaemonProcess) -> None:
    """A second daemon on the socket of a running one exits 73 (EX_CANTCREAT) saying one
    already listens."""
    done = xed("serve", "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 73
    assert "already listens" in done.stderr
    assert fresh_daemon.socket_path.exists()
    with Device.open(fresh_daemon.socket_path) as dev:
        assert dev.version().name == "xe"


def test_non_socket_file_at_path_refuses(tmp_path: Path) -> None:
    """A regular file where the socket should be is not replaced: exit 73, file kept."""
    path = tmp_path / "xed.sock"
    path.write_text("precious")
    done = xed("serve", "--socket", str(path))
    assert done.returncode == 73
    assert "not a socket" in done.stderr
    assert path.read_text() == "precious"


@pytest.fixture
def own_daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts by hand; stopped and cleaned up afterwards."""
    started: list[DaemonProcess] = []
    yield started
    for proc in started:
        proc.cleanup()


def test_stale_socket_of_killed_daemon_is_replaced(
    tmp_path: Path, own_daemons: list[DaemonProcess]
) -> None:
    """The socket file left by a SIGKILLed daemon is replaced by the next daemon."""
    path = tmp_path / "xed.sock"
    first = DaemonProcess(socket_path=path, log_path=tmp_path / "first.log")
    own_daemons.append(first)
    first.start()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(30)
    assert stat.S_ISSOCK(path.lstat().st_mode)  # left behind
    second = DaemonProcess(socket_path=path, log_path=tmp_path / "second.log")
    own_daemons.append(second)
    second.start()
    with Device.open(path, role="admin") as adm:
        assert adm.admin_status().pid == second.pid
    assert second.stop() == 0
    assert "Traceback" not in second.log_text()


def test_socket_file_mode_is_0660(fresh_daemon: DaemonProcess) -> None:
    """The listening socket file is a socket with mode 0660."""
    mode = fresh_daemon.socket_path.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def _start_notified(args: list[str], env: dict[str, str], where: Path) -> subprocess.Popen[bytes]:
    """Start `python -m xed ARGS` and return once it has sent READY=1 on NOTIFY_SOCKET."""
    notify_path = where / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        with open(where / "daemon.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xed", *args],
                stdin=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
                env=dict(env, NOTIFY_SOCKET=str(notify_path)),
            )
        try:
            while "READY=1" not in notify.recv(4096).decode().split("\n"):
                pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc
    finally:
        notify.close()


def test_default_socket_under_xdg_runtime_dir(tmp_path: Path) -> None:
    """Without --socket the daemon listens at $XDG_RUNTIME_DIR/xed/xed.sock (mode 0660)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    proc = _start_notified(["serve"], dict(ENV, XDG_RUNTIME_DIR=str(runtime)), tmp_path)
    try:
        path = runtime / "xed" / "xed.sock"
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660
        with Device.open(path) as dev:
            assert dev.version().name == "xe"
        ctl = xed("ctl", "status", "--json", env=dict(ENV, XDG_RUNTIME_DIR=str(runtime)))
        assert ctl.returncode == 0, ctl.stderr
        assert json.loads(ctl.stdout)["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_sigterm_exits_0_and_removes_socket(
    tmp_path: Path, own_daemons: list[DaemonProcess]
) -> None:
    """SIGTERM stops the daemon with exit status 0, even with clients, and removes the socket."""
    path = tmp_path / "xed.sock"
    daemon = DaemonProcess(socket_path=path, log_path=tmp_path / "daemon.log")
    own_daemons.append(daemon)
    daemon.start()
    proc = spawn_client(path, HOLD_EVERYTHING, "kill")
    try:
        assert _read_line(proc) == "blocked"
        with Device.open(path) as dev:
            dev.gem_create(0x1000)
            assert daemon.stop() == 0
            with pytest.raises((ConnectionError, OSError)):
                dev.version()
        assert not path.exists()
    finally:
        _reap(proc)
    log = daemon.log_text()
    assert "daemon_stopping" in log
    assert "Traceback" not in log


def test_sigint_exits_0_and_removes_socket(
    tmp_path: Path, own_daemons: list[DaemonProcess]
) -> None:
    """SIGINT stops the daemon like SIGTERM: exit status 0, socket file removed."""
    path = tmp_path / "xed.sock"
    daemon = DaemonProcess(socket_path=path, log_path=tmp_path / "daemon.log")
    own_daemons.append(daemon)
    daemon.start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    assert not path.exists()


# --- xed ctl and the command line ---------------------------------------------------------------
def test_ctl_status_json_matches_client_objects(fresh_daemon: DaemonProcess) -> None:
    """`xed ctl status --json` prints JSON whose objects match what a client holds."""
    with Device.open(fresh_daemon.socket_path) as dev:
        bos = [dev.gem_create(0x1000 * (i + 1)) for i in range(3)]
        vm = dev.vm_create()
        dev.vm_bind(vm, bos[0], BASE)
        dev.exec_queue_create(vm)
        with pytest.raises(XeError):
            dev.gem_close(999)
        done = xed("ctl", "--socket", str(fresh_daemon.socket_path), "status", "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["pid"] == fresh_daemon.pid
        assert data["objects"]["bos"] == 3
        assert data["objects"]["bo_bytes"] == 0x1000 + 0x2000 + 0x3000
        assert data["objects"]["vms"] == 1
        assert data["objects"]["exec_queues"] == 1
        assert data["objects"]["files"] == 2  # the client and ctl's own admin connection
        assert data["refused"] >= 1
        dev.gem_close(bos[1])
        done = xed("ctl", "--socket", str(fresh_daemon.socket_path), "status", "--json")
        assert json.loads(done.stdout)["objects"]["bos"] == 2


def test_ctl_status_plain_output(fresh_daemon: DaemonProcess) -> None:
    """`xed ctl status` piped prints text for people, as systemctl does; JSON only with --json."""
    done = xed("ctl", "--socket", str(fresh_daemon.socket_path), "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"daemon pid {fresh_daemon.pid} at ")
    assert re.search(r"^  files +1$", done.stdout, re.MULTILINE), done.stdout


def test_ctl_without_daemon_exits_69(tmp_path: Path) -> None:
    """`xed ctl` against a socket path with no daemon exits 69 (EX_UNAVAILABLE) naming
    the path and what to check."""
    path = tmp_path / "nobody.sock"
    done = xed("ctl", "--socket", str(path), "status", "--json")
    assert done.returncode == 69
    assert done.stdout == ""
    assert f"xed ctl: cannot connect to {path}: No such file or directory" in done.stderr
    assert "systemctl status xed" in done.stderr


def test_ctl_against_dead_socket_file_exits_69(tmp_path: Path) -> None:
    """`xed ctl` against a socket file nobody listens on exits 69 with a message."""
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    sock.close()
    done = xed("ctl", "--socket", str(path), "status")
    assert done.returncode == 69
    assert f"cannot connect to {path}: Connection refused" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["ctl", "--help"]])
def test_help_exits_0(args: list[str]) -> None:
    """`xed --help`, `xed serve --help` and `xed ctl --help` print usage and exit 0."""
    done = xed(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: xed")


def test_no_subcommand_is_usage_error() -> None:
    """`xed` without a subcommand exits 2 with a usage message."""
    done = xed()
    assert done.returncode == 2
    assert "usage: xed" in done.stderr


def test_close_with_endless_wait_pending_leaks_nothing(fresh_daemon: DaemonProcess) -> None:
    """A connection closed while its endless WAIT_USER_FENCE is pending leaks nothing."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        bo = dev.gem_create(0x1000)
        mapping = dev.mmap_bo(bo)
        wait = m.DrmXeWaitUserFence(
            addr=dev.user_address(mapping.user_address(0)), value=1, timeout=-1
        )
        dev.transport.sock.send(encode_request(0xFFFF0000, Op.XE_WAIT_USER_FENCE, wait))
        assert dev.version().name == "xe"
        mapping.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_client_id_is_never_reused(fresh_daemon: DaemonProcess) -> None:
    """A client_id names one connection for the daemon's life: one that closed leaves
    its id unused, so following an id through the log never mixes two connections."""
    seen = []
    for _ in range(3):
        with Device.open(fresh_daemon.socket_path) as dev:
            seen.append(dev.client_id)
    assert seen == sorted(set(seen)) and len(seen) == 3, seen
