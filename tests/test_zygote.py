"""The suite's fork server (tests/zygote.py) starts daemons that are what `python -m xed
serve` starts: the same descriptors, limits and exit statuses. If these drift, every
test that uses a fixture daemon tests something other than the daemon users run. The
client snippets it forks behave as `python -c` started by subprocess does: the same
descriptors, argv, __main__, exit statuses, tracebacks and stdio."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ZYGOTE

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


# a snippet that reports what a client process sees, then echoes stdin lines until EOF
PROBE = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "name": __name__, "path0": sys.path[0], "cwd": os.getcwd(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "main": sys.modules["__main__"].__dict__.get("marker"),
    "barrier_forked": __import__("clients.barrier").barrier._forked,
    "path": sys.path[:2], "errors": [sys.stdin.errors, sys.stdout.errors],
}), flush=True)
print("a\\r\\nb\\rc", file=sys.stderr)
for line in sys.stdin:
    print(line.strip().upper(), flush=True)
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def started_python(code: str, *args: str) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip


def forked_python(code: str, *args: str) -> Any:
    return ZYGOTE.spawn_python(code, args, dict(os.environ, PYTHONPATH=str(ROOT)), ROOT)


def converse(proc: Any) -> tuple[str, list[str], str, int]:
    """The probe's report, its answer to two lines, its stderr and exit status."""
    report = proc.stdout.readline()
    proc.stdin.write("one\ntwo\n")
    proc.stdin.flush()
    answers = [proc.stdout.readline().strip() for _ in range(2)]
    out, err = proc.communicate(timeout=30)
    assert out == ""
    return report, answers, err, proc.returncode


def test_a_forked_client_is_what_python_c_starts() -> None:
    started = converse(started_python(PROBE, "3", "x y"))
    forked = converse(forked_python(PROBE, "3", "x y"))
    assert forked == started
    report, answers, err, status = forked
    assert '"argv": ["-c", "3", "x y"]' in report and '"name": "__main__"' in report
    assert '"fds": [0, 1, 2, 3]' in report  # 3: the listing of /proc/self/fd itself
    assert '"barrier_forked": false' in report
    assert (answers, err, status) == (["ONE", "TWO"], "a\nb\nc\nto stderr\n", 3)


FAILURES = [
    "raise ValueError('no')",
    "import os; os.kill(os.getpid(), 9)",
    "print('half', end=''); raise KeyboardInterrupt",
]


@pytest.mark.parametrize("code", FAILURES)
def test_a_forked_client_fails_as_python_c_does(code: str) -> None:
    started, forked = started_python(code), forked_python(code)
    (out_s, err_s), (out_f, err_f) = started.communicate(timeout=30), forked.communicate(timeout=30)
    assert (forked.returncode, out_f) == (started.returncode, out_s)
    assert err_f == err_s


def test_a_forked_clients_communicate_keeps_what_it_read_past_a_timeout() -> None:
    proc = forked_python("import sys, time; print('early', flush=True); time.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.communicate(timeout=0.5)
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert (out, proc.returncode) == ("early\n", -signal.SIGKILL)
