"""Fixtures: a real daemon process on a temporary socket, real client connections.

Every daemon a test starts is checked when it stops: it must not have logged a crashed
ioctl or a traceback, whatever the clients threw at it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import Device
from clients.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent


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
    ).start()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon shared by the tests that only need a connection of their own."""
    proc = start_daemon(tmp_path_factory.mktemp("shared-daemon"))
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None, "the shared daemon died"
    proc.stop()
    _check_log(proc)
    proc.cleanup()


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of this test's own, for counting objects and descriptors."""
    proc = start_daemon(tmp_path)
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None, "the daemon died"
    proc.stop()
    _check_log(proc)
    proc.cleanup()


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
def dev(daemon: DaemonProcess) -> Iterator[Device]:
    """A drm connection to the shared daemon."""
    device = Device.open(daemon.socket_path)
    yield device
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
    program = (
        "import json, sys\n"
        "from clients import Device, Batch, XeError, user_fence\n"
        f"dev = Device.open({str(socket_path)!r})\n"
        "argv = sys.argv[1:]\n"
        "result = None\n" + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, f"client failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def spawn_client(socket_path: Path, code: str, *args: str) -> subprocess.Popen[str]:
    """Like run_client, but running: talk to it over stdin/stdout lines."""
    program = (
        "import json, sys\n"
        "from clients import Device, Batch, XeError, user_fence\n"
        f"dev = Device.open({str(socket_path)!r})\n"
        "argv = sys.argv[1:]\n" + textwrap.dedent(code)
    )
    return subprocess.Popen(
        [sys.executable, "-c", program, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def baseline(daemon: DaemonProcess) -> tuple[int, Any]:
    """(open descriptors, object counts) of a daemon, seen from a short admin visit."""
    with Device.open(daemon.socket_path, role="admin") as adm:
        counts = adm.admin_status().objects
        fds = daemon.open_fds()
    return fds, counts
