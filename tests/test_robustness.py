"""The daemon against hostile or broken peers, spoken in raw frames on a raw socket.

Every defect is an errno reply (under the request's id when it can be read) or a
PROTOCOL_ERROR event, descriptors nobody asked for are closed at once, a peer that keeps
sending garbage is hung up on, and the daemon goes on serving everyone else. The
handshake and the roles it grants are in test_hello_roles.py, which uses the Raw
connection and fixtures here.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import baseline

from clients import Device
from clients.daemon import DaemonProcess
from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    MAX_STRIKES,
    PROTOCOL_VERSION,
    Event,
    EventMessage,
    Op,
    Reply,
    decode_incoming,
    encode_request,
    pack_fds,
)
from protocols import messages as m

RECV_TIMEOUT = 10.0


class Raw:
    """A bare SOCK_SEQPACKET connection: whatever bytes and descriptors we like."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(RECV_TIMEOUT)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.ops: dict[int, Op] = {}

    def close(self) -> None:
        self.sock.close()

    def send_bytes(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        self.sock.sendmsg([data], pack_fds(list(fds)))

    def send(self, request_id: int, op: Op, args: Any, fds: tuple[int, ...] = ()) -> None:
        self.ops[request_id] = op
        self.send_bytes(encode_request(request_id, op, args), fds)

    def send_frame(self, frame: list[Any], fds: tuple[int, ...] = ()) -> None:
        """A hand-made frame; replies to its id are decoded as VERSION's."""
        if type(frame[0]) is int and frame[0] > 0:
            self.ops[frame[0]] = Op.VERSION
        self.send_bytes(msgpack.packb(frame, use_bin_type=True), fds)

    def recv_raw(self) -> bytes:
        data, ancdata, _flags, _ = self.sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * MAX_FDS))
        assert not ancdata, "the daemon attached descriptors to a refusal"
        return data

    def recv(self) -> Reply | EventMessage:
        data = self.recv_raw()
        assert data, "the daemon hung up"
        return decode_incoming(data, (), self.ops)

    def reply(self) -> Reply:
        message = self.recv()
        assert isinstance(message, Reply), f"expected a reply, got {message!r}"
        return message

    def event(self) -> EventMessage:
        message = self.recv()
        assert isinstance(message, EventMessage), f"expected an event, got {message!r}"
        return message

    def call(self, request_id: int, op: Op, args: Any) -> Reply:
        self.send(request_id, op, args)
        reply = self.reply()
        assert reply.id == request_id
        return reply

    def hello(self, role: str = "drm") -> Reply:
        reply = self.call(0xFFFF_FFF0, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role=role))
        assert reply.errno == 0, reply.result
        return reply

    def frame_error(self, frame: list[Any]) -> int:
        """Send a hand-made frame and return the errno of the reply to its id."""
        self.send_frame(frame)
        reply = self.reply()
        assert reply.id == frame[0]
        return reply.errno


@pytest.fixture
def raw(daemon: DaemonProcess) -> Iterator[Raw]:
    conn = Raw(daemon.socket_path)
    yield conn
    conn.close()


@pytest.fixture
def ready(raw: Raw) -> Raw:
    raw.hello()
    return raw


def _descriptors(count: int) -> list[int]:
    """`count` descriptors of assorted kinds: memfds and both ends of pipes."""
    fds: list[int] = []
    while len(fds) < count:
        if len(fds) % 3 == 0:
            fds.append(os.memfd_create("xed-test-junk", os.MFD_CLOEXEC))
        else:
            fds.extend(os.pipe())
    for extra in fds[count:]:
        os.close(extra)
    return fds[:count]


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _wait_for_files(daemon: DaemonProcess, files: int) -> tuple[int, Any]:
    """Poll until the daemon counts `files` connections (admin visit included)."""
    for _ in range(1000):  # up to ~10 s
        fds, counts = baseline(daemon)
        if counts.files == files:
            return fds, counts
        time.sleep(0.01)
    raise AssertionError(f"the daemon still counts {counts.files} files, expected {files}")


