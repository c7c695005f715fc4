"""Datagrams nobody should send: random bytes, random msgpack, real ops with wild fields,
descriptors where none belong. Every answer must be a clean errno the op table lists.

Each fuzzer connection speaks raw msgpack over its own socket (the library would refuse
to encode what we want to send), keeps the op of every id it sent, and checks every
datagram that comes back: a reply under an id we used, with errno 0 or one the op (or
every op) may answer with; or an event. Anything else is an unclean reply. The daemon
may drop a connection that keeps sending garbage: we connect again.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from protocols import COMMON_ERRORS, MAX_DATAGRAM, MAX_FDS, PROTOCOL_VERSION, SPECS, Op, pack_fds

_COMMON = frozenset(err for err, _why in COMMON_ERRORS)
_OPS = [int(op) for op in Op]
_ROLES = ["drm", "aux", "debugger", "admin", "peer", "verbs", "", "DRM", 7]


def allowed_errnos(op: int | None) -> frozenset[int]:
    """What a reply to `op` may carry: its own errnos and the common ones."""
    known = SPECS.get(Op(op)) if op in _OPS else None
    return _COMMON | {err for err, _why in known.errors} if known else _COMMON


def _value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 3 else 8)
    if choice == 0:
        return rng.choice([0, 1, -1, 4096, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 2**64 - 4096])
    if choice == 1:
        return rng.randrange(-(2**63), 2**64)
    if choice == 2:
        return rng.randbytes(rng.randrange(64))
    if choice == 3:
        return "".join(rng.choice("abc\x00é") for _ in range(rng.randrange(16)))
    if choice == 4:
        return None
    if choice == 5:
        return rng.random() * 1e20
    if choice == 6:
        return rng.choice([True, False])
    if choice == 7:
        return rng.randrange(0, 1 << 20, 4096)
    if choice == 8:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if choice == 9:
        return {str(_value(rng, 3)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if choice == 10:
        return [_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 9, 300]))]
    return {f"f{i}": i for i in range(rng.choice([1, 40]))}


def _args_for(rng: random.Random, op: int) -> Any:
    """A map with the op's own field names (mostly), holding wild values."""
    spec = SPECS.get(Op(op)) if op in _OPS else None
    names = [f.name for f in attrs.fields(spec.request)] if spec else []
    args = {}
    for name in names:
        if rng.random() < 0.8:
            args[name] = _value(rng) if rng.random() < 0.5 else rng.randrange(0, 9)
    if rng.random() < 0.2:
        args[rng.choice(["bogus", "pad9", ""])] = _value(rng)
    return args if rng.random() < 0.95 else _value(rng)


@attrs.define
class FuzzTally:
    sent: int = 0
    replies: int = 0
    unclean: list[str] = attrs.Factory(list)
    dropped: int = 0  # times the daemon hung up on us (allowed: we sent garbage)


class Fuzzer:
    """One connection's worth of garbage; `run(n)` sends n datagrams."""

    def __init__(self, path: str, rng: random.Random, report: Callable[[str], None]) -> None:
        self.path = path
        self.rng = rng
        self.report = report  # called at once with every unclean reply
        self.tally = FuzzTally()
        self.sock: socket.socket | None = None
        self.pending: dict[int, int] = {}
        self.next_id = 1

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.connect(self.path)
        self.pending.clear()
        if self.rng.random() < 0.8:  # mostly past the handshake, to reach the handlers
            role = self.rng.choice(["drm", "drm", "drm", "aux", "debugger"])
            self._send(sock, Op.HELLO, {"version": list(PROTOCOL_VERSION), "role": role})
        return sock

    def _send(self, sock: socket.socket, op: int, args: Any, fds: list[int] | None = None) -> None:
        ident = self.next_id
        self.next_id = self.next_id % 0xFFFF_FFFF + 1
        self.pending[ident] = op
        self._sendmsg(sock, msgpack.packb([ident, op, args]), fds or [])

    def _sendmsg(self, sock: socket.socket, data: bytes, fds: list[int]) -> None:
        """Send without ever blocking on a daemon that waits for us to read: drain, retry."""
        ancdata = pack_fds(fds) if fds else []
        while True:
            try:
                sock.sendmsg([data], ancdata, socket.MSG_DONTWAIT)
                break
            except BlockingIOError:
                if not self._drain(sock):
                    raise ConnectionResetError from None
                select.select([sock], [sock], [], 0.05)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                return  # more than the socket can carry: nothing left us
        self.tally.sent += 1

    def _garbage(self, sock: socket.socket) -> None:
        rng = self.rng
        kind = rng.randrange(7)
        fds = self._junk_fds() if rng.random() < 0.15 else []
        try:
            if kind == 0:  # bytes
                data = rng.randbytes(rng.choice([0, 1, 3, 17, 200, MAX_DATAGRAM + 10]))
                self._sendmsg(sock, data, fds)
            elif kind == 1:  # some msgpack that is not a request
                self._sendmsg(sock, msgpack.packb(_value(rng)), [])
            elif kind == 2:  # a HELLO at the wrong time, with any role
                args = {"version": [rng.randrange(3), rng.randrange(9)], "role": rng.choice(_ROLES)}
                self._send(sock, Op.HELLO, args)
            else:  # a real op (or not) with wild arguments
                op = rng.choice(_OPS) if rng.random() < 0.9 else rng.randrange(-5, 1 << 16)
                self._send(sock, op, _args_for(rng, op), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _junk_fds(self) -> list[int]:
        fds = []
        for _ in range(self.rng.choice([1, 1, 2, MAX_FDS])):
            kind = self.rng.randrange(3)
            if kind == 0:
                fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
                os.ftruncate(fd, self.rng.choice([0, 4096, 1 << 20]))
                fds.append(fd)
            elif kind == 1:
                r, w = os.pipe()
                os.close(w)
                fds.append(r)
            else:
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                fds.append(a.detach())
                b.close()
        return fds

    def _drain(self, sock: socket.socket) -> bool:
        """Read what has come back; False if the daemon hung up."""
        while True:
            try:
                data, ancdata, _flags, _ = sock.recvmsg(
                    MAX_DATAGRAM, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return True
            except ConnectionError:
                return False
            for _level, _type, raw in ancdata:  # a reply's descriptors: ours to close
                for i in range(0, len(raw) - len(raw) % 4, 4):
                    os.close(int.from_bytes(raw[i : i + 4], "little"))
            if not data:
                return False
            self._check(data)

    def _check(self, data: bytes) -> None:
        self.tally.replies += 1
        try:
            frame = msgpack.unpackb(data)
            ident, code, _body = frame
        except Exception as exc:  # anything that is not the protocol is unclean
            self._unclean(f"undecodable answer {data[:40]!r}: {exc}")
            return
        if ident == 0:
            return  # an event (PROTOCOL_ERROR for a frame without an id, and others)
        op = self.pending.pop(ident, None)
        if code and code not in allowed_errnos(op):
            name = Op(op).name if op in _OPS else op
            self._unclean(f"{name}: errno {code} is not one it may answer ({_body})")

    def _unclean(self, what: str) -> None:
        self.tally.unclean.append(what)
        self.report(what)

    def run(self, count: int) -> FuzzTally:
        for _ in range(count):
            if self.sock is None:
                self.sock = self._connect()
            try:
                self._garbage(self.sock)
            except (BrokenPipeError, ConnectionResetError):
                alive = False
            else:
                alive = self._drain(self.sock)
            if not alive:
                self.tally.dropped += 1
                self.sock.close()
                self.sock = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.tally
