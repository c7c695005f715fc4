"""The IB-like aux driver over userptr ranges: a region over an application's host memory
maps those very pages, nothing pinned. Before that memory changes (`host.replace`,
`host.free`) the aux driver lets the pages go (mr_evicted) and acknowledges; the next work
request faults the region in again (mr_faulted) or, the pages freed, completes with an
error. Real processes, with ib_support's App, fixtures and helpers; whether the aux driver
still maps host memory is read from its /proc/<pid>/maps.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import ib_support
import pytest
from agent import Agent
from conftest import baseline
from ib_support import (
    ANSWER,
    BASE,
    ELSEWHERE,
    SETTLE,
    SIZE,
    TESTS,
    App,
    check_log,
    close_remote,
    connect_remote,
    counts,
    errno_of,
    one,
    pattern,
    settle,
    start_aux,
    status_of,
    stop_aux,
    wait_for_log,
)
from test_userptr import host_memfd, memfd, userptr_op

from clients import Device
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.host_memory import HostMemory
from clients.ib import ALL_ACCESS, IbContext, MemoryRegion, QueuePair, driver
from clients.rpc import RpcConnection
from clients.transport import SeqpacketTransport
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_WC_LOC_PROT_ERR,
    IBV_WC_REM_ACCESS_ERR,
    IBV_WC_SUCCESS,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
    PAGE_SIZE,
)
from protocols.memfd import F_SEAL_FUTURE_WRITE

# ib_support's fixtures, for this module's tests too (an aux driver of this module's own)
apps, aux_driver, verbs = (
    ib_support.apps,
    ib_support.aux_driver,
    ib_support.verbs,
)

MR_EVENTS = ("mr_evicted", "mr_faulted", "mr_fault_failed", "mr_invalidated")


# --- helpers ----------------------------------------------------------------------------------


def with_host(app: App, va: int, fill: bytes, bound: int = 0) -> HostMemory:
    """Host memory of app's connection holding `fill`, its first `bound` bytes (all by
    default) bound by userptr at `va`."""
    host = app.dev.host_memory(len(fill))
    host[0 : len(fill)] = fill
    app.dev.vm_bind_userptr(app.vm, host, 0, va, bound or len(fill))
    return host


def ib_of(app: App, verbs: Path) -> IbContext:
    """Open app's verbs context; a verb with no answer in ANSWER seconds raises."""
    app.open(verbs)
    assert app.ib is not None
    app.ib.rpc.transport.sock.settimeout(ANSWER)
    return app.ib


def connect(a: IbContext, b: IbContext) -> tuple[QueuePair, QueuePair]:
    """A QP of each, connected to each other (both sides)."""
    qp_a, qp_b = a.create_qp(), b.create_qp()
    qp_a.connect(qp_b.num)
    qp_b.connect(qp_a.num)
    return qp_a, qp_b


Pair = tuple[App, App, HostMemory, MemoryRegion, MemoryRegion, QueuePair, QueuePair]


def host_pair(apps: Callable[..., App], verbs: Path, fill: bytes, bound: int = 0) -> Pair:
    """A with host memory bound by userptr at BASE and a region over SIZE of it, B with
    a zeroed BO region at BASE, their QPs connected: (a, b, host, mr_a, mr_b, qp_a, qp_b)."""
    a, b = apps(sizes=()), apps()
    host = with_host(a, BASE, fill, bound)
    b.write(BASE, bytes(SIZE))
    ib_a, ib_b = ib_of(a, verbs), ib_of(b, verbs)
    return (
        a,
        b,
        host,
        ib_a.reg_mr(BASE, SIZE, ALL_ACCESS),
        ib_b.reg_mr(BASE, SIZE, ALL_ACCESS),
        *connect(ib_a, ib_b),
    )


def mr_events(aux: DaemonProcess, lkey: int) -> list[str]:
    """The region events logged for `lkey`, in the order they were logged."""
    lines = aux.log_text().splitlines()
    records = [json.loads(ln) for ln in lines if ln.startswith("{") and ln.endswith("}")]
    return [r["event"] for r in records if r.get("lkey") == lkey and r.get("event") in MR_EVENTS]


