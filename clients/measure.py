"""Small measuring tools the benchmarks, the load tool and the tests share."""

from __future__ import annotations

import os

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


def pin_here(spread: bool) -> set[int] | None:
    """Pin this process to its lowest allowed CPU and return that set, for the other
    processes of a measurement to join; with `spread`, pin nothing and return None.
    A wake-up across CPUs costs tens of microseconds on a virtual machine and lands at
    random: one CPU measures the software rather than the scheduler's placement."""
    cpus = None if spread else {min(os.sched_getaffinity(0))}
    pin(0, cpus)
    return cpus
