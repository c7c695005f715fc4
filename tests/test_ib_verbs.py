"""Verbs the IB-like aux driver refuses, and with which errno: any verb before a context
is open, a second context, a descriptor that is not the caller's own exported VM,
regions over holes, of length zero, with unknown access bits or over too many BOs,
unknown keys and QPs, unknown opcodes. Then invalidation: a region whose range is
unbound or bound over, or whose VM's file is closed, is invalidated, and work into it
completes with an error instead of reaching memory that is no longer the region's.

Applications are ib_support's App, in the test process (or, to hand a VM fd to another
process, an agent), on this module's aux driver.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ib_support
import pytest
from agent import Agent
from ib_support import (
    BASE,
    ELSEWHERE,
    SIZE,
    UNBOUND,
    App,
    Pair,
    destroy_vm,
    errno_of,
    log_events,
    pattern,
    status_of,
    wait_for_log,
)

from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS, IbContext, MemoryRegion
from clients.rpc import RpcConnection
from clients.transport import SeqpacketTransport
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_FLAGS,
    IBV_WC_LOC_PROT_ERR,
    IBV_WC_REM_ACCESS_ERR,
    IBV_WC_SUCCESS,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
    PAGE_SIZE,
)

# ib_support's fixtures, for this module's tests (an aux driver of this module's own)
apps, aux_driver, pair, verbs = (
    ib_support.apps,
    ib_support.aux_driver,
    ib_support.pair,
    ib_support.verbs,
)


# --- refused verbs ----------------------------------------------------------------------------

_BEFORE_OPEN = [
    (Op.IBV_REG_MR, m.IbvRegMr(addr=BASE, length=PAGE_SIZE, access=ALL_ACCESS)),
    (Op.IBV_DEREG_MR, m.IbvDeregMr(lkey=0x1000)),
    (Op.IBV_CREATE_QP, m.IbvCreateQp()),
    (Op.IBV_CONNECT_QP, m.IbvConnectQp(qp_num=1, remote_qp_num=2)),
    (
        Op.IBV_POST_SEND,
        m.IbvPostSend(
            qp_num=1,
            wr_id=1,
            opcode=IBV_WR_RDMA_WRITE,
            lkey=0x1000,
            local_addr=BASE,
            length=8,
            remote_addr=BASE,
            rkey=0x1001,
        ),
    ),
]


@pytest.fixture
def raw_verbs(verbs: Path) -> Iterator[RpcConnection]:
    """A bare connection to the aux driver's socket, no context opened."""
    rpc = RpcConnection(SeqpacketTransport.connect(verbs), peer="the aux driver")
    yield rpc
    rpc.close()


@pytest.mark.parametrize(("op", "args"), _BEFORE_OPEN, ids=[op.name for op, _ in _BEFORE_OPEN])
def test_verb_before_open_context_is_eproto(raw_verbs: RpcConnection, op: Op, args: Any) -> None:
    """Any verb on a connection that has not opened a context: EPROTO."""
    assert errno_of(raw_verbs.call, op, args) == errno.EPROTO
    assert errno_of(raw_verbs.call, op, args) == errno.EPROTO  # and the connection lives on


def test_daemon_op_on_the_verbs_socket_is_enotty(raw_verbs: RpcConnection) -> None:
    """A daemon ioctl (VERSION) sent to the aux driver is not a verb: ENOTTY."""
    assert errno_of(raw_verbs.call, Op.VERSION, m.DrmVersion()) == errno.ENOTTY
    assert errno_of(raw_verbs.call, Op.IBV_CREATE_QP, m.IbvCreateQp()) == errno.EPROTO


