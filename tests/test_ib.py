"""The IB-like aux driver (`xec ib serve`, clients/ib) and the applications it serves:
RDMA WRITE and READ between two applications' GPU address spaces, error completions,
refused verbs, invalidation of a region when its range is unbound, the shared-memory
completion ring, and what happens when an application or the aux driver goes away.

Everything is real: a daemon, an aux driver process (AuxDriverProcess, READY=1), and
applications. The test process is application A; application B is either a second drm
connection of the test process or a spawned agent process (tests/test_dma_buf.py) that
imports this module to build the same `App` and answers the test's snippets. The
daemon-side ops (VM_EXPORT, AUX_*) are tested in test_vm_export*.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import ROOT, baseline
from test_dma_buf import Agent, agent_pool

from clients import Batch, Device, XeError, user_fence
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS, IbContext, MemoryRegion, QueuePair
from clients.ib.cq import CQ_ENTRIES
from clients.rpc import RpcConnection
from clients.transport import SeqpacketTransport
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_FLAGS,
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

BASE = 0x1_0000_0000  # where an application binds its BOs, back to back
ELSEWHERE = 0x5_0000_0000  # a second, unrelated range
BATCH_VA = 0x6_0000_0000  # an application's batch BO: fence qword first, batch after
UNBOUND = 0x7_0000_0000  # nothing is ever bound here
SIZE = 4 * PAGE_SIZE
WAIT_NS = 5_000_000_000  # an upper bound, never an expectation
SETTLE = 10.0  # seconds a process gets to notice a close or an event (bounded polls)
ANSWER = 5.0  # seconds an aux driver under attack gets to answer a verb
TESTS = str(Path(__file__).resolve().parent)


# --- an application ---------------------------------------------------------------------------


class App:
    """One application: its drm connection, a VM with BOs bound back to back from `base`,
    a CPU mapping of each BO, and (once opened) a verbs context on the aux driver."""

    def __init__(self, dev: Device, sizes: Sequence[int] = (SIZE,), base: int = BASE) -> None:
        self.dev = dev
        self.vm = dev.vm_create()
        self.bound: list[tuple[int, int, int, Any]] = []  # (va, size, bo, mapping)
        self.ib: IbContext | None = None
        self._gpu: tuple[int, int, Any] | None = None  # (queue, bo, mapping)
        self._fence = 0
        addr = base
        for size in sizes:
            self.add_bo(addr, size)
            addr += size

    def add_bo(self, va: int, size: int) -> int:
        """A fresh BO of `size` bound at `va` and mapped; returns its handle."""
        bo = self.dev.gem_create(size)
        self.dev.vm_bind(self.vm, bo, va)
        self.bound.append((va, size, bo, self.dev.mmap_bo(bo)))
        return bo

    def open(self, verbs: str | os.PathLike[str], keep_fd: bool = False) -> int:
        """Export the VM and open a verbs context with it; returns the export fd if
        `keep_fd` (the caller closes it), else -1."""
        fd = self.dev.vm_export(self.vm)
        try:
            self.ib = IbContext.open(verbs, fd)
        except BaseException:
            os.close(fd)
            raise
        if keep_fd:
            return fd
        os.close(fd)
        return -1

    def _pieces(self, va: int, n: int) -> Iterator[tuple[Any, int, int]]:
        """(mapping, offset, length) for each BO behind [va, va+n), in order."""
        end, at = va + n, va
        for start, size, _bo, mapping in sorted(self.bound, key=lambda b: b[0]):
            lo, hi = max(at, start), min(end, start + size)
            if lo < hi:
                assert lo == at, f"{at:#x} is not backed by a BO of this application"
                yield mapping, lo - start, hi - lo
                at = hi
        assert at == end, f"{at:#x} is not backed by a BO of this application"

    def read(self, va: int, n: int) -> bytes:
        """The bytes at GPU address `va`, through our own CPU mappings of the BOs."""
        return b"".join(mp[off : off + k] for mp, off, k in self._pieces(va, n))

    def write(self, va: int, data: bytes) -> None:
        done = 0
        for mp, off, k in self._pieces(va, len(data)):
            mp[off : off + k] = data[done : done + k]
            done += k

    def run_batch(self, batch: Batch) -> None:
        """Run `batch` on a render queue of our VM and wait for its user fence."""
        if self._gpu is None:
            queue = self.dev.exec_queue_create(self.vm)
            bo = self.dev.gem_create(SIZE)
            self.dev.vm_bind(self.vm, bo, BATCH_VA)
            self._gpu = (queue, bo, self.dev.mmap_bo(bo))
        queue, _bo, cpu = self._gpu
        code = batch.tobytes()
        cpu[0x100 : 0x100 + len(code)] = code
        self._fence += 1
        self.dev.exec(queue, BATCH_VA + 0x100, syncs=[user_fence(BATCH_VA, self._fence)])
        self.dev.wait_user_fence(cpu.user_address(0), self._fence, timeout=WAIT_NS)

    def close(self) -> None:
        """Close the verbs context and our mappings (the drm connection is the owner's)."""
        if self.ib is not None:
            self.ib.close()
        for _va, _size, _bo, mapping in self.bound:
            mapping.close()
        if self._gpu is not None:
            self._gpu[2].close()


# --- helpers ----------------------------------------------------------------------------------


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno `fn` fails with (it must fail)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno is not None, f"no errno: {e.value!r}"
    return e.value.errno


def pattern(n: int, seed: int) -> bytes:
    """n recognisable bytes, different for each seed."""
    return bytes((i * 7 + seed * 31 + (i >> 8)) & 0xFF for i in range(n))


def one(qp: QueuePair) -> m.IbvWc:
    """The one completion waiting on `qp` (there must be exactly one)."""
    completions = qp.poll_cq()
    assert len(completions) == 1, completions
    return completions[0]


def status_of(
    qp: QueuePair, opcode: int, mr: MemoryRegion, remote: int, rkey: int, n: int, **kw: int
) -> int:
    """Post one work request and return its completion's status."""
    wr_id = qp.post(opcode, mr, remote, rkey, n, **kw)
    wc = one(qp)
    assert wc.wr_id == wr_id
    return wc.status


def check_log(aux: DaemonProcess) -> None:
    text = aux.log_text()
    bad = [
        line
        for line in text.splitlines()
        if "Traceback" in line or '"level": "error"' in line or '"level": "critical"' in line
    ]
    assert not bad, "the aux driver logged an internal error:\n" + text[-4000:]


def log_events(aux: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in aux.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def wait_for_log(aux: DaemonProcess, event: str, **fields: Any) -> dict[str, Any]:
    """Poll the aux driver's log (bounded) for an `event` line with these fields."""
    deadline = time.monotonic() + SETTLE
    while True:
        for record in log_events(aux, event):
            if all(record.get(k) == v for k, v in fields.items()):
                return record
        assert time.monotonic() < deadline, f"no {event} {fields} in the aux driver's log"
        time.sleep(0.005)


def destroy_vm(dev: Device, vm: int) -> None:
    """VM_DESTROY, retried (bounded) while the daemon has yet to notice that the last copy
    of the VM's export fd was closed (it learns that asynchronously)."""
    deadline = time.monotonic() + SETTLE
    while True:
        try:
            dev.vm_destroy(vm)
            return
        except XeError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def counts(daemon: DaemonProcess) -> Any:
    return baseline(daemon)[1]


def wait_until(daemon: DaemonProcess, check: Callable[[Any], bool]) -> Any:
    """Poll the daemon's object counts until `check` holds (bounded); return the last."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = counts(daemon)
        if check(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def settle(probe: Callable[[], Any], target: Any) -> Any:
    """Poll `probe` until it returns `target` (bounded); return the last value."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = probe()
        if seen == target or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def quiet_fds(aux: AuxDriverProcess, ib: IbContext) -> int:
    """The aux driver's descriptor count once it has answered one more verb of `ib`'s.
    It closes a descriptor it hands out (a CQ ring) just after sending the reply, so a
    count taken as soon as that verb returns may still see it; it serves a connection's
    verbs in order, so its answer to the next one comes after that close."""
    refused = m.IbvDeregMr(lkey=0)  # no region has lkey 0: ENOENT, and no descriptor
    assert errno_of(ib.call, Op.IBV_DEREG_MR, refused) == errno.ENOENT
    return aux.open_fds()


def start_aux(daemon: DaemonProcess) -> AuxDriverProcess:
    aux = AuxDriverProcess(daemon.socket_path)
    aux.start()
    return aux


def stop_aux(aux: AuxDriverProcess) -> None:
    aux.stop(timeout=ANSWER)
    try:
        check_log(aux)
    finally:
        aux.cleanup()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aux_driver(daemon: DaemonProcess) -> Iterator[AuxDriverProcess]:
    """One aux driver in front of the shared daemon, for this module's tests."""
    aux = start_aux(daemon)
    yield aux
    assert aux.proc is not None and aux.proc.poll() is None, "the aux driver died"
    stop_aux(aux)


@pytest.fixture
def verbs(aux_driver: AuxDriverProcess) -> Path:
    return aux_driver.socket_path


@pytest.fixture
def apps(daemon: DaemonProcess) -> Iterator[Callable[..., App]]:
    """Make applications in this process, each on a drm connection of its own."""
    made: list[App] = []

    def make(sizes: Sequence[int] = (SIZE,), base: int = BASE) -> App:
        dev = Device.open(daemon.socket_path)
        try:
            app = App(dev, sizes, base)
        except BaseException:
            dev.close()
            raise
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()
        app.dev.close()


@pytest.fixture
def agents() -> Iterator[Callable[[DaemonProcess], Agent]]:
    """Start agent processes connected to a daemon; ended (and checked) after the test."""
    yield from agent_pool()


@attrs.define
class Pair:
    """A and B with contexts, an MR over each one's BOs (all access), connected QPs."""

    a: App
    b: App
    mr_a: MemoryRegion
    mr_b: MemoryRegion
    qp_a: QueuePair
    qp_b: QueuePair
    fill_a: bytes
    fill_b: bytes

    def untouched(self) -> bool:
        return self.a.read(BASE, SIZE) == self.fill_a and self.b.read(BASE, SIZE) == self.fill_b


def open_pair(apps: Callable[..., App], verbs: Path) -> Pair:
    """A and B on the aux driver at `verbs`, with a verb that gets no answer in ANSWER
    seconds raising TimeoutError instead of hanging the test."""
    a, b = apps(), apps()
    fill_a, fill_b = pattern(SIZE, 1), pattern(SIZE, 2)
    a.write(BASE, fill_a)
    b.write(BASE, fill_b)
    a.open(verbs)
    b.open(verbs)
    assert a.ib is not None and b.ib is not None
    for ib in (a.ib, b.ib):
        ib.rpc.transport.sock.settimeout(ANSWER)
    mr_a, mr_b = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS), b.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp_a, qp_b = a.ib.create_qp(), b.ib.create_qp()
    qp_a.connect(qp_b.num)
    qp_b.connect(qp_a.num)
    return Pair(a, b, mr_a, mr_b, qp_a, qp_b, fill_a, fill_b)


@pytest.fixture
def pair(apps: Callable[..., App], verbs: Path) -> Pair:
    return open_pair(apps, verbs)


def remote_app(
    agent: Agent,
    verbs: Path,
    sizes: Sequence[int] = (SIZE,),
    fill: bytes = b"",
    access: int = ALL_ACCESS,
) -> dict[str, int]:
    """Make application B in `agent`: an App (`b`) with `fill` at BASE, an MR (`mr`)
    over all its BOs, a QP (`qp`); B keeps its VM's export fd open (`kept`). Returns B's
    qp number, rkey and lkey."""
    return agent.run(  # type: ignore[no-any-return]
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from test_ib import App, BASE
        b = App(dev, {list(sizes)!r})
        b.write(BASE, bytes.fromhex({fill.hex()!r}))
        kept = b.open({str(verbs)!r}, keep_fd=True)
        mr = b.ib.reg_mr(BASE, {sum(sizes)}, {access})
        qp = b.ib.create_qp()
        result = {{"qp": qp.num, "rkey": mr.rkey, "lkey": mr.lkey}}
        """
    )


def remote_read(agent: Agent, va: int, n: int) -> bytes:
    """B's bytes at `va`, read in B's process through B's own CPU mappings."""
    return bytes.fromhex(agent.run(f"result = b.read({va}, {n}).hex()"))


def connect_remote(agent: Agent, qp: QueuePair, remote: dict[str, int]) -> None:
    """Connect our QP and B's (remote_app's, in `agent`) to each other: both sides."""
    qp.connect(remote["qp"])
    agent.run(f"qp.connect({qp.num})")


def close_remote(agent: Agent) -> None:
    agent.run("b.close(); os.close(kept)")


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


def check_alive(aux: AuxDriverProcess) -> None:
    assert aux.proc is not None and aux.proc.poll() is None, (
        f"the aux driver died ({aux.proc and aux.proc.returncode}):\n{aux.log_text()[-3000:]}"
    )
    check_log(aux)


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
