"""The admin role's ops: what `xed ctl` asks and tells the daemon."""

from __future__ import annotations

from errno import EALREADY, EINVAL

from .. import messages as m
from .spec import Op, OpSpec, Role

SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        op=Op.ADMIN_STATUS,
        request=m.XedAdminStatus,
        reply=m.XedAdminStatusReply,
        roles=frozenset({Role.ADMIN}),
        doc="Object counts and counters of the whole device.",
        errors=(),
    ),
    OpSpec(
        op=Op.ADMIN_CLIENTS,
        request=m.XedAdminClients,
        reply=m.XedAdminClientsReply,
        roles=frozenset({Role.ADMIN}),
        doc="Every connection with its pid, uid, role, objects and barrier counts.",
        errors=(),
    ),
    OpSpec(
        op=Op.ADMIN_OBJECTS,
        request=m.XedAdminObjects,
        reply=m.XedAdminObjectsReply,
        roles=frozenset({Role.ADMIN}),
        doc="Object counts, and the first 448 dma-bufs and exported VMs with who holds them "
        "(what one reply holds; the counts say how many there are).",
        errors=(),
    ),
    OpSpec(
        op=Op.ADMIN_STATS,
        request=m.XedAdminStats,
        reply=m.XedAdminStatsReply,
        roles=frozenset({Role.ADMIN}),
        doc="Per-op counts, refusals by errno and latency percentiles, since start.",
        errors=(),
    ),
    OpSpec(
        op=Op.ADMIN_LOG_LEVEL,
        request=m.XedAdminLogLevel,
        reply=m.Empty,
        roles=frozenset({Role.ADMIN}),
        doc="Change the daemon's log level now, for every connection.",
        errors=((EINVAL, "not one of debug, info, warning, error"),),
    ),
    OpSpec(
        op=Op.ADMIN_GT_RESET,
        request=m.XedAdminGtReset,
        reply=m.XedAdminGtResetReply,
        roles=frozenset({Role.ADMIN}),
        doc=(
            "Reset a GT (xe_gt_reset, what debugfs gtN/force_reset asks; `xec run` "
            "serves those files): every exec queue on it with a job under way, its "
            "batch started and not done, is banned (EXEC_QUEUE_BANNED, its job ends "
            "as a GPU fault, later EXECs ECANCELED), as xe's GuC submission bans it; "
            "queues with nothing running go on with what they hold."
        ),
        errors=((EINVAL, "gt_id names no GT"),),
    ),
    OpSpec(
        op=Op.ADMIN_UNPLUG,
        request=m.XedAdminUnplug,
        reply=m.Empty,
        roles=frozenset({Role.ADMIN}),
        doc=(
            "Unplug (drm_dev_unplug): every other role's ops answer ENODEV, for good "
            "on the connections open now, and new connections' HELLO too until "
            "REPLUG; the device stops (batches are dropped and their fences never "
            "signal, parked fence waits answer ENODEV, debuggers get a detach event, "
            "barrier and doorbell writes are no longer seen or counted) and every "
            "mapping of its memory reads zeros, with no fault: BOs, dma-bufs, MMIO "
            "regions, barrier pages (UNPLUG_NOTICE tells clients, which put private "
            "zero pages under their mappings)."
        ),
        errors=((EALREADY, "already unplugged"),),
    ),
    OpSpec(
        op=Op.ADMIN_REPLUG,
        request=m.XedAdminReplug,
        reply=m.Empty,
        roles=frozenset({Role.ADMIN}),
        doc=(
            "Plug a new device in, as a driver rebind makes a new drm_device: a new "
            "identity (HELLO's instance), empty memory, a new BAR0 and notice page. "
            "New connections reach it; connections opened before the unplug stay "
            "ENODEV until closed (their objects belong to the device that went), as "
            "do that device's dma-bufs and exported VMs, and their mappings stay on "
            "zero pages."
        ),
        errors=((EALREADY, "not unplugged"),),
    ),
)
