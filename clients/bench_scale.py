"""`xec bench scale`: many clients and many objects at once, and what each costs the daemon.

For each kind (connections, BOs, VMs, exec queues) it starts a daemon of its own and
creates `count` of them there, all alive at once, and prints the daemon's memory per
object (its resident set grown, divided by the count) and the time to create and to
release one (the mean over the count; a connection is released once the daemon has let
go of its file, not when the client has closed its end); and the time from starting a
daemon process to its READY=1 (the median of READY_STARTS starts), as run here and
with the daemon's bytecode cached as an installed daemon's is.

10,000 connections need 10,000 descriptors on each side: the daemon this tool starts
gets a descriptor limit to match (DaemonProcess(nofile=)) and lets one uid, ours, open
them all ([limits] connections_per_uid), and this process raises its own soft limit as
far as the hard one allows (or the count is cut to fit, and says so).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .daemon import DaemonProcess
from .device import Device
from .progress import Progress

READY_STARTS = 7  # daemon starts timed to READY=1: their median, as one can be held up
PER_FILE_VMS = 1000  # below the per-file VM limit (1024 by default)
SPARE_FDS = 512  # descriptors this process and the daemon keep beside the count
# what a connection cost when the issue asked to keep it ("about 17 KiB"), with the
# rounding that "about" allows
CONNECTION_TARGET_KIB = 17.5
ONE_KIB = 1024


def _rss(pid: int) -> int:
    """The resident set of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * ONE_KIB
    return 0


def _room_for(count: int) -> int:
    """Raise our descriptor limit towards `count` connections; how many fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + SPARE_FDS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return min(count, wanted - SPARE_FDS)


def _ready_ms(starts: int, env: Mapping[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(starts):
        daemon = DaemonProcess(extra_args=("--log-level", "warning"), env=env)
        start = time.perf_counter()
        daemon.start()
        times.append((time.perf_counter() - start) * 1000)
        daemon.cleanup()
    return times


# the packages every xed process imports before it does anything (pyproject.toml)
CHOSEN_PACKAGES = "import trio, msgpack, attrs, structlog"


def _floor_ms(starts: int) -> list[float]:
    """Start to exit of this interpreter importing CHOSEN_PACKAGES, `starts` times."""
    times = []
    for _ in range(starts):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHOSEN_PACKAGES], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _ready_ms_installed(starts: int) -> list[float]:
    """The same for a daemon whose bytecode is cached, as an installed one's is (pip
    compiles it at install time). Under PYTHONDONTWRITEBYTECODE, which a development
    environment may set, every start compiles xed's own source again; this shows that
    part apart. One start, not timed, fills a cache of our own."""
    with tempfile.TemporaryDirectory(prefix="xed-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        DaemonProcess(extra_args=("--log-level", "warning"), env=env).start().cleanup()
        return _ready_ms(starts, env)


def _kind(
    pid: int,
    count: int,
    create: Callable[[], object],
    release: Callable[[object], None],
    released: Callable[[], bool] = lambda: True,
) -> dict[str, float]:
    """Create `count` objects, all alive at once, then release them (until `released()`
    says the daemon is done with them): memory and times."""
    before = _rss(pid)
    start = time.perf_counter()
    made = [create() for _ in range(count)]
    created = time.perf_counter() - start
    grown = _rss(pid) - before
    start = time.perf_counter()
    for obj in made:
        release(obj)
    while not released():
        time.sleep(0.001)
    gone = time.perf_counter() - start
    return {
        "count": count,
        "bytes_each": grown / count,
        "create_us": created / count * 1e6,
        "release_us": gone / count * 1e6,
    }


def bench_scale(connections: int, objects: int, starts: int = READY_STARTS) -> dict[str, Any]:
    """Connections, BOs, VMs and exec queues, `connections` and `objects` of each; the
    daemon's start to READY=1 timed `starts` times each way."""
    with tempfile.TemporaryDirectory(prefix="xed-bench-") as scratch:
        return _bench_scale(connections, objects, starts, Path(scratch) / "xed.toml")