def aux_maps(aux: DaemonProcess, host: HostMemory) -> int:
    """The aux driver's mappings of `host`'s memfd (the device and inode of our own)."""
    ours = Path("/proc/self/maps").read_text().splitlines()
    keys = [ln.split()[3:5] for ln in ours if ln.startswith(f"{host.mapping.address:x}-")]
    assert len(keys) == 1, "our host memory is not in /proc/self/maps"
    lines = Path(f"/proc/{aux.pid}/maps").read_text().splitlines()
    return sum(line.split()[3:5] == keys[0] for line in lines)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run fn in a thread of its own; what it raises is put in the list."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failed


def uniform(data: bytes) -> int:
    """The one value every byte of `data` has (fails if they differ: a torn read)."""
    assert len(set(data)) == 1, f"torn read: values {sorted(set(data))}"
    return data[0]


def remote_userptr_app(agent: Agent, verbs: Path, fill: bytes) -> dict[str, int]:
    """Application B in `agent`: host memory (`host`) holding `fill` bound by userptr at
    BASE, an MR over it, a QP; returns its qp number, rkey and lkey."""
    return agent.run(  # type: ignore[no-any-return]
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from ib_support import App, BASE
        b = App(dev, [])
        host = dev.host_memory({len(fill)})
        host[0:{len(fill)}] = bytes.fromhex({fill.hex()!r})
        dev.vm_bind_userptr(b.vm, host, 0, BASE, {len(fill)})
        kept = b.open({str(verbs)!r}, keep_fd=True)
        mr = b.ib.reg_mr(BASE, {len(fill)}, {ALL_ACCESS})
        qp = b.ib.create_qp()
        result = {{"qp": qp.num, "rkey": mr.rkey, "lkey": mr.lkey}}
        """
    )


# --- moving bytes ------------------------------------------------------------------------------


def test_rdma_between_the_host_memories_of_two_processes(
    daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    apps: Callable[..., App],
    verbs: Path,
) -> None:
    """A (here) and B (another process) each register host memory bound by userptr: A's
    READ of B's region lands in A's host memory, A's WRITE from it lands in B's (seen
    through B's own mapping), both at offsets crossing pages; after B, then A, replaces
    its memory, the next READ / WRITE moves the new bytes."""
    b = agents(daemon)
    fill_a, fill_b = pattern(SIZE, 20), pattern(SIZE, 21)
    remote = remote_userptr_app(b, verbs, fill_b)
    rkey = remote["rkey"]
    a = apps(sizes=())
    host = with_host(a, BASE, bytes(SIZE))
    ib = ib_of(a, verbs)
    mr = ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    qp = ib.create_qp()
    connect_remote(b, qp, remote)

    def b_host() -> bytes:
        return bytes.fromhex(b.run(f"result = bytes(host[0:{SIZE}]).hex()"))

    assert status_of(qp, IBV_WR_RDMA_READ, mr, BASE, rkey, SIZE) == IBV_WC_SUCCESS
    assert host[0:SIZE] == fill_b
    host[0:SIZE] = fill_a  # a plain store: nothing changes under the region
    src, dst, n = PAGE_SIZE - 100, 2 * PAGE_SIZE - 300, 1000
    wr = qp.rdma_write(mr, BASE + dst, rkey, n, local_addr=BASE + src)
    wc = one(qp)
    assert (wc.wr_id, wc.status, wc.byte_len) == (wr, IBV_WC_SUCCESS, n)
    assert b_host() == fill_b[:dst] + fill_a[src : src + n] + fill_b[dst + n :]

    b.run(f"host.replace(0, b'\\x5a' * {SIZE})")
    assert status_of(qp, IBV_WR_RDMA_READ, mr, BASE, rkey, SIZE) == IBV_WC_SUCCESS
    assert host[0:SIZE] == b"\x5a" * SIZE
    host.replace(0, b"\xa5" * SIZE)
    assert status_of(qp, IBV_WR_RDMA_WRITE, mr, BASE, rkey, SIZE) == IBV_WC_SUCCESS
    assert b_host() == b"\xa5" * SIZE
    close_remote(b)


def test_region_mixing_a_bo_and_host_memory(apps: Callable[..., App], verbs: Path) -> None:
    """A's region spans a BO (BASE) and host memory bound by userptr right after it:
    B's READ and WRITE across the boundary move the right bytes on each side, and so does
    A's WRITE from across it; after a replace the region faults in whole."""
    a, b = apps(), apps(sizes=(2 * SIZE,))
    fill_bo, fill_host = pattern(SIZE, 24), pattern(SIZE, 25)
    a.write(BASE, fill_bo)
    host = with_host(a, BASE + SIZE, fill_host)
    b.write(BASE, b"\0" * 2 * SIZE)
    ib_a, ib_b = ib_of(a, verbs), ib_of(b, verbs)
    mr_a, mr_b = ib_a.reg_mr(BASE, 2 * SIZE, ALL_ACCESS), ib_b.reg_mr(BASE, 2 * SIZE, ALL_ACCESS)
    qp_a, qp_b = connect(ib_a, ib_b)
    both = fill_bo + fill_host

    edge = BASE + SIZE - PAGE_SIZE - 5  # 2 pages from here cross the boundary
    n = 2 * PAGE_SIZE
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, edge, mr_a.rkey, n) == IBV_WC_SUCCESS
    assert b.read(BASE, n) == both[edge - BASE : edge - BASE + n]

    data = pattern(1000, 26)
    b.write(BASE, data)
    dst = BASE + SIZE - 77
    assert status_of(qp_b, IBV_WR_RDMA_WRITE, mr_b, dst, mr_a.rkey, 1000) == IBV_WC_SUCCESS
    assert a.read(BASE, SIZE) == fill_bo[: SIZE - 77] + data[:77]
    assert host[0:SIZE] == data[77:] + fill_host[1000 - 77 :]

    src = BASE + SIZE - 10
    expect = a.read(src, 10) + bytes(host[0:90])
    status = status_of(qp_a, IBV_WR_RDMA_WRITE, mr_a, BASE + SIZE, mr_b.rkey, 100, local_addr=src)
    assert status == IBV_WC_SUCCESS
    assert b.read(BASE + SIZE, 100) == expect

    host.replace(0, b"\x66" * SIZE)  # the whole region is evicted, BO part and all
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, edge, mr_a.rkey, n) == IBV_WC_SUCCESS
    cut = BASE + SIZE - edge
    assert b.read(BASE, n) == a.read(edge, cut) + b"\x66" * (n - cut)


