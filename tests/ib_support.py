"""What the IB-like aux driver's tests (test_ib*.py) share: an application (`App`: a
drm connection, a VM with BOs bound back to back, and a verbs context), helpers, and the
fixtures. An agent process (tests/agent.py) imports this module to build the same App
(remote_app).

A test module imports the fixtures it uses by name. aux_driver is module-scoped: each
module that uses it gets an aux driver of its own, in front of the shared daemon.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from agent import Agent
from conftest import baseline

from clients import Batch, Device, XeError, user_fence
from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.ib import ALL_ACCESS, IbContext, MemoryRegion, QueuePair
from protocols import Op
from protocols import messages as m
from protocols.constants import PAGE_SIZE

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


def check_alive(aux: AuxDriverProcess) -> None:
    assert aux.proc is not None and aux.proc.poll() is None, (
        f"the aux driver died ({aux.proc and aux.proc.returncode}):\n{aux.log_text()[-3000:]}"
    )
    check_log(aux)


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
        from ib_support import App, BASE
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