# --- malformed requests ---------------------------------------------------------------------
def test_unknown_op_is_enotty_with_id_echoed(ready: Raw) -> None:
    """An op number the daemon does not know is ENOTTY, under the request's id."""
    assert ready.frame_error([0x1234_5678, 0x3F, {}]) == errno.ENOTTY
    assert ready.frame_error([77, 0xFFFF, {}]) == errno.ENOTTY


@pytest.mark.parametrize(
    "value",
    [True, False, "1", -1, 1 << 32, 1.0, None, b"\x01", [1]],
    ids=["true", "false", "str", "negative", "u32-overflow", "float", "nil", "bin", "array"],
)
def test_wrong_field_type_is_einval(ready: Raw, value: Any) -> None:
    """A u32 field holding a bool, str, negative, too-big or non-integer value is EINVAL."""
    assert ready.frame_error([9, int(Op.GEM_CLOSE), {"handle": value}]) == errno.EINVAL


def test_negative_u64_field_is_einval(ready: Raw) -> None:
    """A u64 field holding a negative number is EINVAL."""
    frame = [10, int(Op.XE_GEM_MMAP_OFFSET), {"extensions": -(1 << 63)}]
    assert ready.frame_error(frame) == errno.EINVAL


def test_u16_field_too_big_is_einval(ready: Raw) -> None:
    """A u16 field holding 0x10000 is EINVAL."""
    frame = [18, int(Op.XE_GEM_CREATE), {"cpu_caching": 0x10000}]
    assert ready.frame_error(frame) == errno.EINVAL


def test_wrong_array_length_is_einval(ready: Raw) -> None:
    """A reserved[] of the wrong length is EINVAL."""
    frame = [11, int(Op.XE_DEVICE_QUERY), {"reserved": [0, 0, 0]}]
    assert ready.frame_error(frame) == errno.EINVAL


def test_args_not_a_map_is_einval(ready: Raw) -> None:
    """Request args that are not a map are EINVAL, under the request's id."""
    assert ready.frame_error([12, int(Op.VERSION), [1, 2]]) == errno.EINVAL


def test_op_not_an_integer_is_einval(ready: Raw) -> None:
    """An op given as a string is EINVAL, under the request's id."""
    assert ready.frame_error([13, "VERSION", {}]) == errno.EINVAL


def test_unknown_field_is_einval(ready: Raw) -> None:
    """A field the op's record does not have (a misspelling) is EINVAL."""
    assert ready.frame_error([14, int(Op.GEM_CLOSE), {"handel": 1}]) == errno.EINVAL
    assert ready.frame_error([15, int(Op.VERSION), {"x": 0}]) == errno.EINVAL


def test_valid_request_after_malformed_ones_is_served(ready: Raw) -> None:
    """Malformed requests leave the connection usable: a good request is answered."""
    assert ready.frame_error([16, int(Op.GEM_CLOSE), {"handle": "x"}]) == errno.EINVAL
    reply = ready.call(17, Op.VERSION, m.DrmVersion())
    assert reply.errno == 0
    assert reply.result.name == "xe"


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", b"\xc1\xff\x00garbage", b"\x93", b"\x92\x01\x02", b"\xa3abc", b"\x93\xa1x\x00\x80"],
    ids=["reserved-byte", "junk", "truncated", "two-elements", "not-an-array", "string-id"],
)
def test_unreadable_datagram_is_protocol_error_event(ready: Raw, garbage: bytes) -> None:
    """Bytes whose request id cannot be read get a PROTOCOL_ERROR event (id 0): EINVAL."""
    ready.send_bytes(garbage)
    message = ready.event()
    assert message.event is Event.PROTOCOL_ERROR
    assert message.data.errno == errno.EINVAL
    assert ready.call(20, Op.VERSION, m.DrmVersion()).errno == 0


def test_request_id_zero_is_einval_event(ready: Raw) -> None:
    """Request id 0 (reserved for events) is refused with EINVAL in a PROTOCOL_ERROR event."""
    ready.send_frame([0, int(Op.VERSION), {}])
    message = ready.event()
    assert message.event is Event.PROTOCOL_ERROR
    assert message.data.errno == errno.EINVAL