# --- the notifier: replace and free ------------------------------------------------------------


@pytest.mark.parametrize("side", ["remote", "local"])
def test_replace_evicts_and_the_next_work_request_faults_in(
    apps: Callable[..., App], aux_driver: AuxDriverProcess, side: str
) -> None:
    """A replaces its host memory under a region (replacing host memory under none of it
    evicts nothing): by the time replace returns the aux driver maps none of those pages
    (it let them go before the change); the next work request on the region (B's READ
    of it, or A's WRITE from it) moves the new bytes, and the log shows mr_evicted then
    mr_faulted for that region."""
    fill = pattern(SIZE, 27) + bytes(SIZE)
    _a, b, host, mr_a, mr_b, qp_a, qp_b = host_pair(apps, aux_driver.socket_path, fill, SIZE)
    assert aux_maps(aux_driver, host) > 0  # zero copy: the aux driver maps the pages

    def move() -> int:
        if side == "remote":
            return status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_a.rkey, SIZE)
        return status_of(qp_a, IBV_WR_RDMA_WRITE, mr_a, BASE, mr_b.rkey, SIZE)

    assert move() == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == pattern(SIZE, 27)
    host.replace(SIZE, b"\x11" * SIZE)  # not under the region: it stays mapped
    assert aux_maps(aux_driver, host) > 0
    new = pattern(SIZE, 28)
    host.replace(0, new)
    assert aux_maps(aux_driver, host) == 0, "the aux driver still maps the replaced pages"
    wait_for_log(aux_driver, "mr_evicted", lkey=mr_a.lkey)
    assert move() == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == new
    wait_for_log(aux_driver, "mr_faulted", lkey=mr_a.lkey)
    assert mr_events(aux_driver, mr_a.lkey) == ["mr_evicted", "mr_faulted"]
    assert aux_maps(aux_driver, host) > 0
    assert mr_events(aux_driver, mr_b.lkey) == []  # B's BO region was never touched


