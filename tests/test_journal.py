"""Native journal entries (xed/journal.py), sent over real datagram sockets and parsed
back here by the protocol's rules; the daemon under a real journald is in
test_systemd.py."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xed import journal
from xed import log as xlog


def parse_entry(data: bytes) -> dict[str, str]:
    """systemd's native protocol, read the way journald reads it."""
    fields: dict[str, str] = {}
    while data:
        line, sep, rest = data.partition(b"\n")
        assert sep, "an entry ends each field with a newline"
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:  # NAME\n, a little-endian u64 length, the value, \n
            name = line
            (length,) = struct.unpack("<Q", rest[:8])
            value, data = rest[8 : 8 + length], rest[8 + length :]
            assert data[:1] == b"\n"
            data = data[1:]
        assert re.fullmatch(rb"[A-Z0-9_]{1,64}", name), name
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing where journald's would: the daemon's logging is
    configured to send to it; the previous configuration comes back afterwards."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.socket"))
    sock.settimeout(5)
    level = xlog.current_level()
    xlog.configure("debug", journal=str(tmp_path / "journal.socket"))
    try:
        yield sock
    finally:
        xlog.configure(level, stream=sys.stderr)
        sock.close()


def test_an_event_becomes_an_entry_with_a_field_per_key(journald: socket.socket) -> None:
    xlog.get().bind(client_id=3).info(
        "client_connected", pid=42, uid=0, ok=True, roles=["drm"], comm="a b=c"
    )
    entry = parse_entry(journald.recv(65536))
    assert (
        entry["MESSAGE"]
        == 'client_connected client_id=3 pid=42 uid=0 ok=true roles=["drm"] comm=a b=c'
    )
    assert entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "xed"
    assert entry["XED_EVENT"] == "client_connected"
    assert entry["XED_CLIENT_ID"] == "3"
    assert entry["XED_PID"] == "42"
    assert entry["XED_OK"] == "true"
    assert json.loads(entry["XED_ROLES"]) == ["drm"]
    assert entry["XED_COMM"] == "a b=c"
    assert "XED_TIMESTAMP" not in entry and "XED_LEVEL" not in entry


@pytest.mark.parametrize(
    ("method", "priority"), [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3")]
)
def test_levels_become_syslog_priorities(
    journald: socket.socket, method: str, priority: str
) -> None:
    getattr(xlog.get(), method)("something_happened")
    assert parse_entry(journald.recv(65536))["PRIORITY"] == priority


def test_a_logged_exception_keeps_its_traceback(journald: socket.socket) -> None:
    try:
        raise ZeroDivisionError("the handler divided by zero")
    except ZeroDivisionError:
        xlog.get().exception("ioctl_crashed", op="VERSION")
    entry = parse_entry(journald.recv(65536))
    assert entry["PRIORITY"] == "3"
    assert entry["XED_OP"] == "VERSION"
    # multi-line values travel in the protocol's length-prefixed form
    assert entry["XED_EXCEPTION"].startswith("Traceback (most recent call last):\n")
    assert entry["XED_EXCEPTION"].endswith("ZeroDivisionError: the handler divided by zero")
    assert "Traceback" not in entry["MESSAGE"]


def test_keys_journald_would_refuse_are_made_valid_names() -> None:
    assert journal.field_name("client-id") == "XED_CLIENT_ID"
    assert journal.field_name("dma.buf") == "XED_DMA_BUF"
    assert len(journal.field_name("k" * 100)) == 64
    entry = journal.encode_entry([("XED_A", "line one\nline two"), ("XED_B", "é")])
    assert parse_entry(entry) == {"XED_A": "line one\nline two", "XED_B": "é"}


def test_without_journald_events_fall_back_to_json_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    xlog.configure("info", stream=stream, journal=str(tmp_path / "nobody-listens"))
    try:
        xlog.get().info("client_connected", pid=42)
    finally:
        xlog.configure("info", stream=sys.stderr)
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["pid"], event["level"]) == ("client_connected", 42, "info")


def test_a_full_journal_loses_no_event(tmp_path: Path) -> None:
    """journald's queue full: the daemon never blocks on it, and what it could not
    take is written to stderr as JSON instead. Every event ends up in one of the two."""
    path = str(tmp_path / "journal.socket")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(path)
    stream = io.StringIO()
    xlog.configure("info", stream=stream, journal=path)
    try:
        for n in range(2000):
            xlog.get().info("event_number", n=n)
    finally:
        xlog.configure("info", stream=sys.stderr)
    sent = []
    receiver.setblocking(False)
    while True:
        try:
            sent.append(int(parse_entry(receiver.recv(65536))["XED_N"]))
        except BlockingIOError:
            break
    receiver.close()
    fell_back = [json.loads(line)["n"] for line in stream.getvalue().splitlines()]
    assert sent and fell_back  # the queue did fill up
    assert sorted(sent + fell_back) == list(range(2000))


def test_configuring_again_closes_the_previous_journal_socket(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    xlog.configure("info", stream=sys.stderr)
    before = open_fds()
    for _ in range(5):
        xlog.configure("info", journal=str(tmp_path / "journal.socket"))
    xlog.configure("info", stream=sys.stderr)
    assert open_fds() == before


_PROBE = "from xed.journal import stderr_is_journal; print(stderr_is_journal())"


@pytest.mark.parametrize(
    ("stream", "expected"), [("same", "True"), ("other", "False"), ("garbage", "False")]
)
def test_journal_stream_must_name_this_stderr(tmp_path: Path, stream: str, expected: str) -> None:
    """systemd's rule: JOURNAL_STREAM is device:inode of stderr as it connected it; a
    daemon whose stderr was redirected since (or never was the journal) writes there."""
    err, other = tmp_path / "stderr", tmp_path / "other"
    err.touch()
    other.touch()
    st = (err if stream == "same" else other).stat()
    value = f"{st.st_dev}:{st.st_ino}" if stream != "garbage" else "not:numbers"
    with err.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "JOURNAL_STREAM": value},
            check=True,
        )
    assert done.stdout.strip() == expected
