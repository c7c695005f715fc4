"""The IB-like aux driver when its daemon goes away (issue 13, item 19).

Every context belongs to the daemon its VM came from. When that daemon dies, the
contexts die with it: each application's next verb answers EIO (as uverbs does once
its device is gone). The driver connects again and serves new contexts against the
daemon that comes back on the same socket (a socket unit restarts it); if none does
within --reconnect-for seconds, it exits 69 (EX_UNAVAILABLE) with one line naming the
daemon's socket. With no daemon at all at start, it exits 69 at once.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, _check_log
from ib_support import (
    ANSWER,
    BASE,
    SIZE,
    App,
    check_alive,
    check_log,
    counts,
    errno_of,
    log_events,
    pattern,
    settle,
    status_of,
    stop_aux,
    wait_for_log,
    wait_until,
)

from clients import Device
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS
from clients.rpc import RpcConnection
from clients.transport import SeqpacketTransport
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_WC_SUCCESS,
    IBV_WR_RDMA_WRITE,
)

EX_UNAVAILABLE = 69


def daemon_at(sock: Path, log: Path) -> DaemonProcess:
    return DaemonProcess(socket_path=sock, log_path=log, extra_args=("--log-level", "debug"))


def stop_daemon(daemon: DaemonProcess) -> None:
    daemon.stop()
    _check_log(daemon)
    daemon.cleanup()


def opened(dev: Device, verbs: Path, seed: int) -> App:
    """An application holding pattern(seed) at BASE, its context open (verbs bounded)."""
    app = App(dev)
    app.write(BASE, pattern(SIZE, seed))
    app.open(verbs)
    assert app.ib is not None
    app.ib.rpc.transport.sock.settimeout(ANSWER)
    return app


def connected(a: App, b: App) -> tuple[Any, Any]:
    assert a.ib is not None and b.ib is not None
    qp_a, qp_b = a.ib.create_qp(), b.ib.create_qp()
    qp_a.connect(qp_b.num)
    qp_b.connect(qp_a.num)
    return qp_a, qp_b


def test_daemon_restart_kills_old_contexts_and_new_ones_work(tmp_path: Path) -> None:
    """Two apps with contexts, regions and connected QPs; the daemon is SIGKILLed and a
    new one started on the same socket: the driver reconnects, every verb of the old
    contexts answers EIO (no completion appears), two new apps open contexts through the
    same driver and RDMA between them; once all are closed, the new daemon holds no
    registration and the driver's descriptors are back to what they were."""
    sock = tmp_path / "xed.sock"
    first = daemon_at(sock, tmp_path / "first.log").start()
    second: DaemonProcess | None = None
    aux = AuxDriverProcess(sock, extra_args=("--reconnect-for", "60"))
    aux.start()
    probe = RpcConnection(SeqpacketTransport.connect(aux.socket_path), peer="the aux driver")
    try:  # a verb answered: the driver is past its start-up
        assert errno_of(probe.call, Op.IBV_CREATE_QP, m.IbvCreateQp()) == errno.EPROTO
        aux_fds = aux.open_fds()
        with Device.open(sock) as dev_a, Device.open(sock) as dev_b:
            a, b = opened(dev_a, aux.socket_path, 50), opened(dev_b, aux.socket_path, 51)
            try:
                ib_a, ib_b = a.ib, b.ib
                assert ib_a is not None and ib_b is not None
                mr_a, mr_b = ib_a.reg_mr(BASE, SIZE), ib_b.reg_mr(BASE, SIZE, ALL_ACCESS)
                qp_a, qp_b = connected(a, b)
                assert status_of(qp_a, IBV_WR_RDMA_WRITE, mr_a, BASE, mr_b.rkey, 8) == (
                    IBV_WC_SUCCESS
                )
                assert first.proc is not None
                first.proc.kill()
                first.proc.wait(30)
                second = daemon_at(sock, tmp_path / "second.log").start()
                wait_for_log(aux, "daemon_reconnected")

                memfd = os.memfd_create("not-a-vm", os.MFD_CLOEXEC)
                verbs: list[Callable[[], object]] = [
                    lambda: ib_a.reg_mr(BASE, SIZE),
                    lambda: ib_a.dereg_mr(mr_a),
                    ib_a.create_qp,
                    lambda: qp_a.connect(qp_b.num),
                    lambda: qp_a.rdma_write(mr_a, BASE, mr_b.rkey, 8),
                    lambda: ib_b.reg_mr(BASE, SIZE),
                    lambda: ib_a.rpc.call(Op.IBV_OPEN_CONTEXT, m.IbvOpenContext(), [memfd]),
                ]
                try:
                    assert [errno_of(verb) for verb in verbs] == [errno.EIO] * len(verbs)
                finally:
                    os.close(memfd)
                assert qp_a.poll_cq() == () and qp_b.poll_cq() == ()
            finally:
                a.close()
                b.close()

        with Device.open(sock) as dev_c, Device.open(sock) as dev_d:
            c, d = opened(dev_c, aux.socket_path, 52), opened(dev_d, aux.socket_path, 53)
            try:
                assert c.ib is not None and d.ib is not None
                mr_c = c.ib.reg_mr(BASE, SIZE)
                mr_d = d.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
                qp_c, _qp_d = connected(c, d)
                assert status_of(qp_c, IBV_WR_RDMA_WRITE, mr_c, BASE, mr_d.rkey, SIZE) == (
                    IBV_WC_SUCCESS
                )
                assert d.read(BASE, SIZE) == pattern(SIZE, 52)
                assert counts(second).aux_registrations == 2
            finally:
                c.close()
                d.close()
        seen = wait_until(second, lambda now: now.aux_registrations == 0)
        assert seen.aux_registrations == 0
        assert settle(aux.open_fds, aux_fds) == aux_fds
        check_alive(aux)
        wait_for_log(aux, "daemon_lost", contexts=2)
        assert "app_dropped" not in aux.log_text()  # told, not dropped
    finally:
        probe.close()
        stop_aux(aux)
        first.cleanup()  # SIGKILLed: nothing of it to check
        if second is not None:
            stop_daemon(second)


