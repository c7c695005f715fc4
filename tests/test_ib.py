"""The IB-like aux driver (`xec ib serve`, clients/ib) and the applications it serves:
RDMA WRITE and READ between two applications' GPU address spaces, the error completions
of work that may not reach its target, and the shared-memory completion ring.

Everything is real: a daemon, an aux driver process (AuxDriverProcess, READY=1), and
applications. The test process is application A; application B is either a second drm
connection of the test process or a spawned agent process (tests/agent.py) that
imports ib_support to build the same `App` and answers the test's snippets. Refused
verbs and invalidation are in test_ib_verbs.py, robustness and lifetimes in
test_ib_lifetime.py; the daemon-side ops (VM_EXPORT, AUX_*) in test_vm_export*.py.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

import ib_support
import pytest
from agent import Agent
from ib_support import (
    BASE,
    SETTLE,
    SIZE,
    App,
    Pair,
    close_remote,
    connect_remote,
    errno_of,
    one,
    pattern,
    remote_app,
    remote_read,
    status_of,
)

from clients.daemon import DaemonProcess
from clients.ib import ALL_ACCESS, MemoryRegion
from clients.ib.cq import CQ_ENTRIES
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_WC_LOC_PROT_ERR,
    IBV_WC_REM_ACCESS_ERR,
    IBV_WC_RETRY_EXC_ERR,
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


# --- two applications exchange data -----------------------------------------------------------


def test_rdma_write_lands_in_the_peers_bo(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """A's RDMA WRITE from its region lands in B's BO, seen through B's own CPU mapping."""
    b = agents(daemon)
    remote = remote_app(b, verbs, fill=b"\0" * SIZE)
    a = apps()
    data = pattern(SIZE, 3)
    a.write(BASE, data)
    a.open(verbs)
    assert a.ib is not None
    mr = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp = a.ib.create_qp()
    connect_remote(b, qp, remote)
    wr_id = qp.rdma_write(mr, BASE, remote["rkey"], SIZE)
    wc = one(qp)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        wr_id, IBV_WC_SUCCESS, IBV_WR_RDMA_WRITE, SIZE,
    )  # fmt: skip
    assert remote_read(b, BASE, SIZE) == data
    assert a.read(BASE, SIZE) == data  # the source is left as it was
    close_remote(b)


def test_rdma_read_from_the_peer_lands_in_our_mapping(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """A's RDMA READ of B's region lands in A's BO, seen through A's CPU mapping."""
    b = agents(daemon)
    data = pattern(SIZE, 4)
    remote = remote_app(b, verbs, fill=data)
    a = apps()
    a.write(BASE, b"\xee" * SIZE)
    a.open(verbs)
    assert a.ib is not None
    mr = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp = a.ib.create_qp()
    connect_remote(b, qp, remote)
    wr_id = qp.rdma_read(mr, BASE, remote["rkey"], SIZE, wr_id=0xFFFF_FFFF_FFFF_FFFE)
    wc = one(qp)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        wr_id, IBV_WC_SUCCESS, IBV_WR_RDMA_READ, SIZE,
    )  # fmt: skip
    assert wr_id == 0xFFFF_FFFF_FFFF_FFFE
    assert a.read(BASE, SIZE) == data
    assert remote_read(b, BASE, SIZE) == data  # the source is left as it was
    close_remote(b)


