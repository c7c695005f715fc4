"""Who may talk to the daemon, and as what: the HELLO handshake, spoken in raw frames on
a raw socket, and the roles it grants, checked against the peer's credentials. A role
decides which ops a connection may send, so a HELLO the daemon refuses leaves the peer
with nothing; the Raw connection and its fixtures are test_robustness.py's.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import test_robustness
from test_robustness import RECV_TIMEOUT, Raw

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, PROTOCOL_VERSION, Op, Reply, decode_incoming, encode_request
from protocols import messages as m

# test_robustness's fixtures (ready asks for raw by name), for this module's tests too
raw, ready = test_robustness.raw, test_robustness.ready


# --- the handshake ------------------------------------------------------------------------
def test_request_before_hello_is_eproto(raw: Raw) -> None:
    """A request other than HELLO as the first message is refused with EPROTO."""
    reply = raw.call(5, Op.VERSION, m.DrmVersion())
    assert reply.errno == errno.EPROTO
    raw.hello()  # the connection is still waiting for its HELLO
    assert raw.call(6, Op.VERSION, m.DrmVersion()).errno == 0


def test_hello_with_major_version_2_is_eproto(raw: Raw) -> None:
    """HELLO naming protocol major 2 is refused with EPROTO."""
    reply = raw.call(1, Op.HELLO, m.Hello(version=(2, 0), role="drm"))
    assert reply.errno == errno.EPROTO
    assert raw.call(2, Op.VERSION, m.DrmVersion()).errno == errno.EPROTO


def test_hello_with_unknown_role_is_einval(raw: Raw) -> None:
    """HELLO with a role that does not exist is refused with EINVAL."""
    reply = raw.call(1, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="root"))
    assert reply.errno == errno.EINVAL
    assert raw.call(2, Op.VERSION, m.DrmVersion()).errno == errno.EPROTO


def test_second_hello_is_eproto(ready: Raw) -> None:
    """A second HELLO on a connection is refused with EPROTO; the first role stays."""
    reply = ready.call(2, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="admin"))
    assert reply.errno == errno.EPROTO
    assert ready.call(3, Op.ADMIN_STATUS, m.XedAdminStatus()).errno == errno.EACCES


def test_hello_reply_carries_version_and_identity(raw: Raw) -> None:
    """A successful HELLO answers with the protocol version and the device identity."""
    reply = raw.hello()
    assert reply.result.version == PROTOCOL_VERSION
    assert reply.result.device.name
    assert reply.result.client_id > 0


# --- roles and credentials ---------------------------------------------------------------------
def _hello_errnos_as_nobody(socket_path: Path) -> dict[str, Any]:
    """Fork; the child drops to uid/gid 65534, connects and tries HELLO as admin and drm."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.chdir(socket_path.parent)  # as root: the path above may be closed to nobody
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out: dict[str, Any] = {"uid": os.getuid()}
            for role in ("admin", "drm"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    sock.settimeout(RECV_TIMEOUT)
                    sock.connect(socket_path.name)
                    sock.send(
                        encode_request(7, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role=role))
                    )
                    reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), {7: Op.HELLO})
                    assert isinstance(reply, Reply)
                    out[role] = reply.errno
                    if role == "drm" and reply.errno == 0:
                        sock.send(encode_request(8, Op.VERSION, m.DrmVersion()))
                        reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), {8: Op.VERSION})
                        out["version"] = reply.errno if isinstance(reply, Reply) else -1
                finally:
                    sock.close()
            os.write(write_end, json.dumps(out).encode())
            code = 0
        except BaseException as exc:  # report anything to the parent
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        chunks.append(pipe.read())
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    result["status"] = os.waitstatus_to_exitcode(status)
    return result


def test_admin_role_from_non_root_uid_is_eacces(fresh_daemon: DaemonProcess) -> None:
    """HELLO role admin from a uid that is neither root nor the daemon's is EACCES."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534 in a child process")
    path = fresh_daemon.socket_path
    os.chmod(path.parent, 0o711)  # let nobody look the socket up in its directory
    os.chown(path, 0, 65534)  # and connect to it through the group bits (mode 0660)
    result = _hello_errnos_as_nobody(path)
    assert result.get("status") == 0, result
    assert result["uid"] == 65534
    assert result["admin"] == errno.EACCES
    assert result["drm"] == 0
    assert result["version"] == 0


def test_admin_role_as_root_works(daemon: DaemonProcess) -> None:
    """The admin role as root is admitted and ADMIN_STATUS answers with the daemon's pid."""
    if os.geteuid() != 0:
        pytest.skip("the test process is not root")
    with Device.open(daemon.socket_path, role="admin") as adm:
        status = adm.admin_status()
        assert status.pid == daemon.pid
        assert status.objects.files >= 1


def test_admin_status_from_drm_connection_is_eacces(dev: Device) -> None:
    """ADMIN_STATUS from a drm connection is refused with EACCES."""
    with pytest.raises(XeError) as info:
        dev.admin_status()
    assert info.value.errno == errno.EACCES
    assert dev.version().name == "xe"


def test_drm_op_from_admin_connection_is_eacces(admin: Device) -> None:
    """A drm-only op (GEM_CREATE) from an admin connection is refused with EACCES."""
    with pytest.raises(XeError) as info:
        admin.gem_create(4096)
    assert info.value.errno == errno.EACCES


@pytest.mark.parametrize("role", ["aux", "debugger"])
def test_drm_op_from_other_roles_is_eacces(daemon: DaemonProcess, role: str) -> None:
    """aux and debugger connections may not send drm ops (VM_CREATE) nor ADMIN_STATUS."""
    with Device.open(daemon.socket_path, role=role) as conn:
        assert conn.version().name == "xe"
        for call in (conn.vm_create, conn.admin_status):
            with pytest.raises(XeError) as info:
                call()
            assert info.value.errno == errno.EACCES