def test_replace_waits_until_the_aux_driver_let_go(
    daemon: DaemonProcess, apps: Callable[..., App]
) -> None:
    """While the aux driver holding A's pages is stopped (SIGSTOP), A's replace does not
    return and its pages keep their old contents; once it runs again it evicts the
    region, acknowledges, and the replace completes."""
    aux = start_aux(daemon)
    try:
        a = apps(sizes=())
        host = with_host(a, BASE, b"\1" * SIZE)
        mr = ib_of(a, aux.socket_path).reg_mr(BASE, SIZE, ALL_ACCESS)
        os.kill(aux.pid, signal.SIGSTOP)
        try:
            thread, failed = in_thread(lambda: host.replace(0, b"\2" * SIZE))
            thread.join(0.5)  # however long: it cannot return before the aux driver acks
            assert thread.is_alive(), "replace returned while the aux driver was stopped"
            assert host[0:SIZE] == b"\1" * SIZE
        finally:
            os.kill(aux.pid, signal.SIGCONT)
            thread.join(SETTLE)
        assert not thread.is_alive() and not failed, failed
        assert host[0:SIZE] == b"\2" * SIZE
        assert aux_maps(aux, host) == 0
        assert mr_events(aux, mr.lkey) == ["mr_evicted"]
    finally:
        stop_aux(aux)


def test_freed_page_fails_work_on_the_region_and_the_qp_survives(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """A frees a page of host memory under its region (A has a BO region too): B's work
    on the region is REM_ACCESS_ERR, A's LOC_PROT_ERR, nothing is written, registering
    it again is EFAULT; BO regions on the same QPs still work. Once the page is replaced
    (there again) the region faults in and works."""
    fill_host, fill_bo = pattern(SIZE, 29), pattern(SIZE, 30)
    a, b, host, mr_host, mr_b, qp_a, qp_b = host_pair(apps, aux_driver.socket_path, fill_host)
    a.add_bo(ELSEWHERE, SIZE)
    a.write(ELSEWHERE, fill_bo)
    assert a.ib is not None
    mr_bo = a.ib.reg_mr(ELSEWHERE, SIZE, ALL_ACCESS)

    host.free(PAGE_SIZE, PAGE_SIZE)
    assert aux_maps(aux_driver, host) == 0
    for opcode in (IBV_WR_RDMA_READ, IBV_WR_RDMA_WRITE):
        for addr, n in ((BASE + PAGE_SIZE, 8), (BASE, SIZE)):
            assert status_of(qp_b, opcode, mr_b, addr, mr_host.rkey, n) == IBV_WC_REM_ACCESS_ERR
        assert status_of(qp_a, opcode, mr_host, BASE, mr_b.rkey, SIZE) == IBV_WC_LOC_PROT_ERR
    wait_for_log(aux_driver, "mr_fault_failed", lkey=mr_host.lkey)
    assert errno_of(a.ib.reg_mr, BASE, SIZE) == errno.EFAULT
    assert b.read(BASE, SIZE) == bytes(SIZE)
    assert host[0:PAGE_SIZE] == fill_host[:PAGE_SIZE]

    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, ELSEWHERE, mr_bo.rkey, SIZE) == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == fill_bo
    assert status_of(qp_a, IBV_WR_RDMA_READ, mr_bo, BASE, mr_b.rkey, SIZE) == IBV_WC_SUCCESS
    assert a.read(ELSEWHERE, SIZE) == fill_bo

    host.replace(PAGE_SIZE, b"\x77" * PAGE_SIZE)
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_host.rkey, SIZE) == IBV_WC_SUCCESS
    assert (
        b.read(BASE, SIZE)
        == fill_host[:PAGE_SIZE] + b"\x77" * PAGE_SIZE + fill_host[2 * PAGE_SIZE :]
    )


