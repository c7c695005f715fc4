"""The op table: every request the daemon understands, one module per family of ops.

Op numbers follow the kernel's: DRM core ioctls keep their DRM_IOCTL number, xe ioctls
are DRM_COMMAND_BASE (0x40) + DRM_XE_*, and xed's own requests (the handshake, mmap of a
fake offset, admin) live at 0x100 and above. The table says, for each op, the record it
carries, the record it answers with, how many descriptors travel each way, which roles
may send it and every errno it can answer with. The daemon dispatches on it, the
client library encodes with it, and REFERENCE.md is generated from it.
"""

from __future__ import annotations

from .. import messages as m
from . import admin, debug, drm, verbs, vm_export, xe
from .spec import (
    ANY_FDS,
    ANY_ROLE,
    COMMON_ERRORS,
    DRM_COMMAND_BASE,
    DRM_ROLES,
    FDS_OUT_ERRORS,
    HELLO_ROLES,
    Event,
    Node,
    Op,
    OpSpec,
    Role,
)

__all__ = [
    "ANY_FDS",
    "ANY_ROLE",
    "COMMON_ERRORS",
    "DRM_COMMAND_BASE",
    "DRM_ROLES",
    "EVENTS",
    "FDS_OUT_ERRORS",
    "HELLO_ROLES",
    "SPECS",
    "Event",
    "Node",
    "Op",
    "OpSpec",
    "Role",
]


def _index(*tables: tuple[OpSpec, ...]) -> dict[Op, OpSpec]:
    """One entry per op: an op in two tables is a bug a dict would hide, keeping the
    last (tests/test_reference.py checks that none is missing)."""
    specs: dict[Op, OpSpec] = {}
    for spec in (spec for table in tables for spec in table):
        if spec.op in specs:
            raise ValueError(f"{spec.op.name} is in the op table twice")
        specs[spec.op] = spec
    return specs


SPECS: dict[Op, OpSpec] = _index(
    drm.SPECS, xe.SPECS, vm_export.SPECS, verbs.SPECS, debug.SPECS, admin.SPECS
)

EVENTS: dict[Event, type] = {
    Event.EXEC_QUEUE_BANNED: m.ExecQueueBanned,
    Event.PROTOCOL_ERROR: m.ProtocolErrorInfo,
    Event.AUX_RANGE_INVALIDATED: m.AuxRangeInvalidated,
    Event.DEBUG_EVENT: m.DebugEventInfo,
    Event.DAEMON_STOPPING: m.DaemonStopping,
}
