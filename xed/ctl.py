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


def _ask(path: Path, op: Op, args: Any) -> Any:
    client = AdminClient(path)
    try:
        return client.call(op, args)
    finally:
        client.close()


def run(path: Path, action: str, as_json: bool, value: str | None = None) -> int:
    """One `xed ctl` action; exit status 0 on success, 1 with a message otherwise."""
    try:
        if action == "objects":
            _print_objects(_ask(path, Op.ADMIN_OBJECTS, m.XedAdminObjects()), as_json)
        elif action == "stats":
            _print_stats(_ask(path, Op.ADMIN_STATS, m.XedAdminStats()), as_json)
        elif action == "log-level":
            _ask(path, Op.ADMIN_LOG_LEVEL, m.XedAdminLogLevel(level=value or ""))
            print(f"log level: {value}")
        elif action == "status":
            _print_status(path, _ask(path, Op.ADMIN_STATUS, m.XedAdminStatus()), as_json)
        elif action == "clients":
            _print_clients(_ask(path, Op.ADMIN_CLIENTS, m.XedAdminClients()), as_json)
        elif action == "unplug":
            _ask(path, Op.ADMIN_UNPLUG, m.XedAdminUnplug())
            print("unplugged: ioctls answer ENODEV, mappings read zeros")
        elif action == "replug":
            _ask(path, Op.ADMIN_REPLUG, m.XedAdminReplug())
            print("plugged in: a new device; connections opened before stay ENODEV")
    except AdminError as exc:
        print(f"xed ctl: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(path: Path, reply: m.XedAdminStatusReply, as_json: bool) -> None:
    data = to_wire(reply)
    if as_json or not sys.stdout.isatty():
        print(json.dumps(data, sort_keys=True))
        return
    state = "UNPLUGGED" if reply.unplugged else "plugged in"
    print(f"daemon pid {reply.pid} at {path}, device {state}")
    for key, value in data["objects"].items():
        print(f"  {key:<16} {value}")
    for key in (
        "execs",
        "bans",
        "refused",
        "barriers",
        "sync_violations",
        "limits_hit",
        "task_crashes",
        "ioctl_crashes",
        "log_dropped",
    ):
        print(f"  {key:<16} {data[key]}")


_COLUMNS = (
    ("client_id", "ID"),
    ("pid", "PID"),
    ("uid", "UID"),
    ("comm", "COMMAND"),
    ("role", "ROLE"),
    ("bos", "BOS"),
    ("bo_bytes", "BO BYTES"),
    ("vms", "VMS"),
    ("exec_queues", "QUEUES"),
    ("mmio_regions", "MMIO"),
    ("barriers", "BARRIERS"),
    ("doorbell_rings", "DOORBELLS"),
    ("vm_exports", "VM EXPORTS"),
    ("aux_vms", "AUX VMS"),
    ("exported", "EXPORTED"),
)


def _print_objects(reply: m.XedAdminObjectsReply, as_json: bool) -> None:
    data = to_wire(reply)
    if as_json or not sys.stdout.isatty():
        print(json.dumps(data, sort_keys=True))
        return
    print("  ".join(f"{key} {value}" for key, value in data["objects"].items()))
    table = [["KIND", "INODE", "SIZE", "EXPORTER PID", "HELD BY DAEMON", "AUX CLIENTS"]]
    for obj in reply.exported:
        holders = ",".join(str(c) for c in obj.registered_by if c) or "-"
        table.append(
            [obj.kind, str(obj.ino), str(obj.size), str(obj.exporter_pid or "-"),
             "yes" if obj.held_by_daemon else "no", holders]
        )  # fmt: skip
    _print_table(table)


def _print_stats(reply: m.XedAdminStatsReply, as_json: bool) -> None:
    data = to_wire(reply)
    if as_json or not sys.stdout.isatty():
        print(json.dumps(data, sort_keys=True))
        return
    print(f"log level {reply.log_level}; events dropped for slow clients: {reply.events_dropped}")
    table = [["OP", "CALLS", "P50 US", "P99 US", "REFUSED"]]
    for op in reply.ops:
        refused = ", ".join(f"{e.errno} {e.count}" for e in op.errors) or "-"
        table.append([op.op, str(op.count), str(op.p50_us), str(op.p99_us), refused])
    _print_table(table)


def _print_table(table: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _print_clients(reply: m.XedAdminClientsReply, as_json: bool) -> None:
    rows = [to_wire(client) for client in reply.clients]
    if as_json or not sys.stdout.isatty():
        print(json.dumps(rows, sort_keys=True))
        return
    limits = to_wire(reply.limits)
    print("limits: " + ", ".join(f"{key} {value}" for key, value in limits.items()))
    table = [[title for _key, title in _COLUMNS]]
    table += [[str(row[key]) for key, _title in _COLUMNS] for row in rows]
    _print_table(table)
