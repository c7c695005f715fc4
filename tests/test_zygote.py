"""The suite's fork server (tests/zygote.py) starts daemons that are what `python -m xed
serve` starts: the same descriptors, limits and exit statuses. If these drift, every
test that uses a fixture daemon tests something other than the daemon users run."""

from __future__ import annotations

import os
import re
import resource
import signal
from pathlib import Path

from conftest import ZYGOTE

from clients.daemon import DaemonProcess


def descriptors(daemon: DaemonProcess) -> list[str]:
    """What each of the daemon's descriptors is, by kind (paths and inodes dropped)."""
    where = Path(f"/proc/{daemon.pid}/fd")
    kinds = []
    for fd in sorted(os.listdir(where), key=int):
        target = os.readlink(where / fd)
        target = re.sub(r"\[\d+\]", "", target)
        kinds.append(f"{fd}:{Path(target).name if target.startswith('/tmp') else target}")
    return kinds


def nofile(pid: int) -> tuple[int, int]:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)


def test_a_forked_daemon_holds_what_a_started_one_does(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    started = DaemonProcess(socket_path=tmp_path / "a/x.sock", log_path=tmp_path / "a/x.log")
    forked = DaemonProcess(
        socket_path=tmp_path / "b/x.sock", log_path=tmp_path / "b/x.log", spawn=ZYGOTE.spawn
    )
    with started, forked:
        assert descriptors(forked) == descriptors(started)
        assert nofile(forked.pid) == nofile(started.pid)
        assert os.getsid(forked.pid) == os.getsid(started.pid)
        assert forked.stop() == started.stop() == 0
    assert "daemon_ready" in forked.log_text()


def test_limit_session_and_exit_status_are_as_asked(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        socket_path=tmp_path / "x.sock", nofile=512, own_session=True, spawn=ZYGOTE.spawn
    )
    with daemon:
        assert nofile(daemon.pid) == (512, 512)
        assert os.getsid(daemon.pid) == daemon.pid
        assert daemon.proc is not None and daemon.proc.poll() is None
        daemon.proc.send_signal(signal.SIGKILL)
        assert daemon.proc.wait(10) == -signal.SIGKILL
        assert daemon.proc.poll() == -signal.SIGKILL
