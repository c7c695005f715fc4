"""`xec bench`: speed figures measured side by side in one run.

rtt:  a trivial ioctl (DRM_IOCTL_VERSION) through the daemon vs a raw SOCK_SEQPACKET
      echo between two Python processes, same message size, interleaved in rounds so
      machine noise hits both alike; and the same two from a C client: the ioctl
      through the preload library (as an unmodified C program makes it), the echo raw.
      Prints medians, p99s and `ratio: X.XX`; and beside them the msgpack floor: a
      pair of processes that only pack and unpack the same request and reply, the
      least the wire format costs whatever the daemon does; and the design floor, that
      exchange served in trio as the daemon reads (clients/echo.py): `over floor: X.XX`
      is the daemon over it, what the daemon and the library add to the design.
      By default the client and the server (daemon or echo) share one CPU: a wake-up
      across CPUs costs tens of microseconds on a virtual machine, and where the
      scheduler puts each pair would decide the figures. --spread puts the clients on
      one CPU and the servers on another (every round trip crosses, each alike);
      --float pins nothing.
mmap: GEM_MMAP_OFFSET + MMAP + mmap(2) of a 1 GiB BO vs a 4 KiB BO: time ratio and the
      bytes each put on the socket (zero copy means the same bytes, whatever the size).
barrier: one PCI barrier as a page store, as an ioctl round trip, as an MI_MEM_FENCE exec;
      a store from C through the preload library's fault path (what an unmodified
      program's store costs) beside that ioctl from C; and what an idle daemon spends
      watching 32 mapped barrier pages nobody writes.

Each prints its figures as text and returns them as a dict (`xec bench ... --json`);
progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from protocols import to_wire

from .batch import Batch
from .bench_c import CRounds, barrier_store_us
from .daemon import daemon_at
from .device import Device, user_fence
from .echo import EchoServer
from .measure import (
    cpu_between_ns,
    cpu_seconds,
    daemon_pid,
    percentile,
    pin,
    place_here,
    threads_cpu_ns,
)
from .progress import Progress

IDLE_PAGES = 32
IDLE_SECONDS = 3.0


def _time_calls(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return samples


def _us(x: float) -> str:
    return f"{x:8.1f} us"


class _CpuMeter:
    """CPU time per call of the client (this process, or a C client's) and of its
    server, summed over the rounds: where a round trip's time goes, side by side."""

    def __init__(self, server_pid: int | None, client_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.client_pid = client_pid or os.getpid()
        self.client = self.server = 0.0
        self.calls = 0

    def time(self, call: Callable[[], object], n: int) -> list[float]:
        return self.rounds(lambda k: _time_calls(call, k), n)

    def rounds(self, run: Callable[[int], list[float]], n: int) -> list[float]:
        me, server = self.client_pid, self.server_pid
        c0 = cpu_seconds(me)
        s0 = cpu_seconds(server) if server else 0.0
        samples = run(n)
        self.client += cpu_seconds(me) - c0
        self.server += (cpu_seconds(server) - s0) if server else 0.0
        self.calls += n
        return samples

    def per_call_us(self) -> tuple[float, float | None]:
        client = self.client / self.calls * 1e6
        return client, self.server / self.calls * 1e6 if self.server_pid else None


def bench_rtt(
    socket_path: Path | None, rounds: int, per_round: int, placement: str = "shared"
) -> dict[str, Any]:
    place = place_here(placement)
    with tempfile.TemporaryDirectory(prefix="xed-bench-") as tmp, contextlib.ExitStack() as stack:
        contestants: list[tuple[str, Callable[[int], list[float]], _CpuMeter]] = []
        path, daemon = stack.enter_context(daemon_at(socket_path))
        daemon_pid = daemon.pid if daemon else None
        if daemon:
            pin(daemon.pid, place.servers)
        # read back from the kernel, not what was asked: the --json shows where they ran
        cpus = {
            "client": sorted(os.sched_getaffinity(0)),
            "daemon": sorted(os.sched_getaffinity(daemon.pid)) if daemon else None,
        }
        dev = Device.open(path)
        stack.callback(dev.close)
        contestants.append(
            ("daemon VERSION ioctl", partial(_time_calls, dev.version), _CpuMeter(daemon_pid))
        )
        c_ioctl = CRounds.ioctl(path, per_round)
        stack.callback(c_ioctl.close)
        pin(c_ioctl.pid, place.clients)
        contestants.append(
            ("  same ioctl from C", c_ioctl.run, _CpuMeter(daemon_pid, c_ioctl.pid))
        )
        reply = msgpack.packb(to_wire(dev.version()))  # what the floor answers with
        for n, (label, in_trio, floor) in enumerate(
            (
                ("raw seqpacket echo", False, None),
                ("  same echo in trio", True, None),
                ("  msgpack floor", False, reply),
                ("  design floor", True, reply),
            )
        ):
            echo = EchoServer(os.path.join(tmp, f"echo-{n}.sock"), in_trio, reply=floor)
            stack.callback(echo.stop)
            pin(echo.pid, place.servers)
            client = echo.connect()
            stack.callback(client.close)
            contestants.append((label, partial(_time_calls, client.once), _CpuMeter(echo.pid)))
            if n == 0:  # the C echo: a server of its own (one connection at a time)
                c_echo_server = EchoServer(os.path.join(tmp, "echo-c.sock"))
                stack.callback(c_echo_server.stop)
                pin(c_echo_server.pid, place.servers)
                c_echo = CRounds.echo(c_echo_server.path, per_round)
                stack.callback(c_echo.close)
                pin(c_echo.pid, place.clients)
                contestants.append(
                    ("  same echo from C", c_echo.run, _CpuMeter(c_echo_server.pid, c_echo.pid))
                )
        samples: dict[str, list[float]] = {label: [] for label, _, _ in contestants}
        for _, run, _ in contestants:
            run(per_round)  # warm up every path
        progress = Progress()
        for n in range(rounds):
            progress(f"round {n + 1}/{rounds}", force=n in (0, rounds - 1))
            for label, run, meter in contestants:
                samples[label] += meter.rounds(run, per_round)
    print(f"round trips: {rounds * per_round} each, {rounds} interleaved rounds, {place.where}")
    print(f"{'':24}{'median':>12}{'p99':>12}{'client CPU':>14}{'server CPU':>14}")
    rows = {}
    for label, _, meter in contestants:
        med, p99 = statistics.median(samples[label]), percentile(samples[label], 0.99)
        client_cpu, server_cpu = meter.per_call_us()
        server_text = _us(server_cpu) if server_cpu is not None else "       n/a"
        print(f"{label:24}{_us(med):>12}{_us(p99):>12}{_us(client_cpu):>14}{server_text:>14}")
        rows[label.strip()] = {
            "median_us": med, "p99_us": p99,
            "client_cpu_us": client_cpu, "server_cpu_us": server_cpu,
        }  # fmt: skip
    print(
        "(CPU per round trip, from /proc. The echo in trio reads its socket as the daemon\n"
        " does. The msgpack floor packs and unpacks the same request and reply and does\n"
        " nothing else: no check, no dispatch, no record. The design floor is that in\n"
        " trio: read as the daemon reads (a turn for the others included), unpacked,\n"
        " a fixed reply packed; its client reads and matches the reply as the library\n"
        " must. What is left above it is the daemon's and the library's own work.)"
    )
    echo_us = statistics.median(samples["raw seqpacket echo"])
    floor = statistics.median(samples["  msgpack floor"]) / echo_us
    print(f"floor: {floor:.2f}  (msgpack floor / echo: the wire format alone, before any work)")
    daemon_us = statistics.median(samples["daemon VERSION ioctl"])
    design_us = statistics.median(samples["  design floor"])
    ratio = daemon_us / echo_us
    design_floor = design_us / echo_us
    print(
        f"ratio: {ratio:.2f}  design floor: {design_floor:.2f}  (daemon, design floor / echo)"
    )
    over_floor = daemon_us / design_us
    print(f"over floor: {over_floor:.2f}  (daemon / design floor, target <= 1.25)")
    c_ratio = statistics.median(samples["  same ioctl from C"]) / statistics.median(
        samples["  same echo from C"]
    )
    print(
        f"C ratio: {c_ratio:.2f}  (an unmodified C program's VERSION through the preload "
        "library / the C echo)"
    )
    return {
        "round_trips": rounds * per_round, "rounds": rounds, "placement": placement,
        "cpus": cpus, "rows": rows, "floor": floor, "ratio": ratio, "design_floor": design_floor,
        "over_floor": over_floor, "c_ratio": c_ratio,
    }  # fmt: skip


def bench_mmap(
    socket_path: Path | None, repeats: int, placement: str = "shared"
) -> dict[str, Any]:
    """Both sizes alternate, one mapping each in turn, with client and daemon on one CPU
    by default (place_here): placement and drift then fall on both alike."""
    place = place_here(placement)
    with daemon_at(socket_path) as (path, daemon):
        if daemon:
            pin(daemon.pid, place.servers)
        dev = Device.open(path)
        sizes = {"4 KiB": 4096, "1 GiB": 1 << 30}
        bos = {label: dev.gem_create(size) for label, size in sizes.items()}
        samples: dict[str, list[float]] = {label: [] for label in sizes}
        wire: dict[str, set[int]] = {label: set() for label in sizes}
        progress = Progress()
        for n in range(repeats):
            progress(f"mapping {n + 1}/{repeats} of each size", force=n in (0, repeats - 1))
            for label, bo in bos.items():
                sent, received = dev.transport.bytes_sent, dev.transport.bytes_received
                start = time.perf_counter_ns()
                mapping = dev.mmap_bo(bo)
                samples[label].append((time.perf_counter_ns() - start) / 1000)
                wire[label].add(
                    dev.transport.bytes_sent - sent + dev.transport.bytes_received - received
                )
                mapping.close()
        for bo in bos.values():
            dev.gem_close(bo)
        dev.close()
        results = {label: (statistics.median(samples[label]), wire[label]) for label in sizes}
    print(
        f"mmap of a BO (GEM_MMAP_OFFSET + MMAP + mmap(2)), {repeats} times each, "
        f"alternating, {place.where}"
    )
    for label, (median, on_socket) in results.items():
        print(
            f"  {label:>6}: median {median:8.1f} us, "
            f"bytes on the socket per mmap {sorted(on_socket)}"
        )
    ratio = results["1 GiB"][0] / results["4 KiB"][0]
    differ = max(results["1 GiB"][1]) - min(results["4 KiB"][1])
    print(f"ratio: {ratio:.2f}  (target <= 1.2)")
    print(
        f"socket bytes differ by at most {differ}: msgpack integers (request id, length) "
        "take more bytes as their values grow; no byte of the mapping crosses the socket"
    )
    return {
        "repeats": repeats, "placement": placement, "ratio": ratio,
        "sizes": {
            label: {"median_us": median, "socket_bytes": sorted(on_socket)}
            for label, (median, on_socket) in results.items()
        },
    }  # fmt: skip


# a client that maps its barrier page, makes one barrier (so the device watches the page)
# and then holds it, writing nothing, until told to go
_BARRIER_HOLDER = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's to handle
from clients.device import Device
dev = Device.open(sys.argv[1])
dev.pci_barrier()
dev.pci_barrier_drain()
print("ready", flush=True)
sys.stdin.readline()
dev.close()
"""


def _idle_watch_cost(socket_path: str, daemon_pid: int, pages: int, seconds: float) -> float:
    """The daemon's CPU, in % of one core, while `pages` clients hold their barrier page
    mapped and write nothing."""
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", _BARRIER_HOLDER, socket_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(pages)
    ]
    try:
        for holder in holders:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a barrier-page holder died (status {holder.wait()})")
        time.sleep(0.5)  # the watcher slows down once it sees nothing change
        cpu0, t0 = threads_cpu_ns(daemon_pid), time.monotonic()
        time.sleep(seconds)
        used = cpu_between_ns(cpu0, threads_cpu_ns(daemon_pid)) / 1e9
        return 100 * used / (time.monotonic() - t0)
    finally:
        for holder in holders:
            with contextlib.suppress(BrokenPipeError):
                holder.communicate("go\n", timeout=30)


def bench_barrier(socket_path: Path | None, count: int) -> dict[str, Any]:
    """The same ordering three ways: one store to the barrier page, an ioctl round trip,
    an EXEC of a batch holding MI_MEM_FENCE waited on with its user fence."""
    progress = Progress()
    with daemon_at(socket_path) as (path, daemon):
        dev = Device.open(path)
        dev.pci_barrier()
        progress(f"{count:,} page stores", force=True)
        start = time.perf_counter_ns()
        for _ in range(count):
            dev.pci_barrier()
        store_us = (time.perf_counter_ns() - start) / count / 1000
        dev.pci_barrier_drain()
        progress("ioctl round trips", force=True)
        ioctl_us = statistics.median(_time_calls(dev.version, 5000))
        shared_us = ioctl_us
        if daemon:  # the same ioctl with the daemon made to share the caller's CPU
            placement = os.sched_getaffinity(daemon.pid), os.sched_getaffinity(0)
            cpu = {min(placement[1])}
            pin(daemon.pid, cpu)
            pin(0, cpu)
            shared_us = statistics.median(_time_calls(dev.version, 5000))
            pin(daemon.pid, placement[0])
            pin(0, placement[1])
        bo = dev.gem_create(0x10000)
        vm = dev.vm_create()
        dev.vm_bind(vm, bo, 0x1_0000_0000)
        queue = dev.exec_queue_create(vm)
        mapping = dev.mmap_bo(bo)
        batch = Batch().mem_fence().end()
        mapping[0 : len(batch)] = batch.tobytes()
        fence = mapping.user_address(0x1000)
        value = 0

        def exec_fence() -> None:
            nonlocal value
            value += 1
            dev.exec(queue, 0x1_0000_0000, syncs=[user_fence(0x1_0000_1000, value)])
            dev.wait_user_fence(fence, value)

        progress("exec of MI_MEM_FENCE and wait", force=True)
        exec_us = statistics.median(_time_calls(exec_fence, 2000))
        dev.close()
        c_count = max(count // 10, 1000)
        c_store_us = barrier_store_us(path, c_count)
        c_ioctl = CRounds.ioctl(path, 2000)
        try:
            c_ioctl.run(2000)  # warm up
            c_ioctl_us = statistics.median(c_ioctl.run(2000))
        finally:
            c_ioctl.close()
        pid = daemon.pid if daemon else daemon_pid(str(path))
        progress(f"the idle daemon's CPU over {IDLE_SECONDS:g} s", force=True)
        idle_pct = _idle_watch_cost(str(path), pid, IDLE_PAGES, IDLE_SECONDS)
    print("one PCI memory barrier, three ways (median cost per barrier)")
    print(f"  store to the barrier page      {store_us:10.3f} us   ({count:,} stores)")
    print(f"  ioctl round trip (VERSION)     {ioctl_us:10.3f} us   (placed by the scheduler)")
    if daemon:
        print(f"  ioctl, daemon on caller's CPU  {shared_us:10.3f} us   (both pinned to one CPU)")
    print(f"  EXEC of MI_MEM_FENCE + wait    {exec_us:10.3f} us")
    print("from an unmodified C program, through the preload library (xec run):")
    print(f"  store via the fault path       {c_store_us:10.3f} us   ({c_count:,} stores)")
    print(f"  ioctl round trip (VERSION)     {c_ioctl_us:10.3f} us")
    print(f"ratio C ioctl/C store: {c_ioctl_us / c_store_us:.1f}x")
    ratio = ioctl_us / store_us
    print(
        f"ratio ioctl/store: {ratio:.0f}x (once >= 500x: README, Speed); "
        f"exec/store: {exec_us / store_us:.0f}x"
    )
    if daemon:
        print(f"ratio with the daemon on the caller's CPU: {shared_us / store_us:.0f}x")
    print(
        f"idle daemon, {IDLE_PAGES} barrier pages mapped, nobody writing: "
        f"{idle_pct:.2f}% of one core over {IDLE_SECONDS:g} s (target <= 2%)"
    )
    return {
        "count": count, "store_us": store_us, "ioctl_us": ioctl_us,
        "ioctl_same_cpu_us": shared_us if daemon else None, "exec_us": exec_us,
        "ratio": ratio, "exec_ratio": exec_us / store_us, "idle_pages": IDLE_PAGES,
        "idle_daemon_cpu_pct": idle_pct,
    }  # fmt: skip


def bench_rdma(
    socket_path: Path | None, repeats: int, placement: str = "shared"
) -> dict[str, Any]:
    """RDMA WRITE through the IB-like aux driver vs a plain memcpy between two mappings
    in one process, 4 KiB to 64 MiB; and a small write's latency vs one daemon ioctl,
    interleaved in rounds with the application, daemon and driver on one CPU by default
    (place_here: the daemon and the driver are the servers)."""
    from protocols.constants import IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_WRITE

    from .daemon import AuxDriverProcess
    from .ib import LOCAL_ONLY, IbContext

    place = place_here(placement)
    size = 64 << 20
    va = 0x1_0000_0000
    with daemon_at(socket_path) as (path, daemon):
        if daemon:
            pin(daemon.pid, place.servers)
        with AuxDriverProcess(path) as aux:
            pin(aux.pid, place.servers)
            apps = [Device.open(path), Device.open(path)]
            maps, mrs = [], []
            contexts = []
            # the source is read by our own work requests only; the target takes writes
            wanted = (LOCAL_ONLY, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
            for dev, access in zip(apps, wanted, strict=True):
                bo = dev.gem_create(size)
                mapping = dev.mmap_bo(bo)
                mapping[0:size] = b"\x5a" * size  # fault the pages in before timing
                vm = dev.vm_create()
                dev.vm_bind(vm, bo, va)
                ctx = IbContext.open(aux.socket_path, dev.vm_export(vm))
                contexts.append(ctx)
                mrs.append(ctx.reg_mr(va, size, access))
                maps.append(mapping)
            qp, peer = contexts[0].create_qp(), contexts[1].create_qp()
            qp.connect(peer.num)
            peer.connect(qp.num)
            print(f"RDMA WRITE via the aux driver vs memcpy in one process ({repeats} runs each)")
            print(f"{'size':>10} {'rdma MB/s':>12} {'memcpy MB/s':>12} {'ratio':>7}")
            ratio = 0.0
            length = 4096
            rows = []
            src = memoryview(maps[0])
            dst = memoryview(maps[1])
            while length <= size:

                def rdma(n: int = length) -> None:
                    qp.rdma_write(mrs[0], va, mrs[1].rkey, n)
                    (wc,) = qp.poll_cq()
                    assert wc.status == 0, wc

                def copy(n: int = length) -> None:
                    dst[0:n] = src[0:n]

                rdma_us = statistics.median(_time_calls(rdma, repeats))
                copy_us = statistics.median(_time_calls(copy, repeats))
                ratio = copy_us / rdma_us
                rows.append(
                    {"bytes": length, "rdma_mb_s": length / rdma_us,
                     "memcpy_mb_s": length / copy_us, "ratio": ratio}
                )  # fmt: skip
                print(
                    f"{_size(length):>10} {length / rdma_us:>12,.0f} "
                    f"{length / copy_us:>12,.0f} {ratio:>7.2f}"
                )
                length *= 4 if length < size // 4 else 2
            small_samples: list[float] = []
            ioctl_samples: list[float] = []
            for _ in range(10):
                small_samples += _time_calls(
                    lambda: (qp.rdma_write(mrs[0], va, mrs[1].rkey, 64), qp.poll_cq()), 200
                )
                ioctl_samples += _time_calls(apps[0].version, 200)
            small = statistics.median(small_samples)
            ioctl = statistics.median(ioctl_samples)
            src.release()
            dst.release()
            for ctx in contexts:
                ctx.close()
            for dev in apps:
                dev.close()
        print(f"at 64 MiB: {ratio:.0%} of memcpy bandwidth (target >= 50%)")
        print(
            f"64-byte RDMA WRITE + poll: {small:.1f} us; one daemon ioctl: {ioctl:.1f} us; "
            f"ratio {small / ioctl:.2f} (target <= 2; {place.where})"
        )
    return {
        "repeats": repeats, "placement": placement, "sizes": rows, "ratio": ratio,
        "small_write_us": small, "ioctl_us": ioctl, "latency_ratio": small / ioctl,
    }  # fmt: skip


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
