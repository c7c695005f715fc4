"""The IB-like aux driver when applications misbehave and when things go away: QPs
connected from one side only or already elsewhere, an application that shrinks or
corrupts its completion ring, or opens more connections than the driver has
descriptors; an application or the aux driver killed mid-session, SIGTERM with
contexts open; and the `xec ib serve` program itself. The aux driver must keep serving
the others, and what it held (the VMs registered with the daemon, descriptors, objects)
must be released.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ib_support
import pytest
from agent import Agent
from conftest import ROOT, baseline
from ib_support import (
    ANSWER,
    BASE,
    SIZE,
    App,
    Pair,
    check_alive,
    connect_remote,
    counts,
    destroy_vm,
    errno_of,
    open_pair,
    quiet_fds,
    remote_app,
    settle,
    start_aux,
    status_of,
    stop_aux,
    wait_until,
)

from clients import Device, XeError
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS, IbContext
from protocols import Op
from protocols import messages as m
from protocols.constants import IBV_WC_RETRY_EXC_ERR, IBV_WC_SUCCESS, IBV_WR_RDMA_WRITE

# ib_support's fixtures, for this module's tests (an aux driver of this module's own)
apps, aux_driver, pair, verbs = (
    ib_support.apps,
    ib_support.aux_driver,
    ib_support.pair,
    ib_support.verbs,
)


# --- isolation and robustness -----------------------------------------------------------------


@pytest.fixture
def own_aux(daemon: DaemonProcess) -> Iterator[AuxDriverProcess]:
    """An aux driver of this test's own (in front of the shared daemon), for tests that
    try to hurt it; the test itself checks that it survived (check_alive)."""
    aux = start_aux(daemon)
    yield aux
    aux.stop(timeout=ANSWER)
    aux.cleanup()


def still_serving(aux: AuxDriverProcess, p: Pair) -> None:
    """A's QP (connected to B's) still gets an answer from the aux driver."""
    try:
        status = status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8)
    except OSError as exc:
        check_alive(aux)
        raise AssertionError(f"the aux driver stopped answering A: {exc!r}") from exc
    assert status in (IBV_WC_SUCCESS, IBV_WC_RETRY_EXC_ERR)


def test_connect_to_a_qp_connected_elsewhere_is_ebusy(
    pair: Pair, apps: Callable[..., App], verbs: Path
) -> None:
    """C connecting its QP to B's QP, already connected to A's: EBUSY, and B's QP is not
    rewired (B's WRITE to A still works; C cannot READ B's region through it)."""
    p = pair
    assert p.b.ib is not None
    c = apps()
    c.write(BASE, b"\0" * SIZE)
    c.open(verbs)
    assert c.ib is not None
    mr_c = c.ib.reg_mr(BASE, SIZE)
    qp_c = c.ib.create_qp()
    assert errno_of(qp_c.connect, p.qp_b.num) == errno.EBUSY
    assert errno_of(qp_c.rdma_read, mr_c, BASE, p.mr_b.rkey, SIZE) == errno.EINVAL  # unconnected
    assert c.read(BASE, SIZE) == b"\0" * SIZE
    assert status_of(p.qp_b, IBV_WR_RDMA_WRITE, p.mr_b, BASE, p.mr_a.rkey, 8) == IBV_WC_SUCCESS
    assert p.a.read(BASE, 8) == p.fill_b[:8]


def test_connect_a_connected_qp_to_another_is_ebusy(
    pair: Pair, apps: Callable[..., App], verbs: Path
) -> None:
    """A connecting its QP, already connected to B's, to C's fresh QP: EBUSY; C's QP stays
    free (C can connect it elsewhere) and A's QP still reaches B."""
    p = pair
    c = apps()
    c.open(verbs)
    assert c.ib is not None and p.a.ib is not None
    qp_c = c.ib.create_qp()
    assert errno_of(p.qp_a.connect, qp_c.num) == errno.EBUSY
    qp_c.connect(p.a.ib.create_qp().num)
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8) == IBV_WC_SUCCESS


