"""Every reply fits one datagram at its widest, whatever the clients hold.

A reply that cannot be encoded is EIO for the asker (connection.py), so a list a client can
make long must be cut where one datagram ends: each reply is built here with every
field at its widest and every list as long as the schema allows, or as the daemon cuts
it (ADMIN_CLIENTS_LISTED, ADMIN_OBJECTS_LISTED, eudebug VIEW_*, ...), and encoded.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import attrs
import pytest
from conftest import baseline, run_client
from test_vm_export import settle_to

from clients import Device
from clients.daemon import DaemonProcess
from protocols import (
    COMMON_ERRORS,
    FDS_OUT_ERRORS,
    MAX_DATAGRAM,
    SPECS,
    Op,
    encode_reply,
)
from protocols import messages as m
from protocols.constants import PAGE_SIZE
from protocols.errors import errno_name
from xed.device.eudebug import VIEW_BINDINGS, VIEW_BINDINGS_PER_VM, VIEW_VMS
from xed.ioctl import ADMIN_CLIENTS_LISTED, ADMIN_OBJECTS_LISTED

INTS = {"u16": 2**16 - 1, "u32": 2**32 - 1, "u64": 2**64 - 1, "s32": -(2**31), "s64": -(2**63)}
# Every string in a reply is ASCII the daemon chose (kinds, roles, op and errno names)
# or at most max_len bytes of UTF-8 (a command name, file.py _comm): one byte a character
WIDE_CHAR = "x"


def widest(cls: type, cuts: dict[str, int] | None = None) -> Any:
    """`cls` with every field at its widest; lists at their schema's max_items, or at
    `cuts[name]` where the daemon cuts them shorter."""
    kw: dict[str, Any] = {}
    for f in attrs.fields(cls):
        meta = f.metadata
        kind = meta["kind"]
        if kind == "int":
            kw[f.name] = INTS[meta["wire"]]
        elif kind in ("array", "upto"):
            kw[f.name] = (INTS[meta["item"]],) * meta["array"]
        elif kind == "str":
            kw[f.name] = WIDE_CHAR * meta["max_len"]
        elif kind == "bin":
            kw[f.name] = b"\xff" * meta["max_len"]
        elif kind == "records":
            count = (cuts or {}).get(f.name, meta["max_items"])
            kw[f.name] = (widest(meta["record"]),) * count
        else:
            assert kind == "nested", (cls, f.name)
            kw[f.name] = widest(meta["nested"])
    return cls(**kw)


def _stats_at_widest() -> m.XedAdminStatsReply:
    """Every op, each with every errno it can be counted with (the names are the
    daemon's, not the schema's widest: errno_name() writes them)."""
    ops = []
    for op, spec in sorted(SPECS.items()):
        errs = {e for e, _ in spec.errors + COMMON_ERRORS + FDS_OUT_ERRORS} | {errno.EIO}
        counts = tuple(m.XedErrnoCount(errno=errno_name(e), count=INTS["u64"]) for e in errs)
        ops.append(attrs.evolve(widest(m.XedOpStats), op=op.name, errors=counts))
    return attrs.evolve(widest(m.XedAdminStatsReply), ops=tuple(ops))


def _debug_view_at_widest() -> m.XedDebugAttachReply:
    """VIEW_VMS VMs, VIEW_BINDINGS bindings in all, at most VIEW_BINDINGS_PER_VM each."""
    binding = widest(m.XedDebugBinding)
    left, vms = VIEW_BINDINGS, []
    for _ in range(VIEW_VMS):
        shown = min(left, VIEW_BINDINGS_PER_VM)
        left -= shown
        vms.append(attrs.evolve(widest(m.XedDebugVm), bindings=(binding,) * shown))
    return m.XedDebugAttachReply(vms=tuple(vms))


# where the daemon's reply is shorter than its schema allows
CUT: dict[Op, Any] = {
    Op.ADMIN_CLIENTS: lambda: widest(m.XedAdminClientsReply, {"clients": ADMIN_CLIENTS_LISTED}),
    Op.ADMIN_OBJECTS: lambda: widest(m.XedAdminObjectsReply, {"exported": ADMIN_OBJECTS_LISTED}),
    Op.ADMIN_STATS: _stats_at_widest,
    Op.DEBUG_ATTACH: _debug_view_at_widest,
}
# the device's own description, the same for every client: no client makes it longer
FIXED = {Op.XE_DEVICE_QUERY}


@pytest.mark.parametrize("op", sorted(set(SPECS) - FIXED), ids=lambda op: op.name)
def test_reply_at_its_widest_fits_one_datagram(op: Op) -> None:
    """The op's reply, every field and list at its widest (or cut as the daemon cuts
    it), encodes in one datagram."""
    reply = CUT[op]() if op in CUT else widest(SPECS[op].reply)
    assert len(encode_reply(2**32 - 1, op, 0, reply)) <= MAX_DATAGRAM


def test_admin_objects_with_more_exported_than_fit_lists_the_first(make_daemon: Any) -> None:
    """ADMIN_OBJECTS with more dma-bufs alive than one reply holds lists the first
    ADMIN_OBJECTS_LISTED; the counts say how many there are in all."""
    daemon: DaemonProcess = make_daemon(nofile=8192)
    before = baseline(daemon)
    alive = ADMIN_OBJECTS_LISTED + 16
    with Device.open(daemon.socket_path) as dev:
        for _ in range(alive):  # the daemon keeps each dma-buf while its BO has a handle
            os.close(dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE)))
        with Device.open(daemon.socket_path, role="admin") as adm:
            reply = adm.ioctl(Op.ADMIN_OBJECTS, m.XedAdminObjects())
        assert len(reply.exported) == ADMIN_OBJECTS_LISTED
        assert reply.objects.dma_bufs == alive
    assert settle_to(daemon, before) == before


NOT_UTF8 = """
import ctypes, os
from protocols.constants import PAGE_SIZE
ctypes.CDLL(None).prctl(15, b"\\xff\\xfe\\xc3" + "é".encode() * 6, 0, 0, 0)  # PR_SET_NAME
with Device.open(argv[0]) as renamed:
    renamed.gem_create(PAGE_SIZE)
    with Device.open(argv[0], role="admin") as adm:
        listed = [c.comm for c in adm.admin_clients() if c.client_id == renamed.client_id]
result = listed
"""


def test_command_name_not_utf8_is_shown_replaced_and_cut(fresh_daemon: DaemonProcess) -> None:
    """A client whose command name is not UTF-8 is served and listed, its name's
    undecodable bytes replaced and the whole cut to 16 bytes of UTF-8; it ended the
    daemon (UnicodeDecodeError in the accept loop)."""
    (comm,) = run_client(fresh_daemon.socket_path, NOT_UTF8, str(fresh_daemon.socket_path))
    assert comm == "\ufffd" * 3 + "é" * 3  # 9 + 6 bytes; a fourth é would pass 16
    assert len(comm.encode()) <= 16
    with Device.open(fresh_daemon.socket_path) as dev:
        assert dev.gem_create(PAGE_SIZE)
