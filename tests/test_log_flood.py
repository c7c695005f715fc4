"""No client can make the daemon's logging hold everyone up: a refusal is a debug event,
rate-limited per connection; and whatever the level, an event the log stream cannot
take now (a pipe nobody drains) is dropped and counted (log_dropped), never waited for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from xed.log import RATELIMIT_BURST, RATELIMIT_INTERVAL

BAD_HANDLE = 0xBAD


def events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON events, as far as they are written (a line being written is
    left for the next look)."""
    text = daemon.log_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for_event(daemon: DaemonProcess, **fields: Any) -> list[dict[str, Any]]:
    """Every event so far, once one with these fields is among them (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        seen = events(daemon)
        if any(all(e.get(k) == v for k, v in fields.items()) for e in seen):
            return seen
        assert time.monotonic() < deadline, f"no event {fields} in the daemon's log"
        time.sleep(0.01)


def refuse(dev: Device, times: int, op: str = "gem_close") -> None:
    for _ in range(times):
        with pytest.raises(XeError):
            if op == "gem_close":
                dev.gem_close(BAD_HANDLE)
            else:
                dev.vm_destroy(BAD_HANDLE)


def set_level(daemon: DaemonProcess, level: str) -> None:
    with Device.open(daemon.socket_path, role="admin") as admin:
        admin.ioctl(Op.ADMIN_LOG_LEVEL, m.XedAdminLogLevel(level=level))


def test_refusals_are_not_logged_at_the_default_level(fresh_daemon: DaemonProcess) -> None:
    """At info level a refused ioctl leaves no event (it is counted); at debug it does."""
    set_level(fresh_daemon, "info")
    with Device.open(fresh_daemon.socket_path) as dev:
        refuse(dev, 50, "gem_close")
        set_level(fresh_daemon, "debug")
        refuse(dev, 1, "vm_destroy")
        seen = wait_for_event(fresh_daemon, event="ioctl_refused", op="XE_VM_DESTROY")
    refused = [e for e in seen if e["event"] == "ioctl_refused"]
    assert [e["op"] for e in refused] == ["XE_VM_DESTROY"]
    assert refused[0]["level"] == "debug"


def test_refusals_are_rate_limited_and_the_rest_counted(fresh_daemon: DaemonProcess) -> None:
    """At debug level, 2,000 refusals of one client log RATELIMIT_BURST events per
    RATELIMIT_INTERVAL; each one held back is counted in an ioctl_refused_suppressed
    event (the last ones when the client leaves): none vanishes unsaid."""
    with Device.open(fresh_daemon.socket_path) as dev:
        client_id = dev.client_id
        began = time.monotonic()
        refuse(dev, 2000)
        elapsed = time.monotonic() - began
    seen = wait_for_event(fresh_daemon, event="client_disconnected", client_id=client_id)
    mine = [e for e in seen if e.get("client_id") == client_id]
    logged = [e for e in mine if e["event"] == "ioctl_refused"]
    suppressed = [e for e in mine if e["event"] == "ioctl_refused_suppressed"]
    windows = 1 + int(elapsed / RATELIMIT_INTERVAL) + 1
    assert len(logged) <= RATELIMIT_BURST * windows, (len(logged), elapsed)
    assert len(logged) + sum(e["count"] for e in suppressed) == 2000
    assert all(e["level"] == "debug" for e in logged + suppressed)


# --- a log stream nobody reads ----------------------------------------------------------


class PipedDaemon:
    """`xed serve` at debug level whose stderr is a pipe this test never reads."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket_path = tmp_path / "xed.sock"
        notify_path = tmp_path / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(30)
        self.stderr_r, stderr_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xed", "serve", "--socket", str(self.socket_path)]
                + ["--log-level", "debug"],
                stdin=subprocess.DEVNULL,
                stderr=stderr_w,
                cwd=ROOT,
                env=dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(ROOT)),
            )
            while "READY=1" not in notify.recv(4096).decode().split("\n"):
                pass
        finally:
            os.close(stderr_w)
            notify.close()

    def stop(self) -> str:
        """SIGTERM; then what the pipe holds (all the daemon could write before it filled)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        os.set_blocking(self.stderr_r, False)
        chunks = []
        try:
            while chunk := os.read(self.stderr_r, 1 << 16):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        os.close(self.stderr_r)
        return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[PipedDaemon]:
    daemon = PipedDaemon(tmp_path)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()


def test_a_log_pipe_nobody_drains_holds_nobody_up(piped: PipedDaemon) -> None:
    """With stderr a pipe nobody reads, a client making thousands of debug events (and
    thousands of refusals) keeps being answered, so does everyone else, and the events
    the pipe could not take are counted in log_dropped."""
    with Device.open(piped.socket_path) as dev, Device.open(piped.socket_path) as bystander:
        for sock in (dev.transport.sock, bystander.transport.sock):
            sock.settimeout(20)  # a daemon blocked on its log would never answer
        for _ in range(4000):  # bo_created and bo_freed: two debug events each
            dev.gem_close(dev.gem_create(4096))
        refuse(dev, 3000)
        for _ in range(100):
            bystander.version()
        with Device.open(piped.socket_path, role="admin") as admin:
            status = admin.admin_status()
    assert status.log_dropped > 0
    assert status.refused >= 3000
    text = piped.stop()
    assert piped.proc.returncode == 0
    assert "Traceback" not in text and "ioctl_crashed" not in text


JOURNAL_FALLBACK = """
import os, sys
from xed import log as xlog
read_end, write_end = os.pipe()
stream = os.fdopen(write_end, "w")
xlog.configure("info", stream=stream, journal=sys.argv[1])
for n in range(20000):
    xlog.get().info("event_number", n=n)
print(xlog._sink.dropped)
"""


def test_journal_fallback_never_blocks_on_its_stream(tmp_path: Path) -> None:
    """journald gone and the fallback stream a pipe nobody reads: logging 20,000 events
    returns, the ones that could go nowhere are dropped and counted."""
    done = subprocess.run(
        [sys.executable, "-c", JOURNAL_FALLBACK, str(tmp_path / "nobody-listens")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0
