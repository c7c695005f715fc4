"""HELLO: what a connection is to be, asked once, before any other op.

The protocol layer (ServerConnection) has checked the version, the role's and node's
names, and that only role drm joins. What is left needs the daemon: whether the peer's
credentials allow the role, and what the connection becomes: a drm file of its own on
the node it asked for, or a channel of a live one (channels.py). Like drm_open(), this
is where a file gets what identifies it: here the token that lets another process join.
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import TYPE_CHECKING

from protocols import PROTOCOL_VERSION, Node, Role
from protocols import messages as m

from .channels import join
from .config import AdminConfig, AuxConfig
from .device.errors import IoctlError
from .device.eudebug import debug_event

if TYPE_CHECKING:
    from .connection import Connection


def hello(conn: Connection, args: m.Hello) -> m.HelloReply:
    """HELLO. Checks, in order: admin or aux for credentials that do not allow it:
    EACCES; then join's (channels.py)."""
    role = Role(args.role)
    if role is Role.ADMIN and not _allowed(conn, conn.device.admin_config):
        raise IoctlError(errno.EACCES, "admin needs root, the daemon's uid or [admin] ids")
    if role is Role.AUX and not _allowed(conn, conn.device.aux_config):
        raise IoctlError(errno.EACCES, "this uid may not be an auxiliary driver ([aux])")
    if args.join:
        return join(conn, args)
    node = Node(args.node)
    conn.proto.accept(role, node)
    xef = conn.xef
    xef.role = role
    conn.log = conn.log.bind(role=role.value)
    xef.log = conn.log
    if role is Role.DRM:
        xef.node = node
        xef.token = secrets.token_hex(16)  # never logged: it opens the file
        conn.device.tokens[xef.token] = xef
    conn.log.info("client_hello", version=list(args.version), node=xef.node.value)
    debug_event(xef, "open")
    return m.HelloReply(
        version=PROTOCOL_VERSION,
        device=conn.device.identity,
        client_id=conn.client_id,
        token=xef.token,
    )


def _allowed(conn: Connection, allowed: AdminConfig | AuxConfig) -> bool:
    """Root and the daemon's own uid always; then the role's configured ids."""
    return (
        conn.uid in (0, os.geteuid())
        or conn.uid in allowed.allowed_uids
        or conn.gid in allowed.allowed_gids
    )
