"""A pytest plugin for suites that test their own code against xed.

Registered through the `pytest11` entry point as `xed`, it does nothing until a test
asks for one of its fixtures:

- `xed_daemon`: a daemon for the session, on a temporary socket of this worker (so
  `pytest -n N` gives each xdist worker a daemon of its own). A test marked
  `@pytest.mark.xed_daemon(config="...TOML...")` gets a daemon of its own, with that
  configuration, started for it and stopped after it.
- `xed_device`: a `clients.Device` opened on that daemon, closed after the test.
- `xed_ib`: the IB-like aux driver (`xec ib serve`) in front of that daemon; its
  `socket_path` is where applications open it.
- `xed_run_c`: runs a program under the preload library against that daemon
  (`xed_run_c(["./prog", "arg"])` returns the CompletedProcess); skips the test where
  no C compiler can build the library.

When a test that used a daemon fails, the report gets a section with the last lines the
daemon (and the aux driver) logged while that test ran, where the reason usually is;
the session daemon's lines from earlier tests are left out. A test after which
its daemon (or aux driver) is no longer running fails, naming how it exited, even if the
test itself passed: whatever killed it is a finding. The next test that asks for the
session's daemon gets a fresh one, so one death fails one test, not the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from . import preload
from .daemon import AuxDriverProcess, DaemonProcess
from .device import Device
from .run import debugfs_dir, environment

LOG_TAIL_LINES = 40
# the processes a test used, each with where its log ended when the test took it
_STASH = pytest.StashKey[list[tuple[DaemonProcess, int]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "xed_daemon(config=None): give this test a daemon of its own, started with the "
        "TOML configuration `config` (xed's pytest plugin)",
    )


def _exit_of(process: DaemonProcess) -> str | None:
    """How `process` exited, or None while it runs."""
    status = None if process.proc is None else process.proc.poll()
    if status is None:
        return None
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A test that passed but left a daemon it used dead fails: whatever it did to the
    daemon is the finding. (One that failed already keeps its own error; the report's
    log section says the daemon exited.)"""
    result = yield
    dead = [
        f"{process.name} ({process.log_path}) {how} during the test"
        for process, _ in item.stash.get(_STASH, [])
        if (how := _exit_of(process)) is not None
    ]
    if dead:
        pytest.fail("; ".join(dead), pytrace=False)
    return result


def _log_size(process: DaemonProcess) -> int:
    try:
        return process.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_tail(process: DaemonProcess, offset: int) -> str:
    """The last lines `process` logged after `offset` (the test's own). The daemon logs
    from a thread of its own, so a line can come a moment after what caused it."""
    try:
        with open(process.log_path, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    if not lines:
        return "(nothing logged during this test)"
    earlier = len(lines) - LOG_TAIL_LINES
    skipped = f"({earlier} earlier lines of this test's in the log)\n" if earlier > 0 else ""
    return skipped + "\n".join(lines[-LOG_TAIL_LINES:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for process, offset in item.stash.get(_STASH, []):
            how = _exit_of(process)
            where = f"{process.log_path}, {how}" if how else process.log_path
            report.sections.append(
                (
                    f"{process.name} log tail, this test's lines ({where})",
                    _log_tail(process, offset),
                )
            )
    return report


def _watched(request: pytest.FixtureRequest, process: DaemonProcess) -> None:
    """Show what `process` logs from now on if the test fails; fail the test if it dies."""
    request.node.stash.setdefault(_STASH, []).append((process, _log_size(process)))


def _start(where: Path, config: str | None) -> DaemonProcess:
    where.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config is not None:
        config_path = where / "xed.toml"
        config_path.write_text(config)
    return DaemonProcess(
        socket_path=where / "xed.sock",
        config=config_path,
        log_path=where / "daemon.log",
        extra_args=("--log-level", "info"),
    ).start()


class _SessionDaemon:
    """The session's daemon (this xdist worker's), started when a test first asks for
    it and started again for the next test if it has died: the test during which it
    died fails for it (pytest_runtest_call), the others go on."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self.started: list[DaemonProcess] = []

    def running(self) -> DaemonProcess:
        if not self.started or _exit_of(self.started[-1]) is not None:
            where = self._tmp_path_factory.mktemp("xed-daemon")
            self.started.append(_start(where, None))
        return self.started[-1]


@pytest.fixture(scope="session")
def _xed_session_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SessionDaemon]:
    session = _SessionDaemon(tmp_path_factory)
    yield session
    for daemon in session.started:
        daemon.cleanup()


@pytest.fixture
def xed_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """The daemon this test talks to: the session's, or (marker xed_daemon) its own."""
    marker = request.node.get_closest_marker("xed_daemon")
    if marker is None:
        session: _SessionDaemon = request.getfixturevalue("_xed_session_daemon")
        daemon = session.running()
        _watched(request, daemon)
        yield daemon
        return
    config = marker.kwargs.get("config", marker.args[0] if marker.args else None)
    daemon = _start(tmp_path_factory.mktemp("xed-own-daemon"), config)
    _watched(request, daemon)
    try:
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def xed_device(xed_daemon: DaemonProcess) -> Iterator[Device]:
    """A drm connection (a `drm_file`) to the test's daemon. Its barrier page, if the
    test mapped it, is unmapped with it, so the daemon lets go of it at once."""
    with Device.open(xed_daemon.socket_path) as device:
        yield device
        device.pci_barrier_unmap()


@pytest.fixture
def xed_ib(
    request: pytest.FixtureRequest,
    xed_daemon: DaemonProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AuxDriverProcess]:
    """The IB-like aux driver in front of the test's daemon (`.socket_path`: its verbs
    socket, where `clients.ib` opens it)."""
    where = tmp_path_factory.mktemp("xed-ib")
    driver = AuxDriverProcess(
        xed_daemon.socket_path, socket_path=where / "verbs.sock", log_path=where / "ib.log"
    )
    driver.start()
    _watched(request, driver)
    try:
        yield driver
    finally:
        driver.cleanup()


RunC = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def xed_run_c(xed_daemon: DaemonProcess) -> Iterator[RunC]:
    """Run a program under the preload library (as `xec run` does) against the test's
    daemon: `xed_run_c(argv, node=None, timeout=60, **subprocess_kwargs)`."""
    try:
        library = preload.build()
    except preload.BuildError as exc:
        pytest.skip(f"the preload library cannot be built here: {exc}")
    with debugfs_dir("xed") as debugfs:

        def run(
            argv: Sequence[str | os.PathLike[str]],
            node: str | None = None,
            timeout: float = 60.0,
            **kwargs: Any,
        ) -> subprocess.CompletedProcess[str]:
            nodes = [node] if node else ["card0", "renderD128"]
            env = environment(library, xed_daemon.socket_path, nodes, debugfs)
            env.update(kwargs.pop("env", {}))
            kwargs.setdefault("capture_output", True)
            return subprocess.run(
                [os.fspath(a) for a in argv], env=env, text=True, timeout=timeout, **kwargs
            )

        yield run