def test_gpu_batch_in_the_receiving_vm_reads_what_arrived(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """After A's RDMA WRITE into B, a MEM_COPY batch in B's VM copies the arrived bytes and
    an MI_COPY_MEM_MEM a dword of them: the bytes are in the GPU's view of B's VM too."""
    b = agents(daemon)
    remote = remote_app(b, verbs, sizes=(SIZE, SIZE), fill=b"\0" * (2 * SIZE))
    a = apps()
    data = pattern(PAGE_SIZE, 5)
    a.write(BASE, data)
    a.open(verbs)
    assert a.ib is not None
    mr = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp = a.ib.create_qp()
    connect_remote(b, qp, remote)
    qp.rdma_write(mr, BASE + 0x40, remote["rkey"], PAGE_SIZE)
    assert one(qp).status == IBV_WC_SUCCESS
    dst = BASE + SIZE + PAGE_SIZE  # in B's second BO
    b.run(
        f"""
        b.run_batch(
            Batch().mem_copy({dst}, {BASE + 0x40}, {PAGE_SIZE})
            .copy_dword({dst + PAGE_SIZE}, {BASE + 0x40 + 0x100}).end()
        )
        """
    )
    assert remote_read(b, dst, PAGE_SIZE) == data
    assert remote_read(b, dst + PAGE_SIZE, 4) == data[0x100:0x104]
    close_remote(b)


def test_transfers_cross_bo_boundaries_on_both_sides(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """Regions spanning BOs bound back to back (A: 2+3+3 pages, B: 4+4): a WRITE and a
    READ crossing every boundary land whole, each BO holding its part."""
    b = agents(daemon)
    remote = remote_app(b, verbs, sizes=(SIZE, SIZE), fill=b"\0" * (2 * SIZE))
    a = apps(sizes=(2 * PAGE_SIZE, 3 * PAGE_SIZE, 3 * PAGE_SIZE))
    data = pattern(8 * PAGE_SIZE, 6)
    a.write(BASE, data)
    a.open(verbs)
    assert a.ib is not None
    mr = a.ib.reg_mr(BASE, 8 * PAGE_SIZE, ALL_ACCESS)
    qp = a.ib.create_qp()
    connect_remote(b, qp, remote)
    # 6 pages from A's page 1 (crosses A's boundaries at 2 and 5) to B's page 1 (crosses 4)
    n = 6 * PAGE_SIZE
    qp.rdma_write(mr, BASE + PAGE_SIZE, remote["rkey"], n, local_addr=BASE + PAGE_SIZE)
    wc = one(qp)
    assert (wc.status, wc.byte_len) == (IBV_WC_SUCCESS, n)
    got = remote_read(b, BASE, 2 * SIZE)
    assert got == b"\0" * PAGE_SIZE + data[PAGE_SIZE : PAGE_SIZE + n] + b"\0" * PAGE_SIZE
    # and back: B's pages 3..7 (crossing 4) into A's pages 0..4 (crossing 2)
    a.write(BASE, b"\0" * 8 * PAGE_SIZE)
    n = 5 * PAGE_SIZE
    qp.rdma_read(mr, BASE + 3 * PAGE_SIZE, remote["rkey"], n)
    assert one(qp).status == IBV_WC_SUCCESS
    assert a.read(BASE, n) == got[3 * PAGE_SIZE : 3 * PAGE_SIZE + n]
    assert a.read(BASE + n, 3 * PAGE_SIZE) == b"\0" * 3 * PAGE_SIZE
    close_remote(b)


def test_transfers_at_unaligned_offsets_inside_regions(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """WRITE and READ at odd offsets inside both regions move exactly those bytes."""
    b = agents(daemon)
    fill_b = pattern(2 * SIZE, 7)
    remote = remote_app(b, verbs, sizes=(SIZE, SIZE), fill=fill_b)
    a = apps()
    fill_a = pattern(SIZE, 8)
    a.write(BASE, fill_a)
    a.open(verbs)
    assert a.ib is not None
    mr = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp = a.ib.create_qp()
    connect_remote(b, qp, remote)
    src, dst, n = 123, SIZE - 77, 1000  # dst crosses B's BO boundary
    qp.rdma_write(mr, BASE + dst, remote["rkey"], n, local_addr=BASE + src, wr_id=41)
    wc = one(qp)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        41, IBV_WC_SUCCESS, IBV_WR_RDMA_WRITE, n,
    )  # fmt: skip
    expect_b = fill_b[:dst] + fill_a[src : src + n] + fill_b[dst + n :]
    assert remote_read(b, BASE, 2 * SIZE) == expect_b
    qp.rdma_read(mr, BASE + SIZE + 5, remote["rkey"], 3, local_addr=BASE + SIZE - 3, wr_id=42)
    wc = one(qp)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        42, IBV_WC_SUCCESS, IBV_WR_RDMA_READ, 3,
    )  # fmt: skip
    assert a.read(BASE, SIZE) == fill_a[: SIZE - 3] + expect_b[SIZE + 5 : SIZE + 8]
    close_remote(b)


def test_both_directions_on_one_connection(pair: Pair) -> None:
    """B's QP of the pair works too: B writes into A, A's bytes change, B's completion."""
    p = pair
    p.qp_b.rdma_write(p.mr_b, BASE + 8, p.mr_a.rkey, 16, wr_id=7)
    wc = one(p.qp_b)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        7, IBV_WC_SUCCESS, IBV_WR_RDMA_WRITE, 16,
    )  # fmt: skip
    assert p.a.read(BASE, SIZE) == p.fill_a[:8] + p.fill_b[:16] + p.fill_a[24:]
    assert p.qp_a.poll_cq() == ()  # nothing on the other side's ring


