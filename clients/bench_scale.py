"""`xec bench scale`: many clients, many objects: what each costs the daemon.

A daemon of its own (limits raised to fit the counts) is started and timed to READY=1.
Then, one kind at a time: N concurrent connections, N BOs, N VMs, N idle exec queues,
each created and released from one client; the daemon's resident memory before and
with them gives its memory per object, and the wall time per create and per release is
printed beside it. Counts are arguments, so a test can run it tiny.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .daemon import DaemonProcess
from .device import Device
from .progress import Progress

SETTLE = 0.2  # s for the daemon's allocator to show what it holds in its RSS


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _measure(
    pid: int, n: int, create: Callable[[], Any], release: Callable[[Any], None]
) -> dict[str, float]:
    time.sleep(SETTLE)
    before = _rss(pid)
    start = time.perf_counter()
    made = [create() for _ in range(n)]
    created = time.perf_counter() - start
    time.sleep(SETTLE)
    held = _rss(pid) - before
    start = time.perf_counter()
    for thing in made:
        release(thing)
    released = time.perf_counter() - start
    return {
        "bytes_each": held / n,
        "create_us": created / n * 1e6,
        "release_us": released / n * 1e6,
    }


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _daemon(tmp: Path, objects: int, connections: int) -> DaemonProcess:
    config = tmp / "xed.toml"
    config.write_text(
        f"[limits]\nbos = {objects + 16}\nvms = {objects + 16}\nexec_queues = {objects + 16}\n"
    )
    return DaemonProcess(
        config=config, extra_args=("--log-level", "warning"), nofile=connections + 1024
    )


def bench_scale(connections: int, objects: int) -> dict[str, Any]:
    """The figures, printed and returned (`--json`). Each kind is measured in a daemon
    of its own: memory freed by one kind would otherwise hide what the next costs."""
    _raise_nofile(connections + 256)
    progress = Progress()
    rows: dict[str, dict[str, float]] = {}
    ready: list[float] = []
    kinds = ("connection", "bo", "vm", "exec queue (idle)")
    with tempfile.TemporaryDirectory(prefix="xed-scale-") as tmp:
        for kind in kinds:
            count = connections if kind == "connection" else objects
            progress(f"{count} × {kind}", force=True)
            daemon = _daemon(Path(tmp), objects, connections)
            start = time.perf_counter()
            daemon.start()
            ready.append((time.perf_counter() - start) * 1e3)
            try:
                path, pid = daemon.socket_path, daemon.pid
                if kind == "connection":
                    rows[kind] = _measure(
                        pid, count, partial(Device.open, path), lambda d: d.close()
                    )
                    continue
                with Device.open(path) as dev:
                    if kind == "bo":
                        rows[kind] = _measure(
                            pid, count, partial(dev.gem_create, 4096), dev.gem_close
                        )
                    elif kind == "vm":
                        rows[kind] = _measure(pid, count, dev.vm_create, dev.vm_destroy)
                    else:
                        vm = dev.vm_create()
                        rows[kind] = _measure(
                            pid, count, partial(dev.exec_queue_create, vm), dev.exec_queue_destroy
                        )
            finally:
                daemon.cleanup()
    ready_ms = sorted(ready)[len(ready) // 2]
    print(f"daemon start to READY=1: {ready_ms:.0f} ms median of {len(ready)} (target <= 300)")
    print(f"{'':20}{'count':>8}{'memory each':>14}{'create':>12}{'release':>12}")
    for name, row in rows.items():
        count = connections if name == "connection" else objects
        print(
            f"{name:20}{count:8}{row['bytes_each'] / 1024:11.2f} KiB"
            f"{row['create_us']:9.0f} us{row['release_us']:9.0f} us"
        )
    print("(memory: the daemon's RSS with them minus without, per object, each kind in a")
    print(" fresh daemon; a BO's pages are shared memory, not counted; targets: an idle exec")
    print(" queue <= 1 KiB at 10,000, a connection about 17 KiB at 10,000)")
    return {"ready_ms": ready_ms, "connections": connections, "objects": objects, "rows": rows}
