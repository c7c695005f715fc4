"""A connection: read its requests, dispatch them, send the answers.

One task per connection reads datagrams and answers them in order; ops that block
(WAIT_USER_FENCE) run in tasks of the connection's own nursery, so a disconnect cancels
them. Everything a connection held is released when its task ends, however it ends.
Socket I/O goes straight to the non-blocking socket and parks in trio only on EAGAIN:
a round trip costs two system calls when the peer is quick. A drm connection is a drm
file or a channel of one (channels.py: another process acting on that file); the file's
release (its connection's EOF, the last close of the program's descriptor) closes its
channels first.
"""

from __future__ import annotations

import errno
import inspect
import os
import select
import socket
import struct
import time
from typing import Any

import structlog
import trio

from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    REPLY_ENCODERS,
    SHORTAGE,
    SPECS,
    Event,
    LocalProtocolError,
    Op,
    ProtocolError,
    Request,
    Role,
    ServerConnection,
    encode_error,
    encode_event,
    encode_reply,
    errno_name,
    pack_fds,
    peek_op,
    peek_request_id,
    plain_request,
    unpack_fds,
)
from protocols import messages as m

from . import log as xlog
from .channels import close_channels
from .device.device import XeDevice
from .device.errors import IoctlError
from .device.file import XeFile
from .device.limits import OPENS_DESCRIPTORS, limit_hit, out_of_errno
from .device.limits import out_of_resources as _out_of_resources
from .device.process import caller_pid, peer_instance
from .hello import hello
from .inflight import Unread, UnreadLedger
from .ioctl import HANDLERS
from .seqpacket import EmptyRead, empty_read
from .stats import RING as _RING

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
# plain ints: the socket module's flags are IntFlags, slow to test on every datagram
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_CUT = _MSG_TRUNC | _MSG_CTRUNC  # recvmsg's flags: what came was cut short
_PEERCRED = struct.Struct("3i")
EVENT_QUEUE = 256  # events a slow client may fall behind by before they are dropped
# Blocking requests with a descriptor attached (a dma-buf op asking another daemon, up
# to PEER_TIMEOUT) a connection may have under way at once. Each holds a copy of the
# descriptor it lent, one the client may send again and again: unbounded, one client
# fills the daemon's table from one descriptor. Past this the reader waits for one to
# end, as a thread's next ioctl waits for its last ([limits] lent_descriptors_per_uid
# refuses past its bound over all connections of one uid).
LENT_IN_FLIGHT = 16


# op -> (handler, whether it takes the request's descriptors, whether it must be awaited,
# whether its answer opens descriptors), worked out once rather than on every request
_DISPATCH = {
    op: (
        handler,
        bool(SPECS[op].fds_in),
        inspect.iscoroutinefunction(handler),
        op in OPENS_DESCRIPTORS,
    )
    for op, handler in HANDLERS.items()
}
# op -> handler, for the ops answered in the reader's own step with no await between the
# request and its reply (a plain function of (file, args) that neither takes descriptors,
# nor answers with any, nor blocks): nearly every request, answered with no coroutine.
_PLAIN = {
    op: handler
    for op, (handler, takes_fds, is_async, opens) in _DISPATCH.items()
    if not (takes_fds or is_async or opens or SPECS[op].blocking or SPECS[op].fds_out)
}
# the ops whose answer may wait (WAIT_USER_FENCE): each in a task of its own
_BLOCKING = frozenset(op for op, spec in SPECS.items() if spec.blocking)
_now = time.perf_counter
_HELLO = Op.HELLO  # an enum's members are slow to look up on its class (EnumType.__getattr__)
_NO_FDS: tuple[int, ...] = ()


class _Disconnected(Exception):
    """The peer is gone (or its socket failed): stop serving it, release its file."""