def test_replaces_racing_reads_never_tear_or_go_back(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """A (a thread of its own, on its own connection) replaces its whole host memory
    with k, k+1, ... while B READs A's region again and again: every READ sees one k
    only (never half of two), k never goes back, the last READ sees the last k, and the
    region was faulted in again at least once."""
    rounds = 200
    a, b, host, mr_a, mr_b, _qp_a, qp_b = host_pair(apps, aux_driver.socket_path, bytes(SIZE))
    a.dev.rpc.transport.sock.settimeout(ANSWER)  # a replace that is never let go raises

    def writer() -> None:
        for k in range(1, rounds + 1):
            host.replace(0, bytes([k]) * SIZE)

    thread, failed = in_thread(writer)
    seen, reads = 0, 0
    try:
        while thread.is_alive() and reads < 50 * rounds:
            status = status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_a.rkey, SIZE)
            assert status == IBV_WC_SUCCESS
            k = uniform(b.read(BASE, SIZE))
            assert k >= seen, f"read {k} after {seen}"
            seen, reads = k, reads + 1
    finally:
        thread.join(SETTLE * 3)
    assert not thread.is_alive(), "the replacing thread never finished"
    assert not failed, failed
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_a.rkey, SIZE) == IBV_WC_SUCCESS
    assert uniform(b.read(BASE, SIZE)) == rounds
    events = mr_events(aux_driver, mr_a.lkey)  # each eviction undone by one fault
    faults = events.count("mr_faulted")
    assert 0 < faults <= rounds
    assert events == ["mr_evicted", "mr_faulted"] * faults


# --- unbind, and what is left behind ------------------------------------------------------------


def test_unbind_of_the_userptr_range_invalidates_for_good(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """A unbinds the userptr range under its region: the region is invalidated (not
    evicted), the pages let go; B's work on it is REM_ACCESS_ERR and A's LOC_PROT_ERR,
    also after A binds the same host memory there again (a new region works)."""
    a, b, host, mr_a, mr_b, qp_a, qp_b = host_pair(apps, aux_driver.socket_path, pattern(SIZE, 32))

    a.dev.vm_unbind(a.vm, BASE, SIZE)
    wait_for_log(aux_driver, "mr_invalidated", lkey=mr_a.lkey)
    assert settle(lambda: aux_maps(aux_driver, host), 0) == 0
    host.replace(0, b"\x33" * SIZE)  # for the old region this changes nothing
    for rebound in (False, True):
        if rebound:
            a.dev.vm_bind_userptr(a.vm, host, 0, BASE, SIZE)
        for opcode in (IBV_WR_RDMA_READ, IBV_WR_RDMA_WRITE):
            assert status_of(qp_b, opcode, mr_b, BASE, mr_a.rkey, SIZE) == IBV_WC_REM_ACCESS_ERR
            assert status_of(qp_a, opcode, mr_a, BASE, mr_b.rkey, SIZE) == IBV_WC_LOC_PROT_ERR
    assert b.read(BASE, SIZE) == b"\0" * SIZE
    assert host[0:SIZE] == b"\x33" * SIZE
    assert mr_events(aux_driver, mr_a.lkey) == ["mr_invalidated"]

    assert a.ib is not None
    again = a.ib.reg_mr(BASE, SIZE, ALL_ACCESS)
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, again.rkey, SIZE) == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == b"\x33" * SIZE
    a.ib.dereg_mr(mr_a)  # the invalidated region can still be deregistered


