"""What one application of the IB-like aux driver can do to another's memory: nothing it
was not granted (issue 13, item 8).

A QP connects as an RC QP does, from both sides: naming somebody's QP gives no way to
post to it. lkeys and rkeys are random secrets, so a counted or guessed rkey reaches
nothing. A region is registered with the least access unless its owner asks for more.

The victim is root (the test process); the attacker is a child forked from the test
process that drops to uid 65534 (tests/helpers.py's NobodyChild) and reaches the
daemon's and the aux driver's sockets, which sit side by side, through their group.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import NOBODY, NobodyChild, needs_root, open_to_nobody
from ib_support import (
    ANSWER,
    BASE,
    ELSEWHERE,
    SIZE,
    App,
    check_alive,
    pattern,
    start_aux,
    status_of,
    stop_aux,
)

from clients import Device
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS
from clients.ib.mr import Keys
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_WC_LOC_PROT_ERR,
    IBV_WC_REM_ACCESS_ERR,
    IBV_WC_SUCCESS,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
)

Report = Callable[[Any], None]
ATTACK = b"\x66" * SIZE  # what the attacker tries to write, and fills its own BO with


def errno_or_0(fn: Callable[..., Any], *args: Any) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


@pytest.fixture
def nobody_aux(fresh_daemon: DaemonProcess) -> Iterator[AuxDriverProcess]:
    """An aux driver whose verbs socket sits beside the daemon's, both reachable by uid
    65534 (the directory searchable, the sockets' group nobody, mode 0660)."""
    needs_root()
    where = fresh_daemon.socket_path.parent
    aux = AuxDriverProcess(
        fresh_daemon.socket_path, socket_path=where / "verbs.sock", log_path=where / "aux.log"
    )
    aux.start()
    try:
        open_to_nobody(fresh_daemon)
        os.chown(aux.socket_path, 0, NOBODY)
        yield aux
        check_alive(aux)
    finally:
        stop_aux(aux)


@pytest.fixture
def root_apps(fresh_daemon: DaemonProcess) -> Iterator[Callable[[bytes], App]]:
    """Applications of root in this process, on the fresh daemon, holding `fill` at BASE."""
    made: list[App] = []

    def make(fill: bytes) -> App:
        dev = Device.open(fresh_daemon.socket_path)
        app = App(dev)
        app.add_bo(ELSEWHERE, SIZE)
        app.write(BASE, fill)
        app.write(ELSEWHERE, fill)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()
        app.dev.close()


def attacker_app(dev: Device) -> App:
    """uid 65534's application: a BO full of ATTACK at BASE, a context on the aux driver
    (its socket in the working directory), every verb bounded by ANSWER seconds."""
    app = App(dev)
    app.write(BASE, ATTACK)
    app.open("verbs.sock")
    assert app.ib is not None
    app.ib.rpc.transport.sock.settimeout(ANSWER)
    return app


def test_one_sided_connect_cannot_post_to_the_victim(
    fresh_daemon: DaemonProcess, nobody_aux: AuxDriverProcess, root_apps: Callable[..., App]
) -> None:
    """uid 65534 names root's unconnected QP: that answers 0 (it only records the intent),
    but its WRITE and READ, even with root's real rkey, are EINVAL with no completion;
    root's bytes stay, and root still connects that QP to the peer it chooses."""
    victim = root_apps(pattern(SIZE, 40))
    victim.open(nobody_aux.socket_path)
    assert victim.ib is not None
    mr = victim.ib.reg_mr(BASE, SIZE, ALL_ACCESS)  # for the peer root will choose
    qp = victim.ib.create_qp()

    def attack(report: Report, _wait_go: Callable[[], None]) -> None:
        with Device.open("xed.sock") as dev:
            a = attacker_app(dev)
            assert a.ib is not None
            mine = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
            own_qp = a.ib.create_qp()
            seen = {"uid": os.getuid(), "connect": errno_or_0(own_qp.connect, qp.num)}
            seen["write"] = errno_or_0(own_qp.rdma_write, mine, BASE, mr.rkey, SIZE)
            seen["read"] = errno_or_0(own_qp.rdma_read, mine, BASE, mr.rkey, SIZE)
            seen["completions"] = len(own_qp.poll_cq())
            seen["ours_kept"] = a.read(BASE, SIZE) == ATTACK
            report(seen)
            a.close()

    child = NobodyChild(fresh_daemon.socket_path, attack)
    seen = child.report()
    assert child.join() == 0
    assert seen == {
        "uid": NOBODY, "connect": 0, "write": errno.EINVAL, "read": errno.EINVAL,
        "completions": 0, "ours_kept": True,
    }  # fmt: skip
    assert victim.read(BASE, SIZE) == pattern(SIZE, 40)

    peer = root_apps(pattern(SIZE, 41))
    peer.open(nobody_aux.socket_path)
    assert peer.ib is not None
    peer_mr, peer_qp = peer.ib.reg_mr(BASE, SIZE), peer.ib.create_qp()
    qp.connect(peer_qp.num)  # not EBUSY: being named by the attacker took nothing
    peer_qp.connect(qp.num)
    assert status_of(peer_qp, IBV_WR_RDMA_WRITE, peer_mr, BASE, mr.rkey, 16) == IBV_WC_SUCCESS
    assert victim.read(BASE, 16) == pattern(SIZE, 41)[:16]


def test_guessed_and_counted_rkeys_never_reach_the_victims_memory(
    fresh_daemon: DaemonProcess, nobody_aux: AuxDriverProcess, root_apps: Callable[..., App]
) -> None:
    """root and uid 65534 are connected (both sides) and root grants a region at BASE;
    root's other region (at ELSEWHERE, remote access granted for someone else) is not
    reached by any of 256+ rkeys near the granted one and the attacker's own: every
    WRITE and READ with them completes IBV_WC_REM_ACCESS_ERR. The granted region works,
    both ways, across the two uids."""
    victim = root_apps(pattern(SIZE, 42))
    victim.open(nobody_aux.socket_path)
    assert victim.ib is not None
    granted = victim.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    victim.ib.reg_mr(ELSEWHERE, SIZE, ALL_ACCESS)  # granted for another peer, not this one
    qp = victim.ib.create_qp()

    def attack(report: Report, wait_go: Callable[[], None]) -> None:
        with Device.open("xed.sock") as dev:
            a = attacker_app(dev)
            assert a.ib is not None
            mine = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
            own_qp = a.ib.create_qp()
            report({"qp": own_qp.num})
            wait_go()  # root connects its QP to ours
            own_qp.connect(qp.num)
            near = [granted.rkey + d for d in range(-128, 129)]  # as counted keys would be
            near += [mine.rkey + d for d in range(-64, 65)] + [mine.lkey, granted.lkey]
            guesses = sorted({k & 0xFFFF_FFFF for k in near} - {granted.rkey})
            statuses: dict[int, int] = {}
            for key in guesses:
                for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
                    status = status_of(own_qp, opcode, mine, ELSEWHERE, key, SIZE)
                    statuses[status] = statuses.get(status, 0) + 1
            seen: dict[str, Any] = {"guesses": len(guesses), "statuses": statuses}
            seen["ours_kept"] = a.read(BASE, SIZE) == ATTACK  # no READ brought anything
            # and what root granted works, both ways
            seen["write"] = status_of(own_qp, IBV_WR_RDMA_WRITE, mine, BASE + 64, granted.rkey, 64)
            seen["read"] = status_of(own_qp, IBV_WR_RDMA_READ, mine, BASE, granted.rkey, 64)
            seen["got"] = a.read(BASE, 64).hex()
            report(seen)
            a.close()

    child = NobodyChild(fresh_daemon.socket_path, attack)
    qp.connect(child.report()["qp"])
    child.go()
    seen = child.report()
    assert child.join() == 0
    assert seen["guesses"] >= 256
    assert seen["statuses"] == {str(IBV_WC_REM_ACCESS_ERR): 2 * seen["guesses"]}
    assert seen["ours_kept"]
    assert victim.read(ELSEWHERE, SIZE) == pattern(SIZE, 42)
    assert (seen["write"], seen["read"]) == (IBV_WC_SUCCESS, IBV_WC_SUCCESS)
    assert seen["got"] == pattern(SIZE, 42)[:64].hex()
    assert victim.read(BASE, 128) == pattern(SIZE, 42)[:64] + ATTACK[:64]


@pytest.fixture
def pair(
    fresh_daemon: DaemonProcess, root_apps: Callable[..., App]
) -> Iterator[tuple[App, App, Any, Any]]:
    """Two connected applications (both sides) with contexts: (a, b, qp_a, qp_b)."""
    aux = start_aux(fresh_daemon)
    a, b = root_apps(pattern(SIZE, 43)), root_apps(pattern(SIZE, 44))
    a.open(aux.socket_path)
    b.open(aux.socket_path)
    assert a.ib is not None and b.ib is not None
    qp_a, qp_b = a.ib.create_qp(), b.ib.create_qp()
    qp_a.connect(qp_b.num)
    qp_b.connect(qp_a.num)
    yield a, b, qp_a, qp_b
    check_alive(aux)
    stop_aux(aux)


def test_region_registered_with_no_access_asked_refuses_remote_work(
    pair: tuple[App, App, Any, Any],
) -> None:
    """reg_mr without access flags is local only: the connected peer's WRITE into it
    and READ of it complete IBV_WC_REM_ACCESS_ERR; a READ into it by its owner is
    IBV_WC_LOC_PROT_ERR (no LOCAL_WRITE); the owner's WRITE from it works."""
    a, b, qp_a, qp_b = pair
    assert a.ib is not None and b.ib is not None
    least = b.ib.reg_mr(BASE, SIZE)
    mine = a.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE)
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(qp_a, opcode, mine, BASE, least.rkey, 64) == IBV_WC_REM_ACCESS_ERR
    assert b.read(BASE, SIZE) == pattern(SIZE, 44)
    assert a.read(BASE, SIZE) == pattern(SIZE, 43)

    theirs = a.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ)
    assert status_of(qp_b, IBV_WR_RDMA_READ, least, BASE, theirs.rkey, 64) == (IBV_WC_LOC_PROT_ERR)
    writable = a.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
    assert status_of(qp_b, IBV_WR_RDMA_WRITE, least, BASE, writable.rkey, 64) == IBV_WC_SUCCESS
    assert a.read(BASE, 64) == pattern(SIZE, 44)[:64]


def test_reg_mr_remote_write_without_local_write_is_einval(
    pair: tuple[App, App, Any, Any],
) -> None:
    """reg_mr asking REMOTE_WRITE without LOCAL_WRITE: EINVAL (ib_check_mr_access)."""
    a = pair[0]
    assert a.ib is not None
    for access in (IBV_ACCESS_REMOTE_WRITE, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ):
        assert errno_or_0(a.ib.reg_mr, BASE, SIZE, access) == errno.EINVAL
    assert a.ib.reg_mr(BASE, SIZE, IBV_ACCESS_REMOTE_READ).rkey  # reading needs no more


def test_keys_are_nonzero_and_unique_while_held() -> None:
    """The aux driver's key pool: 4096 keys, none 0, no two alike; given back, gone."""
    keys = Keys()
    taken = [keys.take() for _ in range(4096)]
    assert 0 not in taken and len(set(taken)) == len(taken) == len(keys)
    keys.give_back(*taken)
    assert len(keys) == 0
