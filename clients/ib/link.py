"""The aux driver's connection to the daemon: the shared codec over a trio socket.

Several tasks may call at once (one per application the aux driver serves); a reader
task matches replies to their callers by id and hands events to a callback.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    PROTOCOL_VERSION,
    EventMessage,
    Op,
    ProtocolError,
    decode_incoming,
    encode_request,
    pack_fds,
    unpack_fds,
)
from protocols import messages as m

from ..errors import DaemonGone, XeError
from ..transport import unreachable
from ..unplug import UnplugWatch

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
UNPLUG_LOOK = 0.5  # seconds a thread waits on the notice page before looking at the link


@attrs.define
class _Pending:
    op: Op
    done: trio.Event = attrs.field(factory=trio.Event)
    outcome: Any = None


class DaemonLink:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.on_event: Callable[[EventMessage], None] = lambda event: None
        self.identity: m.DeviceIdentity | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._send_lock = trio.Lock()
        self._gone: Exception | None = None  # set once the reader stopped: calls fail at once
        self.closed = trio.Event()  # the reader stopped: the daemon is gone

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> DaemonLink:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.connect(os.fspath(path))
        except OSError as exc:
            sock.close()
            raise unreachable(exc.errno or errno.EIO, path) from exc
        return cls(sock)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read until the daemon goes away (end of file, a reset, or our own close());
        then every caller still waiting fails, and `closed` is set."""
        task_status.started()
        try:
            while True:
                try:
                    data, ancdata, _flags, _ = await self.sock.recvmsg(
                        MAX_DATAGRAM, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
                    )
                except (OSError, trio.ClosedResourceError):
                    break  # reset by a daemon that died, or closed by us: gone either way
                fds, _junk = unpack_fds(ancdata)
                if not data:
                    break
                self._dispatch(data, fds)
        finally:
            self._gone = DaemonGone("the connection to the daemon is closed")
            for pending in self._pending.values():
                pending.outcome = self._gone
                pending.done.set()
            self._pending.clear()
            self.closed.set()

    @property
    def gone(self) -> bool:
        return self._gone is not None

    def _dispatch(self, data: bytes, fds: list[int]) -> None:
        ops = {ident: p.op for ident, p in self._pending.items()}
        try:
            message = decode_incoming(data, tuple(fds), ops)
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        if isinstance(message, EventMessage):
            self.on_event(message)
            return
        pending = self._pending.pop(message.id)
        pending.outcome = message
        pending.done.set()

    async def call(self, op: Op, args: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        if self._gone is not None:
            raise self._gone
        self._next_id = self._next_id % 0xFFFF_FFFF + 1
        ident = self._next_id
        pending = self._pending[ident] = _Pending(op)
        try:
            async with self._send_lock:
                await self.sock.sendmsg([encode_request(ident, op, args)], pack_fds(fds))
        except (OSError, trio.ClosedResourceError) as exc:
            self._pending.pop(ident, None)
            raise DaemonGone(f"the daemon connection failed: {exc!r}") from exc
        await pending.done.wait()
        outcome = pending.outcome
        if isinstance(outcome, Exception):
            raise outcome
        if outcome.errno:
            for fd in outcome.fds:
                os.close(fd)
            raise XeError(outcome.errno, op.name, outcome.result.message)
        return outcome.result, list(outcome.fds)

    async def hello(self, role: str) -> m.HelloReply:
        reply, _ = await self.call(Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role=role))
        self.identity = reply.device
        hello: m.HelloReply = reply
        return hello

    async def unplug_notice(self) -> UnplugWatch:
        """The notice page of the device this link reaches (UNPLUG_NOTICE), to wait on
        with watch_unplug(); XeError if the daemon refuses it (ENODEV: unplugged since
        HELLO). Asked for before the link serves anyone, so that its descriptor is
        closed by then."""
        _reply, fds = await self.call(Op.UNPLUG_NOTICE, m.XedUnplugNotice())
        (fd,) = fds
        try:
            return UnplugWatch(self.identity.instance if self.identity else "", fd)
        finally:
            os.close(fd)

    async def watch_unplug(self, notice: UnplugWatch) -> None:
        """Close the link when its device is unplugged (the notice page, as the client
        library waits on it: clients/unplug.py), so that the driver lets its contexts
        go and connects again to the device REPLUG plugs in. Ends with the link."""
        while not self.gone:
            if await trio.to_thread.run_sync(notice.wait, UNPLUG_LOOK):
                self.close()
                return

    def close(self) -> None:
        self.sock.close()
