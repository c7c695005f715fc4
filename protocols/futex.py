"""Futexes on words of shared memory: waiting for a word to change, waking its waiters,
and adding to a word atomically, across processes.

Both sides need them, on memory they share and with no socket between them: the daemon
wakes every client waiting on its device-state page when the device is unplugged, the
client library waits for that in a thread of its own, and processes sharing one barrier
counter (a parent and its forked child) add to it atomically. Python has no atomic
operation on shared memory, so the add is the kernel's own: FUTEX_WAKE_OP adds to its
second word atomically (and wakes nobody here). Futexes are keyed by the page behind
the address, not by the process, so a word of a shared mapping (a memfd, a MAP_SHARED
anonymous page kept across fork) is the same futex in every process mapping it.

Addresses are raw: the caller keeps the mapping alive for as long as it uses them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "riscv64": 98}.get(
    platform.machine(), 202
)
FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_WAKE_OP = 5
_FUTEX_OP_ADD = 1
_INT_MAX = 0x7FFF_FFFF

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex(*args: object) -> int:
    result: int = _syscall(_SYS_FUTEX, *args)
    return result


def wait(address: int, expected: int, timeout: float | None = None) -> None:
    """Sleep while the u32 at `address` holds `expected`, at most `timeout` seconds.
    Returns on a wake, a timeout, a signal, or at once if the word holds something else:
    the caller looks at the word again, whatever woke it."""
    spec = None
    if timeout is not None:
        secs = int(timeout)
        spec = ctypes.byref(_Timespec(secs, int((timeout - secs) * 1e9)))
    if _futex(ctypes.c_void_p(address), FUTEX_WAIT, expected, spec, None, 0) < 0:
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(err, os.strerror(err))


def wake(address: int, count: int = _INT_MAX) -> int:
    """Wake up to `count` waiters on the u32 at `address` (every one by default)."""
    woken = _futex(ctypes.c_void_p(address), FUTEX_WAKE, count, None, None, 0)
    if woken < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return woken


def atomic_add(address: int, value: int, scratch: int) -> None:
    """Add `value` (0..4095) to the u32 at `address` in one atomic step, whoever else adds
    to it at the same moment. `scratch` is another aligned u32 of writable memory, the
    futex FUTEX_WAKE_OP wakes (nobody waits there)."""
    encoded = (_FUTEX_OP_ADD << 28) | (value << 12)  # *address += value; compare: never
    target = ctypes.c_void_p(address)
    if _futex(ctypes.c_void_p(scratch), FUTEX_WAKE_OP, 0, None, target, encoded) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
