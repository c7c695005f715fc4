"""Channels: connections of other processes acting on a drm file (HELLO.join).

A program's descriptor is its drm file's connection; dup, fork and close refcount it in
the kernel, so the file lives exactly as long as some process holds a copy. But two
processes reading one socket would take each other's replies: a process that inherited
the descriptor (a forked child) speaks on a connection of its own instead, joined to
the file by the token the file's HELLO answered. Its requests act on the file and are
answered on the channel; what a connection counts for itself (descriptors left unread,
its blocking requests) stays the channel's. A channel's close releases nothing; the
file's release closes every channel first.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import trio

from protocols import PROTOCOL_VERSION, Role
from protocols import messages as m

from .device.errors import refuse_if

if TYPE_CHECKING:
    from .connection import Connection


def join(conn: Connection, hello: m.Hello) -> m.HelloReply:
    """HELLO with join: the connection becomes a channel of the live drm file the token
    names (on that file's node, whatever HELLO.node says).

    Checks, in order: no live file has that token: ENOENT; the file was opened by
    another uid, and we are not root: EACCES.
    """
    file = conn.device.tokens.get(hello.join)
    refuse_if(file is None, errno.ENOENT, "no live drm file has that token")
    assert file is not None
    refuse_if(
        conn.uid not in (0, file.uid),
        errno.EACCES,
        f"the drm file was opened by uid {file.uid}",
    )
    conn.proto.accept(Role.DRM, file.node)
    conn.xef.release()  # the connection's own, unused: it only leaves the device's list
    conn.xef = file
    conn.joined = True
    file.channels.add(conn)
    conn.log = conn.log.bind(role=Role.DRM.value, channel_of=file.client_id)
    conn.log.info("channel_joined", version=list(hello.version), file_pid=file.pid)
    return m.HelloReply(
        version=PROTOCOL_VERSION, device=conn.device.identity, client_id=file.client_id
    )


async def close_channels(conn: Connection) -> None:
    """The file of `conn` (its own connection) is being released: nobody may join it
    any more, and its channels end first (their blocking requests cancelled), so that
    none of them acts on the file after its release."""
    conn.device.tokens.pop(conn.xef.token, None)
    channels: list[Connection] = list(conn.xef.channels)
    for channel in channels:
        channel.scope.cancel()
    with trio.CancelScope(shield=True):  # a daemon stopping cancels us meanwhile
        for channel in channels:
            await channel.done.wait()