# --- error completions ------------------------------------------------------------------------


def test_unknown_lkey_is_loc_prot_err(pair: Pair) -> None:
    """A work request naming an lkey the context never registered: IBV_WC_LOC_PROT_ERR."""
    p = pair
    fake = MemoryRegion(BASE, SIZE, lkey=0xDEAD, rkey=0)
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(p.qp_a, opcode, fake, BASE, p.mr_b.rkey, 64) == IBV_WC_LOC_PROT_ERR
    assert p.untouched()


def test_peers_lkey_is_loc_prot_err(pair: Pair) -> None:
    """A's work request naming B's lkey (another context's): IBV_WC_LOC_PROT_ERR."""
    p = pair
    theirs = MemoryRegion(BASE, SIZE, lkey=p.mr_b.lkey, rkey=p.mr_b.rkey)
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, theirs, BASE, p.mr_b.rkey, 64) == (
        IBV_WC_LOC_PROT_ERR
    )
    assert p.untouched()


@pytest.mark.parametrize(
    ("offset", "length"),
    [(SIZE - 8, 16), (-8, 16), (0, SIZE + 1), (SIZE, 1)],
    ids=["past-the-end", "before-the-start", "one-too-long", "just-after"],
)
def test_local_range_outside_the_mr_is_loc_prot_err(pair: Pair, offset: int, length: int) -> None:
    """Local range not inside the lkey's region: IBV_WC_LOC_PROT_ERR, for WRITE and READ."""
    p = pair
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        status = status_of(
            p.qp_a, opcode, p.mr_a, BASE, p.mr_b.rkey, length, local_addr=BASE + offset
        )
        assert status == IBV_WC_LOC_PROT_ERR
    assert p.untouched()


def test_unknown_rkey_is_rem_access_err(pair: Pair) -> None:
    """A remote key nobody registered: IBV_WC_REM_ACCESS_ERR, for WRITE and READ."""
    p = pair
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(p.qp_a, opcode, p.mr_a, BASE, 0xBEEF, 64) == IBV_WC_REM_ACCESS_ERR
    assert p.untouched()


def test_rkey_of_a_context_that_is_not_the_peer_is_rem_access_err(
    pair: Pair, apps: Callable[..., App], verbs: Path
) -> None:
    """The rkey of C's region (C not the connected peer), or of our own: REM_ACCESS_ERR."""
    p = pair
    c = apps()
    fill_c = pattern(SIZE, 9)
    c.write(BASE, fill_c)
    c.open(verbs)
    assert c.ib is not None
    mr_c = c.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    for rkey in (mr_c.rkey, p.mr_a.rkey):
        for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
            assert status_of(p.qp_a, opcode, p.mr_a, BASE, rkey, 64) == IBV_WC_REM_ACCESS_ERR
    assert c.read(BASE, SIZE) == fill_c
    assert p.untouched()


@pytest.mark.parametrize(
    ("offset", "length"),
    [(SIZE - 8, 16), (-8, 16), (1, SIZE), (SIZE, 1)],
    ids=["past-the-end", "before-the-start", "one-byte-over", "just-after"],
)
def test_remote_range_outside_the_mr_is_rem_access_err(
    pair: Pair, offset: int, length: int
) -> None:
    """Remote range not inside the rkey's region: IBV_WC_REM_ACCESS_ERR, WRITE and READ."""
    p = pair
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        status = status_of(p.qp_a, opcode, p.mr_a, BASE + offset, p.mr_b.rkey, length)
        assert status == IBV_WC_REM_ACCESS_ERR
    assert p.untouched()


def test_write_without_remote_write_access_is_rem_access_err(pair: Pair) -> None:
    """WRITE into a region registered without REMOTE_WRITE: REM_ACCESS_ERR, bytes kept;
    READ of it (REMOTE_READ granted) still works."""
    p = pair
    assert p.b.ib is not None
    ro = p.b.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ)
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, ro.rkey, 64) == (
        IBV_WC_REM_ACCESS_ERR
    )
    assert p.untouched()
    assert status_of(p.qp_a, IBV_WR_RDMA_READ, p.mr_a, BASE, ro.rkey, 64) == IBV_WC_SUCCESS
    assert p.a.read(BASE, 64) == p.fill_b[:64]


