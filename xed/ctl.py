"""`xed ctl`: the admin role, spoken with the shared codec over a blocking socket."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from protocols import (
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    EventMessage,
    Op,
    decode_incoming,
    encode_request,
    errno_name,
    to_wire,
)
from protocols import (
    messages as m,
)


class AdminError(Exception):
    pass


class AdminClient:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise AdminError(f"cannot connect to {path}: {exc.strerror}") from exc
        self._id = 0
        self.call(Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="admin"))

    def call(self, op: Op, args: Any) -> Any:
        self._id += 1
        self.sock.send(encode_request(self._id, op, args))
        while True:
            data = self.sock.recv(MAX_DATAGRAM)
            if not data:
                raise AdminError("the daemon closed the connection")
            message = decode_incoming(data, (), {self._id: op})
            if isinstance(message, EventMessage):
                continue
            if message.errno:
                raise AdminError(
                    f"{op.name}: {errno_name(message.errno)}: {message.result.message}"
                )
            return message.result

    def close(self) -> None:
        self.sock.close()


def status(path: Path, as_json: bool) -> int:
    try:
        client = AdminClient(path)
        reply: m.XedAdminStatusReply = client.call(Op.ADMIN_STATUS, m.XedAdminStatus())
        client.close()
    except AdminError as exc:
        print(f"xed ctl: {exc}", file=sys.stderr)
        return 1
    data = to_wire(reply)
    if as_json or not sys.stdout.isatty():
        print(json.dumps(data, sort_keys=True))
        return 0
    print(f"daemon pid {reply.pid} at {path}")
    for key, value in data["objects"].items():
        print(f"  {key:<14} {value}")
    for key in ("execs", "bans", "refused"):
        print(f"  {key:<14} {data[key]}")
    return 0
