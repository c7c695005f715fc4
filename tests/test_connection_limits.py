"""[limits] connections_per_uid: the connections one uid may have open at once.

Every connection, whatever its role (a channel too), costs the daemon a descriptor of
the table every uid shares, and costs the uid nothing. Past its limit a uid's new
connection is answered EMFILE (its HELLO, or a PROTOCOL_ERROR event if it said nothing
yet) and closed, as a connection is when the table is full; other uids are served as
before, and the count goes down exactly once whenever a connection ends. The default
is three quarters of the table, less descriptor_reserve. Every connection here has a
socket timeout, so a daemon that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from errno import EMFILE, ENOENT
from typing import Any

import pytest
from conftest import spawn_client
from helpers import NobodyChild, Work, needs_root, open_to_nobody
from test_vm_export import SETTLE

from clients import Device, XeError
from clients.daemon import DaemonProcess
from clients.transport import SeqpacketTransport
from protocols import (
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    Event,
    EventMessage,
    Op,
    decode_incoming,
    encode_event,
    encode_request,
)
from protocols import messages as m
from protocols.constants import PAGE_SIZE
from xed.config import DEFAULT_CONNECTIONS_PER_UID, ConfigError, LimitsConfig, load

TIMEOUT = 10.0
LIMIT = 8
CONFIG = f"[limits]\nconnections_per_uid = {LIMIT}\n"
UID = os.getuid()


def connect(daemon: DaemonProcess, join: str = "", role: str = "drm") -> Device:
    """A connection of ours (uid UID) whose every call is bounded by TIMEOUT."""
    transport = SeqpacketTransport.connect(daemon.socket_path)
    transport.sock.settimeout(TIMEOUT)
    return Device(transport, role, join=join)


def hang_up(dev: Device) -> None:
    """Close `dev` and wait for the daemon to let go of it. The daemon closes its end
    (EOF here) once the connection has released everything, and takes the uid's count
    down in the same step, before its accept loop runs again: the next connect of ours
    is counted without it."""
    sock = dev.transport.sock
    sock.settimeout(TIMEOUT)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(MAX_DATAGRAM):  # events that were on their way
        pass
    dev.close()


def drop_for_garbage(dev: Device) -> None:
    """Send malformed datagrams until the daemon hangs up on us (MAX_STRIKES)."""
    sock = dev.transport.sock
    sock.settimeout(TIMEOUT)
    for _ in range(8):
        sock.send(b"\xc1 not msgpack")
    while sock.recv(MAX_DATAGRAM):  # the errors, then the end
        pass
    dev.close()


def end_as_a_refused_join(daemon: DaemonProcess) -> None:
    """A connection whose HELLO is refused (join with a token nobody has: ENOENT), then
    hung up on our side."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(daemon.socket_path))
        hello = m.Hello(version=PROTOCOL_VERSION, role="drm", join="0" * 32)
        sock.send(encode_request(1, Op.HELLO, hello))
        reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), {1: Op.HELLO})
        assert not isinstance(reply, EventMessage) and reply.errno == ENOENT
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(MAX_DATAGRAM) == b""


def refused(daemon: DaemonProcess, limit: int = LIMIT, join: str = "") -> None:
    """Our next connection is refused for the uid's limit: EMFILE, and why."""
    try:
        connect(daemon, join=join).close()
    except XeError as exc:
        assert exc.errno == EMFILE and exc.op == "HELLO"
        why = str(exc)
    else:
        pytest.fail("a connection past the uid's limit was served")
    assert f"uid {UID} has {limit} connections open" in why, why
    assert "limits.connections_per_uid" in why, why