def test_read_without_remote_read_access_is_rem_access_err(pair: Pair) -> None:
    """READ of a region registered without REMOTE_READ: REM_ACCESS_ERR, our bytes kept;
    WRITE into it (REMOTE_WRITE granted) still works."""
    p = pair
    assert p.b.ib is not None
    wo = p.b.ib.reg_mr(BASE, SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
    assert status_of(p.qp_a, IBV_WR_RDMA_READ, p.mr_a, BASE, wo.rkey, 64) == IBV_WC_REM_ACCESS_ERR
    assert p.untouched()
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, wo.rkey, 64) == IBV_WC_SUCCESS
    assert p.b.read(BASE, 64) == p.fill_a[:64]


def test_region_with_no_access_bits_refuses_remote_work(pair: Pair) -> None:
    """A region registered with access 0 is reachable neither by WRITE nor READ."""
    p = pair
    assert p.b.ib is not None
    none = p.b.ib.reg_mr(BASE, SIZE, 0)
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(p.qp_a, opcode, p.mr_a, BASE, none.rkey, 64) == IBV_WC_REM_ACCESS_ERR
    assert p.untouched()


def test_read_into_region_without_local_write_is_loc_prot_err(pair: Pair) -> None:
    """RDMA READ into a local region registered without LOCAL_WRITE: LOC_PROT_ERR; a WRITE
    from that region (reading it) still works."""
    p = pair
    assert p.a.ib is not None
    local_ro = p.a.ib.reg_mr(BASE, SIZE, IBV_ACCESS_REMOTE_READ)
    assert status_of(p.qp_a, IBV_WR_RDMA_READ, local_ro, BASE, p.mr_b.rkey, 64) == (
        IBV_WC_LOC_PROT_ERR
    )
    assert p.untouched()
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, local_ro, BASE, p.mr_b.rkey, 64) == IBV_WC_SUCCESS
    assert p.b.read(BASE, 64) == p.fill_a[:64]


def test_deregistered_rkey_is_rem_access_err(pair: Pair) -> None:
    """After B deregisters its region, A's WRITE with its old rkey: REM_ACCESS_ERR."""
    p = pair
    assert p.b.ib is not None
    p.b.ib.dereg_mr(p.mr_b)
    for opcode in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ):
        assert status_of(p.qp_a, opcode, p.mr_a, BASE, p.mr_b.rkey, 64) == IBV_WC_REM_ACCESS_ERR
    assert p.untouched()


def test_peer_context_closed_is_retry_exc_err(pair: Pair) -> None:
    """Once B's context is closed, A's work requests complete with IBV_WC_RETRY_EXC_ERR,
    and connecting to B's old QP is ENOENT."""
    p = pair
    assert p.b.ib is not None
    p.b.ib.close()
    p.b.ib = None
    deadline = time.monotonic() + SETTLE
    while True:  # the aux driver notices the close asynchronously
        status = status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8)
        if status != IBV_WC_SUCCESS:
            break
        assert time.monotonic() < deadline, "the aux driver never noticed B's close"
        time.sleep(0.005)
    assert status == IBV_WC_RETRY_EXC_ERR
    assert status_of(p.qp_a, IBV_WR_RDMA_READ, p.mr_a, BASE, p.mr_b.rkey, 8) == (
        IBV_WC_RETRY_EXC_ERR
    )
    assert errno_of(p.qp_a.connect, p.qp_b.num) == errno.ENOENT


def test_ranges_at_the_top_of_the_address_space_complete_with_errors(pair: Pair) -> None:
    """Work requests whose local or remote range wraps past 2**64, or whose length is
    2**64-1: LOC_PROT_ERR / REM_ACCESS_ERR, nothing written, the QP still works."""
    p = pair
    top = (1 << 64) - 1
    write = IBV_WR_RDMA_WRITE
    assert status_of(p.qp_a, write, p.mr_a, BASE, p.mr_b.rkey, 8, local_addr=top) == (
        IBV_WC_LOC_PROT_ERR
    )
    assert status_of(p.qp_a, write, p.mr_a, top, p.mr_b.rkey, 8) == IBV_WC_REM_ACCESS_ERR
    assert status_of(p.qp_a, write, p.mr_a, BASE, p.mr_b.rkey, top) == IBV_WC_LOC_PROT_ERR
    assert p.untouched()
    assert status_of(p.qp_a, write, p.mr_a, BASE, p.mr_b.rkey, 8) == IBV_WC_SUCCESS


