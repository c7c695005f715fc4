"""Small measuring tools the benchmarks, the load tool and the tests share."""

from __future__ import annotations

import os
from typing import NamedTuple

from .device import Device


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `samples` by rank; 0.0 when there are none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # utime, stime: fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_ns(pid: int) -> dict[int, int]:
    """Each live thread's CPU time so far, in ns (/proc/PID/task/TID/schedstat): a clock
    tick (10 ms) would be a third of a small figure over a few seconds."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                times[int(tid)] = int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return times


def cpu_between_ns(before: dict[int, int], after: dict[int, int]) -> int:
    """The CPU the threads took between two `threads_cpu_ns` readings; a thread that
    ended in between is missing its last part (the window is kept short for that)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


def daemon_pid(socket_path: str) -> int:
    """The pid of the daemon serving `socket_path` (asked as admin), to measure its CPU."""
    with Device.open(socket_path, role="admin") as admin:
        return admin.admin_status().pid


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict a process (0: this one) to `cpus`; None leaves it where it is."""
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


class Placement(NamedTuple):
    """The CPUs for a measurement's clients and for its servers (daemon, aux driver,
    echo servers); None: wherever the scheduler puts them. `where` says it in words."""

    clients: set[int] | None
    servers: set[int] | None
    where: str


def place_here(mode: str = "shared") -> Placement:
    """Pin this process (a measurement's client) and return where the others go.

    shared: every process on this process's lowest allowed CPU. A wake-up across CPUs
    costs tens of microseconds on a virtual machine; on one CPU the software is measured.
    spread: the clients on the lowest CPU, the servers on the next: every round trip
    wakes its peer on the other CPU, and every contestant crosses the same way.
    float: nothing pinned. The scheduler places each pair of processes as it likes and
    keeps it there: a pair that shares a CPU beats one that does not by that wake-up,
    so a ratio between contestants then compares their placements."""
    allowed = sorted(os.sched_getaffinity(0))
    if mode == "float":
        return Placement(None, None, "placed by the scheduler (floating)")
    here = {allowed[0]}
    pin(0, here)
    if mode == "spread" and len(allowed) > 1:
        there = {allowed[1]}
        return Placement(here, there, f"clients on CPU {allowed[0]}, servers on CPU {allowed[1]}")
    if mode == "spread":
        return Placement(here, here, f"one CPU allowed: all on CPU {allowed[0]}")
    return Placement(here, here, f"client and server on CPU {allowed[0]}")