def test_unplug_kills_old_contexts_and_after_replug_new_ones_work(tmp_path: Path) -> None:
    """The device unplugged under two apps with connected contexts: the driver lets
    their contexts go at once (every verb EIO, no completion), waits through the unplug
    however long it lasts (longer than --reconnect-for) and, once REPLUG has plugged a
    new device in, serves new apps on it; nothing is left in the daemon or the driver."""
    sock = tmp_path / "xed.sock"
    daemon = daemon_at(sock, tmp_path / "daemon.log").start()
    aux = AuxDriverProcess(sock, extra_args=("--reconnect-for", "0.2"))
    aux.start()
    probe = RpcConnection(SeqpacketTransport.connect(aux.socket_path), peer="the aux driver")
    try:
        assert errno_of(probe.call, Op.IBV_CREATE_QP, m.IbvCreateQp()) == errno.EPROTO
        aux_fds = aux.open_fds()
        before = counts(daemon)
        with (
            Device.open(sock) as dev_a,
            Device.open(sock) as dev_b,
            Device.open(sock, role="admin") as admin,
        ):
            a, b = opened(dev_a, aux.socket_path, 60), opened(dev_b, aux.socket_path, 61)
            try:
                ib_a, ib_b = a.ib, b.ib
                assert ib_a is not None and ib_b is not None
                mr_a, mr_b = ib_a.reg_mr(BASE, SIZE), ib_b.reg_mr(BASE, SIZE, ALL_ACCESS)
                qp_a, qp_b = connected(a, b)
                admin.admin_unplug()
                wait_for_log(aux, "daemon_lost", contexts=2)
                verbs: list[Callable[[], object]] = [
                    lambda: ib_a.reg_mr(BASE, SIZE),
                    lambda: qp_a.rdma_write(mr_a, BASE, mr_b.rkey, 8),
                    ib_b.create_qp,
                ]
                assert [errno_of(verb) for verb in verbs] == [errno.EIO] * len(verbs)
                assert qp_a.poll_cq() == () and qp_b.poll_cq() == ()
                # unplugged for longer than --reconnect-for (its HELLOs, refused, come
                # 0.05, 0.1, 0.2 s apart): the driver waits on
                assert hello_of(sock) == errno.ENODEV
                assert settle(lambda: refused_hellos(daemon, aux.pid) >= 4, True)
                check_alive(aux)
                admin.admin_replug()
                wait_for_log(aux, "daemon_reconnected")
            finally:
                a.close()
                b.close()
        with Device.open(sock) as dev_c, Device.open(sock) as dev_d:
            c, d = opened(dev_c, aux.socket_path, 62), opened(dev_d, aux.socket_path, 63)
            try:
                assert c.ib is not None and d.ib is not None
                mr_c = c.ib.reg_mr(BASE, SIZE)
                mr_d = d.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
                qp_c, _qp_d = connected(c, d)
                assert status_of(qp_c, IBV_WR_RDMA_WRITE, mr_c, BASE, mr_d.rkey, SIZE) == (
                    IBV_WC_SUCCESS
                )
                assert d.read(BASE, SIZE) == pattern(SIZE, 62)
            finally:
                c.close()
                d.close()
        assert wait_until(daemon, lambda now: now == before) == before
        assert settle(aux.open_fds, aux_fds) == aux_fds
        check_alive(aux)
    finally:
        probe.close()
        stop_aux(aux)
        stop_daemon(daemon)


