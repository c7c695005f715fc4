"""A device's unplug as the library lives it: its mappings fall onto zero pages.

The kernel zaps every CPU mapping of a device it unplugs (drm_dev_unplug), and a later
access faults in a zeroed dummy page: no SIGBUS, no device data, and what is written
stays in that page, seen by nobody else. Here processes map the device's memfds
themselves. The daemon empties them at the unplug, so every mapping reads zeros at
once; and it turns the first word of the device's notice page (UNPLUG_NOTICE) to 1 and
wakes its futex waiters. In each process, one thread per device waits there and then
puts a private zero page of the same protection under every mapping the library made
of that device (mmap MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS at the same address), so
that what the process writes afterwards reaches no other process either. Addresses do
not move: Mapping objects, the user addresses taken from them and the words of the
barrier page go on working.

The thread is started with the first mapping of a device, ends when the process holds
none of that device any more (it looks once a second) and starts again with the next;
it ends for good after the unplug. A forked child starts its own for the mappings it
inherited (MMIO regions are not: they are MADV_DONTFORK). Only the library's mappings
are watched: a mapping made by hand of a descriptor the daemon sent reads zeros after
the unplug, but what is written to it is seen by every other such mapping of the same
memory, until it is unmapped.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocols import futex
from protocols.constants import NOTICE_UNPLUGGED, PAGE_SIZE

if TYPE_CHECKING:
    from .mapping import Mapping

IDLE_LOOK = 1.0  # seconds between two looks at whether the process still maps the device

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10  # linux/mman.h; the mmap module does not name it


class _PyBuffer(ctypes.Structure):
    # Py_buffer (Include/pybuffer.h): the address of a buffer, read-only ones included,
    # which ctypes' from_buffer() refuses
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def buffer_address(buffer: object) -> int:
    """Where a buffer (an mmap, writable or not) lives in this process."""
    view = _PyBuffer()
    _get_buffer(buffer, ctypes.byref(view), 0)  # PyBUF_SIMPLE; raises if not a buffer
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def _map_fixed(address: int, length: int, prot: int, flags: int, fd: int, offset: int) -> None:
    """mmap(2) with MAP_FIXED: replace what is at [address, address+length) in one step."""
    if _libc.mmap(address, length, prot, flags | _MAP_FIXED, fd, offset) in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def zero_pages(address: int, length: int, prot: int) -> None:
    """Replace [address, address+length) with private zero pages of protection `prot`,
    in one step (MAP_FIXED): no access in between faults."""
    length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
    _map_fixed(address, length, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)


def shared_over(address: int, length: int, prot: int, fd: int, offset: int) -> None:
    """Map `fd` (MAP_SHARED) over [address, address+length), as mmap(2) would even past
    the end of the file (where Python's mmap refuses)."""
    _map_fixed(address, length, prot, mmap.MAP_SHARED, fd, offset)



class UnplugWatch:
    """One device's notice page in this process, and the library's mappings of that
    device, which fall onto zero pages once the page says the device is unplugged."""

    def __init__(self, instance: str, notice_fd: int) -> None:
        self.instance = instance
        # mapped with mmap(2) itself: Python's mmap would keep a descriptor open for it
        address = _libc.mmap(None, PAGE_SIZE, mmap.PROT_READ, mmap.MAP_SHARED, notice_fd, 0)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._address: int = address
        self._word = ctypes.c_uint32.from_address(address)
        # unmapped with the watch, never at exit: a daemon thread may still look at it
        weakref.finalize(self, _libc.munmap, address, PAGE_SIZE).atexit = False
        self.lock = threading.Lock()  # a mapping is closed, or zapped, never both at once
        self._mappings: weakref.WeakSet[Mapping] = weakref.WeakSet()
        self.zapped = threading.Event()  # every mapping of the device is on zero pages
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> int:
        """Where the notice page is mapped (for as long as the watch lives: the process)."""
        return self._address

    @property
    def unplugged(self) -> bool:
        return bool(self._word.value == NOTICE_UNPLUGGED)

    def settled(self) -> bool:
        """The device is unplugged and no mapping of it is left to fall."""
        with self.lock:
            return self.unplugged and not len(self._mappings)

    def wait(self, timeout: float | None = None) -> bool:
        """Until settled(), or False after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.settled():
            left = IDLE_LOOK if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            if self.unplugged:  # the thread is at it: it takes a moment
                self.zapped.wait(min(left, 0.01))
            else:
                futex.wait(self._address, 0, min(left, IDLE_LOOK))
        return True

    def add(self, mapping: Mapping) -> None:
        """Watch over `mapping`; if the device is already gone, it falls at once."""
        with self.lock:
            mapping.guard = self.lock
            if self.unplugged:
                with contextlib.suppress(OSError):  # as in _run
                    mapping.zap()
                return
            self._mappings.add(mapping)
            if self._thread is None:
                self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"xed-unplug-{self.instance}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self.unplugged:
            futex.wait(self._address, 0, IDLE_LOOK)
            if not self.unplugged and self._idle():
                return
        with self.lock:
            for mapping in list(self._mappings):
                # refused (out of memory or map count): that one keeps the emptied pages
                with contextlib.suppress(OSError):
                    mapping.zap()
            self._mappings.clear()
        self.zapped.set()

    def _idle(self) -> bool:
        """No mapping of the device left in this process: the thread ends (the next
        mapping starts another)."""
        with self.lock:
            if len(self._mappings):
                return False
            self._thread = None
        return True

    def after_fork(self) -> None:
        """In a forked child: new locks (a thread of the parent may have held one), only
        the mappings the child inherited, and a thread of its own for them."""
        self.lock = threading.Lock()
        zapped, self.zapped = self.zapped.is_set(), threading.Event()
        if zapped:
            self.zapped.set()
        every = list(self._mappings)
        kept = [mp for mp in every if mp.inherited and not mp.closed]
        self._mappings = weakref.WeakSet(kept)
        for mapping in every:
            mapping.guard = self.lock if mapping in kept else None
        self._thread = None
        if kept and not self.zapped.is_set():
            self._start()


_registry: dict[str, UnplugWatch] = {}  # device instance -> its watch in this process
_registry_lock = threading.Lock()


def watch(instance: str, notice: Callable[[], int]) -> UnplugWatch:
    """The watch over device `instance` in this process; `notice()` is asked for the
    notice page's descriptor (and the caller's to close) the first time."""
    with _registry_lock:
        found = _registry.get(instance)
        if found is not None:
            return found
        fd = notice()
        try:
            found = _registry[instance] = UnplugWatch(instance, fd)
        finally:
            os.close(fd)
        return found


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for found in _registry.values():
        found.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
