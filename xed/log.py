"""structlog, configured once: a readable console on a terminal, native journal entries
under systemd, JSON lines anywhere else.

The level can change while the daemon runs (`xed ctl log-level debug`): loggers bound
per connection long ago must obey it too, so the level is a filter every event passes
through rather than the bound loggers' class. When JOURNAL_STREAM names our stderr,
journald is reading it, and each event goes to journald as an entry whose fields are
the event's (journal.py) rather than as a JSON line in one MESSAGE. Logging never
waits for a stream: what it cannot take now is dropped and counted (logsink.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

from .journal import JOURNAL_SOCKET, JournalLogger, stderr_is_journal
from .logsink import LineSink, QueuedLogger

LEVELS = ("debug", "info", "warning", "error")
_NUMBERS = logging.getLevelNamesMapping()
# structlog's method names that logging does not know: log.exception() is an error
# (a crash must show at --log-level error), log.msg() is info
_NUMBERS.update(EXCEPTION=_NUMBERS["ERROR"], MSG=_NUMBERS["INFO"])
_threshold = _NUMBERS["INFO"]
# DEFAULT_RATELIMIT_INTERVAL and _BURST (include/linux/ratelimit_types.h)
RATELIMIT_INTERVAL = 5.0
RATELIMIT_BURST = 10
_journal: JournalLogger | None = None
_sink: LineSink | None = None
_drop_counters: list[collections.Counter[str]] = []  # where dropped events are counted


def set_level(level: str) -> None:
    """Change the level now; every logger already bound follows."""
    global _threshold
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    _threshold = _NUMBERS[level.upper()]


def enabled(level: str) -> bool:
    """Whether events of `level` are logged now (to skip work for ones that are not)."""
    return _NUMBERS[level.upper()] >= _threshold


def current_level() -> str:
    return logging.getLevelName(_threshold).lower()


def _filter_by_level(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _NUMBERS.get(method.upper(), _NUMBERS["INFO"]) < _threshold:
        raise structlog.DropEvent
    return event


def _traceback_of_exception(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """log.exception() records the exception being handled, as logging's does (the
    generic bound logger would treat it as a plain error)."""
    if method == "exception":
        event.setdefault("exc_info", True)
    return event


def configure(level: str = "info", stream: Any = None, journal: str | None = None) -> None:
    """Log to `stream` (stderr by default), or to journald at the socket `journal`; with
    neither given, to journald's own socket when stderr is a journal stream. Whatever
    the stream, it is written by a thread of its own and never holds the caller up
    (logsink.py); what journald cannot take falls back to that stream the same way."""
    if journal is None and stream is None and stderr_is_journal():
        journal = JOURNAL_SOCKET
    stream = stream or sys.stderr
    set_level(level)
    processors: list[Any] = [
        _filter_by_level,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _traceback_of_exception,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    logger: Any
    global _journal, _sink
    if _journal is not None:  # configured before: its socket is not needed any more
        _journal.close()
        _journal = None
    if _sink is not None:  # nor its writer, once it has written what it holds
        _sink.close()
    sink = _sink = LineSink(stream, counters=_drop_counters)
    if journal is not None:
        logger = _journal = JournalLogger(journal, fallback=sink)
        # no renderer: the event dict itself reaches the logger, as keyword arguments
        processors.append(structlog.processors.format_exc_info)
    elif stream.isatty():
        processors.append(structlog.dev.ConsoleRenderer())  # renders tracebacks itself
        logger = QueuedLogger(sink)
    else:
        processors += [
            structlog.processors.format_exc_info,  # or a logged exception loses its traceback
            structlog.processors.JSONRenderer(),
        ]
        logger = QueuedLogger(sink)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.BoundLogger,
        logger_factory=lambda *_args: logger,  # one logger for every name
        cache_logger_on_first_use=False,
    )


@contextlib.contextmanager
def drops_counted_in(counter: collections.Counter[str]) -> Iterator[None]:
    """While inside, every event the log drops is also counted in `counter`, as
    log_dropped (the device's stats, shown by `xed ctl status`)."""
    _drop_counters.append(counter)
    try:
        yield
    finally:
        _drop_counters.remove(counter)


class RateLimit:
    """The kernel's ratelimit_state: at most `burst` events in each `interval` seconds;
    the ones past it are counted, and the count is reported when the next one passes."""

    def __init__(self, interval: float = RATELIMIT_INTERVAL, burst: int = RATELIMIT_BURST) -> None:
        self.interval = interval
        self.burst = burst
        self._begin: float | None = None
        self._printed = 0
        self.missed = 0

    def __call__(self, now: float) -> tuple[bool, int]:
        """(whether this event may be logged, how many were suppressed since the last
        report: to be reported first)."""
        suppressed = 0
        if self._begin is None or now - self._begin >= self.interval:
            suppressed, self.missed = self.missed, 0
            self._begin, self._printed = now, 0
        if self._printed < self.burst:
            self._printed += 1
            return True, suppressed
        self.missed += 1
        return False, suppressed

    def log(self, emit: Any, event: str, suppressed_as: str = "", **fields: Any) -> None:
        """emit(event, **fields) if the limit lets it, first reporting with a count what
        it held back since (as `suppressed_as`, by default event + "_suppressed")."""
        allowed, suppressed = self(time.monotonic())
        if suppressed:
            emit(suppressed_as or f"{event}_suppressed", count=suppressed)
        if allowed:
            emit(event, **fields)


def get() -> Any:
    return structlog.get_logger("xed")
