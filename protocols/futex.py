"""Futexes on words of shared memory: waiting for a word to change, waking its waiters,
and adding to a word atomically, across processes.

Both sides need them, on memory they share and with no socket between them: the daemon
wakes every client waiting on its device-state page when the device is unplugged, the
client library waits for that in a thread of its own, and processes sharing one barrier
counter (a parent and its forked child) add to it atomically. Python has no atomic
operation on shared memory, so the add is the kernel's own: FUTEX_WAKE_OP adds to its
second word atomically (and wakes nobody here). Futexes are keyed by the page behind
the address, not by the process, so a word of a shared mapping (a memfd, a MAP_SHARED
anonymous page kept across fork) is the same futex in every process mapping it. The
daemon's page watcher sleeps on many words at once (futex_waitv): its asleep word, which
writers wake, and the word each barrier lands in, which writers change.

Addresses are raw: the caller keeps the mapping alive for as long as it uses them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "riscv64": 98}.get(
    platform.machine(), 202
)
_SYS_FUTEX_WAITV = 449  # one number on every architecture (Linux 5.16)
FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_WAKE_OP = 5
_FUTEX_OP_ADD = 1
_INT_MAX = 0x7FFF_FFFF
_FUTEX_32 = 2  # a futex_waitv entry's size flag (shared: no FUTEX_PRIVATE_FLAG)
_MONOTONIC = ctypes.c_long(1)  # futex_waitv's clock (CLOCK_MONOTONIC) ...
_NO_FLAGS = ctypes.c_long(0)  # ... and flags
WAITV_MAX = 128  # FUTEX_WAITV_MAX: the most words one futex_waitv sleeps on

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Waiter(ctypes.Structure):  # struct futex_waitv
    _fields_ = [
        ("val", ctypes.c_uint64),
        ("uaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


_waitv: bool | None = None  # whether futex_waitv may be called (None: not asked yet)


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


class Sleeper:
    """Sleeps on several u32 words at once (futex_waitv), each while it holds the value
    given for it: made once for a set of words, and slept on as often as the caller likes.
    Returns at once if any word holds something else: a word that changed after the
    caller last looked at it can never be slept through, whoever forgot to wake it.
    Where futex_waitv is missing (Linux < 5.16) or filtered out (an older systemd's
    @system-service), it sleeps on the first word alone, as wait() does."""

    __slots__ = ("words", "_waiters", "_count")

    def __init__(self, words: tuple[tuple[int, int], ...]) -> None:
        """`words`: (address, expected) pairs, at least one, at most WAITV_MAX."""
        self.words = words
        self._waiters = (_Waiter * len(words))()
        for waiter, (address, expected) in zip(self._waiters, words, strict=True):
            waiter.val, waiter.uaddr, waiter.flags = expected, address, _FUTEX_32
        self._count = ctypes.c_long(len(words))

    def sleep(self, timeout: float) -> None:
        """Until one of the words is woken or changes, or `timeout` seconds pass."""
        if len(self.words) == 1 or not waitv_available():
            wait(*self.words[0], timeout)
            return
        deadline = time.clock_gettime(time.CLOCK_MONOTONIC) + timeout
        secs = int(deadline)
        until = ctypes.byref(_Timespec(secs, int((deadline - secs) * 1e9)))
        if _syscall(_SYS_FUTEX_WAITV, self._waiters, self._count, _NO_FLAGS, until, _MONOTONIC) < 0:
            err = ctypes.get_errno()
            if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
                raise OSError(err, os.strerror(err))


def waitv_available() -> bool:
    """Whether futex_waitv may be called here: not on Linux < 5.16 (ENOSYS), nor under a
    seccomp filter that predates it (an older systemd's @system-service: EPERM). Asked
    once, with no words (EINVAL where it is there)."""
    global _waitv
    if _waitv is None:
        _waitv = _syscall(_SYS_FUTEX_WAITV, None, _NO_FLAGS, _NO_FLAGS, None, _MONOTONIC) == 0
        _waitv = _waitv or ctypes.get_errno() == errno.EINVAL
    return _waitv


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
