"""`xed ctl`: the admin role, spoken with the shared codec over a blocking socket.

Output is for people, as systemctl's is, whether or not stdout is a terminal; `--json`
gives one JSON document instead, for every action.
"""

from __future__ import annotations

import errno
import grp
import json
import os
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
from protocols.cli import EX_FAILURE, EX_UNAVAILABLE, connect_failure, exit_status


class AdminError(Exception):
    """What `xed ctl` says before exiting with `status` (sysexits: 69, 77...)."""

    def __init__(self, message: str, status: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def _group_of(path: Path) -> str | None:
    """The group that may connect: the socket's, or its directory's if we cannot see in."""
    for where in (path, path.parent):
        try:
            gid = os.stat(where).st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return None


def _unreachable(path: Path, code: int, timeout: float) -> AdminError:
    group = _group_of(path) if code in (errno.EACCES, errno.EPERM) else None
    text = connect_failure(code, group, timeout)
    return AdminError(f"cannot connect to {path}: {text}", exit_status(code))


class AdminClient:
    def __init__(self, path: Path, timeout: float) -> None:
        """Connect and say HELLO as admin, each within `timeout` seconds."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self._id = 0
        try:
            self.sock.connect(str(path))
            self.call(Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="admin"))
        except TimeoutError:  # connected (or queued), but HELLO went unanswered
            self.sock.close()
            raise _unreachable(path, errno.ETIMEDOUT, timeout) from None
        except OSError as exc:
            self.sock.close()
            raise _unreachable(path, exc.errno or errno.EIO, timeout) from exc
        except AdminError:
            self.sock.close()
            raise
        self.sock.settimeout(None)

    def call(self, op: Op, args: Any) -> Any:
        self._id += 1
        self.sock.send(encode_request(self._id, op, args))
        while True:
            data = self.sock.recv(MAX_DATAGRAM)
            if not data:
                raise AdminError("the daemon closed the connection", EX_UNAVAILABLE)
            message = decode_incoming(data, (), {self._id: op})
            if isinstance(message, EventMessage):
                continue
            if message.errno:
                raise AdminError(
                    f"{op.name}: {errno_name(message.errno)}: {message.result.message}",
                    exit_status(message.errno),
                )
            return message.result

    def close(self) -> None:
        self.sock.close()


def _ask(path: Path, timeout: float, op: Op, args: Any) -> Any:
    client = AdminClient(path, timeout)
    try:
        return client.call(op, args)
    finally:
        client.close()


def _print_done(text: str, data: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(data, sort_keys=True) if as_json else text)


def run(path: Path, action: str, as_json: bool, value: str | None, timeout: float) -> int:
    """One `xed ctl` action; exit status 0 on success, else a message and a status
    that says why (69 no daemon, 77 not allowed, 1 refused)."""
    try:
        if action == "objects":
            _print_objects(_ask(path, timeout, Op.ADMIN_OBJECTS, m.XedAdminObjects()), as_json)
        elif action == "stats":
            _print_stats(_ask(path, timeout, Op.ADMIN_STATS, m.XedAdminStats()), as_json)
        elif action == "log-level":
            _ask(path, timeout, Op.ADMIN_LOG_LEVEL, m.XedAdminLogLevel(level=value or ""))
            _print_done(f"log level: {value}", {"log_level": value}, as_json)
        elif action == "status":
            reply = _ask(path, timeout, Op.ADMIN_STATUS, m.XedAdminStatus())
            _print_status(path, reply, as_json)
        elif action == "clients":
            _print_clients(_ask(path, timeout, Op.ADMIN_CLIENTS, m.XedAdminClients()), as_json)
        elif action == "unplug":
            _ask(path, timeout, Op.ADMIN_UNPLUG, m.XedAdminUnplug())
            text = "unplugged: ioctls answer ENODEV, mappings read zeros"
            _print_done(text, {"unplugged": True}, as_json)
        elif action == "gt-reset":
            gt = int(value or 0)
            reply = _ask(path, timeout, Op.ADMIN_GT_RESET, m.XedAdminGtReset(gt_id=gt))
            text = f"gt{gt} reset: {reply.banned} queue(s) with a job running banned"
            _print_done(text, {"gt": gt, "banned": reply.banned}, as_json)
        elif action == "replug":
            _ask(path, timeout, Op.ADMIN_REPLUG, m.XedAdminReplug())
            text = "plugged in: a new device; connections opened before stay ENODEV"
            _print_done(text, {"unplugged": False}, as_json)
    except AdminError as exc:
        print(f"xed ctl: {exc}", file=sys.stderr)
        return exc.status
    return 0


def _print_status(path: Path, reply: m.XedAdminStatusReply, as_json: bool) -> None:
    data = to_wire(reply)
    if as_json:
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
    ("node", "NODE"),
    ("channels", "CHANNELS"),
    ("bos", "BOS"),
    ("bo_bytes", "BO BYTES"),
    ("vms", "VMS"),
    ("vmas", "VMAS"),
    ("exec_queues", "QUEUES"),
    ("mmio_regions", "MMIO"),
    ("barriers", "BARRIERS"),
    ("doorbell_rings", "DOORBELLS"),
    ("vm_exports", "VM EXPORTS"),
    ("aux_vms", "AUX VMS"),
    ("exported", "EXPORTED"),
    ("blocking", "BLOCKING"),
    ("uid_objects", "UID OBJECTS"),
)


def _print_objects(reply: m.XedAdminObjectsReply, as_json: bool) -> None:
    data = to_wire(reply)
    if as_json:
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
    if as_json:
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
    if as_json:
        print(json.dumps(rows, sort_keys=True))
        return
    limits = to_wire(reply.limits)
    print("limits: " + ", ".join(f"{key} {value}" for key, value in limits.items()))
    table = [[title for _key, title in _COLUMNS]]
    table += [[str(row[key]) for key, _title in _COLUMNS] for row in rows]
    _print_table(table)
