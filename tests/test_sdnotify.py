"""sd_notify, socket activation, the watchdog and the drain, without systemd: the tests
play the service manager themselves (a datagram socket for NOTIFY_SOCKET, a listening
socket passed as fd 3 with LISTEN_FDS/LISTEN_PID) around a real `xed serve` child.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from clients import Device
from xed import systemd

ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in systemd.SERVICE_MANAGER_VARS
    and k not in ("XED_SOCKET", "XED_TEST_HANG_AFTER", "XED_TEST_CRASH")
}
ENV["PYTHONPATH"] = str(ROOT)
# become the process LISTEN_PID names, move the passed socket to fd 3, exec the daemon
# (what systemd does between fork and exec)
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = sys.argv[2] if sys.argv[2] != "self" else str(os.getpid())
if os.environ.get("WATCHDOG_PID") == "self":
    os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "xed", *sys.argv[3:]])
"""


class Manager:
    """The service manager's end of NOTIFY_SOCKET: an abstract datagram address."""

    def __init__(self) -> None:
        self.address = f"@xed-test-{os.getpid()}-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.address[1:])
        self.seen: list[tuple[float, str]] = []  # (arrival, line) of every line so far
        self._pending: list[str] = []  # lines not yet looked at by expect()

    def expect(self, match: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The next line (in order of arrival) satisfying `match`, reading notifications
        as needed; lines before it are consumed, lines after it stay for the next call."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                line = self._pending.pop(0)
                if match(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such notification; got {[x for _, x in self.seen]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().split("\n")
            self.seen += [(time.monotonic(), line) for line in lines]
            self._pending += lines

    def silence(self, quiet: float, timeout: float = 20.0) -> None:
        """Wait (up to `timeout`) until `quiet` seconds pass with no notification."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(quiet)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.seen += [(time.monotonic(), line) for line in data.decode().split("\n")]
        raise AssertionError(f"notifications never stopped: {[x for _, x in self.seen[-5:]]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager() -> Iterator[Manager]:
    """A fake service manager listening on an abstract NOTIFY_SOCKET address."""
    m = Manager()
    yield m
    m.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons started by a test; any still running at the end is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    pass_fds: tuple[int, ...] = (),
    nofile: int | None = None,
) -> subprocess.Popen[bytes]:
    def limit() -> None:
        assert nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(tmp_path / "daemon.log", "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env=dict(ENV, **env),
            pass_fds=pass_fds,
            preexec_fn=limit if nofile else None,
        )
    children.append(proc)
    return proc


def serve(
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    manager: Manager,
    *args: str,
    nofile: int | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """`xed serve --socket TMP/xed.sock ARGS` reporting to `manager`; `nofile`: its
    descriptor limit (soft and hard)."""
    cmd = [sys.executable, "-m", "xed", "serve", "--socket", str(tmp_path / "xed.sock"), *args]
    return start(children, tmp_path, cmd, dict(env, NOTIFY_SOCKET=manager.address), nofile=nofile)


def activated(
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    listener: socket.socket,
    *args: str,
    listen_pid: str = "self",
    **env: str,
) -> subprocess.Popen[bytes]:
    """`xed serve ARGS` handed `listener` as fd 3 the way systemd does it."""
    cmd = [sys.executable, "-c", ACTIVATE, str(listener.fileno()), listen_pid, "serve", *args]
    return start(children, tmp_path, cmd, env, pass_fds=(listener.fileno(),))


def seqpacket_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def is_ready(line: str) -> bool:
    return line == "READY=1"


# --- notify() itself ----------------------------------------------------------------------
def test_notify_reaches_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """notify() sends one datagram to a NOTIFY_SOCKET that is a file system path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert systemd.notify("READY=1\nSTATUS=hi")
        assert sock.recv(100) == b"READY=1\nSTATUS=hi"


def test_notify_reaches_an_abstract_socket(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notify() sends to an abstract address when NOTIFY_SOCKET starts with '@'."""
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    assert systemd.notify("WATCHDOG=1")
    assert manager.expect(lambda line: line == "WATCHDOG=1", timeout=5)


def test_notify_without_a_manager_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """notify() returns False with no NOTIFY_SOCKET, or one nobody listens on."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not systemd.notify("READY=1")


@pytest.mark.parametrize(
    ("usec", "pid", "period"),
    [("2000000", "self", 1.0), ("2000000", None, 1.0), ("2000000", "1", None),
     ("0", None, None), ("soon", None, None), (None, None, None)],
)  # fmt: skip
def test_watchdog_period_is_half_of_watchdog_usec_for_us_only(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, period: float | None
) -> None:
    """watchdog_period() is half WATCHDOG_USEC, None if WATCHDOG_PID names another process."""
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert systemd.watchdog_period() == period


def test_child_environment_drops_service_manager_variables() -> None:
    """A process spawned with child_environment() sees no NOTIFY_SOCKET, LISTEN_* or
    WATCHDOG_*, and everything else."""
    ours = {name: "x" for name in systemd.SERVICE_MANAGER_VARS} | {"KEEP_ME": "yes"}
    env = systemd.child_environment(dict(os.environ, **ours))
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    seen = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert not set(seen) & set(systemd.SERVICE_MANAGER_VARS)
    assert seen["KEEP_ME"] == "yes"


def test_child_environment_defaults_to_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """child_environment() scrubs a copy of os.environ and leaves os.environ alone."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@ours")
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    env = systemd.child_environment()
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert os.environ["NOTIFY_SOCKET"] == "@ours"


# --- a real daemon --------------------------------------------------------------------------
def test_daemon_reports_ready_status_and_stopping(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """READY=1 comes with a STATUS= summary, STATUS= follows the clients, and SIGTERM
    gives STOPPING=1 and exit status 0."""
    proc = serve(children, tmp_path, manager)
    manager.expect(is_ready)
    first = manager.expect(lambda line: line.startswith("STATUS="))
    assert first.startswith("STATUS=clients: 0, BOs: 0") and "barriers/s: 0" in first
    with Device.open(tmp_path / "xed.sock") as dev:
        dev.gem_create(0x2000)
        manager.expect(lambda line: line.startswith("STATUS=clients: 1, BOs: 1"))
    proc.send_signal(signal.SIGTERM)
    manager.expect(lambda line: line == "STOPPING=1")
    assert proc.wait(20) == 0


def test_watchdog_pings_at_half_watchdog_usec(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """With WATCHDOG_USEC (and WATCHDOG_PID its own pid) the daemon sends WATCHDOG=1,
    about twice per interval."""
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "self"}
    with seqpacket_listener(tmp_path / "xed.sock") as listener:
        activated(children, tmp_path, listener, **env)
    manager.expect(is_ready)
    for _ in range(5):
        manager.expect(lambda line: line == "WATCHDOG=1", timeout=5)
    pings = [t for t, line in manager.seen if line == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings[1:], pings[2:], strict=False)]
    assert all(gap > 0.05 for gap in gaps) and min(gaps) < 0.2, gaps  # 0.1 s, give or take


def test_hung_loop_stops_the_watchdog_pings(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """XED_TEST_HANG_AFTER blocks the loop: the WATCHDOG=1 pings stop while the process
    lives on (so systemd's watchdog would fire)."""
    proc = serve(children, tmp_path, manager, WATCHDOG_USEC="100000", XED_TEST_HANG_AFTER="0.3")
    manager.expect(is_ready)
    manager.expect(lambda line: line == "WATCHDOG=1")
    manager.silence(quiet=1.0)
    assert proc.poll() is None
    assert any(e["event"] == "test_hang" for e in events(tmp_path))


def test_socket_activation_serves_on_the_passed_socket(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """Handed a listening socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID its pid, the
    daemon serves on it, and leaves the socket file (the manager's) alone on exit."""
    path = tmp_path / "activated.sock"
    with seqpacket_listener(path) as listener:
        proc = activated(children, tmp_path, listener, NOTIFY_SOCKET=manager.address)
        manager.expect(is_ready)
        with Device.open(path) as dev:
            assert dev.gem_create(0x1000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert path.exists()
    assert [e["activated"] for e in events(tmp_path) if e["event"] == "daemon_starting"] == [True]


def test_activation_with_wrong_socket_type_exits_78(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """A SOCK_STREAM socket in LISTEN_FDS is a configuration error: exit 78, saying so."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(tmp_path / "stream.sock"))
        stream.listen()
        proc = activated(children, tmp_path, stream)
        assert proc.wait(20) == 78
    assert "fd 3 is not an AF_UNIX SOCK_SEQPACKET socket" in (tmp_path / "daemon.log").read_text()


def test_listen_fds_for_another_pid_is_ignored(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """LISTEN_FDS meant for another process (LISTEN_PID not ours) is ignored: the daemon
    binds its own --socket (the passed fd 3 is even of the wrong type)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        proc = activated(
            children, tmp_path, stream, "--socket", str(tmp_path / "own.sock"),
            listen_pid="1", NOTIFY_SOCKET=manager.address,
        )  # fmt: skip
        manager.expect(is_ready)
    with Device.open(tmp_path / "own.sock") as dev:
        assert dev.gem_create(0x1000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_drain_waits_for_clients_and_refuses_new_ones(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """After SIGTERM the daemon turns new connections away but serves its clients until
    they leave, then exits 0 without waiting out the drain timeout."""
    proc = serve(children, tmp_path, manager, "--drain-timeout", "60")
    manager.expect(is_ready)
    with Device.open(tmp_path / "xed.sock") as dev:
        proc.send_signal(signal.SIGTERM)
        manager.expect(lambda line: line == "STOPPING=1")
        with pytest.raises(ConnectionError):
            Device.open(tmp_path / "xed.sock")  # connected, then closed at once
        handle = dev.gem_create(0x1000)  # still served
        dev.mmap_bo(handle)[0:2] = b"ok"
        assert proc.poll() is None
    assert proc.wait(20) == 0
    drained = [e for e in events(tmp_path) if e["event"] == "daemon_drained"]
    assert drained[0]["timed_out"] is False and drained[0]["clients_left"] == 0
    assert any(e["event"] == "connection_refused" for e in events(tmp_path))


def test_drain_timeout_ends_a_client_that_stays(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """A client that does not leave is cut off once the drain timeout passes; exit 0."""
    proc = serve(children, tmp_path, manager, "--drain-timeout", "0.3")
    manager.expect(is_ready)
    with Device.open(tmp_path / "xed.sock") as dev:
        dev.gem_create(0x1000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    drained = [e for e in events(tmp_path) if e["event"] == "daemon_drained"]
    assert drained[0]["timed_out"] is True and drained[0]["clients_left"] == 1


def test_second_sigterm_cuts_the_drain_short(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """A second SIGTERM during the drain stops the daemon at once (exit 0)."""
    proc = serve(children, tmp_path, manager, "--drain-timeout", "60")
    manager.expect(is_ready)
    with Device.open(tmp_path / "xed.sock"):
        proc.send_signal(signal.SIGTERM)
        manager.expect(lambda line: line == "STOPPING=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert any(e["event"] == "drain_interrupted" for e in events(tmp_path))


# --- the service manager's tasks are contained ----------------------------------------------
NOFILE = 64  # the daemon's descriptor limit in the exhaustion test
PINGS = 3


def pings_after(manager: Manager, since: float, count: int = PINGS) -> None:
    """Wait until `count` WATCHDOG=1 arrived after `since` (monotonic), within bounds."""
    while sum(1 for t, line in manager.seen if t > since and line == "WATCHDOG=1") < count:
        manager.expect(lambda line: line == "WATCHDOG=1", timeout=5)


def test_watchdog_and_status_go_on_with_every_descriptor_taken(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """Clients take every descriptor the daemon may have (its accept fails with EMFILE):
    WATCHDOG=1 keeps coming, STATUS= still follows the objects, the daemon lives on
    and serves again once the descriptors are back."""
    config = tmp_path / "xed.toml"  # a reserve below the limit, and room for our uid's
    # connections: the table really fills
    config.write_text(f"[limits]\ndescriptor_reserve = 4\nconnections_per_uid = {NOFILE * 2}\n")
    proc = serve(
        children, tmp_path, manager, "--config", str(config), nofile=NOFILE,
        WATCHDOG_USEC="200000",
    )  # fmt: skip
    manager.expect(is_ready)
    hogs: list[socket.socket] = []
    with Device.open(tmp_path / "xed.sock") as dev:
        handle = dev.gem_create(0x1000)
        manager.expect(lambda line: line.startswith("STATUS=clients: 1, BOs: 1"))
        try:
            for _ in range(NOFILE + 16):  # more than it can accept: the rest wait in backlog
                hog = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                hogs.append(hog)
                hog.connect(str(tmp_path / "xed.sock"))
            deadline = time.monotonic() + 20
            full = ("accept_failed", "connection_refused")  # refused: the spare was used
            while not any(e["event"] in full for e in events(tmp_path)):
                assert time.monotonic() < deadline, "the daemon never ran out of descriptors"
                time.sleep(0.05)
            exhausted = time.monotonic()
            pings_after(manager, exhausted)
            dev.gem_close(handle)  # one descriptor back, and taken again by a waiting hog
            manager.expect(lambda line: line.startswith("STATUS=") and "BOs: 0" in line)
            pings_after(manager, time.monotonic())
            assert proc.poll() is None
        finally:
            for hog in hogs:
                hog.close()
    manager.expect(lambda line: line.startswith("STATUS=clients: 0"), timeout=20)
    with Device.open(tmp_path / "xed.sock") as dev:
        assert dev.gem_create(0x1000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_watchdog_task_that_crashes_starts_again(
    tmp_path: Path, manager: Manager, children: list[subprocess.Popen[bytes]]
) -> None:
    """A crash in the watchdog task (XED_TEST_CRASH, test only) is logged with its
    traceback and counted; the task starts again and the pings resume."""
    proc = serve(children, tmp_path, manager, WATCHDOG_USEC="200000", XED_TEST_CRASH="sd_watchdog")
    manager.expect(is_ready)
    deadline = time.monotonic() + 20
    while not any(e["event"] == "task_crashed" for e in events(tmp_path)):
        assert time.monotonic() < deadline, "the watchdog task never crashed"
        time.sleep(0.05)
    (crash,) = [e for e in events(tmp_path) if e["event"] == "task_crashed"]
    assert crash["task"] == "sd_watchdog" and crash["level"] == "error"
    assert crash["exception"].startswith("Traceback (most recent call last)")
    pings_after(manager, time.monotonic())
    with Device.open(tmp_path / "xed.sock", role="admin") as admin:
        assert admin.admin_status().task_crashes == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
