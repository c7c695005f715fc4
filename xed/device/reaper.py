"""The last close of a large BO's memory, off the event loop.

The kernel frees every page of a memfd inside the close() that drops its last reference:
a 1 GiB BO its client had filled took 165 ms of the event loop's thread (measured), and
every other client waited that long. A memfd of BIG bytes or more is therefore closed by
a thread of its own; os.close releases the interpreter while the kernel works. Smaller
ones close at once, where a thread's hand-over would cost more than the close. The
descriptor stays open until the thread gets to it, a moment later: nothing but the
thread uses it from then on, so its number cannot be reused under anyone.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

from .promptness import name_thread

BIG = 64 << 20  # bytes: a filled memfd this size takes about 10 ms to free


class Reaper:
    """One thread, started at the first large close, closing what it is handed."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def close(self, fd: int, size: int) -> None:
        """Close `fd`, a memfd of `size` bytes: now if small, else on the thread."""
        if size < BIG:
            os.close(fd)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xed-reaper", daemon=True)
                self._thread.start()
        self._queue.put(fd)

    def _run(self) -> None:
        name_thread(b"xed-reaper")
        while True:
            fd = self._queue.get()
            with contextlib.suppress(OSError):  # it was ours alone: nothing to tell anyone
                os.close(fd)


_reaper = Reaper()


def close_memory(fd: int, size: int) -> None:
    """Close a BO's memfd of `size` bytes without holding the event loop up (Reaper)."""
    _reaper.close(fd, size)