def test_request_id_beyond_u32_is_einval_event(ready: Raw) -> None:
    """A request id above 0xffffffff cannot be echoed: EINVAL in a PROTOCOL_ERROR event."""
    ready.send_frame([1 << 32, int(Op.VERSION), {}])
    message = ready.event()
    assert message.event is Event.PROTOCOL_ERROR
    assert message.data.errno == errno.EINVAL


def test_oversized_datagram_is_emsgsize_with_request_id(ready: Raw) -> None:
    """A datagram over MAX_DATAGRAM bytes is refused with EMSGSIZE under the request's id."""
    frame = [0xBEEF, int(Op.VERSION), {"blob": b"\0" * (MAX_DATAGRAM + 100)}]
    data = msgpack.packb(frame, use_bin_type=True)
    assert len(data) > MAX_DATAGRAM
    ready.ops[0xBEEF] = Op.VERSION
    ready.send_bytes(data)
    reply = ready.reply()
    assert (reply.id, reply.errno) == (0xBEEF, errno.EMSGSIZE)
    assert ready.call(21, Op.VERSION, m.DrmVersion()).errno == 0


def test_datagram_of_exactly_max_size_is_not_emsgsize(ready: Raw) -> None:
    """A datagram of exactly MAX_DATAGRAM bytes is read whole (EINVAL for its junk field)."""
    size = MAX_DATAGRAM - 64
    while True:
        data = msgpack.packb([0xABC, int(Op.VERSION), {"blob": b"\0" * size}])
        if len(data) == MAX_DATAGRAM:
            break
        size += MAX_DATAGRAM - len(data)
    assert len(data) == MAX_DATAGRAM
    ready.ops[0xABC] = Op.VERSION
    ready.send_bytes(data)
    reply = ready.reply()
    assert (reply.id, reply.errno) == (0xABC, errno.EINVAL)


# --- descriptors ------------------------------------------------------------------------------
def test_unasked_descriptors_are_einval_and_closed(fresh_daemon: DaemonProcess) -> None:
    """Descriptors attached to an op that takes none: EINVAL, and the daemon closes them."""
    conn = Raw(fresh_daemon.socket_path)
    try:
        conn.hello()
        before = fresh_daemon.open_fds()
        for round_ in range(3):
            fds = _descriptors(3)
            try:
                conn.send(30 + round_, Op.VERSION, m.DrmVersion(), tuple(fds))
            finally:
                _close(fds)
            reply = conn.reply()
            assert (reply.id, reply.errno) == (30 + round_, errno.EINVAL)
            assert fresh_daemon.open_fds() == before
        fds = _descriptors(2)
        try:  # HELLO takes none either, and an unknown op cannot take any
            conn.send_frame([40, 0x77, {}], tuple(fds))
            assert conn.reply().errno == errno.ENOTTY
            conn.send_frame([41, int(Op.GEM_CLOSE), {"handle": 1}], tuple(fds))
            assert conn.reply().errno == errno.EINVAL
        finally:
            _close(fds)
        assert fresh_daemon.open_fds() == before
    finally:
        conn.close()


def test_descriptors_beside_garbage_are_closed(fresh_daemon: DaemonProcess) -> None:
    """Descriptors beside an unreadable datagram are closed with the PROTOCOL_ERROR event."""
    conn = Raw(fresh_daemon.socket_path)
    try:
        conn.hello()
        before = fresh_daemon.open_fds()
        fds = _descriptors(4)
        try:
            conn.send_bytes(b"\xc1\xc1", fds)
        finally:
            _close(fds)
        assert conn.event().data.errno == errno.EINVAL
        assert fresh_daemon.open_fds() == before
    finally:
        conn.close()


