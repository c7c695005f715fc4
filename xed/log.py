"""structlog, configured once: a readable console on a terminal, native journal entries
under systemd, JSON lines anywhere else.

The level can change while the daemon runs (`xed ctl log-level debug`): loggers bound
per connection long ago must obey it too, so the level is a filter every event passes
through rather than the bound loggers' class. When JOURNAL_STREAM names our stderr,
journald is reading it, and each event goes to journald as an entry whose fields are
the event's (journal.py) rather than as a JSON line in one MESSAGE.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from .journal import JOURNAL_SOCKET, JournalLogger, stderr_is_journal

LEVELS = ("debug", "info", "warning", "error")
_NUMBERS = logging.getLevelNamesMapping()
# structlog's method names that logging does not know: log.exception() is an error
# (a crash must show at --log-level error), log.msg() is info
_NUMBERS.update(EXCEPTION=_NUMBERS["ERROR"], MSG=_NUMBERS["INFO"])
_threshold = _NUMBERS["INFO"]
_journal: JournalLogger | None = None


def set_level(level: str) -> None:
    """Change the level now; every logger already bound follows."""
    global _threshold
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    _threshold = _NUMBERS[level.upper()]


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
    neither given, to journald's own socket when stderr is a journal stream."""
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
    factory: Any
    global _journal
    if _journal is not None:  # configured before: its socket is not needed any more
        _journal.close()
        _journal = None
    if journal is not None:
        journal_logger = _journal = JournalLogger(journal, fallback=stream)
        # no renderer: the event dict itself reaches the logger, as keyword arguments
        processors.append(structlog.processors.format_exc_info)
        factory = lambda *_args: journal_logger  # noqa: E731 - one logger for every name
    elif stream.isatty():
        processors.append(structlog.dev.ConsoleRenderer())  # renders tracebacks itself
        factory = structlog.PrintLoggerFactory(stream)
    else:
        processors += [
            structlog.processors.format_exc_info,  # or a logged exception loses its traceback
            structlog.processors.JSONRenderer(),
        ]
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.BoundLogger,
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    return structlog.get_logger("xed")
