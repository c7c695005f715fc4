"""Native journald entries: what `sd_journal_send()` does, for the daemon's log events.

Under systemd, stderr is a stream into journald (JOURNAL_STREAM names it); a JSON line
there reaches the journal as one MESSAGE. Sent as a native entry instead, each field of
an event becomes a journal field of its own, so `journalctl -u xed XED_EVENT=ioctl_refused`
or `XED_CLIENT_ID=3` selects events without parsing anything.

The native protocol (systemd's JOURNAL_NATIVE_PROTOCOL): one datagram per entry on
/run/systemd/journal/socket, each field `NAME=value\\n`, or, for a value holding a
newline, `NAME\\n`, its length as a little-endian u64, the value and `\\n`. Names are
upper-case letters, digits and underscores, at most 64, not starting with `_` (those
are journald's own trusted fields).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .logsink import LineSink

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "xed"
PREFIX = "XED_"
# structlog's level names -> syslog priorities, which journalctl colours and filters by (-p)
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_NOT_NAME = re.compile(r"[^A-Z0-9_]")
_LENGTH = struct.Struct("<Q")


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """systemd's rule: JOURNAL_STREAM is `device:inode` of the stream it connected our
    stderr to; if stderr is still that stream, journald is reading it."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(2)
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


def field_name(key: str) -> str:
    """An event key as a journal field name: XED_ and the key, upper-cased, with any
    character journald does not accept made an underscore."""
    return _NOT_NAME.sub("_", (PREFIX + key).upper())[:64]


def field_value(value: Any) -> str:
    """Strings as they are; anything else as JSON, so numbers and booleans read back."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def encode_entry(fields: Iterable[tuple[str, str]]) -> bytes:
    parts = []
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + _LENGTH.pack(len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def entry_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A structlog event dict as journal fields: MESSAGE (the event and its fields in
    one readable line, what journalctl shows), PRIORITY, SYSLOG_IDENTIFIER, XED_EVENT,
    and XED_<KEY> for every other key. A traceback goes in XED_EXCEPTION only."""
    event = dict(event)
    name = str(event.pop("event", ""))
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)  # journald stamps each entry itself
    summary = " ".join(
        f"{key}={field_value(value)}" for key, value in event.items() if key != "exception"
    )
    fields = [
        ("MESSAGE", f"{name} {summary}".rstrip()),
        ("PRIORITY", str(PRIORITIES.get(level, 6))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        (field_name("event"), name),
    ]
    fields += [(field_name(key), field_value(value)) for key, value in event.items()]
    return fields


class JournalLogger:
    """A structlog logger that sends each event as a native journal entry. If journald
    cannot take it (gone, its queue full, the entry too big for a datagram), the event
    goes to `fallback` as a JSON line instead: lost events are worse than unstructured
    ones. Never blocks: the daemon logs from its event loop, the socket does not wait
    and the fallback is a queue (logsink.py) that drops and counts what will not fit."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: LineSink | None = None) -> None:
        self.path = path
        self.fallback = fallback or LineSink(sys.stderr)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)

    def msg(self, **event: Any) -> None:
        try:
            self.sock.sendto(encode_entry(entry_fields(event)), self.path)
        except OSError:
            self.fallback.put(json.dumps(event, default=str) + "\n")

    debug = info = warning = warn = error = err = critical = exception = log = msg

    def close(self) -> None:
        self.sock.close()