def test_descriptors_before_hello_are_closed(fresh_daemon: DaemonProcess) -> None:
    """Descriptors sent with the very first datagram (a HELLO) are refused and closed."""
    witness = Raw(fresh_daemon.socket_path)
    conn = None
    try:
        witness.hello()  # a round trip: the daemon is past its start-up
        before = fresh_daemon.open_fds()
        conn = Raw(fresh_daemon.socket_path)
        fds = _descriptors(3)
        try:
            conn.send(1, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm"), tuple(fds))
        finally:
            _close(fds)
        assert conn.reply().errno == errno.EINVAL
        assert fresh_daemon.open_fds() == before + 1  # only the connection itself
        conn.hello()
    finally:
        witness.close()
        if conn is not None:
            conn.close()


def test_too_many_descriptors_none_leaked(fresh_daemon: DaemonProcess) -> None:
    """More descriptors than MAX_FDS in one datagram: EINVAL, and the daemon keeps none."""
    conn = Raw(fresh_daemon.socket_path)
    try:
        conn.hello()
        before = fresh_daemon.open_fds()
        fds = _descriptors(MAX_FDS + 3)
        try:
            conn.send(50, Op.VERSION, m.DrmVersion(), tuple(fds))
        finally:
            _close(fds)
        message = conn.recv()
        if isinstance(message, EventMessage):
            assert message.event is Event.PROTOCOL_ERROR
            assert message.data.errno == errno.EINVAL
        else:
            assert message.errno == errno.EINVAL
        assert fresh_daemon.open_fds() == before
        assert conn.call(51, Op.VERSION, m.DrmVersion()).errno == 0
    finally:
        conn.close()


def test_too_many_descriptors_refused_under_request_id(ready: Raw) -> None:
    """More descriptors than MAX_FDS beside a readable frame: EINVAL under the request's id."""
    fds = _descriptors(MAX_FDS + 1)
    try:
        ready.send(60, Op.VERSION, m.DrmVersion(), tuple(fds))
    finally:
        _close(fds)
    message = ready.recv()
    assert isinstance(message, Reply), (
        f"the refusal came as {message!r}: a client waiting for reply 60 would wait forever"
    )
    assert (message.id, message.errno) == (60, errno.EINVAL)


# --- strikes and end of connection ------------------------------------------------------------
def _strike(conn: Raw) -> None:
    conn.send_bytes(b"\xc1")
    assert conn.event().data.errno == errno.EINVAL


def test_max_strikes_malformed_datagrams_hang_up(ready: Raw) -> None:
    """MAX_STRIKES malformed datagrams in a row: the daemon answers each, then hangs up."""
    for _ in range(MAX_STRIKES - 1):
        _strike(ready)
    ready.send_bytes(b"\xc1")
    assert ready.event().data.errno == errno.EINVAL
    assert ready.recv_raw() == b""


def test_malformed_with_readable_ids_count_as_strikes(ready: Raw) -> None:
    """Refusals under a readable id (ENOTTY, EINVAL fields) count towards MAX_STRIKES too."""
    for i in range(MAX_STRIKES):
        ready.send_frame([100 + i, 0x3F if i % 2 else int(Op.GEM_CLOSE), {"handle": "x"}])
        assert ready.reply().errno in (errno.ENOTTY, errno.EINVAL)
    assert ready.recv_raw() == b""


def test_valid_message_resets_strike_count(ready: Raw) -> None:
    """A valid request between malformed ones resets the count: no hang-up."""
    for round_ in range(3):
        for _ in range(MAX_STRIKES - 1):
            _strike(ready)
        assert ready.call(200 + round_, Op.VERSION, m.DrmVersion()).errno == 0
    # refused-but-well-formed requests (EACCES, a handler's errno) are not strikes either
    for _ in range(MAX_STRIKES - 1):
        _strike(ready)
    assert ready.call(210, Op.ADMIN_STATUS, m.XedAdminStatus()).errno == errno.EACCES
    for _ in range(MAX_STRIKES - 1):
        _strike(ready)
    assert ready.call(211, Op.GEM_CLOSE, m.DrmGemClose(handle=999)).errno == errno.EINVAL
    for _ in range(MAX_STRIKES - 1):
        _strike(ready)
    assert ready.call(212, Op.VERSION, m.DrmVersion()).errno == 0


def test_strikes_before_hello_hang_up(raw: Raw) -> None:
    """A peer that never manages a readable HELLO is hung up on after MAX_STRIKES."""
    for _ in range(MAX_STRIKES):
        raw.send_bytes(b"\x91\xc0")
        assert raw.event().data.errno == errno.EINVAL
    assert raw.recv_raw() == b""


def test_zero_length_datagram_is_einval_and_the_connection_lives(raw: Raw) -> None:
    """A zero-length datagram is a malformed message (a PROTOCOL_ERROR event, EINVAL),
    not the end of the connection: the socket says whether the peer is still there."""
    raw.hello()
    raw.send_bytes(b"")
    assert raw.event().data.errno == errno.EINVAL
    assert raw.call(2, Op.VERSION, m.DrmVersion()).errno == 0


def test_shutdown_for_sending_ends_connection(fresh_daemon: DaemonProcess) -> None:
    """A client that shuts its end for sending can say nothing more: the daemon ends the
    connection and releases what it held, as at a close."""
    conn = Raw(fresh_daemon.socket_path)
    try:
        conn.hello()
        conn.send(2, Op.XE_GEM_CREATE, m.DrmXeGemCreate(size=4096, placement=1, cpu_caching=1))
        assert conn.reply().errno == 0
        assert baseline(fresh_daemon)[1].bos == 1
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.recv_raw() == b""
    finally:
        conn.close()
    _, counts = _wait_for_files(fresh_daemon, 1)
    assert counts.bos == 0


def test_daemon_serves_after_abuse(fresh_daemon: DaemonProcess) -> None:
    """After every kind of abuse the daemon serves a new client and logged no crash."""
    fds0, counts0 = baseline(fresh_daemon)
    conns: list[Raw] = []
    try:
        for _ in range(4):
            conns.append(Raw(fresh_daemon.socket_path))
        a, b, c, d = conns
        a.call(1, Op.VERSION, m.DrmVersion())
        a.hello()
        a.call(2, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm"))
        a.frame_error([3, 0x3F, {}])
        a.frame_error([4, int(Op.GEM_CLOSE), {"handle": True}])
        a.frame_error([5, int(Op.GEM_CLOSE), {"nope": 1}])
        a.send_frame([0, int(Op.VERSION), {}])
        a.event()
        big = msgpack.packb([6, int(Op.VERSION), {"x": b"\0" * (2 * MAX_DATAGRAM)}])
        a.ops[6] = Op.VERSION
        a.send_bytes(big)
        assert a.reply().errno == errno.EMSGSIZE
        fds = _descriptors(MAX_FDS + 2)
        try:
            a.send(7, Op.VERSION, m.DrmVersion(), tuple(fds[:3]))
            a.reply()
            a.send(8, Op.VERSION, m.DrmVersion(), tuple(fds))
            a.recv()
        finally:
            _close(fds)
        b.call(1, Op.HELLO, m.Hello(version=(2, 0), role="drm"))
        b.call(2, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="nobody"))
        for _ in range(MAX_STRIKES):
            b.send_bytes(b"\xc1" + bytes(range(64)))
            b.recv()
        assert b.recv_raw() == b""
        c.hello()
        c.send_bytes(b"")
        assert c.event().data.errno == errno.EINVAL
        c.sock.shutdown(socket.SHUT_WR)
        assert c.recv_raw() == b""
        d.send_bytes(b"\x93\xce\xff\xff\xff\xff\xcd\x01")  # truncated in the middle
        d.recv()
    finally:
        for conn in conns:
            conn.close()
    fds1, counts1 = _wait_for_files(fresh_daemon, 1)
    assert (fds1, counts1) == (fds0, counts0)
    with Device.open(fresh_daemon.socket_path) as dev:
        assert dev.version().name == "xe"
        bo = dev.gem_create(0x2000)
        with dev.mmap_bo(bo) as mapping:
            mapping[0:4] = b"ok!!"
            assert mapping[0:4] == b"ok!!"
    assert fresh_daemon.proc is not None and fresh_daemon.proc.poll() is None
    log = fresh_daemon.log_text()
    assert "Traceback" not in log
    assert "ioctl_crashed" not in log