def test_second_open_context_is_ebusy(apps: Callable[..., App], verbs: Path) -> None:
    """A second IBV_OPEN_CONTEXT on a connection with a context: EBUSY; the other VM is not
    imported (it can be destroyed once its fd is closed), the first context still works."""
    a = apps()
    a.open(verbs)
    assert a.ib is not None
    other = a.dev.vm_create()
    fd = a.dev.vm_export(other)
    try:
        assert errno_of(a.ib.rpc.call, Op.IBV_OPEN_CONTEXT, m.IbvOpenContext(), [fd]) == (
            errno.EBUSY
        )
    finally:
        os.close(fd)
    destroy_vm(a.dev, other)  # neither exported nor registered once the fd is closed
    assert a.ib.reg_mr(BASE, SIZE).lkey


def test_open_context_with_a_memfd_is_einval(verbs: Path) -> None:
    """IBV_OPEN_CONTEXT handing over a memfd instead of a VM fd: EINVAL."""
    fd = os.memfd_create("not-a-vm", os.MFD_CLOEXEC)
    try:
        assert errno_of(IbContext.open, verbs, fd) == errno.EINVAL
    finally:
        os.close(fd)


def test_open_context_with_a_dma_buf_is_einval(apps: Callable[..., App], verbs: Path) -> None:
    """IBV_OPEN_CONTEXT handing over a dma-buf of the same daemon: EINVAL."""
    a = apps()
    bo = a.dev.gem_create(SIZE)
    fd = a.dev.prime_handle_to_fd(bo)
    try:
        assert errno_of(IbContext.open, verbs, fd) == errno.EINVAL
    finally:
        os.close(fd)
    a.dev.gem_close(bo)


def test_refused_open_context_leaves_the_connection_usable(
    apps: Callable[..., App], verbs: Path
) -> None:
    """After OPEN_CONTEXT is refused (a memfd), the same connection can open a context."""
    a = apps()
    rpc = RpcConnection(SeqpacketTransport.connect(verbs), peer="the aux driver")
    memfd = os.memfd_create("not-a-vm", os.MFD_CLOEXEC)
    fd = a.dev.vm_export(a.vm)
    try:
        assert errno_of(rpc.call, Op.IBV_OPEN_CONTEXT, m.IbvOpenContext(), [memfd]) == (
            errno.EINVAL
        )
        reply, _ = rpc.call(Op.IBV_OPEN_CONTEXT, m.IbvOpenContext(), [fd])
        assert reply.va_bits > 32
        mr, _ = rpc.call(Op.IBV_REG_MR, m.IbvRegMr(addr=BASE, length=SIZE, access=ALL_ACCESS))
        assert mr.lkey != mr.rkey
    finally:
        os.close(memfd)
        os.close(fd)
        rpc.close()


