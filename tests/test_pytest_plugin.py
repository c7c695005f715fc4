"""xed's pytest plugin, as a downstream suite uses it: real pytest runs in a subprocess,
two xdist workers, a daemon each, fixtures for a Device, the aux driver and C programs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

DOWNSTREAM = '''
import os
from pathlib import Path

import pytest

PIDS = Path(os.environ["XED_PLUGIN_PIDS"])


def _note(daemon):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(PIDS / worker, "a") as f:
        f.write(f"{daemon.pid}\\n")


@pytest.mark.parametrize("n", range(6))
def test_a_device_per_test(xed_daemon, xed_device, n):
    _note(xed_daemon)
    bo = xed_device.gem_create(4096)
    with xed_device.mmap_bo(bo) as cpu:
        cpu[0:4] = b"mine"
        assert cpu[0:4] == b"mine"


@pytest.mark.xed_daemon(config="[device]\\npage_size = 65536\\n")
def test_own_daemon_with_its_configuration(xed_daemon, xed_device):
    assert xed_device.alignment() == 65536


def test_the_aux_driver_serves(xed_ib):
    assert Path(xed_ib.socket_path).exists()
    assert xed_ib.proc.poll() is None


def test_a_c_program_under_the_preload_library(xed_run_c, tmp_path):
    source = tmp_path / "open.c"
    source.write_text(
        "#include <fcntl.h>\\n#include <unistd.h>\\n"
        "int main(void) { int fd = open(\\"/dev/dri/card0\\", O_RDWR);"
        " return fd < 0 ? 1 : close(fd); }\\n"
    )
    prog = tmp_path / "open"
    import subprocess
    subprocess.run(["cc", "-o", str(prog), str(source)], check=True)
    done = xed_run_c([prog])
    assert done.returncode == 0, done.stderr
'''

FAILING = """
import time


def test_fails_after_using_the_daemon(xed_daemon, xed_device):
    xed_device.version()
    deadline = time.monotonic() + 30  # the daemon's log is written by a thread of its own
    while "client_connected" not in xed_daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert False, "on purpose"
"""


def _suite(tmp_path: Path, name: str, source: str) -> Path:
    """A downstream suite of one test file, `name` holding `source`."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / name).write_text(textwrap.dedent(source))
    return suite


def _pytest(suite: Path, *args: str, pids: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XED_PLUGIN_PIDS=str(pids))
    env.pop("PYTEST_XDIST_WORKER", None)  # ours, not the downstream suite's
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=suite, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    """`pip install` registers clients.pytest_plugin with pytest (inert until used)."""
    (ours,) = [e for e in entry_points(group="pytest11") if e.name == "xed"]
    assert ours.value == "clients.pytest_plugin"


def test_a_downstream_suite_runs_on_two_workers_with_a_daemon_each(tmp_path: Path) -> None:
    """`pytest -n 2` of a suite using the fixtures passes, and the two workers talked to
    two different daemons (no shared sockets); the marked test had a daemon of its own."""
    suite, pids = _suite(tmp_path, "test_downstream.py", DOWNSTREAM), tmp_path / "pids"
    pids.mkdir()
    done = _pytest(suite, "-n", "2", pids=pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9 passed" in done.stdout, done.stdout
    workers = {f.name: set(f.read_text().split()) for f in pids.iterdir()}
    assert set(workers) == {"gw0", "gw1"}, workers
    assert all(len(seen) == 1 for seen in workers.values()), workers  # one session daemon
    assert workers["gw0"].isdisjoint(workers["gw1"]), workers


def test_a_failing_test_shows_the_daemons_log_tail(tmp_path: Path) -> None:
    """A failure of a test that used a daemon reports the last lines of its log."""
    suite = _suite(tmp_path, "test_failing.py", FAILING)
    done = _pytest(suite, pids=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the xed daemon log tail" in done.stdout, done.stdout
    assert "client_connected" in done.stdout, done.stdout  # a line of the daemon's own


KILLING = """
import os
import signal
from pathlib import Path

PIDS = Path(os.environ["XED_PLUGIN_PIDS"])


def test_1_kills_the_session_daemon(xed_daemon, xed_device):
    (PIDS / "killed").write_text(str(xed_daemon.pid))
    os.kill(xed_daemon.pid, signal.SIGKILL)
    xed_daemon.proc.wait(30)


def test_2_has_a_daemon_again(xed_daemon, xed_device):
    (PIDS / "next").write_text(str(xed_daemon.pid))
    assert xed_device.version().name == "xe"
"""


def test_a_test_that_kills_the_daemon_fails_and_the_next_has_a_fresh_one(
    tmp_path: Path,
) -> None:
    """A test after which the session daemon is dead fails, naming how it exited (though
    the test itself raised nothing); the next test gets a new daemon and passes."""
    suite = _suite(tmp_path, "test_killing.py", KILLING)
    done = _pytest(suite, pids=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout, done.stdout
    assert "FAILED test_killing.py::test_1_kills_the_session_daemon" in done.stdout
    report = done.stdout.split("_ test_1_kills_the_session_daemon _", 1)[1]
    assert "the xed daemon (" in report, done.stdout
    assert "killed by SIGKILL during the test" in report, done.stdout
    assert (tmp_path / "killed").read_text() != (tmp_path / "next").read_text()


SLICED = """
import time

from clients import Device


def _logged(daemon, event, client_id):
    # the daemon's log is written by a thread of its own
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in daemon.log_text().splitlines():
            if f'"client_id": {client_id},' in line and f'"event": "{event}"' in line:
                return
        time.sleep(0.05)
    raise AssertionError(f"no {event} of client {client_id} in {daemon.log_path}")


def test_1_passes_after_a_visit(xed_daemon):
    Device.open(xed_daemon.socket_path).close()
    _logged(xed_daemon, "client_disconnected", 1)  # nothing of ours comes later


def test_2_fails(xed_daemon):
    Device.open(xed_daemon.socket_path).close()
    _logged(xed_daemon, "client_disconnected", 2)
    assert False, "on purpose"
"""


def test_a_failing_tests_log_section_has_only_its_own_lines(tmp_path: Path) -> None:
    """The failure report's log section holds what the session daemon logged while that
    test ran, not what earlier tests made it log."""
    suite = _suite(tmp_path, "test_sliced.py", SLICED)
    done = _pytest(suite, pids=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout, done.stdout
    report = done.stdout.split("_ test_2_fails _", 1)[1]
    section = report.split("the xed daemon log tail", 1)[1]
    assert '"client_id": 2,' in section, done.stdout
    assert '"client_id": 1,' not in section, done.stdout
    assert "daemon_ready" not in section, done.stdout  # the daemon started before test 2


PLAIN = """
import os


def test_no_daemon_was_started_for_us():
    me = str(os.getpid())
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[1] == me:
                children.append(name)
    assert children == []
"""


def test_the_plugin_is_inert_for_a_suite_that_does_not_use_it(tmp_path: Path) -> None:
    """The plugin is loaded in every suite (the entry point), and one that asks for none
    of its fixtures gets no daemon: pytest has no child process during the test."""
    suite = _suite(tmp_path, "test_plain.py", PLAIN)
    done = _pytest(suite, pids=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
