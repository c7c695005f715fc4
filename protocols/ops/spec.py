"""What an op is: its number, the roles that may send it, the errors any op can answer
with, and OpSpec, the entry each op has in the table (the modules beside this one)."""

from __future__ import annotations

import enum
from errno import (
    EACCES,
    EINVAL,
    EMFILE,
    EMSGSIZE,
    ENODEV,
    ENOMEM,
    ENOTTY,
    EPROTO,
)

import attrs

DRM_COMMAND_BASE = 0x40


class Op(enum.IntEnum):
    VERSION = 0x00
    GEM_CLOSE = 0x09
    GEM_FLINK = 0x0A
    GEM_OPEN = 0x0B
    PRIME_HANDLE_TO_FD = 0x2D
    PRIME_FD_TO_HANDLE = 0x2E
    SYNCOBJ_CREATE = 0xBF
    SYNCOBJ_DESTROY = 0xC0
    SYNCOBJ_HANDLE_TO_FD = 0xC1
    SYNCOBJ_FD_TO_HANDLE = 0xC2
    SYNCOBJ_WAIT = 0xC3
    SYNCOBJ_RESET = 0xC4
    SYNCOBJ_SIGNAL = 0xC5
    SYNCOBJ_TIMELINE_WAIT = 0xCA
    SYNCOBJ_QUERY = 0xCB
    SYNCOBJ_TRANSFER = 0xCC
    SYNCOBJ_TIMELINE_SIGNAL = 0xCD
    XE_DEVICE_QUERY = DRM_COMMAND_BASE + 0x00
    XE_GEM_CREATE = DRM_COMMAND_BASE + 0x01
    XE_GEM_MMAP_OFFSET = DRM_COMMAND_BASE + 0x02
    XE_VM_CREATE = DRM_COMMAND_BASE + 0x03
    XE_VM_DESTROY = DRM_COMMAND_BASE + 0x04
    XE_VM_BIND = DRM_COMMAND_BASE + 0x05
    XE_EXEC_QUEUE_CREATE = DRM_COMMAND_BASE + 0x06
    XE_EXEC_QUEUE_DESTROY = DRM_COMMAND_BASE + 0x07
    XE_EXEC_QUEUE_GET_PROPERTY = DRM_COMMAND_BASE + 0x08
    XE_EXEC = DRM_COMMAND_BASE + 0x09
    XE_WAIT_USER_FENCE = DRM_COMMAND_BASE + 0x0A
    XE_VM_GET_PROPERTY = DRM_COMMAND_BASE + 0x0F
    # proposals not (yet) in xe_drm.h
    XE_MMIO_REGION_OPEN = DRM_COMMAND_BASE + 0x20
    XE_MMIO_REGION_CLOSE = DRM_COMMAND_BASE + 0x21
    XE_VM_EXPORT = DRM_COMMAND_BASE + 0x22
    HELLO = 0x100
    MMAP = 0x101
    DMA_BUF_MMAP = 0x102
    DMA_BUF_IOCTL_SYNC = 0x103
    DMA_BUF_LLSEEK = 0x104
    UNPLUG_NOTICE = 0x105
    DMA_BUF_EXPORT_SYNC_FILE = 0x106
    DMA_BUF_IMPORT_SYNC_FILE = 0x107
    SYNC_FILE_MERGE = 0x108
    SYNC_FILE_INFO = 0x109
    SW_SYNC_TIMELINE_CREATE = 0x10A
    SW_SYNC_CREATE_FENCE = 0x10B
    SW_SYNC_INC = 0x10C
    SW_SYNC_CLOSED = 0x10D
    SYNCOBJ_EVENTFD_REGISTER = 0x10E
    SYNCOBJ_EVENTFD_WAIT = 0x10F
    DMA_BUF_ATTACH = 0x110
    PCI_BARRIER_ACKS = 0x111
    AUX_VM_IMPORT = 0x120
    AUX_VM_RESOLVE = 0x121
    AUX_VM_UNWATCH = 0x122
    AUX_VM_RELEASE = 0x123
    AUX_VM_INVALIDATE_DONE = 0x124
    # verbs, spoken to the IB-like aux driver's own socket (not to the daemon)
    IBV_OPEN_CONTEXT = 0x200
    IBV_REG_MR = 0x201
    IBV_DEREG_MR = 0x202
    IBV_CREATE_QP = 0x203
    IBV_CONNECT_QP = 0x204
    IBV_POST_SEND = 0x205
    HOST_MEMORY_REGISTER = 0x130
    HOST_MEMORY_INVALIDATE = 0x131
    DEBUG_ATTACH = 0x140
    DEBUG_DETACH = 0x141
    DEBUG_VM_ACCESS = 0x142
    ADMIN_STATUS = 0x180
    ADMIN_CLIENTS = 0x181
    ADMIN_UNPLUG = 0x182
    ADMIN_REPLUG = 0x183
    ADMIN_STATS = 0x184
    ADMIN_LOG_LEVEL = 0x185
    ADMIN_OBJECTS = 0x186
    ADMIN_GT_RESET = 0x187