def test_open_context_with_a_vm_fd_handed_over_by_another_app_is_eperm(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """A hands its VM fd to B (another process); B's OPEN_CONTEXT with it: EPERM. A can
    still open a context with the same fd afterwards."""
    a = apps()
    b = agents(daemon)
    fd = a.dev.vm_export(a.vm)
    try:
        refused = b.run(
            f"""
            from clients.ib import IbContext
            (fd,) = fds
            try:
                IbContext.open({str(verbs)!r}, fd)
                result = 0
            except OSError as exc:
                result = exc.errno
            os.close(fd)
            """,
            [fd],
        )
        assert refused == errno.EPERM
        a.ib = IbContext.open(verbs, fd)
    finally:
        os.close(fd)
    assert a.ib.reg_mr(BASE, SIZE).rkey


def test_reg_mr_over_a_hole_is_efault(apps: Callable[..., App], verbs: Path) -> None:
    """reg_mr over a range with an unbound part (a hole between BOs, past the end, nothing
    bound at all): EFAULT; the bound parts register fine."""
    a = apps()
    a.add_bo(BASE + 2 * SIZE, SIZE)  # hole at [BASE+SIZE, BASE+2*SIZE)
    a.open(verbs)
    assert a.ib is not None
    assert errno_of(a.ib.reg_mr, BASE, 3 * SIZE) == errno.EFAULT
    assert errno_of(a.ib.reg_mr, BASE + SIZE - PAGE_SIZE, 2 * PAGE_SIZE) == errno.EFAULT
    assert errno_of(a.ib.reg_mr, BASE + 2 * SIZE, SIZE + 1) == errno.EFAULT
    assert errno_of(a.ib.reg_mr, UNBOUND, PAGE_SIZE) == errno.EFAULT
    assert a.ib.reg_mr(BASE, SIZE).lkey
    assert a.ib.reg_mr(BASE + 2 * SIZE, SIZE).lkey


def test_reg_mr_length_zero_is_einval(apps: Callable[..., App], verbs: Path) -> None:
    """reg_mr of zero bytes: EINVAL."""
    a = apps()
    a.open(verbs)
    assert a.ib is not None
    assert errno_of(a.ib.reg_mr, BASE, 0) == errno.EINVAL


@pytest.mark.parametrize("access", [IBV_ACCESS_FLAGS + 1, 1 << 8, 0xFFFF_FFFF])
def test_reg_mr_unknown_access_bits_is_einval(
    apps: Callable[..., App], verbs: Path, access: int
) -> None:
    """reg_mr with access bits beyond LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ: EINVAL."""
    a = apps()
    a.open(verbs)
    assert a.ib is not None
    assert errno_of(a.ib.reg_mr, BASE, SIZE, access) == errno.EINVAL


def test_reg_mr_over_more_than_8_bos_is_e2big(apps: Callable[..., App], verbs: Path) -> None:
    """reg_mr over 9 BOs bound back to back: E2BIG; over 8 of them it works."""
    a = apps(sizes=[PAGE_SIZE] * 9)
    a.open(verbs)
    assert a.ib is not None
    assert errno_of(a.ib.reg_mr, BASE, 9 * PAGE_SIZE) == errno.E2BIG
    assert a.ib.reg_mr(BASE, 8 * PAGE_SIZE).lkey


def test_reg_mr_over_more_than_64_bindings_is_e2big(apps: Callable[..., App], verbs: Path) -> None:
    """reg_mr over one BO bound 65 times back to back (one BO, more bindings than the
    daemon's resolve lists): E2BIG, not the daemon's internal error; over 64 it works."""
    a = apps(sizes=())
    bo = a.dev.gem_create(PAGE_SIZE)
    for i in range(65):
        a.dev.vm_bind(a.vm, bo, BASE + i * PAGE_SIZE)
    a.open(verbs)
    assert a.ib is not None
    assert errno_of(a.ib.reg_mr, BASE, 65 * PAGE_SIZE) == errno.E2BIG
    assert a.ib.reg_mr(BASE, 64 * PAGE_SIZE).lkey


def test_dereg_unknown_lkey_is_enoent(pair: Pair) -> None:
    """dereg of an lkey never registered, of one already deregistered, or of the peer's
    (another context's): ENOENT."""
    p = pair
    assert p.a.ib is not None and p.b.ib is not None
    assert errno_of(p.a.ib.dereg_mr, MemoryRegion(BASE, SIZE, 0xDEAD, 0)) == errno.ENOENT
    assert errno_of(p.a.ib.dereg_mr, p.mr_b) == errno.ENOENT
    mr = p.a.ib.reg_mr(BASE, PAGE_SIZE)
    p.a.ib.dereg_mr(mr)
    assert errno_of(p.a.ib.dereg_mr, mr) == errno.ENOENT
    # B's region survived A's attempt
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8) == IBV_WC_SUCCESS


def test_connect_to_unknown_qp_is_enoent(pair: Pair) -> None:
    """connect to a QP number nobody created, or of our QP number we do not own: ENOENT."""
    p = pair
    assert p.a.ib is not None
    assert errno_of(p.qp_a.connect, 0x7FFF_FFFF) == errno.ENOENT
    not_ours = m.IbvConnectQp(qp_num=p.qp_b.num, remote_qp_num=p.qp_a.num)
    assert errno_of(p.a.ib.call, Op.IBV_CONNECT_QP, not_ours) == errno.ENOENT


