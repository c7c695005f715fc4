"""Asking the kernel to run the page watcher's thread as soon as it wakes.

A barrier is acknowledged at the watcher's next look, every FAST_LOOK while writes keep
coming. Busy writers on every CPU make that look wait for one: the fair scheduler lets a
running task finish its slice (1.5 ms and more on a small machine) before a woken one
gets the CPU, and the kernel's default timer slack (50 us) delays every short sleep. So
the thread, for as long as it watches, asks for what it may have, best first:

- `fifo`: SCHED_FIFO at the lowest real-time priority. Root, CAP_SYS_NICE or
  RLIMIT_RTPRIO >= 1 (systemd: LimitRTPRIO=1) grants it; it runs the moment it wakes.
  What the thread can take stays bounded as before (a look every FAST_LOOK at the most,
  LOOK_RATIO), and the kernel's real-time throttling bounds it again.
- `short slice`: an ordinary thread asking for a 0.1 ms slice (sched_setattr's
  sched_runtime, Linux >= 6.12: no privilege needed), which lets it preempt a task with
  a longer slice on wake-up. Older kernels take the request and ignore it.
- `normal`: neither is permitted (a seccomp filter such as systemd's
  SystemCallFilter=~@resources): it works as before, acknowledgements wait for a CPU.

Either way the timer slack is 1 us (prctl: every thread may set its own). Everything is
undone when the watcher stops: its thread is one of trio's, reused for other work.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable

_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "ppc64le": 355, "riscv64": 274}.get(
    platform.machine(), 314
)
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
PR_SET_NAME = 15
PR_GET_NAME = 16
TIMER_SLACK_NS = 1000
SHORT_SLICE_NS = 100_000  # the least the kernel grants (it clamps to 0.1..100 ms)
THREAD_NAME = b"xed-watcher"  # what /proc/PID/task/TID/comm shows (xec load reads it)

_libc = ctypes.CDLL(None, use_errno=True)


class _SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def _set_slice(runtime_ns: int) -> bool:
    """The calling thread's fair-scheduler slice (0: the kernel's default); True if the
    kernel took the request. Its niceness is kept as it is."""
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=os.SCHED_OTHER,
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),
        sched_runtime=runtime_ns,
    )
    return int(_libc.syscall(_SYS_SCHED_SETATTR, 0, ctypes.byref(attr), 0)) == 0


def name_thread(name: bytes) -> None:
    """What /proc/PID/task/TID/comm shows for the calling thread (at most 15 bytes):
    Python's thread names stay inside the interpreter."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def hasten_thread() -> tuple[str, Callable[[], None]]:
    """Make the calling thread run promptly on wake-up, as far as it may: how (`fifo`,
    `short slice` or `normal`), and the function that undoes it (in the same thread)."""
    slack = int(_libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))
    _libc.prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    name = ctypes.create_string_buffer(16)
    _libc.prctl(PR_GET_NAME, name, 0, 0, 0)
    name_thread(THREAD_NAME)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # 0: this thread
        how = "fifo"
    except OSError:  # EPERM: neither privilege nor RLIMIT_RTPRIO
        how = "short slice" if _set_slice(SHORT_SLICE_NS) else "normal"

    def undo() -> None:
        if how == "fifo":
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        elif how == "short slice":
            _set_slice(0)
        _libc.prctl(PR_SET_NAME, name, 0, 0, 0)
        _libc.prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0)

    return how, undo