class Event(enum.IntEnum):
    EXEC_QUEUE_BANNED = 1
    PROTOCOL_ERROR = 2  # a datagram too broken to tell which request it was
    AUX_RANGE_INVALIDATED = 3
    DEBUG_EVENT = 4
    DAEMON_STOPPING = 5


class Role(enum.Enum):
    DRM = "drm"
    AUX = "aux"
    DEBUGGER = "debugger"
    ADMIN = "admin"
    # not a connection role: whoever speaks on an exported object's descriptor (a daemon
    # importing another daemon's dma-buf); never accepted in HELLO
    PEER = "peer"
    # not a daemon role either: an application on the IB-like aux driver's socket
    VERBS = "verbs"


HELLO_ROLES = frozenset({Role.DRM, Role.AUX, Role.DEBUGGER, Role.ADMIN})


class Node(enum.Enum):
    """The device node a drm connection stands for (HELLO.node)."""

    PRIMARY = "primary"  # /dev/dri/card0
    RENDER = "render"  # /dev/dri/renderD128: only DRM_RENDER_ALLOW ops (OpSpec.render_allow)


ANY_FDS = -1
DRM_ROLES = frozenset({Role.DRM})
ANY_ROLE = HELLO_ROLES

# errors every op can answer with, besides its own
COMMON_ERRORS: tuple[tuple[int, str], ...] = (
    (
        ENODEV,
        "the device is unplugged, or the connection was opened on a device since "
        "unplugged (after REPLUG too: the replugged device is a new one); every op but "
        "the admin role's and the aux driver's AUX_VM_UNWATCH, AUX_VM_RELEASE and "
        "AUX_VM_INVALIDATE_DONE",
    ),
    (EPROTO, "sent before HELLO, or a second HELLO"),
    (ENOTTY, "unknown op"),
    (EACCES, "op not allowed for the connection's role"),
    (EACCES, "op not DRM_RENDER_ALLOW, on a render node (GEM_FLINK, GEM_OPEN)"),
    (EINVAL, "malformed message: wrong types, unknown fields, out-of-range values"),
    (EINVAL, "descriptors attached that the op does not take (they are closed)"),
    (EMSGSIZE, "datagram larger than the limit"),
    (ENOMEM, "the daemon ran out of memory or descriptors answering it (counted in limits_hit)"),
    (EMFILE, "the same, for an op that hands a descriptor back"),
)
# [limits] (xed/config.py LimitsConfig): a client that reaches one is refused, not others
RESERVE_FD = (EMFILE, "the daemon is down to its last limits.descriptor_reserve descriptors")
RESERVE = (ENOMEM, "the daemon is down to its last limits.descriptor_reserve descriptors")
EXPORTED = (ENOMEM, "limits.exported: this client's dma-bufs and VM exports still alive")
GONE = (ENODEV, "the descriptor is an exported object of a device since unplugged")
# checked before the handler runs: the kernel never holds a caller's descriptors for
# it, so a uid may not make the daemon hold more than this many of its own (EMFILE, a
# descriptor table with no room, as the per-uid unread descriptors are refused)
LENT = (
    EMFILE,
    "this uid's blocking requests, over all its connections, already hold "
    "limits.lent_descriptors_per_uid lent descriptors: refused at once, the connection "
    "goes on",
)

# errors every op whose reply carries descriptors can answer with, besides its own: the
# descriptors could not be given (the request is refused, the connection goes on)
FDS_OUT_ERRORS: tuple[tuple[int, str], ...] = (
    (
        EMFILE,
        "this connection left limits.unread_descriptors descriptors of earlier "
        "replies unread, or its uid limits.unread_descriptors_per_uid over all its "
        "connections",
    ),
    (
        EMFILE,
        "the kernel refused the daemon more descriptors in flight (its budget, "
        "RLIMIT_NOFILE, shared by every client)",
    ),
)


@attrs.frozen(kw_only=True)
class OpSpec:
    op: Op
    request: type
    reply: type
    doc: str
    errors: tuple[tuple[int, str], ...]
    roles: frozenset[Role] = DRM_ROLES
    fds_in: int = 0
    fds_out: int = 0  # ANY_FDS: as many as the answer needs, up to MAX_FDS
    # blocking ops run beside the connection's reader so a disconnect still cancels them
    blocking: bool = False
    # DRM_RENDER_ALLOW in drm_ioctl.c's table: may be sent on a render node (every xe
    # ioctl is; the DRM core's GEM_FLINK and GEM_OPEN are DRM_AUTH only)
    render_allow: bool = True
    # answered after an unplug too: the aux driver letting go of what it holds, which the
    # proposal does with in-kernel calls (xe_vm_put, the notifier's return) that an
    # unplugged device never refuses; refusing them would leak what it let go of
    while_unplugged: bool = False


# an MBZ field (pad, reserved, extensions) not zero: what xe answers
MBZ = (EINVAL, "extensions, pad or reserved not zero")
