"""ServerConnection: the handshake, role checks and strike counting, without a socket."""

from __future__ import annotations

from errno import EACCES, EINVAL, EPROTO

import pytest

from protocols import (
    MAX_STRIKES,
    PROTOCOL_VERSION,
    Op,
    ProtocolError,
    Role,
    ServerConnection,
    State,
    encode_request,
    messages,
)

GARBAGE = b"\xc1"  # a msgpack byte that is never valid


def hello(
    request_id: int = 1, version: tuple[int, int] = PROTOCOL_VERSION, role: str = "drm"
) -> bytes:
    return encode_request(request_id, Op.HELLO, messages.Hello(version=version, role=role))


def version(request_id: int = 2) -> bytes:
    return encode_request(request_id, Op.VERSION, messages.DrmVersion())


def refused(conn: ServerConnection, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        conn.receive(data, ())
    return info.value


def ready(role: Role) -> ServerConnection:
    conn = ServerConnection()
    conn.receive(hello(role=role.value), ())
    conn.accept(role)
    return conn


def test_hello_is_accepted_and_returned() -> None:
    """A valid HELLO on a new connection is handed to the daemon to admit."""
    conn = ServerConnection()
    request = conn.receive(hello(), ())
    assert request.op is Op.HELLO
    assert request.args == messages.Hello(version=PROTOCOL_VERSION, role="drm")
    assert conn.state is State.AWAIT_HELLO


def test_op_before_hello_is_eproto() -> None:
    """Any op before HELLO is EPROTO, answered to its request id."""
    error = refused(ServerConnection(), version(request_id=7))
    assert (error.errno, error.request_id) == (EPROTO, 7)


def test_hello_with_wrong_major_is_eproto() -> None:
    """A HELLO naming another major version is EPROTO."""
    error = refused(ServerConnection(), hello(version=(PROTOCOL_VERSION[0] + 1, 0)))
    assert error.errno == EPROTO


def test_hello_with_other_minor_is_accepted() -> None:
    """Minor versions only add ops and fields: another minor is accepted."""
    ServerConnection().receive(hello(version=(PROTOCOL_VERSION[0], PROTOCOL_VERSION[1] + 1)), ())


def test_hello_with_unknown_role_is_einval() -> None:
    """A HELLO naming no known role is EINVAL."""
    assert refused(ServerConnection(), hello(role="root")).errno == EINVAL


def test_accept_sets_ready_and_role() -> None:
    """accept() moves the connection to READY in the admitted role."""
    conn = ready(Role.DRM)
    assert (conn.state, conn.role) == (State.READY, Role.DRM)
    assert conn.receive(version(), ()).op is Op.VERSION


def test_admin_op_as_drm_is_eacces() -> None:
    """An op not allowed for the connection's role is EACCES."""
    error = refused(ready(Role.DRM), encode_request(3, Op.ADMIN_STATUS, messages.XedAdminStatus()))
    assert (error.errno, error.request_id) == (EACCES, 3)


def test_admin_op_as_admin_is_allowed() -> None:
    """The same op is allowed for a role SPECS lists."""
    conn = ready(Role.ADMIN)
    assert conn.receive(encode_request(3, Op.ADMIN_STATUS, messages.XedAdminStatus()), ()).id == 3


def test_second_hello_is_eproto() -> None:
    """A second HELLO after the handshake is EPROTO."""
    assert refused(ready(Role.DRM), hello(request_id=9)).errno == EPROTO


def test_second_accept_is_a_bug() -> None:
    """accept() twice is the daemon's bug, not the peer's."""
    conn = ready(Role.DRM)
    with pytest.raises(RuntimeError):
        conn.accept(Role.DRM)


def test_max_strikes_malformed_datagrams_exhaust_the_connection() -> None:
    """MAX_STRIKES malformed datagrams in a row make the connection exhausted."""
    conn = ready(Role.DRM)
    for _ in range(MAX_STRIKES - 1):
        refused(conn, GARBAGE)
    assert not conn.exhausted
    refused(conn, GARBAGE)
    assert conn.exhausted


def test_valid_message_resets_strikes() -> None:
    """A well-formed message between malformed ones starts the count again."""
    conn = ready(Role.DRM)
    for _ in range(MAX_STRIKES - 1):
        refused(conn, GARBAGE)
    conn.receive(version(), ())
    for _ in range(MAX_STRIKES - 1):
        refused(conn, GARBAGE)
    assert not conn.exhausted
    refused(conn, GARBAGE)
    assert conn.exhausted


def test_refused_but_well_formed_message_is_no_strike() -> None:
    """A decodable message refused by state (EPROTO, EACCES) does not count as garbage."""
    conn = ServerConnection()
    for _ in range(MAX_STRIKES):
        refused(conn, version())
    assert not conn.exhausted
