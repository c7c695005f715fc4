"""One blocking request at a time over a SOCK_SEQPACKET connection: the shared loop of
every synchronous client (the DRM-like Device, the verbs-like IbContext).

Replies are matched by id; events that arrive meanwhile are queued; a refusal raises
XeError with the peer's errno; descriptors that come with a refusal are closed. However
the peer goes away (it closed the connection, died with our request unread, left a
reply half-said, or answers with something that is not the protocol), the caller sees
one error: DaemonGone; unless it said why just before it hung up (a PROTOCOL_ERROR
event, as for a connection it will not serve), which is then the request's refusal.
"""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Sequence
from typing import Any

from protocols import (
    MAX_DATAGRAM,
    REPLY_READERS,
    REQUEST_ENCODERS,
    Event,
    EventMessage,
    Op,
    ProtocolError,
    decode_incoming,
)

from .errors import DaemonGone, XeError
from .transport import ANC_SPACE, RECV_FLAGS, SeqpacketTransport, unpack_received


class RpcConnection:
    def __init__(self, transport: SeqpacketTransport, peer: str = "the daemon") -> None:
        self.transport = transport
        self.events: collections.deque[EventMessage] = collections.deque()
        self._peer = peer
        self._next_id = 0

    def call(
        self, op: Op, args: Any, fds: Sequence[int] = ()
    ) -> tuple[Any, tuple[int, ...]]:
        """Send one request; return its reply record and descriptors (caller closes).

        The reply it waits for is read in one pass (reply_record, its op's reader
        called straight, as its encoder is); anything else goes the long way
        (decode_incoming). With both processes on one CPU, decode_incoming's
        general path and a reply envelope built and read cost more than their code
        suggests: about a fifth of the library's time."""
        self._next_id = request_id = self._next_id % 0xFFFF_FFFF + 1
        request = REQUEST_ENCODERS[op](request_id, args)  # encode_request(), one call
        transport = self.transport
        try:
            if fds:
                data, received = transport.exchange(request, fds)
            else:  # transport.exchange(), inline: nearly every request (its two calls
                # were 936 of the library's 32,506 instructions a VERSION, cachegrind)
                sock = transport.sock
                sock.send(request)
                transport.bytes_sent += len(request)
                data, ancdata, _flags, _ = sock.recvmsg(MAX_DATAGRAM, ANC_SPACE, RECV_FLAGS)
                transport.bytes_received += len(data)
                received = unpack_received(ancdata) if ancdata else ()
        except ConnectionError as exc:
            # EPIPE, ECONNRESET: nobody is listening any more, or it died with our
            # request unread
            gone = DaemonGone(f"{self._peer} is gone ({exc.strerror})")
            raise self._last_word(op, len(self.events)) or gone from exc
        try:
            record = REPLY_READERS[op](data, received, request_id)  # reply_record()
        except ProtocolError as exc:
            _close(received)
            gone = DaemonGone(f"protocol error from {self._peer}: {exc}")
            raise self._last_word(op, len(self.events)) or gone from exc
        if record is not None:
            return record, received
        heard = len(self.events)  # those before this call's: any it reads are queued after
        try:
            pending = {request_id: op}
            message = self._decode(data, received, pending)
            while type(message) is EventMessage:
                self.events.append(message)
                message = self._receive(pending)
        except DaemonGone as exc:
            refusal = self._last_word(op, heard)
            if refusal is None:
                raise
            raise refusal from exc
        if message.errno:
            _close(message.fds)
            raise XeError(message.errno, op.name, message.result.message)
        return message.result, message.fds

    def _last_word(self, op: Op, heard: int) -> XeError | None:
        """The daemon hung up under our request: if the last thing it said was a
        PROTOCOL_ERROR event (EMFILE: a connection it will not serve, when it looked for
        our HELLO before it came), that is the request's refusal. The event is read
        already (one of the `self.events` past `heard`), or still queued: the kernel
        reports a reset before what is queued."""
        if len(self.events) > heard:
            last: Any = self.events[-1]
        else:
            try:
                data = self.transport.sock.recv(MAX_DATAGRAM, socket.MSG_DONTWAIT)
                last = decode_incoming(data, (), {})
            except (OSError, ProtocolError):
                return None
        if isinstance(last, EventMessage) and last.event is Event.PROTOCOL_ERROR:
            return XeError(last.data.errno, op.name, last.data.message)
        return None

    def wait_event(self, timeout: float | None = None) -> EventMessage:
        """The next event (queued ones first); TimeoutError if none came in time."""
        if self.events:
            return self.events.popleft()
        self.transport.sock.settimeout(timeout)
        try:
            message = self._receive({})
        except TimeoutError:
            raise TimeoutError(f"no event from {self._peer}") from None
        finally:
            self.transport.sock.settimeout(None)
        if not isinstance(message, EventMessage):
            _close(message.fds)
            raise DaemonGone(f"a reply nobody asked for from {self._peer}")
        return message

    def _receive(self, pending: dict[int, Op]) -> Any:
        return self._decode(*self._recv(), pending)

    def _recv(self) -> tuple[bytes, tuple[int, ...]]:
        try:
            return self.transport.recv()
        except ConnectionError as exc:  # it died with something of ours unread
            raise DaemonGone(f"{self._peer} is gone ({exc.strerror})") from exc

    def _decode(self, data: bytes, received: tuple[int, ...], pending: dict[int, Op]) -> Any:
        if not data:
            _close(received)
            raise DaemonGone(f"{self._peer} closed the connection")
        try:
            return decode_incoming(data, received, pending)
        except ProtocolError as exc:
            _close(received)
            raise DaemonGone(f"protocol error from {self._peer}: {exc}") from exc

    def close(self) -> None:
        self.transport.close()


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