def silent_connection_is_told(daemon: DaemonProcess) -> m.ProtocolErrorInfo:
    """Connect and say nothing: the PROTOCOL_ERROR event that comes, then the end."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(daemon.socket_path))
        message = decode_incoming(sock.recv(MAX_DATAGRAM), (), {})
        assert isinstance(message, EventMessage) and message.event is Event.PROTOCOL_ERROR
        assert sock.recv(MAX_DATAGRAM) == b""  # and hung up
        info: m.ProtocolErrorInfo = message.data
        return info


def visit(daemon: DaemonProcess) -> tuple[int, Any]:
    """(open descriptors, object counts), from an admin visit the daemon has let go of
    when this returns (conftest's baseline() leaves that to the daemon's pace)."""
    adm = connect(daemon, role="admin")
    counts = adm.admin_status().objects
    fds = daemon.open_fds()
    hang_up(adm)
    return fds, counts


def settles_to(daemon: DaemonProcess, before: tuple[int, Any]) -> tuple[int, Any]:
    """Poll visit() until it equals `before` (bounded): objects are freed at the
    daemon's pace. The last one seen."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = visit(daemon)
        if seen == before or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def fds_settle_to(daemon: DaemonProcess, count: int) -> int:
    """Poll the daemon's open descriptors (from /proc) until at most `count` (bounded):
    it learns of a killed client's end at its own pace."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = daemon.open_fds()
        if seen <= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def status(daemon: DaemonProcess) -> m.XedAdminStatusReply:
    adm = connect(daemon, role="admin")
    try:
        return adm.admin_status()
    finally:
        hang_up(adm)


def _bystander(path: str, connections: int = 2) -> Work:
    """Another uid's work: `connections` connections, each creating, mapping and
    exporting a BO."""

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        devs = []
        try:
            for _ in range(connections):
                dev = Device.open(path, timeout=TIMEOUT)
                devs.append(dev)
                bo = dev.gem_create(PAGE_SIZE)
                with dev.mmap_bo(bo) as cpu:
                    cpu[0:4] = b"mine"
                os.close(dev.prime_handle_to_fd(bo))
            report({"errno": 0})
        except (OSError, XeError) as exc:
            report({"errno": getattr(exc, "errno", -1), "error": repr(exc)})
        finally:
            for dev in devs:
                dev.close()

    return work


def bystander_is_served(daemon: DaemonProcess, connections: int = 2) -> None:
    """uid 65534 connects and works while we sit at our limit."""
    child = NobodyChild(daemon.socket_path, _bystander(open_to_nobody(daemon), connections))
    try:
        assert child.report() == {"errno": 0}
    finally:
        assert child.join() == 0


# --- the limit ---------------------------------------------------------------------------------
def test_a_connection_past_the_uids_limit_is_emfile_and_other_uids_are_served(
    make_daemon: Any,
) -> None:
    """With connections_per_uid connections open, the uid's next one is answered EMFILE
    (its HELLO; a silent one by a PROTOCOL_ERROR event) with the uid and the limit, and
    hung up on; its open connections and another uid's connections are served; each
    refusal counts in limits_hit and is logged; nothing is left behind."""
    needs_root()
    daemon = make_daemon(CONFIG)
    before = visit(daemon)
    held = [connect(daemon) for _ in range(LIMIT)]
    try:
        refused(daemon)
        info = silent_connection_is_told(daemon)
        assert info.errno == EMFILE and f"uid {UID} has {LIMIT}" in info.message
        bystander_is_served(daemon)
        for dev in held:
            assert dev.version().name == "xe"
    finally:
        for dev in held:
            hang_up(dev)
    assert status(daemon).limits_hit == 2
    assert settles_to(daemon, before) == before
    log = daemon.log_text()
    assert "connection_refused" in log and "connections_per_uid" in log


def test_a_uids_connections_are_counted_once_however_they_end(make_daemon: Any) -> None:
    """Connections that end in every way a client can end one (hung up, dropped for
    garbage, a refused HELLO, refused for the limit itself) give their place back once:
    round after round at the limit, one ends and one more fits, and afterwards exactly
    connections_per_uid fit again."""
    daemon = make_daemon(CONFIG)
    before = visit(daemon)
    held = [connect(daemon) for _ in range(LIMIT - 1)]
    try:
        for _ in range(3 * LIMIT):
            end_as_a_refused_join(daemon)  # counted while it lived, and let go
            held.append(connect(daemon))
            refused(daemon)
            hang_up(held.pop(0))
            held.append(connect(daemon))
            refused(daemon)
            drop_for_garbage(held.pop(0))
        assert len(held) == LIMIT - 1
        held.append(connect(daemon))  # exactly the limit, no more
        refused(daemon)
    finally:
        for dev in held:
            hang_up(dev)
    held = [connect(daemon) for _ in range(LIMIT)]
    refused(daemon)
    for dev in held:
        hang_up(dev)
    assert settles_to(daemon, before) == before


PARKED = """
import fcntl, struct, termios, threading, time
bo = dev.gem_create(4096)
cpu = dev.mmap_bo(bo)
def unread():
    raw = fcntl.ioctl(dev.transport.sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", raw)[0]
sent = dev.transport.bytes_sent
wait = lambda: dev.wait_user_fence(cpu.user_address(0), 1, timeout=60_000_000_000)
threading.Thread(target=wait, daemon=True).start()
deadline = time.monotonic() + 10
while dev.transport.bytes_sent == sent or unread():  # sent, and taken by the daemon
    assert time.monotonic() < deadline, "the daemon never took the request"
    time.sleep(0.001)
print("parked", flush=True)
time.sleep(60)
"""


def test_a_connection_killed_mid_request_gives_its_place_back(make_daemon: Any) -> None:
    """A client killed (SIGKILL) while its WAIT_USER_FENCE is parked in the daemon, at
    the uid's limit: once the daemon has let go of it, one more connection of the uid
    fits, and no more."""
    daemon = make_daemon(CONFIG)
    before = visit(daemon)
    child = spawn_client(daemon.socket_path, PARKED)
    held: list[Device] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "parked", child.stderr
        held = [connect(daemon) for _ in range(LIMIT - 1)]
        refused(daemon)
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT)
        # its socket, BO and mapping are let go: its count with them (the same step)
        assert fds_settle_to(daemon, before[0] + LIMIT - 1) <= before[0] + LIMIT - 1
        held.append(connect(daemon))
        refused(daemon)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(TIMEOUT)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
        for dev in held:
            hang_up(dev)
    assert settles_to(daemon, before) == before


def test_channels_count_against_the_uid(make_daemon: Any) -> None:
    """A channel (HELLO join) is a connection of its uid: a file and its channels fill
    the limit, one more join or connection is EMFILE; a channel hung up gives its place
    back, and the file's release gives back its own and every channel's."""
    daemon = make_daemon(CONFIG)
    before = visit(daemon)
    file = connect(daemon)
    channels = [connect(daemon, join=file.token) for _ in range(LIMIT - 1)]
    try:
        refused(daemon, join=file.token)
        refused(daemon)
        hang_up(channels.pop())
        channels.append(connect(daemon, join=file.token))
        refused(daemon, join=file.token)
        bo = channels[-1].gem_create(PAGE_SIZE)  # the channels act on the file
        assert file.gem_mmap_offset(bo)
    finally:
        hang_up(file)  # the daemon closes the channels first
        for channel in channels:
            hang_up(channel)
    held = [connect(daemon) for _ in range(LIMIT)]
    refused(daemon)
    for dev in held:
        hang_up(dev)
    assert settles_to(daemon, before) == before


# --- the default ---------------------------------------------------------------------------------
NOFILE = 256
RESERVE = 16
SHARE = (NOFILE - RESERVE) * 3 // 4  # 180: the quarter left (60) serves everyone else


def test_one_uid_connecting_until_refused_leaves_the_table_to_others(make_daemon: Any) -> None:
    """A uid that opens connections until one is refused, under the default
    connections_per_uid (0), is stopped at three quarters of what the daemon may open
    beside its reserve (shown so by ADMIN_CLIENTS), not at a full table: another uid
    still connects and creates, maps and exports BOs."""
    needs_root()
    daemon = make_daemon(f"[limits]\ndescriptor_reserve = {RESERVE}\n", nofile=NOFILE)
    before = visit(daemon)
    held: list[Device] = []
    try:
        while True:
            try:
                held.append(connect(daemon))
            except XeError as exc:
                assert exc.errno == EMFILE
                assert f"uid {UID} has {SHARE} connections open" in str(exc), str(exc)
                break
            assert len(held) <= NOFILE, "never refused"
        assert len(held) == SHARE
        bystander_is_served(daemon)
        hang_up(held.pop())
        adm = connect(daemon, role="admin")
        try:
            limits = adm.ioctl(Op.ADMIN_CLIENTS, m.XedAdminClients()).limits
        finally:
            hang_up(adm)
        assert (limits.connections_per_uid, limits.lent_descriptors_per_uid) == (SHARE, 64)
    finally:
        for dev in held:
            hang_up(dev)
    assert settles_to(daemon, before) == before


# --- the settings --------------------------------------------------------------------------------
def test_for_table_resolves_only_the_default() -> None:
    """LimitsConfig.for_table: 0 becomes three quarters of the table less the reserve
    (at least 1, at most DEFAULT_CONNECTIONS_PER_UID); a value given is kept."""
    assert LimitsConfig().for_table(20000).connections_per_uid == (20000 - 256) * 3 // 4
    assert LimitsConfig(descriptor_reserve=16).for_table(256).connections_per_uid == SHARE
    assert LimitsConfig().for_table(64).connections_per_uid == 1  # a table below the reserve
    assert LimitsConfig(connections_per_uid=5).for_table(20000).connections_per_uid == 5
    # systemd's LimitNOFILE=524288: three quarters would be 5.6 GiB of connections
    assert LimitsConfig().for_table(524288).connections_per_uid == DEFAULT_CONNECTIONS_PER_UID
    assert LimitsConfig(connections_per_uid=100000).for_table(524288).connections_per_uid == 100000


@pytest.mark.parametrize(
    "setting",
    [
        "connections_per_uid = -1",
        'connections_per_uid = "8"',
        "connections_per_uid = 1.5",
        "lent_descriptors_per_uid = 0",
        "lent_descriptors_per_uid = true",
    ],
)
def test_a_bad_per_uid_limit_is_a_config_error(tmp_path: Any, setting: str) -> None:
    """connections_per_uid must be a non-negative integer, lent_descriptors_per_uid a
    positive one: anything else is the operator's mistake, named."""
    path = tmp_path / "xed.toml"
    path.write_text(f"[limits]\n{setting}\n")
    with pytest.raises(ConfigError, match=setting.split()[0]):
        load(path)


# --- the client library --------------------------------------------------------------------------
@pytest.mark.parametrize("hello", ["read", "unread", "never-sent"])
def test_a_refusal_event_just_before_the_hang_up_is_the_hellos_errno(hello: str) -> None:
    """The daemon looked for our HELLO before it came, so it told us with a PROTOCOL_ERROR
    event and hung up: the library raises that event's errno for HELLO, not DaemonGone,
    whether the daemon closed with the HELLO read, unread (ECONNRESET, which the kernel
    reports before the queued event), or before it was sent (EPIPE). The daemon's side
    here is a socket of the test's, playing orders a real daemon hits only now and then."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(TIMEOUT)
    theirs.settimeout(TIMEOUT)
    info = m.ProtocolErrorInfo(errno=EMFILE, message="uid 1000 has 8 connections open")
    theirs.send(encode_event(Event.PROTOCOL_ERROR, info))
    if hello == "never-sent":
        theirs.close()

    def daemon_side() -> None:
        if hello != "never-sent":
            theirs.recv(MAX_DATAGRAM, 0 if hello == "read" else socket.MSG_PEEK)
            theirs.close()

    thread = threading.Thread(target=daemon_side)
    thread.start()
    try:
        with pytest.raises(XeError) as raised:
            Device(SeqpacketTransport(ours))
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert raised.value.errno == EMFILE and raised.value.op == "HELLO"
    assert "8 connections" in str(raised.value)
