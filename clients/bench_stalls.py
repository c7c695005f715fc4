"""`xec bench stalls`: how long one client's worst request holds every other client up.

The daemon serves every client from one trio thread, so a request that computes for a
second without giving the others a turn delays every other client's round trip by that
second, whoever they are. Here a bystander process calls VERSION in a loop (0.5 ms
apart, as a client with work of its own would) and records each round trip, while this
process, another client, sets up a scenario within the daemon's default limits and then
makes its expensive request. For each scenario the bystander's round trips are taken
twice: in an idle window just before the request (everything set up, nothing asked),
and those that overlap the request; printed are the median and the worst of each and
the ratio of the two worsts. The scenarios are the ones an audit measured (each took
seconds of the event loop then, see CHANGELOG.md):

unmap-all      UNMAP_ALL array of a BO mapped nowhere, over a VM of many one-page mappings
prefetch       PREFETCH array, each op over the whole range of those mappings
unmap-range    one UNMAP of the whole range: every one of those mappings
exec-backlog   one-dword batches queued on one exec queue behind a sw_sync fence, then
               the fence signalled (the request: signal, and wait for the last job)
timeline-wait  SYNCOBJ_TIMELINE_WAIT of many points on a long chain, timeout 0

`--scale` shrinks every count at once (the suite runs a hundredth). The processes float:
a stall is the daemon's own time, whichever CPU it runs on.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import statistics
import time
from array import array
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_PREFETCH,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
)

from . import syncobj as so
from .batch import Batch
from .daemon import daemon_at
from .device import Device, user_fence
from .errors import XeError
from .progress import Progress

_FORK = multiprocessing.get_context("fork")

# the counts at --scale 1, each within the daemon's default limits: limits.vmas 262144,
# limits.timeline_points 16384, 4096 jobs pending on one queue, 512 ops in one VM_BIND
# (and no more than a 64 KiB request holds)
MAPPINGS = 200_000
OPS = 256
JOBS = 4096
CHAIN = 16_384
POINTS = 4096

PAGE = 4096
# map ops per VM_BIND while setting up: 512 (BIND_CHUNK) of them make a
# request of more than one 64 KiB datagram
BIND_CHUNK = 480
BASE = 1 << 32
PAUSE = 0.0005  # between the bystander's calls: a client with work of its own
SETTLE = 0.2  # after a setup, before the idle window (the setup's last replies drain)
IDLE_SECONDS = 0.5


def _bystander(path: str, stop: Any, results: Connection) -> None:
    """VERSION in a loop until `stop` is set; send back when each call started and how
    long it took (CLOCK_MONOTONIC seconds: the same clock in every process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's to handle
    starts, took = array("d"), array("d")
    clock = time.monotonic
    dev = Device.open(path)
    try:
        dev.version()
        results.send("ready")
        while not stop.is_set():
            start = clock()
            dev.version()
            starts.append(start)
            took.append(clock() - start)
            time.sleep(PAUSE)
        results.send((starts, took))
    finally:
        dev.close()
        results.close()


class _Bystander:
    """The bystander process, and the windows of time its round trips are judged in."""

    def __init__(self, path: Path) -> None:
        self._stop = _FORK.Event()
        self._results, theirs = _FORK.Pipe(duplex=False)
        self._proc = _FORK.Process(target=_bystander, args=(str(path), self._stop, theirs))
        self._proc.start()
        theirs.close()
        if self._results.recv() != "ready":
            raise RuntimeError("the bystander did not start")
        self.windows: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def window(self, label: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.windows[label] = (start, time.monotonic())

    def finish(self) -> dict[str, list[float]]:
        """Stop it; the round trips (in ms) that overlap each window: started before
        its end and ended after its start."""
        self._stop.set()
        starts, took = self._results.recv()
        self._proc.join(timeout=30)
        return {
            label: [
                rtt * 1e3 for start, rtt in zip(starts, took, strict=True)
                if start < t1 and start + rtt > t0
            ]
            for label, (t0, t1) in self.windows.items()
        }  # fmt: skip

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._results.close()


class _Sizes:
    """Every count of the run, at `scale` of the full size (at least 1 each)."""

    def __init__(self, scale: float) -> None:
        def size(n: int) -> int:
            return max(1, round(n * scale))

        self.scale = scale
        self.mappings, self.ops, self.jobs = size(MAPPINGS), size(OPS), size(JOBS)
        self.chain, self.points = size(CHAIN), size(POINTS)


Measure = Callable[[str, str, Callable[[], object]], None]


def _vm_scenarios(dev: Device, sizes: _Sizes, measure: Measure, progress: Progress) -> None:
    """unmap-all, prefetch and unmap-range over one VM of one-page mappings of a BO (in
    that order: the last removes them)."""
    n = sizes.mappings
    vm, bo, elsewhere = dev.vm_create(), dev.gem_create(PAGE), dev.gem_create(PAGE)
    for first in range(0, n, BIND_CHUNK):
        progress(f"mapping {first:,}/{n:,} pages", force=first == 0)
        dev.vm_bind_ops(vm, [
            m.DrmXeVmBindOp(obj=bo, range=PAGE, addr=BASE + i * PAGE, op=DRM_XE_VM_BIND_OP_MAP)
            for i in range(first, min(first + BIND_CHUNK, n))
        ])  # fmt: skip
    # a BO mapped nowhere: each op looks for its mappings among the VM's (the audit's
    # worst: it walked every mapping, once per op)
    unmap_all = [m.DrmXeVmBindOp(obj=elsewhere, op=DRM_XE_VM_BIND_OP_UNMAP_ALL)] * sizes.ops
    measure(
        "unmap-all",
        f"{sizes.ops} UNMAP_ALL ops of a BO mapped nowhere, over {n:,} one-page mappings",
        lambda: dev.vm_bind_ops(vm, unmap_all),
    )
    prefetch = [
        m.DrmXeVmBindOp(addr=BASE, range=n * PAGE, op=DRM_XE_VM_BIND_OP_PREFETCH)
    ] * sizes.ops
    measure(
        "prefetch",
        f"{sizes.ops} PREFETCH ops, each over the whole range of the {n:,} mappings",
        lambda: dev.vm_bind_ops(vm, prefetch),
    )
    measure(
        "unmap-range",
        f"one UNMAP of the whole range: all {n:,} mappings",
        lambda: dev.vm_unbind(vm, BASE, n * PAGE),
    )
    dev.vm_destroy(vm)


def _exec_backlog(dev: Device, sizes: _Sizes, measure: Measure, progress: Progress) -> None:
    """Jobs of one MI_NOOP each, queued on one queue behind an unsignalled sw_sync fence;
    the request signals it and waits for the last job's user fence."""
    vm, bo = dev.vm_create(), dev.gem_create(0x10000)
    dev.vm_bind(vm, bo, BASE)
    mapping = dev.mmap_bo(bo)
    batch = Batch().noop().end().tobytes()
    mapping[0x1000 : 0x1000 + len(batch)] = batch
    queue = dev.exec_queue_create(vm)
    timeline = so.sw_sync_timeline(dev)
    try:
        fence = so.sw_sync_fence(dev, timeline, 1)
        gate = so.create(dev)
        so.import_sync_file(dev, gate, fence)
        os.close(fence)
        for job in range(sizes.jobs):
            progress(f"queueing job {job + 1:,}/{sizes.jobs:,}", force=job == 0)
            done = [user_fence(BASE, 1)] if job == sizes.jobs - 1 else []
            dev.exec(queue, BASE + 0x1000, syncs=[so.wait_sync(gate), *done])

        def release() -> None:
            so.sw_sync_inc(dev, timeline, 1)
            dev.wait_user_fence(mapping.user_address(0), 1, timeout=60 * 10**9)

        measure(
            "exec-backlog",
            f"{sizes.jobs:,} one-dword batches on one queue behind a sw_sync fence, "
            "then the fence signalled",
            release,
        )
    finally:
        os.close(timeline)
        mapping.close()


def _timeline_wait(dev: Device, sizes: _Sizes, measure: Measure, progress: Progress) -> None:
    """A chain of points, each the same unsignalled sw_sync fence; one TIMELINE_WAIT
    names the chain once per point, timeout 0 (ETIME once every point is looked at)."""
    timeline = so.sw_sync_timeline(dev)
    try:
        fence = so.sw_sync_fence(dev, timeline, 1)
        source, chain = so.create(dev), so.create(dev)
        so.import_sync_file(dev, source, fence)
        os.close(fence)
        for point in range(1, sizes.chain + 1):
            progress(f"chain point {point:,}/{sizes.chain:,}", force=point == 1)
            so.transfer(dev, chain, point, source, 0)
        points = min(sizes.points, sizes.chain)

        def wait() -> None:
            try:
                so.timeline_wait(dev, [chain] * points, range(1, points + 1), timeout_nsec=0)
            except XeError as exc:
                if exc.errno != errno.ETIME:
                    raise
            else:
                raise RuntimeError("TIMELINE_WAIT found a point signalled that is not")

        measure(
            "timeline-wait",
            f"SYNCOBJ_TIMELINE_WAIT of {points:,} points on a {sizes.chain:,}-point "
            "chain, timeout 0",
            wait,
        )
    finally:
        os.close(timeline)


SCENARIOS = (_vm_scenarios, _exec_backlog, _timeline_wait)


def _ms(samples: list[float]) -> tuple[float | None, float | None]:
    return (statistics.median(samples), max(samples)) if samples else (None, None)


def _pair(p50: float | None, worst: float | None) -> str:
    return f"{p50:.2f}/{worst:.2f} ms" if p50 is not None and worst is not None else "-/- ms"


def bench_stalls(socket_path: Path | None, scale: float) -> dict[str, Any]:
    sizes = _Sizes(scale)
    progress = Progress()
    described: dict[str, str] = {}
    request_ms: dict[str, float] = {}

    with daemon_at(socket_path) as (path, _daemon):
        bystander = _Bystander(path)
        try:

            def measure(name: str, description: str, request: Callable[[], object]) -> None:
                progress(f"{name}: idle window, then the request", force=True)
                described[name] = description
                time.sleep(SETTLE)
                with bystander.window(f"{name}:idle"):
                    time.sleep(IDLE_SECONDS)
                with bystander.window(name):
                    start = time.monotonic()
                    request()
                    request_ms[name] = (time.monotonic() - start) * 1e3

            for scenario in SCENARIOS:
                with Device.open(path) as dev:  # closing it frees what the scenario made
                    scenario(dev, sizes, measure, progress)
            seen = bystander.finish()
        finally:
            bystander.close()

    print(
        f"stalls: a bystander process's VERSION round trips ({PAUSE * 1e3:g} ms apart) "
        f"while another client makes its worst request, scale {scale:g}"
    )
    for name, description in described.items():
        print(f"  {name:14} {description}")
    print(
        f"(idle: the {IDLE_SECONDS:g} s before the request; during: every round trip "
        "that overlapped it; p50/worst)"
    )
    rows: list[dict[str, Any]] = []
    for name in described:
        idle, during = _ms(seen[f"{name}:idle"]), _ms(seen[name])
        ratio = during[1] / idle[1] if during[1] is not None and idle[1] else None
        if during[1] is None:  # no call overlapped: none can have waited longer than it
            stall = f"worst stall: none overlapped the {request_ms[name]:.2f} ms request"
        else:
            times = f"{ratio:.2f}x" if ratio is not None else "no idle figure to compare:"
            stall = f"worst stall: {during[1]:.2f} ms ({times} idle worst)"
        print(f"{name:14} idle {_pair(*idle):>17}   during {_pair(*during):>19}   {stall}")
        rows.append({
            "name": name, "description": described[name], "request_ms": request_ms[name],
            "idle": {"p50_ms": idle[0], "worst_ms": idle[1], "calls": len(seen[f"{name}:idle"])},
            "during": {"p50_ms": during[0], "worst_ms": during[1], "calls": len(seen[name])},
            "worst_stall_ms": during[1], "ratio": ratio,
        })  # fmt: skip
    stalled = [row for row in rows if row["worst_stall_ms"] is not None]
    worst = max(stalled, key=lambda row: row["worst_stall_ms"], default=None)
    if worst is None:
        print("overall worst stall: none (no round trip overlapped any request)")
    else:
        print(f"overall worst stall: {worst['worst_stall_ms']:.2f} ms ({worst['name']})")
    return {
        "scale": scale, "mappings": sizes.mappings, "ops": sizes.ops, "jobs": sizes.jobs,
        "chain": sizes.chain, "points": min(sizes.points, sizes.chain),
        "pause_ms": PAUSE * 1e3, "idle_seconds": IDLE_SECONDS, "scenarios": rows,
        "worst_stall_ms": worst["worst_stall_ms"] if worst else None,
        "worst_scenario": worst["name"] if worst else None,
    }  # fmt: skip