def test_qp_named_by_one_side_only_cannot_post_until_the_other_names_it(pair: Pair) -> None:
    """A QP whose remote has not named it back: post is EINVAL with no completion (not
    ready to send); once the remote names it, the same work request completes."""
    p = pair
    assert p.a.ib is not None and p.b.ib is not None
    half, other = p.a.ib.create_qp(), p.b.ib.create_qp()
    half.connect(other.num)
    assert errno_of(half.rdma_write, p.mr_a, BASE, p.mr_b.rkey, 8) == errno.EINVAL
    assert half.poll_cq() == () and p.untouched()
    other.connect(half.num)
    assert status_of(half, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8) == IBV_WC_SUCCESS
    assert p.b.read(BASE, 8) == p.fill_a[:8]


def test_connect_qp_to_itself_is_einval(pair: Pair) -> None:
    """Connecting a QP to its own number: EINVAL."""
    assert pair.a.ib is not None
    lonely = pair.a.ib.create_qp()
    assert errno_of(lonely.connect, lonely.num) == errno.EINVAL
    assert errno_of(lonely.rdma_write, pair.mr_a, BASE, pair.mr_b.rkey, 8) == errno.EINVAL


def test_connect_again_to_the_same_peer_is_allowed(pair: Pair) -> None:
    """Connecting a QP again to the QP it is connected to (from either side) succeeds."""
    pair.qp_a.connect(pair.qp_b.num)
    pair.qp_b.connect(pair.qp_a.num)
    assert status_of(pair.qp_a, IBV_WR_RDMA_WRITE, pair.mr_a, BASE, pair.mr_b.rkey, 8) == (
        IBV_WC_SUCCESS
    )


def test_app_shrinking_its_cq_ring_cannot_crash_the_aux_driver(
    daemon: DaemonProcess, apps: Callable[..., App], own_aux: AuxDriverProcess
) -> None:
    """An application that truncates the completion ring's memfd (or is refused doing
    so) and posts: the aux driver survives and keeps serving the other applications."""
    p = open_pair(apps, own_aux.socket_path)
    assert p.a.ib is not None and p.b.ib is not None
    reply, (fd,) = p.b.ib.rpc.call(Op.IBV_CREATE_QP, m.IbvCreateQp())
    try:
        os.ftruncate(fd, 0)
    except PermissionError:
        pass  # sealed against shrinking: the right answer
    finally:
        os.close(fd)
    other = p.a.ib.create_qp()
    p.b.ib.call(Op.IBV_CONNECT_QP, m.IbvConnectQp(qp_num=reply.qp_num, remote_qp_num=other.num))
    other.connect(reply.qp_num)
    wr = m.IbvPostSend(
        qp_num=reply.qp_num, wr_id=1, opcode=IBV_WR_RDMA_WRITE, lkey=p.mr_b.lkey,
        local_addr=BASE, length=8, remote_addr=BASE, rkey=p.mr_a.rkey,
    )  # fmt: skip
    with contextlib.suppress(XeError, ConnectionError):  # refusing or dropping B is fine
        p.b.ib.call(Op.IBV_POST_SEND, wr)
    still_serving(own_aux, p)
    with Device.open(daemon.socket_path) as dev:
        c = App(dev)
        try:
            c.open(own_aux.socket_path)  # a newcomer is still served
        finally:
            c.close()
    check_alive(own_aux)


def test_app_corrupting_its_cq_ring_indices_cannot_crash_the_aux_driver(
    apps: Callable[..., App], own_aux: AuxDriverProcess
) -> None:
    """An application that writes 2**64-1 into its ring's head and tail words and posts:
    the aux driver survives and keeps serving the other applications."""
    p = open_pair(apps, own_aux.socket_path)
    assert p.b.ib is not None
    ring = p.qp_b.cq
    ring.words.store_u64(8, (1 << 64) - 1)  # CQ_TAIL
    ring.words.store_u64(0, (1 << 64) - 1)  # CQ_HEAD
    with contextlib.suppress(XeError, ConnectionError):  # refusing or dropping B is fine
        p.qp_b.rdma_write(p.mr_b, BASE, p.mr_a.rkey, 8)
    still_serving(own_aux, p)
    check_alive(own_aux)