class _FdsRefused(Exception):
    """A reply's descriptors cannot go to this client now (too many left unread by it or
    its uid, or the kernel refused them: the daemon's budget of descriptors in flight,
    shared by every client). The request is answered EMFILE instead."""

    def __init__(self, reason: str, by_kernel: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.by_kernel = by_kernel


# sendmsg(2) failures that are about the descriptors attached, not about the peer
_FDS_ERRNOS = SHORTAGE | {errno.ETOOMANYREFS}


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The peer's (pid, uid, gid) as the kernel recorded them at connect (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


class Connection:
    def __init__(
        self,
        device: XeDevice,
        sock: socket.socket,
        client_id: int,
        ledger: UnreadLedger | None = None,
        credentials: tuple[int, int, int] | None = None,  # the accept loop read them
    ) -> None:
        self.device = device
        self.sock = sock
        self.pid, self.uid, self.gid = credentials or peer_credentials(sock)
        # descriptors this client has not read; the ledger is the daemon's, by uid
        self.ledger = ledger or UnreadLedger(device.limits)
        self.unread = Unread(self.ledger, sock.fileno(), self.uid)
        self.client_id = client_id
        self.proto = ServerConnection()
        self.log = structlog.get_logger("xed").bind(client_id=client_id, pid=self.pid)
        # Made at first use: most connections never wait for room to send, nor get an
        # event; a lock, an event queue and its writer task were a fifth of the memory
        # of an idle connection.
        self._send_lock: trio.Lock | None = None
        self._events: trio.MemorySendChannel[bytes] | None = None
        self._nursery: trio.Nursery | None = None  # while the connection is served
        self._refusals = xlog.RateLimit()
        self.xef = XeFile(
            device,
            client_id,
            self.pid,
            self.uid,
            self.gid,
            self.log,
            self._queue_event,
            process=peer_instance(sock, self.pid),
            peer_gone=self._peer_gone,
        )
        self.joined = False  # a channel: self.xef is another connection's drm file
        self._lent = trio.Semaphore(LENT_IN_FLIGHT)  # blocking requests holding descriptors
        # Replies waiting for room in the client's socket: it is not reading them. Each
        # blocking request is a task, which keeps its reply until it can go: while one
        # waits, the reader takes no further blocking request (a client pipelining
        # them without reading parked a task per request: 80,000 took the daemon from
        # 35 to 529 MB), as it takes no plain one while its own reply waits for room.
        self.parked_replies = 0
        self._reply_sent: trio.Event | None = None  # while the reader waits for that
        self.scope = trio.CancelScope()  # cancelled by the file's release, if a channel
        self.done = trio.Event()  # set once everything of the connection is let go

    # --- life of a connection -----------------------------------------------------------
    async def run(self) -> None:
        # Every event logged from this connection's task, and from tasks it starts (its
        # exec queues' work), names the client, even where the code logging it (a BO
        # freed, a dma-buf released) knows nothing of connections.
        structlog.contextvars.bind_contextvars(client_id=self.client_id, pid=self.pid)
        caller_pid.set(self.pid)
        self.log.info("client_connected", uid=self.uid, gid=self.gid)
        reason = "eof"
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        reason = await self._read_requests(nursery)
                    finally:  # the nursery takes no new task from here: nor any event
                        self._nursery = self._events = None
                    nursery.cancel_scope.cancel()
            if self.scope.cancelled_caught:
                reason = "its drm file was released"
        finally:
            if self.joined:
                self.xef.channels.discard(self)
            else:
                await close_channels(self)
                self.xef.release()
            self.unread.release()
            self.sock.close()
            self.done.set()
            if self._refusals.missed:  # nothing is suppressed without saying how much
                self.log.debug("ioctl_refused_suppressed", count=self._refusals.missed)
            self.log.info("client_disconnected", reason=reason)

    async def _read_requests(self, nursery: trio.Nursery) -> str:
        """Answer datagrams in order until the peer leaves; return why the loop ended.
        The socket is read, and a plain op (_PLAIN) answered, here rather than in helper
        coroutines: two coroutines a request were a tenth of the daemon's CPU per call."""
        sock, proto, device = self.sock, self.proto, self.device
        by_op, unread = device.ioctl_stats.by_op, self.unread
        try:
            while True:
                await trio.lowlevel.checkpoint_if_cancelled()  # a flood must not outlast a cancel
                parked = False
                while True:
                    try:
                        data, ancdata, flags, _ = sock.recvmsg(
                            MAX_DATAGRAM + 1, _ANC_SPACE, _MSG_CMSG_CLOEXEC
                        )
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                        parked = True
                        continue
                    except OSError as exc:
                        raise _Disconnected(errno_name(exc.errno or 0)) from exc
                    break
                if not parked:
                    # The request was already waiting: take it, but not before the other
                    # tasks (exec queues, event writers, other connections) had their turn,
                    # or a client never letting its socket run dry would starve the device
                    # (one waited for let them run already). A turn every few requests
                    # was tried: a status read then overtook a disconnect not yet seen,
                    # and showed a file its client had already closed.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                fds: list[int] | tuple[int, ...]
                if data and not ancdata and not flags & _CUT:
                    # nearly every request: bytes only, and whole; and nearly always for
                    # an op allowed now (plain_request; None sends it the long way)
                    fds, plain = _NO_FDS, plain_request(data, proto.plain)
                else:
                    if ancdata:
                        received, junk = unpack_fds(ancdata)
                        fds = tuple(received)
                    else:
                        fds, junk = _NO_FDS, False
                    if not data and not fds and empty_read(sock) is not EmptyRead.DATAGRAM:
                        return "eof"  # the client closed (or shut down) its end
                    if junk or flags & _MSG_CTRUNC:  # the kernel dropped what did not fit
                        _close_all(fds)
                        await self._refuse(peek_request_id(data), *self._lost_descriptors(data))
                        continue
                    plain = None
                request: Request | None = None  # an envelope only where one is needed
                if plain is not None:
                    request_id, op, args = plain
                    if proto.strikes:  # it was well-formed: the strikes start again
                        proto.strikes = 0
                else:
                    try:
                        request = proto.receive(data, fds, bool(flags & _MSG_TRUNC))
                    except ProtocolError as exc:
                        _close_all(fds)
                        await self._refuse(exc.request_id, exc.errno, exc.message)
                        if proto.exhausted:
                            self.log.warning("client_dropped", reason="malformed messages")
                            return "garbage"
                        continue
                    request_id, op, args = request.id, request.op, request.args
                handler = _PLAIN.get(op)
                xef = self.xef  # a channel's is another connection's, from its JOIN on
                # not device.is_gone(xef.generation), inline
                if handler is not None and xef.generation == device.live_generation:
                    started = _now()
                    try:
                        if device.test_crashes:
                            device.crash_point(op.name)
                        # a record: no plain op answers with descriptors; and a reply that
                        # cannot be encoded is our bug, as a handler's exception is
                        reply = REPLY_ENCODERS[op](request_id, handler(xef, args))
                    except Exception as exc:
                        request = request or Request(request_id, op, args)
                        await self._failed(request, exc, started)
                        continue
                    try:  # _send_now(), inline
                        sock.send(reply)
                    except BlockingIOError:
                        await self._send_when_room(reply, [])
                    except OSError as exc:
                        raise _send_failed(exc, []) from exc
                    else:
                        if unread.count:
                            unread.sent(len(reply), 0)
                    entry = by_op[op]  # stats.record(op, 0, seconds), inline
                    calls = entry.count
                    entry.latencies[calls & _RING] = _now() - started
                    entry.count = calls + 1
                    continue
                if request is None:
                    request = Request(request_id, op, args)
                if op in _BLOCKING:
                    if self.parked_replies:
                        try:
                            await self._replies_gone()
                        except BaseException:  # the connection ends: nobody answers it
                            _close_all(fds)
                            raise
                    if fds:
                        try:
                            await self._lent.acquire()
                        except BaseException:  # the connection ends: nobody answers it
                            _close_all(fds)
                            raise
                        if not await self._lend(request):
                            continue
                    xef.blocking += 1
                    nursery.start_soon(self._answer_blocking, request, xef, nursery.cancel_scope)
                elif fds:
                    try:
                        await self._answer(request)
                    finally:
                        _close_all(fds)
                else:
                    await self._answer(request)
        except _Disconnected as exc:
            return f"reset ({exc})"

    async def _lend(self, request: Request) -> bool:
        """Count a blocking request's descriptors against the uid (limits.
        lent_descriptors_per_uid); past it, let them go and refuse the request EMFILE."""
        lent, limit = self.ledger.lent, self.device.limits.lent_descriptors_per_uid
        if lent[self.uid] < limit:
            lent[self.uid] += 1
            return True
        self._lent.release()
        _close_all(request.fds)
        limit_hit(self.xef, "lent_descriptors_per_uid")
        message = (
            f"uid {self.uid} has {limit} blocking requests holding descriptors "
            "(limits.lent_descriptors_per_uid)"
        )
        self.device.ioctl_stats.record(request.op, errno.EMFILE, 0.0)
        await self._refuse(request.id, errno.EMFILE, message, request.op)
        return False

    def _lost_descriptors(self, data: bytes) -> tuple[int, str]:
        """Why the kernel dropped a request's descriptors: more than one carries (EINVAL),
        or no room in our table (scm_detach_fds fails quietly): ENOMEM, EMFILE for an op
        handing a descriptor back."""
        if not self.device.descriptors.short():
            return errno.EINVAL, "too many or malformed descriptors"
        op = peek_op(data)
        self.device.stats["limits_hit"] += 1
        err = out_of_errno(op) if op is not None else errno.ENOMEM
        return err, "the daemon had no room for the descriptors attached"

    # --- requests -------------------------------------------------------------------------
    def _check_plugged(self, request: Request) -> None:
        """drm_dev_enter(): once unplugged, only the admin role is still answered, and
        the aux driver letting go of what it holds (OpSpec.while_unplugged); a file
        opened on a device since unplugged stays so after REPLUG (unplug.py)."""
        if not self.device.is_gone(self.xef.generation) or SPECS[request.op].while_unplugged:
            return
        role = Role(request.args.role) if request.op is Op.HELLO else self.xef.role
        if role is not Role.ADMIN:
            if self.device.unplugged:
                raise IoctlError(errno.ENODEV, "the device is unplugged")
            raise IoctlError(errno.ENODEV, "opened on a device since unplugged (and replaced)")

    async def _answer(self, request: Request) -> None:
        """Run the op's handler (awaiting it if it blocks) and send the reply or errno."""
        started = _now()
        device, op = self.device, request.op
        try:
            self._check_plugged(request)
            if device.test_crashes:
                device.crash_point(op.name)
            if op is _HELLO:
                result: Any = hello(self, request.args)
            else:
                handler, takes_fds, is_async, opens_descriptors = _DISPATCH[op]
                if opens_descriptors:
                    device.descriptors.check(self.xef, op)
                if takes_fds:  # lent, not given: closed once the request is answered
                    result = handler(self.xef, request.args, request.fds)
                else:
                    result = handler(self.xef, request.args)
                if is_async:
                    result = await result
            if type(result) is not tuple:  # a reply that cannot be encoded is our bug too
                reply = encode_reply(request.id, op, 0, result)
        except Exception as exc:
            await self._failed(request, exc, started)
            return
        if type(result) is tuple:
            await self._send_result(request, result, started)
            return
        await self._send(reply, [])
        device.ioctl_stats.record(op, 0, _now() - started)

    async def _failed(self, request: Request, exc: Exception, started: float) -> None:
        """The handler raised: its errno (IoctlError), a limit the client hit (out of
        descriptors or memory where no handler expected it), or a bug of ours (EIO)."""
        if isinstance(exc, IoctlError):
            err, message = exc.errno, exc.message
        elif isinstance(exc, OSError) and exc.errno in SHORTAGE:
            refusal = _out_of_resources(self.xef, request.op, exc)
            err, message = refusal.errno, refusal.message
        else:
            await self._crashed(request, exc)
            return
        self.device.ioctl_stats.record(request.op, err, _now() - started)
        await self._refuse(request.id, err, message, request.op)

    async def _send_result(
        self, request: Request, result: tuple[Any, list[int]], started: float
    ) -> None:
        """Send a reply that carries descriptors (ours are closed, sent or not)."""
        record, fds = result
        try:
            await self._send(encode_reply(request.id, request.op, 0, record), fds)
        except LocalProtocolError as exc:  # a reply that cannot be encoded: a bug of ours
            await self._crashed(request, exc)
        except _FdsRefused as exc:
            self.device.ioctl_stats.record(request.op, errno.EMFILE, _now() - started)
            await self._fds_refused(request, exc)
        else:
            self.device.ioctl_stats.record(request.op, 0, _now() - started)
        finally:
            _close_all(fds)  # the client's copies are its own; ours go, sent or not

    async def _fds_refused(self, request: Request, exc: _FdsRefused) -> None:
        """The reply's descriptors could not go: the request fails EMFILE; the
        connection goes on, whoever's fault it was."""
        self.device.stats["limits_hit"] += 1
        if exc.by_kernel:  # every client's replies with descriptors fail meanwhile
            self.log.warning("fds_in_flight_refused", op=request.op.name, reason=exc.reason)
        await self._refuse(request.id, errno.EMFILE, exc.reason, request.op)

    async def _replies_gone(self) -> None:
        """Wait until no reply of this connection waits for room (parked_replies)."""
        while self.parked_replies:
            self._reply_sent = sent = trio.Event()
            await sent.wait()

    async def _answer_blocking(
        self, request: Request, xef: XeFile, connection: trio.CancelScope
    ) -> None:
        """A blocking op, in a task of its own beside the reader."""
        try:
            await self._answer(request)
        except _Disconnected:
            connection.cancel()  # the reader will see the end of the connection too
        finally:
            xef.blocking -= 1
            _close_all(request.fds)
            if request.fds:
                self._lent.release()
                lent = self.ledger.lent
                lent[self.uid] -= 1
                if not lent[self.uid]:
                    del lent[self.uid]

    async def _crashed(self, request: Request, exc: Exception) -> None:
        """A bug in a handler (never the client's input): log it loudly, fail the ioctl
        with EIO, keep serving everyone else. Tests fail on any ioctl_crashed event."""
        self.device.stats["crashed"] += 1
        self.log.error("ioctl_crashed", op=request.op.name, exc_info=exc)
        await self._send(encode_error(request.id, errno.EIO, "internal error in xed"), [])

    async def _refuse(self, request_id: int, err: int, message: str, op: Op | None = None) -> None:
        """Answer with an errno. A refusal is the client's business, not the operator's:
        it is counted (`xed ctl stats`), and logged at debug level only (the kernel's
        XE_IOCTL_DBG is a drm_dbg), rate-limited per connection as the kernel's noisy
        messages are: a client refused in a loop must not make the daemon write without
        end. What the limit held back is logged as ioctl_refused_suppressed, with a count."""
        self.device.stats["refused"] += 1
        if xlog.enabled("debug"):  # the limit counts only what would be logged
            self._refusals.log(
                self.log.debug,
                "ioctl_refused",
                op=op.name if op else None,
                errno=errno_name(err),
                reason=message,
            )
        if request_id:
            await self._send(encode_error(request_id, err, message), [])
        else:
            event = m.ProtocolErrorInfo(errno=err, message=message[:1024])
            await self._send(encode_event(Event.PROTOCOL_ERROR, event), [])

    def _peer_gone(self) -> bool:
        """Every copy of the client's end is closed: only its EOF (and what it sent
        before) is left to read. SOCK_SEQPACKET polls POLLHUP from then on."""
        poller = select.poll()
        poller.register(self.sock, select.POLLHUP)
        return any(revents & select.POLLHUP for _, revents in poller.poll(0))

    # --- events ---------------------------------------------------------------------------
    def _queue_event(self, event: Event, data: Any) -> None:
        """Send an event now if nothing is queued before it and the socket has room
        (nearly always); else queue it for a writer task, made the first time one is
        needed. None of this ever waits: events come from any task of the daemon."""
        frame = encode_event(event, data)
        events = self._events
        if events is None:
            if self._nursery is None:  # the connection has ended: nobody to tell
                return
            try:
                if self._send_now(frame):
                    return
            except _Disconnected:  # its reader sees the end as well
                return
            events, queued = trio.open_memory_channel[bytes](EVENT_QUEUE)
            self._nursery.start_soon(self._write_events, queued)
            self._events = events
        try:
            events.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.device.stats["events_dropped"] += 1

    async def _write_events(self, queued: trio.MemoryReceiveChannel[bytes]) -> None:
        # started by whichever task queued the first event, whose log context it copied
        structlog.contextvars.bind_contextvars(client_id=self.client_id, pid=self.pid)
        async for frame in queued:
            try:
                await self._send(frame, [])
            except _Disconnected:
                return

    # --- the socket -------------------------------------------------------------------------
    # Any failure of the socket itself (ECONNRESET, EPIPE, ...) ends the connection: there
    # is no one left to answer, and the file must be released like any other.
    # A reply with descriptors is first checked against what the client left unread (the
    # check and the send with no checkpoint between them, so no other task of this
    # connection sends in between); _FdsRefused if it may not go.
    async def _send(self, data: bytes, fds: list[int]) -> None:
        if not fds:
            if not self._send_now(data):
                await self._send_when_room(data, fds)
            return
        unread = self.unread
        try:
            self._admit(len(fds))
            self.sock.sendmsg([data], pack_fds(fds))
        except BlockingIOError:
            await self._send_when_room(data, fds)
        except OSError as exc:
            raise _send_failed(exc, fds) from exc
        else:
            unread.sent(len(data), len(fds))

    def _send_now(self, data: bytes) -> bool:
        """Send a message without descriptors if the socket has room for it now (nearly
        always: send(2) is the cheaper call); False if it has not."""
        try:
            self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise _send_failed(exc, []) from exc
        unread = self.unread
        if unread.count:  # a reply with descriptors may be unread: count what follows
            unread.sent(len(data), 0)
        return True

    async def _send_when_room(self, data: bytes, fds: list[int]) -> None:
        """Send once the socket has room, counted in parked_replies meanwhile."""
        unread = self.unread
        ancdata = pack_fds(fds)
        if self._send_lock is None:
            self._send_lock = trio.Lock()
        self.parked_replies += 1
        try:
            async with self._send_lock:  # only one task may wait for room
                while True:
                    await trio.lowlevel.wait_writable(self.sock)
                    try:
                        if fds:
                            self._admit(len(fds))
                        self.sock.sendmsg([data], ancdata)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise _send_failed(exc, fds) from exc
                    if fds or unread.count:
                        unread.sent(len(data), len(fds))
                    return
        finally:
            self.parked_replies -= 1
            if not self.parked_replies and self._reply_sent is not None:
                self._reply_sent.set()
                self._reply_sent = None

    def _admit(self, fds: int) -> None:
        reason = self.unread.refusal(fds)
        if reason is not None:
            raise _FdsRefused(reason)


def _send_failed(exc: OSError, fds: list[int]) -> Exception:
    """What a failed sendmsg(2) means: descriptors refused (the kernel's budget of
    descriptors in flight, which every client's replies share), or the peer gone."""
    if fds and exc.errno in _FDS_ERRNOS:
        return _FdsRefused(f"sendmsg: {errno_name(exc.errno or 0)}", by_kernel=True)
    return _Disconnected(errno_name(exc.errno or 0))