def refused_hellos(daemon: DaemonProcess, pid: int) -> int:
    """How many HELLOs of process `pid` the daemon refused (its debug log says)."""
    refused = log_events(daemon, "ioctl_refused")
    return sum(1 for r in refused if r.get("op") == "HELLO" and r.get("pid") == pid)


def hello_of(sock: Path) -> int:
    """The errno a new drm connection's HELLO gets (0: answered)."""
    try:
        Device.open(sock).close()
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_driver_exits_69_when_the_daemon_stays_away(tmp_path: Path) -> None:
    """The daemon SIGKILLed and not restarted: after --reconnect-for (1 s here) the aux
    driver exits with status 69 and one line on stderr naming the daemon's socket; the
    app's connection to it is closed (its next verb: ConnectionError)."""
    sock = tmp_path / "xed.sock"
    daemon = daemon_at(sock, tmp_path / "daemon.log").start()
    aux = AuxDriverProcess(sock, extra_args=("--reconnect-for", "1"))
    aux.start()
    try:
        with Device.open(sock) as dev:
            app = opened(dev, aux.socket_path, 54)
            try:
                assert daemon.proc is not None and aux.proc is not None
                daemon.proc.kill()
                daemon.proc.wait(30)
                try:
                    status = aux.proc.wait(60)
                except subprocess.TimeoutExpired:
                    pytest.fail("the aux driver kept running without a daemon")
                assert status == EX_UNAVAILABLE
                said = [ln for ln in aux.log_text().splitlines() if ln.startswith("xec ib serve:")]
                assert len(said) == 1, aux.log_text()[-2000:]
                assert said[0].startswith(
                    f"xec ib serve: the xed daemon at {sock} did not come back within 1 s ("
                )
                check_log(aux)
                assert app.ib is not None
                with pytest.raises(ConnectionError):
                    app.ib.reg_mr(BASE, SIZE)
            finally:
                app.close()
    finally:
        aux.cleanup()
        daemon.cleanup()


def test_driver_with_no_daemon_at_start_exits_69(tmp_path: Path) -> None:
    """`xec ib serve` with nothing listening at --daemon: status 69 and one line on
    stderr naming that socket, no traceback."""
    missing = tmp_path / "nobody-home.sock"
    done = subprocess.run(
        [
            sys.executable, "-m", "clients", "ib", "serve",
            "--socket", str(tmp_path / "verbs.sock"), "--daemon", str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == EX_UNAVAILABLE, done.stderr
    assert done.stderr.startswith(
        f"xec ib serve: no xed daemon at {missing}: No such file or directory (no daemon"
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "verbs.sock").exists()