def test_connections_past_the_aux_drivers_descriptor_limit_cannot_end_it(
    daemon: DaemonProcess, own_aux: AuxDriverProcess
) -> None:
    """Connections to the verbs socket until the aux driver has no descriptor left for
    the next (its limit lowered here; any application may open that many): it goes on,
    and once they close, a newcomer is served."""
    held = len(os.listdir(f"/proc/{own_aux.pid}/fd"))
    resource.prlimit(own_aux.pid, resource.RLIMIT_NOFILE, (held + 8, held + 8))
    flood = []
    try:
        for _ in range(24):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            flood.append(sock)
            sock.connect(str(own_aux.socket_path))
        deadline = time.monotonic() + ANSWER
        while own_aux.proc is not None and own_aux.proc.poll() is None:
            if len(os.listdir(f"/proc/{own_aux.pid}/fd")) >= held + 8:  # a full table
                break
            assert time.monotonic() < deadline, "the driver never filled its table"
            time.sleep(0.01)
        check_alive(own_aux)
    finally:
        for sock in flood:
            sock.close()
    with Device.open(daemon.socket_path) as dev:
        c = App(dev)
        try:
            c.open(own_aux.socket_path)
            assert c.ib is not None and c.ib.reg_mr(BASE, SIZE).lkey
        finally:
            c.close()
    check_alive(own_aux)


# --- lifetime ---------------------------------------------------------------------------------