def test_closed_applications_leave_nothing_behind(fresh_daemon: DaemonProcess) -> None:
    """Two applications with host memory regions (one mixed with a BO), transfers,
    replaces and a free, then closed: the daemon's objects and descriptors and the aux
    driver's descriptors return to what they were, and the aux driver maps no host
    memory any more."""
    aux = start_aux(fresh_daemon)
    probe = RpcConnection(SeqpacketTransport.connect(aux.socket_path), peer="the aux driver")
    try:  # a verb answered: the aux driver is past its start-up, READY's socket closed
        assert errno_of(probe.call, Op.IBV_CREATE_QP, m.IbvCreateQp()) == errno.EPROTO
        start, aux_fds = baseline(fresh_daemon), aux.open_fds()
        path = fresh_daemon.socket_path
        with Device.open(path) as dev_a, Device.open(path) as dev_b:
            a, b = App(dev_a, ()), App(dev_b)
            try:
                hosts = [with_host(a, BASE, pattern(SIZE, 33))]
                hosts.append(with_host(b, BASE + SIZE, pattern(SIZE, 34)))
                ib_a, ib_b = ib_of(a, aux.socket_path), ib_of(b, aux.socket_path)
                mr_a, mr_b = (
                    ib_a.reg_mr(BASE, SIZE, ALL_ACCESS),
                    ib_b.reg_mr(BASE, 2 * SIZE, ALL_ACCESS),
                )
                qp_a, _qp_b = connect(ib_a, ib_b)
                rkey = mr_b.rkey
                write, read = IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ
                assert status_of(qp_a, write, mr_a, BASE + SIZE // 2, rkey, SIZE) == IBV_WC_SUCCESS
                hosts[1].replace(0, b"\x44" * SIZE)
                hosts[0].replace(0, b"\x55" * SIZE)
                assert status_of(qp_a, read, mr_a, BASE + SIZE, rkey, SIZE) == IBV_WC_SUCCESS
                assert hosts[0][0:SIZE] == b"\x44" * SIZE
                hosts[0].free(0, PAGE_SIZE)
                assert status_of(qp_a, read, mr_a, BASE, rkey, 8) == IBV_WC_LOC_PROT_ERR
                assert aux_maps(aux, hosts[0]) == 0
                assert counts(fresh_daemon).aux_registrations == 2
            finally:
                a.close()
                b.close()
        assert settle(lambda: baseline(fresh_daemon), start) == start
        assert settle(aux.open_fds, aux_fds) == aux_fds
        maps = Path(f"/proc/{aux.pid}/maps")
        assert not settle(lambda: "/memfd:xed-host-memory" in maps.read_text(), False)
        check_log(aux)
    finally:
        probe.close()
        stop_aux(aux)


# --- memory the aux driver must not die of ----------------------------------------------------


def test_region_over_host_memory_survives_a_truncate_attempt(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """A tries to truncate the host memory under its region, which the aux driver maps:
    ftruncate(0) is EPERM (the library seals it), the aux driver lives, and B's READ and
    WRITE of A's region still move the bytes."""
    fill = pattern(SIZE, 40)
    _a, b, host, mr_a, mr_b, _qp_a, qp_b = host_pair(apps, aux_driver.socket_path, fill)
    assert aux_maps(aux_driver, host) > 0
    fd = host_memfd(host)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_a.rkey, SIZE) == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == fill
    new = pattern(SIZE, 41)
    b.write(BASE, new)
    assert status_of(qp_b, IBV_WR_RDMA_WRITE, mr_b, BASE, mr_a.rkey, SIZE) == IBV_WC_SUCCESS
    assert host[0:SIZE] == new
    assert aux_driver.proc is not None and aux_driver.proc.poll() is None


def test_region_with_write_access_over_write_sealed_host_memory_is_efault(
    apps: Callable[..., App], aux_driver: AuxDriverProcess
) -> None:
    """A registers host memory of its own making and seals it F_SEAL_FUTURE_WRITE after: a
    region over it with write access is EFAULT (the aux driver cannot map it writable),
    one for remote reads maps it read-only and B reads it; A and the aux driver live."""
    fill = pattern(SIZE, 42)
    a, b = apps(sizes=()), apps()
    fd = memfd(SIZE)
    try:
        os.pwrite(fd, fill, 0)
        reply = a.dev.ioctl(Op.HOST_MEMORY_REGISTER, m.XedHostMemoryRegister(size=SIZE), [fd])
        a.dev.vm_bind_ops(a.vm, [userptr_op(reply.offset, BASE, SIZE)])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
    finally:
        os.close(fd)
    ib_a, ib_b = ib_of(a, aux_driver.socket_path), ib_of(b, aux_driver.socket_path)
    assert errno_of(ib_a.reg_mr, BASE, SIZE, access=ALL_ACCESS) == errno.EFAULT
    mr_a = ib_a.reg_mr(BASE, SIZE, access=IBV_ACCESS_REMOTE_READ)
    mr_b = ib_b.reg_mr(BASE, SIZE, access=IBV_ACCESS_LOCAL_WRITE)
    _qp_a, qp_b = connect(ib_a, ib_b)
    assert status_of(qp_b, IBV_WR_RDMA_READ, mr_b, BASE, mr_a.rkey, SIZE) == IBV_WC_SUCCESS
    assert b.read(BASE, SIZE) == fill
    assert status_of(qp_b, IBV_WR_RDMA_WRITE, mr_b, BASE, mr_a.rkey, SIZE) == (
        IBV_WC_REM_ACCESS_ERR
    )
    assert aux_driver.proc is not None and aux_driver.proc.poll() is None


def _span_beyond(_: Path) -> tuple[int, m.XedAuxSpan]:
    return memfd(PAGE_SIZE), m.XedAuxSpan(va=BASE, length=2 * PAGE_SIZE, fd_index=0, offset=0)


def _span_of_no_memory(_: Path) -> tuple[int, m.XedAuxSpan]:
    return memfd(SIZE), m.XedAuxSpan(va=BASE, length=SIZE, fd_index=1, offset=0)


def _whole(fd: int) -> tuple[int, m.XedAuxSpan]:
    return fd, m.XedAuxSpan(va=BASE, length=PAGE_SIZE, fd_index=0, offset=0)


def _file_on_disk(tmp_path: Path) -> tuple[int, m.XedAuxSpan]:
    path = tmp_path / "memory"
    path.write_bytes(bytes(PAGE_SIZE))
    return _whole(os.open(path, os.O_RDWR | os.O_CLOEXEC))


def _pipe(_: Path) -> tuple[int, m.XedAuxSpan]:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return _whole(read_end)


def _hugetlb(_: Path) -> tuple[int, m.XedAuxSpan]:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | os.MFD_HUGETLB
    try:
        fd = os.memfd_create("hugetlb", flags)
    except OSError as exc:
        pytest.skip(f"this machine cannot create a hugetlb memfd: {exc.strerror}")
    os.ftruncate(fd, 2 << 20)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return _whole(fd)


UNSAFE = {
    "memfd-not-sealed-against-shrinking": lambda _: _whole(memfd(PAGE_SIZE, seals=0)),
    "span-beyond-the-memory": _span_beyond,
    "span-of-no-descriptor": _span_of_no_memory,
    "file-on-disk": _file_on_disk,
    "pipe": _pipe,
    "hugetlb-memfd": _hugetlb,
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_region_refuses_memory_it_cannot_map_safely(tmp_path: Path, kind: str) -> None:
    """The aux driver judges what it is handed before mapping it, as the daemon judges
    what clients send: memory that could fault it, or spans beyond it, fail the region
    with EFAULT (reg_mr's errno; a fault-in completes with an error) and nothing is
    mapped. (The daemon never hands out such memory: this is the driver's own guard.)"""
    fd, span = UNSAFE[kind](tmp_path)
    region = driver.MemoryRegion(None, BASE, SIZE, ALL_ACCESS, 1, 2)  # type: ignore[arg-type]
    try:
        with pytest.raises(driver.VerbsError) as refused:
            region.map((span,), [fd])
        assert refused.value.errno == errno.EFAULT
        assert region.pieces(BASE, SIZE) == []
    finally:
        os.close(fd)