def _bench_scale(connections: int, objects: int, starts: int, config: Path) -> dict[str, Any]:
    progress = Progress()
    progress(f"daemon start to READY=1, {starts} times each way", force=True)
    ready = _ready_ms(starts)
    installed = _ready_ms_installed(starts)
    floor = _floor_ms(starts)
    fitting = _room_for(connections)
    nofile = max(fitting, objects) + SPARE_FDS * 2
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    results: dict[str, dict[str, float]] = {}
    # Every connection is ours, one uid's, and the daemon's table is cut to fit the
    # count: by default one uid may have only three quarters of it.
    config.write_text(f"[limits]\nconnections_per_uid = {fitting + 1}\n")  # + the admin

    # each kind in a daemon of its own: memory freed by one kind would be reused by the next
    # (the interpreter keeps it), and the next would seem to cost nothing
    def daemon() -> DaemonProcess:
        return DaemonProcess(extra_args=("--log-level", "warning"), nofile=nofile, config=config)

    with daemon() as d, Device.open(d.socket_path, role="admin") as admin:
        progress(f"{fitting:,} connections", force=True)
        path = d.socket_path
        files = admin.admin_status().objects.files
        results["connections"] = _kind(
            d.pid,
            fitting,
            lambda: Device.open(path),
            lambda dev: dev.close(),  # type: ignore[attr-defined]
            lambda: admin.admin_status().objects.files <= files,
        )
    with daemon() as d, Device.open(d.socket_path) as dev:
        progress(f"{objects:,} BOs", force=True)
        results["bos"] = _kind(
            d.pid,
            objects,
            lambda: dev.gem_create(4096),
            lambda h: dev.gem_close(h),  # type: ignore[arg-type]
        )
    with daemon() as d, Device.open(d.socket_path) as dev:
        progress(f"{objects:,} exec queues", force=True)
        vm = dev.vm_create()
        results["exec_queues"] = _kind(
            d.pid,
            objects,
            lambda: dev.exec_queue_create(vm),
            lambda q: dev.exec_queue_destroy(q),  # type: ignore[arg-type]
        )
    with daemon() as d:
        progress(f"{objects:,} VMs", force=True)
        holders = [Device.open(d.socket_path) for _ in range(-(-objects // PER_FILE_VMS))]
        turn = iter(range(objects))

        def vm_create() -> tuple[Device, int]:
            holder = holders[next(turn) // PER_FILE_VMS]
            return holder, holder.vm_create()

        results["vms"] = _kind(
            d.pid,
            objects,
            vm_create,
            lambda made: made[0].vm_destroy(made[1]),  # type: ignore[index]
        )
        for holder in holders:
            holder.close()
    _print(results, ready, installed, floor, connections)
    return {
        "ready_ms": statistics.median(ready),
        "ready_ms_all": ready,
        "ready_ms_installed": statistics.median(installed),
        "ready_floor_ms": statistics.median(floor),
        **results,
    }


def _print(
    results: dict[str, dict[str, float]],
    ready: list[float],
    installed: list[float],
    floor: list[float],
    asked: int,
) -> None:
    print("many objects at once: the daemon's memory per object, time to create and release one")
    print(f"{'kind':>12} {'count':>8} {'memory each':>12} {'create':>10} {'release':>10}")
    for kind, row in results.items():
        print(
            f"{kind:>12} {int(row['count']):>8,} {row['bytes_each'] / ONE_KIB:>8.2f} KiB "
            f"{row['create_us']:>7.1f} us {row['release_us']:>7.1f} us"
        )
    if results["connections"]["count"] < asked:
        print(f"(connections cut to {int(results['connections']['count']):,}: descriptor limit)")
    print(
        f"exec queue, idle: {results['exec_queues']['bytes_each'] / ONE_KIB:.2f} KiB each "
        f"(target <= 1 KiB at 10,000)"
    )
    connection_kib = results["connections"]["bytes_each"] / ONE_KIB
    kept = "kept" if connection_kib <= CONNECTION_TARGET_KIB else "NOT kept"
    print(f"connection: {connection_kib:.1f} KiB each (target: ~17 KiB, {kept})")
    print(
        f"daemon start to READY=1: {statistics.median(ready):.0f} ms "
        f"(median of {len(ready)}; target <= 300 ms)"
    )
    print(
        f"  the same with its bytecode cached, as installed: "
        f"{statistics.median(installed):.0f} ms (median of {len(installed)})"
    )
    print(
        f"  floor: {statistics.median(floor):.0f} ms to start, import trio, msgpack, "
        f"attrs and structlog, and exit (median of {len(floor)})"
    )