def test_post_on_unknown_qp_is_enoent(pair: Pair) -> None:
    """post_send on a QP number nobody created, or on the peer's QP: ENOENT, no completion."""
    p = pair
    assert p.a.ib is not None
    for num in (0x7FFF_FFFF, p.qp_b.num):
        wr = m.IbvPostSend(
            qp_num=num, wr_id=1, opcode=IBV_WR_RDMA_WRITE, lkey=p.mr_a.lkey,
            local_addr=BASE, length=8, remote_addr=BASE, rkey=p.mr_b.rkey,
        )  # fmt: skip
        assert errno_of(p.a.ib.call, Op.IBV_POST_SEND, wr) == errno.ENOENT
    assert p.qp_a.poll_cq() == () and p.qp_b.poll_cq() == ()
    assert p.untouched()


@pytest.mark.parametrize("opcode", [1, 2, 3, 5, 0xFFFF_FFFF])
def test_post_unknown_opcode_is_einval(pair: Pair, opcode: int) -> None:
    """post_send with an opcode other than RDMA WRITE / READ: EINVAL, no completion."""
    p = pair
    assert errno_of(p.qp_a.post, opcode, p.mr_a, BASE, p.mr_b.rkey, 8) == errno.EINVAL
    assert p.qp_a.poll_cq() == ()
    assert p.untouched()


def test_post_on_unconnected_qp_is_einval(pair: Pair) -> None:
    """post_send on a QP that was never connected: EINVAL, no completion."""
    p = pair
    assert p.a.ib is not None
    lonely = p.a.ib.create_qp()
    assert errno_of(lonely.rdma_write, p.mr_a, BASE, p.mr_b.rkey, 8) == errno.EINVAL
    assert lonely.poll_cq() == ()
    assert p.untouched()


# --- invalidation -----------------------------------------------------------------------------


