"""structlog, configured once: JSON lines off a terminal, a readable console on one.

The level can change while the daemon runs (`xed ctl log-level debug`): loggers bound
per connection long ago must obey it too, so the level is a filter every event passes
through rather than the bound loggers' class. A journald stream (JOURNAL_STREAM naming
our stderr) gets JSON lines, which journalctl -o json-pretty shows field by field.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")
_NUMBERS = logging.getLevelNamesMapping()
_threshold = _NUMBERS["INFO"]


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


def configure(level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stderr
    set_level(level)
    renderer: Any
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            _filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.BoundLogger,
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    return structlog.get_logger("xed")
