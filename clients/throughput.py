"""`xec bench throughput`: trivial ioctls per second from N client processes at once.

For each N, N processes make DRM_IOCTL_VERSION round trips as fast as they can through
the daemon, then N processes do the same against the design floor's server (a trio
server reading as the daemon does and answering a fixed reply: clients/echo.py), in
alternating rounds of a fixed time so that machine noise falls on both alike. Printed
per N: calls per second through each, their ratio (what the daemon keeps of the design's
throughput), and the p99 round trip of the worst-served client of each (a daemon that
served some clients well and starved others would show it there). Then the CPU each
call cost, in the clients and in the server: once every CPU is busy, throughput is the
machine's CPU over that sum, and the ratio follows the two sums.

The processes float over every CPU: throughput is what the machine as a whole does.
Workers are forked from this process (the library is already imported: no start-up
cost in the window measured) and start together at a barrier.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack

from protocols import to_wire

from .daemon import daemon_at
from .device import Device
from .echo import EchoClient, EchoServer
from .measure import cpu_between_ns, percentile, threads_cpu_ns
from .progress import Progress

_FORK = multiprocessing.get_context("fork")


def _worker(kind: str, path: str, seconds: float, start: Any, results: Connection) -> None:
    """One client process: connect, wait for the others, round trips for `seconds`;
    send back (calls, seconds taken, p99 in us, CPU seconds used)."""
    call: Callable[[], object]
    closing: Callable[[], object]
    if kind == "daemon":
        dev = Device.open(path)
        call, closing = dev.version, dev.close
    else:
        client = EchoClient(path, floor=True, design=True)
        call, closing = client.once, client.close
    clock = time.perf_counter_ns
    samples: list[float] = []
    try:
        call()  # connected and answered before the clock starts
        start.wait()
        cpu = time.process_time()
        began = clock()
        deadline = began + int(seconds * 1e9)
        now = began
        while now < deadline:
            call()
            later = clock()
            samples.append(later - now)
            now = later
        used = time.process_time() - cpu
        results.send((len(samples), (now - began) / 1e9, percentile(samples, 0.99) / 1000, used))
    finally:
        closing()
        results.close()


Result = tuple[int, float, float, float]  # calls, seconds, p99 us, CPU seconds


def _round(
    kind: str, path: str, clients: int, seconds: float, server: int | None
) -> tuple[list[Result], float | None]:
    """N workers of `kind` at once: each one's result, and the CPU seconds the server
    (process `server`, if known) used from their start to the last result (its
    threads' schedstat: a clock tick would be a fiftieth of a short round)."""
    start = _FORK.Barrier(clients + 1)
    pipes, workers = [], []
    for _ in range(clients):
        ours, theirs = _FORK.Pipe(duplex=False)
        worker = _FORK.Process(target=_worker, args=(kind, path, seconds, start, theirs))
        worker.start()
        theirs.close()
        pipes.append(ours)
        workers.append(worker)
    try:
        start.wait(timeout=60)
        before = threads_cpu_ns(server) if server else None
        results = [pipe.recv() for pipe in pipes]
        if server is None or before is None:
            return results, None
        return results, cpu_between_ns(before, threads_cpu_ns(server)) / 1e9
    finally:
        for pipe in pipes:
            pipe.close()
        for worker in workers:
            worker.join(timeout=30)
            if worker.exitcode is None:
                worker.kill()
                worker.join()


@contextlib.contextmanager
def _floor_server(reply: bytes) -> Iterator[EchoServer]:
    with tempfile.TemporaryDirectory(prefix="xed-bench-") as tmp:
        server = EchoServer.design_floor(os.path.join(tmp, "floor.sock"), reply)
        try:
            yield server
        finally:
            server.stop()


def bench_throughput(
    socket_path: Path | None, counts: list[int], seconds: float, rounds: int
) -> dict[str, Any]:
    progress = Progress()
    rows = []
    with daemon_at(socket_path) as (path, daemon):
        with Device.open(path) as dev:
            reply = msgpack.packb(to_wire(dev.version()))
        with _floor_server(reply) as floor:
            targets = {
                "daemon": (str(path), daemon.pid if daemon else None),
                "floor": (floor.path, floor.pid),
            }
            for clients in counts:
                done: dict[str, list[Result]] = {k: [] for k in targets}
                server_cpu: dict[str, float | None] = {k: 0.0 for k in targets}
                for n in range(rounds):
                    for kind, (where, pid) in targets.items():
                        progress(f"{clients} clients, {kind}, round {n + 1}/{rounds}", force=True)
                        results, used = _round(kind, where, clients, seconds, pid)
                        done[kind] += results
                        spent = server_cpu[kind]
                        server_cpu[kind] = None if used is None or spent is None else spent + used
                rows.append({"clients": clients, **_figures(done, server_cpu, rounds)})
    print(
        f"trivial ioctls (VERSION) per second from N client processes at once, through the "
        f"daemon and the design floor's server; {rounds} alternating rounds of {seconds:g} s"
    )
    print(
        f"{'clients':>8}{'daemon calls/s':>16}{'floor calls/s':>15}{'ratio':>8}"
        f"{'daemon p99':>13}{'floor p99':>12}"
    )
    for row in rows:
        print(
            f"{row['clients']:>8}{row['daemon_calls_s']:>16,.0f}{row['floor_calls_s']:>15,.0f}"
            f"{row['ratio']:>8.2f}{row['daemon_p99_us']:>10.1f} us{row['floor_p99_us']:>9.1f} us"
        )
    print("CPU per call, in the clients and in the server (us)")
    head = f"{'server':>8}{'sum':>8}"
    print(f"{'clients':>8}{'daemon: clients':>17}{head}{'floor: clients':>16}{head}")
    for row in rows:
        line = f"{row['clients']:>8}"
        for kind, width in (("daemon", 17), ("floor", 16)):
            client, server = row[f"{kind}_client_cpu_us"], row[f"{kind}_server_cpu_us"]
            total = None if server is None else client + server
            line += f"{client:>{width}.1f}{_cpu(server):>8}{_cpu(total):>8}"
        print(line)
    worst = min(row["ratio"] for row in rows)
    print(f"throughput ratio: {worst:.2f} at worst  (daemon / design floor, target >= 0.8)")
    print("(p99: the round trip of the worst-served client, its 99th percentile)")
    return {"seconds": seconds, "rounds": rounds, "rows": rows, "worst_ratio": worst}


def _cpu(us: float | None) -> str:
    return "n/a" if us is None else f"{us:.1f}"


def _figures(
    done: dict[str, list[Result]], server_cpu: dict[str, float | None], rounds: int
) -> dict[str, Any]:
    """Calls per second (each client's calls over its own time, summed, averaged over
    the rounds) and the worst client's p99, for each side; and their ratio. CPU per
    call in the clients and in the server (None where the server is not ours to see)."""
    out: dict[str, Any] = {}
    for kind, results in done.items():
        out[f"{kind}_calls_s"] = sum(r[0] / r[1] for r in results if r[1]) / rounds
        out[f"{kind}_p99_us"] = max(r[2] for r in results)
        out[f"{kind}_median_p99_us"] = statistics.median(r[2] for r in results)
        calls = sum(r[0] for r in results) or 1
        out[f"{kind}_client_cpu_us"] = sum(r[3] for r in results) / calls * 1e6
        spent = server_cpu[kind]
        out[f"{kind}_server_cpu_us"] = None if spent is None else spent / calls * 1e6
    out["ratio"] = out["daemon_calls_s"] / out["floor_calls_s"]
    return out