def test_unbind_under_a_region_invalidates_it(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """B unbinds one page under its region: the aux driver invalidates it, A's next WRITE
    into any of it is REM_ACCESS_ERR with B's bytes untouched; B's region elsewhere keeps
    working; after re-binding, a new registration works across the old hole."""
    verbs = aux_driver.socket_path
    a, b = apps(sizes=(SIZE, SIZE)), apps(sizes=(SIZE, SIZE))
    b.add_bo(ELSEWHERE, SIZE)
    data, fill = pattern(2 * SIZE, 10), pattern(2 * SIZE, 11)
    a.write(BASE, data)
    b.write(BASE, fill)
    b.write(ELSEWHERE, b"\0" * SIZE)
    a.open(verbs)
    b.open(verbs)
    assert a.ib is not None and b.ib is not None
    mr_a = a.ib.reg_mr(BASE, 2 * SIZE, ALL_ACCESS)
    mr_b, far = b.ib.reg_mr(BASE, 2 * SIZE, ALL_ACCESS), b.ib.reg_mr(ELSEWHERE, SIZE, ALL_ACCESS)
    qp, qp_b = a.ib.create_qp(), b.ib.create_qp()
    qp.connect(qp_b.num)
    qp_b.connect(qp.num)

    hole = BASE + SIZE + PAGE_SIZE  # the second page of B's second BO
    b.dev.vm_unbind(b.vm, hole, PAGE_SIZE)
    wait_for_log(aux_driver, "mr_invalidated", lkey=mr_b.lkey)
    for addr in (BASE, BASE + SIZE - 8, hole):  # bound, across the boundary, the hole
        assert status_of(qp, IBV_WR_RDMA_WRITE, mr_a, addr, mr_b.rkey, 16) == (
            IBV_WC_REM_ACCESS_ERR
        )
        assert status_of(qp, IBV_WR_RDMA_READ, mr_a, addr, mr_b.rkey, 16) == IBV_WC_REM_ACCESS_ERR
    assert b.read(BASE, 2 * SIZE) == fill
    assert a.read(BASE, 2 * SIZE) == data

    assert status_of(qp, IBV_WR_RDMA_WRITE, mr_a, ELSEWHERE, far.rkey, SIZE) == IBV_WC_SUCCESS
    assert b.read(ELSEWHERE, SIZE) == data[:SIZE]
    assert not any(r.get("lkey") == far.lkey for r in log_events(aux_driver, "mr_invalidated"))

    second_bo = b.bound[1][2]
    b.dev.vm_bind(b.vm, second_bo, hole, size=PAGE_SIZE, obj_offset=PAGE_SIZE)
    again = b.ib.reg_mr(BASE, 2 * SIZE, ALL_ACCESS)
    n = 2 * PAGE_SIZE
    assert status_of(qp, IBV_WR_RDMA_WRITE, mr_a, hole - PAGE_SIZE, again.rkey, n) == (
        IBV_WC_SUCCESS
    )
    assert b.read(hole - PAGE_SIZE, n) == data[:n]
    b.ib.dereg_mr(mr_b)  # the invalidated region can still be deregistered


def test_unbind_under_our_local_region_is_loc_prot_err(
    pair: Pair, aux_driver: AuxDriverProcess
) -> None:
    """A unbinds a page under its own region: A's WRITE from it and READ into it complete
    with IBV_WC_LOC_PROT_ERR; neither side's bytes change."""
    p = pair
    p.a.dev.vm_unbind(p.a.vm, BASE + PAGE_SIZE, PAGE_SIZE)
    wait_for_log(aux_driver, "mr_invalidated", lkey=p.mr_a.lkey)
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(p.qp_a, opcode, p.mr_a, BASE, p.mr_b.rkey, 64) == IBV_WC_LOC_PROT_ERR
    assert p.untouched()


def test_bind_over_a_region_invalidates_it(pair: Pair, aux_driver: AuxDriverProcess) -> None:
    """B binds a new BO over part of its region: the region is invalidated, A's WRITE is
    REM_ACCESS_ERR, and neither the old BO nor the new one is written."""
    p = pair
    new = p.b.dev.gem_create(PAGE_SIZE)
    with p.b.dev.mmap_bo(new) as cpu:
        p.b.dev.vm_bind(p.b.vm, new, BASE + PAGE_SIZE)
        wait_for_log(aux_driver, "mr_invalidated", lkey=p.mr_b.lkey)
        status = status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, SIZE)
        assert status == IBV_WC_REM_ACCESS_ERR
        assert cpu[0:PAGE_SIZE] == b"\0" * PAGE_SIZE
    assert p.untouched()


def test_closing_the_file_that_exported_the_vm_invalidates_every_region(
    pair: Pair, aux_driver: AuxDriverProcess
) -> None:
    """B's drm file (which created and exported its VM) closes while B's verbs context
    lives: the VM closes with it, the aux driver invalidates B's region; A's WRITE and READ
    against it and B's own work complete with errors, B registers nothing more (ENOENT),
    and no byte moves."""
    p = pair
    p.b.dev.close()
    wait_for_log(aux_driver, "context_vm_closed")
    wait_for_log(aux_driver, "mr_invalidated", lkey=p.mr_b.lkey, reason="vm_closed")
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        status = status_of(p.qp_a, opcode, p.mr_a, BASE, p.mr_b.rkey, 64)
        assert status == IBV_WC_REM_ACCESS_ERR
        status = status_of(p.qp_b, opcode, p.mr_b, BASE, p.mr_a.rkey, 64)
        assert status == IBV_WC_LOC_PROT_ERR
    assert p.b.ib is not None
    assert errno_of(p.b.ib.reg_mr, BASE, SIZE, ALL_ACCESS) == errno.ENOENT
    assert p.untouched()
    again = p.a.ib.reg_mr(BASE, SIZE, ALL_ACCESS) if p.a.ib else None
    assert again is not None  # A's own VM is untouched by B's going
