"""Where the daemon's log lines go: a thread of their own, so logging never waits.

The daemon logs from its event loop. A write to stderr blocks when the reader does not
keep up (a pipe nobody drains, a slow terminal, a paused `less`), and a blocked event
loop is a daemon that serves nobody. So an event is handed to a bounded queue and the
loop goes on; a writer thread empties the queue into the stream. When the queue is
full, the event is dropped and counted (`xed ctl status`: log_dropped), never waited
for. Setting O_NONBLOCK on stderr instead would change the file its parent shares (a
shell's terminal), and the shell would then see EAGAIN on its own writes.

The thread writes with os.write() on the stream's descriptor where it has one: a thread
blocked there holds no Python lock, so the interpreter can still exit around it.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
from typing import Any, TextIO

QUEUE_BYTES = 1 << 20  # what may wait for the stream before events are dropped
FLUSH_TIMEOUT = 1.0  # seconds the daemon waits, on exit, for the stream to take the rest


class LineSink:
    """A bounded queue of text for one stream, and the thread that writes it there."""

    def __init__(
        self,
        stream: TextIO,
        limit: int = QUEUE_BYTES,
        counters: list[collections.Counter[str]] | None = None,
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.dropped = 0  # events dropped, all told
        # counted in each of these too, as log_dropped (the device's stats)
        self.counters = counters if counters is not None else []
        try:  # a descriptor of our own: the stream's may be closed and its number reused
            self._fd: int | None = os.dup(stream.fileno())
        except (AttributeError, OSError, ValueError):  # io.StringIO and the like
            self._fd = None
        self._queue: collections.deque[str] = collections.deque()
        self._queued = 0  # characters in the queue
        self._lost = 0  # events the thread took but could not write
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="xed-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, text: str) -> None:
        """Queue one event's text (whole lines) for the stream, or drop and count it:
        never waits longer than the writer thread takes to swap the queue out."""
        with self._cond:
            dropped, self._lost = self._lost, 0
            if self._closing or self._queued + len(text) > self.limit:
                dropped += 1
            else:
                self._queue.append(text)
                self._queued += len(text)
                self._cond.notify()
        if dropped:
            self.dropped += dropped
            for counter in self.counters:
                counter["log_dropped"] += dropped

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Take no more events; give the thread up to `timeout` to write what is queued."""
        atexit.unregister(self.close)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    break
                lines = list(self._queue)
                self._queue.clear()
                self._queued = 0
            try:
                self._write("".join(lines))
            except (OSError, ValueError):  # the reader went away, or the stream closed
                with self._cond:
                    self._lost += len(lines)
        if self._fd is not None:  # here, never under a write still in progress
            os.close(self._fd)

    def _write(self, text: str) -> None:
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        data = text.encode("utf-8", "backslashreplace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]


class QueuedLogger:
    """A structlog logger whose rendered events go to a LineSink, one line each."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink

    def msg(self, message: Any) -> None:
        self.sink.put(f"{message}\n")

    debug = info = warning = warn = error = err = critical = exception = log = msg