def test_error_completions_keep_the_qp_usable(pair: Pair) -> None:
    """After error completions, the next good work request on the QP succeeds."""
    p = pair
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, 0xBEEF, 8) == IBV_WC_REM_ACCESS_ERR
    fake = MemoryRegion(BASE, SIZE, lkey=0xDEAD, rkey=0)
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, fake, BASE, p.mr_b.rkey, 8) == IBV_WC_LOC_PROT_ERR
    assert status_of(p.qp_a, IBV_WR_RDMA_WRITE, p.mr_a, BASE, p.mr_b.rkey, 8) == IBV_WC_SUCCESS
    assert p.b.read(BASE, 16) == p.fill_a[:8] + p.fill_b[8:16]


# --- the completion ring ----------------------------------------------------------------------


def test_many_posts_then_one_poll_returns_them_in_order(pair: Pair) -> None:
    """100 work requests posted without polling: one poll returns their completions in
    posting order, and the ring is empty after."""
    p = pair
    ids = []
    for i in range(100):
        opcode = IBV_WR_RDMA_WRITE if i % 2 else IBV_WR_RDMA_READ
        rkey = p.mr_b.rkey if i % 10 else 0xBEEF  # some errors among them
        ids.append(p.qp_a.post(opcode, p.mr_a, BASE + i, rkey, 8, wr_id=1000 + i))
    completions = p.qp_a.poll_cq(1000)
    assert [wc.wr_id for wc in completions] == ids
    assert [wc.opcode for wc in completions] == [
        IBV_WR_RDMA_WRITE if i % 2 else IBV_WR_RDMA_READ for i in range(100)
    ]
    assert [wc.status for wc in completions] == [
        IBV_WC_SUCCESS if i % 10 else IBV_WC_REM_ACCESS_ERR for i in range(100)
    ]
    assert p.qp_a.poll_cq() == ()


def test_poll_takes_at_most_max_entries(pair: Pair) -> None:
    """poll_cq(n) takes the n oldest completions and leaves the rest for the next poll."""
    p = pair
    for i in range(10):
        p.qp_a.rdma_write(p.mr_a, BASE, p.mr_b.rkey, 8, wr_id=i)
    assert [wc.wr_id for wc in p.qp_a.poll_cq(3)] == [0, 1, 2]
    assert [wc.wr_id for wc in p.qp_a.poll_cq(100)] == list(range(3, 10))


def test_full_ring_counts_overruns_and_keeps_unread_completions(pair: Pair) -> None:
    """More than CQ_ENTRIES (1024) unpolled completions: the extra ones are counted as
    overruns, the unread ones are not overwritten; after polling the ring takes more."""
    p = pair
    extra = 7
    for i in range(CQ_ENTRIES + extra):
        p.qp_a.rdma_write(p.mr_a, BASE, p.mr_b.rkey, 8, wr_id=i)
    assert p.qp_a.cq.overruns == extra
    completions = p.qp_a.poll_cq(2 * CQ_ENTRIES)
    assert [wc.wr_id for wc in completions] == list(range(CQ_ENTRIES))
    assert all(wc.status == IBV_WC_SUCCESS for wc in completions)
    p.qp_a.rdma_write(p.mr_a, BASE, p.mr_b.rkey, 8, wr_id=99999)
    assert [wc.wr_id for wc in p.qp_a.poll_cq()] == [99999]
    assert p.qp_a.cq.overruns == extra


def test_wait_cq_returns_the_completion(pair: Pair) -> None:
    """wait_cq() returns the one completion of a posted work request."""
    p = pair
    wr_id = p.qp_a.rdma_read(p.mr_a, BASE, p.mr_b.rkey, 32)
    wc = p.qp_a.wait_cq()
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (
        wr_id, IBV_WC_SUCCESS, IBV_WR_RDMA_READ, 32,
    )  # fmt: skip
    assert p.a.read(BASE, 32) == p.fill_b[:32]
