"""The daemon's server: the listening socket, and a connection served for each peer.

Each uid may have [limits] connections_per_uid connections open: one more is answered
EMFILE at accept and closed, as when the descriptor table is full. What a connection
does once accepted is connection.py's.
"""

from __future__ import annotations

import errno
import itertools
import os
import resource
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from protocols import (
    MAX_DATAGRAM,
    SHORTAGE,
    Event,
    encode_error,
    encode_event,
    errno_name,
    peek_request_id,
)
from protocols import messages as m

from . import log as xlog
from .config import Config
from .connection import Connection, peer_credentials
from .device.device import XeDevice
from .device.limits import DescriptorReserve
from .inflight import UnreadLedger


@attrs.define
class ServerHandle:
    """What `nursery.start(serve, ...)` hands back: for tests and the systemd glue."""

    device: XeDevice
    path: Path | None
    connections: int = 0


# --- the listening socket -----------------------------------------------------------------
class AlreadyRunning(Exception):
    pass


def bind_listener(path: Path) -> socket.socket:
    """Bind a SOCK_SEQPACKET socket at `path`, mode 0660, replacing a dead one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AlreadyRunning(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # a daemon died without cleaning up
        else:
            raise AlreadyRunning(f"a daemon already listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


async def serve(
    config: Config,
    listener: socket.socket,
    path: Path | None = None,
    on_ready: Callable[[ServerHandle], None] | None = None,
    *,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one emulated device on `listener` until cancelled."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    config = attrs.evolve(config, limits=config.limits.for_table(nofile))
    device = XeDevice(config)
    handle = ServerHandle(device, path)
    ledger = UnreadLedger(config.limits)
    refusals = xlog.RateLimit()  # connections turned away, logged as refused ioctls are
    listener.setblocking(False)
    log = xlog.get()
    try:
        async with trio.open_nursery() as nursery:
            device.attach(nursery)
            log.info(
                "daemon_ready",
                socket=str(path) if path else None,
                device=device.identity.name,
                connections_per_uid=config.limits.connections_per_uid,
            )
            task_status.started(handle)
            if on_ready:
                on_ready(handle)
            await _accept_loop(device, handle, listener, nursery, ledger, log, refusals)
    finally:
        device.descriptors.close()
        if refusals.missed:  # nothing is suppressed without saying how much
            log.info("connection_refused_suppressed", count=refusals.missed)


async def _accept_loop(
    device: XeDevice,
    handle: ServerHandle,
    listener: socket.socket,
    nursery: trio.Nursery,
    ledger: UnreadLedger,
    log: Any,
    refusals: xlog.RateLimit,
) -> None:
    # never reused while the daemon lives: one id follows one connection through the log
    client_ids = itertools.count(1)
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                try:
                    turned_away = _turn_away(listener, device.descriptors, log, refusals)
                except BlockingIOError:  # accept() wants room before it looks at the backlog
                    await trio.lowlevel.wait_readable(listener)
                    continue
                if turned_away:
                    device.stats["limits_hit"] += 1
                    continue
            if exc.errno in SHORTAGE:
                # no spare descriptor to answer with, or the kernel is short of memory
                log.error("accept_failed", errno=errno_name(exc.errno or 0))
                await trio.sleep(0.1)
                device.descriptors.reopen_spare()
                continue
            raise
        # Counted here, before the next accept (which does not wait when more are in the
        # backlog), and let go when the connection's task ends, however it ends.
        credentials = peer_credentials(conn)
        uid = credentials[1]
        if not ledger.connect(uid):
            limit = device.limits.connections_per_uid
            message = f"uid {uid} has {limit} connections open (limits.connections_per_uid)"
            _refuse_connection(conn, message, log, refusals, reason="connections_per_uid", uid=uid)
            device.stats["limits_hit"] += 1
            continue
        conn.setblocking(False)
        client_id = next(client_ids)
        handle.connections += 1

        async def run(
            conn: socket.socket = conn,
            client_id: int = client_id,
            credentials: tuple[int, int, int] = credentials,
            uid: int = uid,
        ) -> None:
            try:
                await Connection(device, conn, client_id, ledger, credentials).run()
            finally:
                handle.connections -= 1
                # in the step that closed its socket, before any other accept: a client
                # that saw the end of its connection finds its place free
                ledger.disconnect(uid)

        nursery.start_soon(run)


def _turn_away(
    listener: socket.socket, reserve: DescriptorReserve, log: Any, refusals: xlog.RateLimit
) -> bool:
    """Our descriptor table is full and a connection may wait in the backlog: accept it
    into the spare descriptor's slot, refuse it (_refuse_connection) and take the spare
    back. Nobody hangs in the backlog. False if there is no spare to give up;
    BlockingIOError if nobody waits.
    """
    if not reserve.close_spare():
        return False
    try:
        conn, _ = listener.accept()
    except OSError:
        reserve.reopen_spare()
        raise
    message = "the daemon is out of descriptors: try again later"
    try:
        _refuse_connection(conn, message, log, refusals, reason="out of descriptors")
    finally:
        reserve.reopen_spare()
    reserve.warn_low(refused="a new connection")
    return True


def _refuse_connection(
    conn: socket.socket, message: str, log: Any, refusals: xlog.RateLimit, **fields: Any
) -> None:
    """Answer a connection we will not serve with EMFILE and close it: its first request
    gets the errno (a client sends HELLO right after connect); one that has said nothing
    yet gets a PROTOCOL_ERROR event instead. Logged as connection_refused, rate-limited
    as refused ioctls are: a client connecting in a loop must not make the daemon write
    without end."""
    try:
        # Its HELLO is normally there already. Never wait for it: every connection in
        # the backlog waits behind this one. No room for ancillary data: descriptors it
        # attached are dropped by the kernel.
        try:
            request_id = peek_request_id(conn.recv(MAX_DATAGRAM, socket.MSG_DONTWAIT))
        except BlockingIOError:
            request_id = 0
        if request_id:
            frame = encode_error(request_id, errno.EMFILE, message)
        else:
            info = m.ProtocolErrorInfo(errno=errno.EMFILE, message=message)
            frame = encode_event(Event.PROTOCOL_ERROR, info)
        conn.send(frame, socket.MSG_DONTWAIT)
    except OSError as exc:  # it hung up first, or its buffer is full: it is closed anyway
        log.info("turn_away_unanswered", errno=errno_name(exc.errno or 0))
    finally:
        conn.close()
    refusals.log(log.info, "connection_refused", **fields)