def test_app_exit_with_open_context_releases_its_vm(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """B is SIGKILLed with its context, MR and QP open: the aux driver releases B's VM
    (aux_registrations back to before), A's work to B completes RETRY_EXC_ERR, B's VM
    closes with its file (its BOs are freed) and the closed VM lives while A holds a copy
    of B's export fd, freed when that is closed; the daemon's and the aux driver's
    descriptor counts return to what they were."""
    aux = start_aux(fresh_daemon)
    try:
        with Device.open(fresh_daemon.socket_path) as dev:
            a = App(dev)
            try:
                a.open(aux.socket_path)
                assert a.ib is not None
                mr = a.ib.reg_mr(BASE, SIZE)
                qp = a.ib.create_qp()
                start = baseline(fresh_daemon)
                aux_fds = quiet_fds(aux, a.ib)
                assert start[1].aux_registrations == 1

                b = agents(fresh_daemon)
                remote = remote_app(b, aux.socket_path)
                # B keeps its export fd open, and hands A a copy of it
                _, (b_vm_fd,) = b.run_fds("send = [os.dup(kept)]")
                connect_remote(b, qp, remote)
                assert status_of(qp, IBV_WR_RDMA_WRITE, mr, BASE, remote["rkey"], 8) == (
                    IBV_WC_SUCCESS
                )
                assert counts(fresh_daemon).aux_registrations == 2
                b.kill()
                seen = wait_until(
                    fresh_daemon,
                    lambda c: c.aux_registrations == 1 and c.bos == start[1].bos,
                )
                assert seen.aux_registrations == 1
                assert status_of(qp, IBV_WR_RDMA_WRITE, mr, BASE, remote["rkey"], 8) == (
                    IBV_WC_RETRY_EXC_ERR
                )
                assert (seen.vms, seen.bos) == (start[1].vms + 1, start[1].bos)
                os.close(b_vm_fd)
                assert settle(lambda: baseline(fresh_daemon), start) == start
                assert settle(aux.open_fds, aux_fds) == aux_fds
            finally:
                a.close()
    finally:
        stop_aux(aux)


def test_aux_driver_killed_mid_session(fresh_daemon: DaemonProcess) -> None:
    """The aux driver SIGKILLed with two contexts, MRs and QPs open: the daemon unregisters
    everything, the apps' verbs fail with a ConnectionError (no hang), their VMs can be
    destroyed, and every count and the daemon's descriptors return to the baseline."""
    path = fresh_daemon.socket_path
    start = baseline(fresh_daemon)
    aux = start_aux(fresh_daemon)
    try:
        with Device.open(path) as dev_a, Device.open(path) as dev_b:
            a, b = App(dev_a), App(dev_b)
            try:
                a.open(aux.socket_path)
                b.open(aux.socket_path)
                assert a.ib is not None and b.ib is not None
                mr_a, mr_b = a.ib.reg_mr(BASE, SIZE), b.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
                qp, qp_b = a.ib.create_qp(), b.ib.create_qp()
                qp.connect(qp_b.num)
                qp_b.connect(qp.num)
                a.write(BASE, b"payload!")
                assert status_of(qp, IBV_WR_RDMA_WRITE, mr_a, BASE, mr_b.rkey, 8) == (
                    IBV_WC_SUCCESS
                )
                assert counts(fresh_daemon).aux_registrations == 2
                assert errno_of(dev_a.vm_destroy, a.vm) == errno.EBUSY

                assert aux.proc is not None
                aux.proc.kill()
                aux.proc.wait(30)
                seen = wait_until(
                    fresh_daemon, lambda c: (c.aux_registrations, c.vm_exports) == (0, 0)
                )
                assert (seen.aux_registrations, seen.vm_exports) == (0, 0)

                with pytest.raises(ConnectionError):  # DaemonGone, EPIPE or ECONNRESET
                    qp.rdma_write(mr_a, BASE, mr_b.rkey, 8)
                with pytest.raises(ConnectionError):
                    b.ib.reg_mr(BASE, SIZE)
                assert qp.poll_cq() == ()  # the ring is still mapped; nothing new in it
                assert b.read(BASE, 8) == b"payload!"  # the BOs are the apps' as before

                for app in (a, b):
                    app.dev.vm_destroy(app.vm)
                    for _va, _size, bo, _mapping in app.bound:
                        app.dev.gem_close(bo)
            finally:
                a.close()
                b.close()
        assert settle(lambda: baseline(fresh_daemon), start) == start
    finally:
        stop_aux(aux)


@pytest.mark.parametrize("round_", range(3))
def test_aux_driver_sigterm_with_open_contexts_exits_and_releases(
    fresh_daemon: DaemonProcess, round_: int
) -> None:
    """SIGTERM to the aux driver while two applications have contexts and regions: it
    exits with status 0, the daemon unregisters both VMs, the apps' next verb is a
    ConnectionError. (Three rounds: the shutdown order of trio's tasks varies.)"""
    aux = start_aux(fresh_daemon)
    try:
        with Device.open(fresh_daemon.socket_path) as dev:
            made = [App(dev), App(dev)]
            try:
                for app in made:
                    app.open(aux.socket_path)
                    assert app.ib is not None
                    app.ib.reg_mr(BASE, SIZE)
                assert counts(fresh_daemon).aux_registrations == 2
                assert aux.proc is not None
                aux.proc.terminate()
                try:
                    status = aux.proc.wait(ANSWER)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"the aux driver did not exit {ANSWER}s after SIGTERM")
                assert status == 0
                seen = wait_until(fresh_daemon, lambda c: c.aux_registrations == 0)
                assert seen.aux_registrations == 0
                for app in made:
                    assert app.ib is not None
                    with pytest.raises(ConnectionError):
                        app.ib.reg_mr(BASE, SIZE)
                    destroy_vm(dev, app.vm)
            finally:
                for app in made:
                    app.close()
    finally:
        stop_aux(aux)


def test_open_context_on_a_dead_aux_driver_is_a_connection_error(
    fresh_daemon: DaemonProcess,
) -> None:
    """After the aux driver is SIGKILLed, IbContext.open on its socket raises a
    ConnectionError (refused) instead of hanging; the VM fd stays the app's to close."""
    aux = start_aux(fresh_daemon)
    try:
        assert aux.proc is not None
        aux.proc.kill()
        aux.proc.wait(30)
        with Device.open(fresh_daemon.socket_path) as dev:
            app = App(dev)
            try:
                fd = dev.vm_export(app.vm)
                try:
                    with pytest.raises(ConnectionError):  # refused: nobody listens
                        IbContext.open(aux.socket_path, fd)
                finally:
                    os.close(fd)
                destroy_vm(dev, app.vm)
            finally:
                app.close()
    finally:
        stop_aux(aux)


# --- the program ------------------------------------------------------------------------------


def test_ib_serve_help_exits_0() -> None:
    """`python -m clients ib serve --help` prints usage and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "clients", "ib", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stderr
    assert "--socket" in done.stdout and "--daemon" in done.stdout
