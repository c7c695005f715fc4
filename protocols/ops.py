"""The op table: every request the daemon understands, in one place.

Op numbers follow the kernel's: DRM core ioctls keep their DRM_IOCTL number, xe ioctls
are DRM_COMMAND_BASE (0x40) + DRM_XE_*, and xed's own requests (the handshake, mmap of a
fake offset, admin) live at 0x100 and above. The table says, for each op, the record it
carries, the record it answers with, how many descriptors travel each way, which roles
may send it and every errno it can answer with. The daemon dispatches on it, the
client library encodes with it, and REFERENCE.md is generated from it.
"""

from __future__ import annotations

import enum
from errno import (
    E2BIG,
    EACCES,
    EAGAIN,
    EALREADY,
    EBADF,
    EBUSY,
    ECANCELED,
    EEXIST,
    EFAULT,
    EINVAL,
    EIO,
    EMFILE,
    EMSGSIZE,
    ENODEV,
    ENOENT,
    ENOMEM,
    ENOSPC,
    ENOTTY,
    EOPNOTSUPP,
    EPERM,
    EPROTO,
    ESRCH,
    ETIME,
)

import attrs

from . import messages as m

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
    SYNCOBJ_WAIT = 0xC3
    SYNCOBJ_RESET = 0xC4
    SYNCOBJ_SIGNAL = 0xC5
    XE_DEVICE_QUERY = DRM_COMMAND_BASE + 0x00
    XE_GEM_CREATE = DRM_COMMAND_BASE + 0x01
    XE_GEM_MMAP_OFFSET = DRM_COMMAND_BASE + 0x02
    XE_VM_CREATE = DRM_COMMAND_BASE + 0x03
    XE_VM_DESTROY = DRM_COMMAND_BASE + 0x04
    XE_VM_BIND = DRM_COMMAND_BASE + 0x05
    XE_EXEC_QUEUE_CREATE = DRM_COMMAND_BASE + 0x06
    XE_EXEC_QUEUE_DESTROY = DRM_COMMAND_BASE + 0x07
    XE_EXEC = DRM_COMMAND_BASE + 0x09
    XE_WAIT_USER_FENCE = DRM_COMMAND_BASE + 0x0A
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
    DMA_BUF_ATTACH = 0x110
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
_RESERVE_FD = (EMFILE, "the daemon is down to its last limits.descriptor_reserve descriptors")
_RESERVE = (ENOMEM, "the daemon is down to its last limits.descriptor_reserve descriptors")
_EXPORTED = (ENOMEM, "limits.exported: this client's dma-bufs and VM exports still alive")
_GONE = (ENODEV, "the descriptor is an exported object of a device since unplugged")
# checked before the handler runs: the kernel never holds a caller's descriptors for
# it, so a uid may not make the daemon hold more than this many of its own (EMFILE, a
# descriptor table with no room, as the per-uid unread descriptors are refused)
_LENT = (
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


_MBZ = (EINVAL, "extensions, pad or reserved not zero")
_VERBS = frozenset({Role.VERBS})
_NO_CONTEXT = (EPROTO, "no IBV_OPEN_CONTEXT yet on this connection")
_DEAD_CONTEXT = (
    EIO,
    "the daemon behind the context went away (it restarted), or its device was unplugged: close it",
)


def _verbs() -> tuple[OpSpec, ...]:
    """The IB-like aux driver's ops (clients/ib), served on its own socket."""
    return (
        OpSpec(
            op=Op.IBV_OPEN_CONTEXT,
            request=m.IbvOpenContext,
            reply=m.IbvOpenContextReply,
            roles=_VERBS,
            fds_in=1,
            doc="Open a context with our exported VM attached; the aux driver imports it "
            "from the daemon on behalf of our pid (from SO_PEERCRED). While the daemon is "
            "away (restarting), the answer waits for it to come back.",
            errors=(
                (
                    EIO,
                    "the daemon went away (during the import, or since this connection's "
                    "context was opened: it is dead)",
                ),
                (EBUSY, "this connection has a context already"),
                (EINVAL, "not a VM descriptor of the aux driver's daemon"),
                (EPERM, "we are not the process that exported the VM"),
                (ENOENT, "the VM is closed or banned"),
            ),
        ),
        OpSpec(
            op=Op.IBV_REG_MR,
            request=m.IbvRegMr,
            reply=m.IbvRegMrReply,
            roles=_VERBS,
            doc="Register [addr, addr+length) of our VM: the aux driver maps the BOs there. "
            "Access 0 is local only (read): a peer reaches the region only with the rkey "
            "and REMOTE_WRITE / REMOTE_READ granted here. lkey and rkey are random.",
            errors=(
                (EIO, "the daemon behind the context went away (before or during the call)"),
                _NO_CONTEXT,
                (EINVAL, "unknown access flags, REMOTE_WRITE without LOCAL_WRITE, or length 0"),
                (EFAULT, "some address of the range is not bound to a BO"),
                (EFAULT, "memory the driver cannot map safely, or read-only with write access"),
                (E2BIG, "more than 8 BOs behind the range, or more than 64 bindings"),
            ),
        ),
        OpSpec(
            op=Op.IBV_DEREG_MR,
            request=m.IbvDeregMr,
            reply=m.Empty,
            roles=_VERBS,
            doc="Forget a memory region.",
            errors=(_DEAD_CONTEXT, _NO_CONTEXT, (ENOENT, "no such lkey in this context")),
        ),
        OpSpec(
            op=Op.IBV_CREATE_QP,
            request=m.IbvCreateQp,
            reply=m.IbvCreateQpReply,
            roles=_VERBS,
            fds_out=1,
            doc="A queue pair; its completion queue is the attached shared-memory ring.",
            errors=(_DEAD_CONTEXT, _NO_CONTEXT),
        ),
        OpSpec(
            op=Op.IBV_CONNECT_QP,
            request=m.IbvConnectQp,
            reply=m.Empty,
            roles=_VERBS,
            doc="Name a QP on the same aux driver as our QP's remote. Two-sided, as RC "
            "QPs are: the pair is connected (work can be posted) once the remote QP has "
            "named ours too; naming it again is allowed.",
            errors=(
                _DEAD_CONTEXT,
                _NO_CONTEXT,
                (ENOENT, "no such QP (ours or the remote one)"),
                (EINVAL, "our QP itself"),
                (EBUSY, "our QP named another already, or the remote QP named another"),
            ),
        ),
        OpSpec(
            op=Op.IBV_POST_SEND,
            request=m.IbvPostSend,
            reply=m.Empty,
            roles=_VERBS,
            doc="RDMA WRITE or READ between our MR and the peer's, one memcpy between the "
            "mapped pages; the outcome is a completion in the QP's ring: LOC_PROT_ERR for "
            "an lkey not ours or a range outside it (or a READ into a region without "
            "LOCAL_WRITE), REM_ACCESS_ERR for an rkey not of the connected peer's "
            "context, without the REMOTE_WRITE / REMOTE_READ the op needs, or a range "
            "outside it, RETRY_EXC_ERR once the peer's context is closed.",
            errors=(
                _DEAD_CONTEXT,
                _NO_CONTEXT,
                (ENOENT, "no such QP"),
                (EINVAL, "unknown opcode, or the QP is not connected (both sides named)"),
            ),
        ),
    )


SPECS: dict[Op, OpSpec] = {
    s.op: s
    for s in (
        OpSpec(
            op=Op.HELLO,
            request=m.Hello,
            reply=m.HelloReply,
            roles=ANY_ROLE,
            doc=(
                "Handshake. Must be the first message; chooses the connection's role. Role "
                "drm opens a new drm file on the node named and answers with its token; "
                "with `join` the connection is instead a channel of the live drm file the "
                "token names: its requests act on that file and are answered on the "
                "channel, closing it releases nothing of the file, and the file's release "
                "(its own connection's last close) closes it."
            ),
            errors=(
                (EPROTO, "incompatible major version"),
                (EINVAL, "unknown role (or `peer`, which is not a connection role)"),
                (EINVAL, "node neither primary nor render"),
                (EINVAL, "join with a role other than drm"),
                (EACCES, "the peer's credentials do not allow this role ([admin], [aux])"),
                (ENOENT, "join: no live drm file has that token (it was released)"),
                (EACCES, "join: the drm file was opened by another uid, and we are not root"),
                (
                    EMFILE,
                    "the daemon has no descriptor left for the connection: it answers, "
                    "then hangs up",
                ),
                (
                    EMFILE,
                    "this uid has limits.connections_per_uid connections open already "
                    "(every role, channels too): it answers, then hangs up",
                ),
            ),
        ),
        OpSpec(
            op=Op.VERSION,
            request=m.DrmVersion,
            reply=m.DrmVersionReply,
            roles=ANY_ROLE,
            doc="DRM_IOCTL_VERSION: driver name and version. The cheapest ioctl there is.",
            errors=(),
        ),
        OpSpec(
            op=Op.XE_DEVICE_QUERY,
            request=m.DrmXeDeviceQuery,
            reply=m.DrmXeDeviceQueryReply,
            roles=frozenset({Role.DRM, Role.ADMIN}),
            doc=(
                "Engines, memory regions (sizes and used bytes), config info[], the GT "
                "list, the hwconfig blob (empty), OA units (none), or the proposal's MMIO "
                "regions, as a record; a C library lays it out as the uAPI's "
                "drm_xe_query_* (the size probe, `size` != that size: EINVAL, and a data "
                "pointer it cannot write: EFAULT, or ENOSPC for MEM_REGIONS, as xe does)."
            ),
            errors=(
                _MBZ,
                (EINVAL, "unknown query; GT_TOPOLOGY, ENGINE_CYCLES, UC_FW_VERSION: not emulated"),
                (ENODEV, "PXP_STATUS: the device has no PXP"),
                (ENODEV, "EU_STALL: the device has no EU stall sampling"),
            ),
        ),
        OpSpec(
            op=Op.XE_GEM_CREATE,
            request=m.DrmXeGemCreate,
            reply=m.DrmXeGemCreateReply,
            doc="Create a buffer object backed by its own memfd.",
            errors=(
                (EINVAL, "pad or reserved not zero"),
                (EINVAL, "placement empty or names a region the device lacks"),
                (EINVAL, "unknown flags"),
                (EINVAL, "handle not zero on input"),
                (EINVAL, "size zero or not a multiple of the page size ([device] page_size)"),
                (EINVAL, "NEEDS_VISIBLE_VRAM without a VRAM placement"),
                (EINVAL, "cpu_caching not WB or WC"),
                (EINVAL, "cpu_caching WB with a VRAM placement or SCANOUT"),
                (ENOENT, "vm_id names no VM of this file"),
                (ENOMEM, "fits no region of the placement (VRAM, visible VRAM, system)"),
                _RESERVE,
                (ENOMEM, "limits.bos: this client holds that many GEM handles already"),
                (ENOSPC, "larger than the fake mmap offset space (about 1 TiB)"),
                (EINVAL, "extensions not zero (no extension is emulated; checked last)"),
            ),
        ),
        OpSpec(
            op=Op.GEM_CLOSE,
            request=m.DrmGemClose,
            reply=m.Empty,
            doc="Release a GEM handle; the object lives on while VMAs or mappings hold it.",
            errors=((EINVAL, "no such handle (pad is not checked, as in DRM)"),),
        ),
        OpSpec(
            op=Op.GEM_FLINK,
            request=m.DrmGemFlink,
            reply=m.DrmGemFlinkReply,
            render_allow=False,
            doc=(
                "A global name for the object behind a handle: the same name for every "
                "FLINK of the object, until its last handle (in any file) is closed. "
                "GEM_OPEN by a file of another uid than every flinker's finds no such name "
                "(xed: the kernel asks for DRM authentication instead)."
            ),
            errors=((ENOENT, "no such handle"),),
        ),
        OpSpec(
            op=Op.GEM_OPEN,
            request=m.DrmGemOpen,
            reply=m.DrmGemOpenReply,
            render_allow=False,
            doc=(
                "A new handle to the object a global name names (a new one each time; "
                "PRIME_FD_TO_HANDLE of the object's dma-buf still gives the handle it "
                "registered, as drm_prime does)."
            ),
            errors=(
                (ENOENT, "no such name (never given, or the object's last handle closed)"),
                (ENOENT, "a name only files of other uids flinked, and we are not root"),
                (ENOMEM, "limits.bos: this client holds that many GEM handles already"),
            ),
        ),
        OpSpec(
            op=Op.XE_GEM_MMAP_OFFSET,
            request=m.DrmXeGemMmapOffset,
            reply=m.DrmXeGemMmapOffsetReply,
            doc=(
                "The fake offset at which MMAP maps the BO; allowed for this connection only. "
                "With DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER and handle 0: the offset of this "
                "file's PCI barrier page."
            ),
            errors=(
                _MBZ,
                (EINVAL, "unknown flags"),
                (EINVAL, "PCI_BARRIER: a device without VRAM (not discrete), or handle not 0"),
                (EINVAL, "PCI_BARRIER: host pages over 4 KiB ([device] page_size = 65536)"),
                (ENOENT, "no such handle"),
                (
                    ENODEV,
                    "a foreign import with dma_buf.imported_mmap = refuse (i915's answer; "
                    "the default, xe, gives the offset and the mapping faults: SIGBUS)",
                ),
            ),
        ),
        OpSpec(
            op=Op.MMAP,
            request=m.XedMmap,
            reply=m.XedMmapReply,
            fds_out=1,
            doc=(
                "mmap(2) of the DRM file: the daemon checks the request as the kernel's mmap "
                "handler would and answers with the descriptor to map. VRAM outside a small "
                "BAR (a BO created without NEEDS_VISIBLE_VRAM) answers an empty memfd: the "
                "map succeeds and every access is SIGBUS, as xe's fault handler answers."
            ),
            errors=(
                (EINVAL, "length zero, or offset not page aligned"),
                (EINVAL, "no object at this offset (or offset not at its start)"),
                (EACCES, "the offset belongs to another connection"),
                (EINVAL, "length larger than the object"),
                (EINVAL, "private (copy-on-write) mapping, or neither shared nor private"),
                (EINVAL, "unknown prot bits"),
                (EINVAL, "an MMIO region: length other than the region's size"),
                (EINVAL, "the barrier page: more than 4096 bytes, private, PROT_READ/EXEC"),
                (EINVAL, "the barrier offset with host pages over 4 KiB"),
                _RESERVE_FD,
            ),
        ),
        OpSpec(
            op=Op.UNPLUG_NOTICE,
            request=m.XedUnplugNotice,
            reply=m.XedMmapReply,
            roles=frozenset({Role.DRM, Role.AUX, Role.DEBUGGER}),
            fds_out=1,
            doc=(
                "No kernel equivalent (the kernel zaps mappings itself; here clients map "
                "memory themselves, so they are told to). The device's unplug notice: a "
                "read-only page (map it shared, PROT_READ) whose first u32 reads 0 while "
                "the device lives and 1, for good, once it is unplugged; the daemon then "
                "wakes every futex waiter on that word (FUTEX_WAKE, not private). The "
                "unplug empties the memory under every mapping (it reads zeros); a client "
                "that puts private zero pages under its mappings when the word turns, as "
                "the client library does, also keeps what it writes afterwards from "
                "everyone else, as drm_dev_unplug's dummy page does. Each device has its "
                "own page: one plugged in by REPLUG has a new one."
            ),
            errors=(_RESERVE_FD,),
        ),
        OpSpec(
            op=Op.XE_VM_CREATE,
            request=m.DrmXeVmCreate,
            reply=m.DrmXeVmCreateReply,
            doc="Create a GPU virtual address space.",
            errors=(
                _MBZ,
                (EINVAL, "unknown flags"),
                (EINVAL, "SCRATCH_PAGE with FAULT_MODE, or FAULT_MODE without LR_MODE"),
                (EINVAL, "FAULT_MODE: the emulated device has no page faults"),
                (ENOMEM, "limits.vms: this client holds that many VMs already"),
            ),
        ),
        OpSpec(
            op=Op.XE_VM_DESTROY,
            request=m.DrmXeVmDestroy,
            reply=m.Empty,
            doc="Close a VM; exec queues on it keep it alive but it refuses new work.",
            errors=(
                _MBZ,
                (ENOENT, "no such VM"),
                (EBUSY, "an LR-mode VM with exec queues on it"),
                (EBUSY, "the VM is exported, or registered with an aux driver"),
            ),
        ),
        OpSpec(
            op=Op.XE_VM_BIND,
            request=m.DrmXeVmBind,
            reply=m.Empty,
            blocking=True,
            doc=(
                "Map and unmap BOs in a VM (gpuvm semantics: a MAP replaces what it covers). "
                "A sync waiting on a syncobj fence not signalled yet makes the ioctl answer "
                "once it has signalled and the binds are made (xe's returns at once)."
            ),
            errors=(
                _MBZ,
                (EINVAL, "more than 512 binds (none is a legal sync-only bind)"),
                (EINVAL, "op unknown, or PREFETCH (not emulated)"),
                (EFAULT, "MAP_USERPTR outside this connection's registered host memory"),
                (EINVAL, "unknown bind flags"),
                (EINVAL, "obj given for UNMAP, or missing for MAP without NULL"),
                (EINVAL, "obj_offset with NULL"),
                (EINVAL, "addr, range or obj_offset not page aligned, or range zero"),
                (EINVAL, "range beyond the VM's address space"),
                (EINVAL, "no such VM"),
                (ENOENT, "VM closed"),
                (ENOENT, "exec_queue_id names no queue of this file"),
                (EINVAL, "exec_queue_id names a queue that is no bind queue, or another VM's"),
                (ENOENT, "no such BO handle"),
                (EINVAL, "range beyond the BO"),
                (EINVAL, "BO is private to another VM"),
                (EINVAL, "bad sync (see EXEC)"),
                (EOPNOTSUPP, "user fence on a bind without binds, or without SIGNAL"),
                (EFAULT, "user fence address not mapped by this connection"),
                (EFAULT, "user fence in a GEM mapping of a foreign import (it faults, as xe's)"),
                (
                    EFAULT,
                    "user fence in a BO the daemon cannot write (a read-only import, a "
                    "foreign buffer sealed against writes)",
                ),
                (ENOMEM, "user fence in a BO the daemon cannot map (out of descriptors or memory)"),
            ),
        ),
        OpSpec(
            op=Op.XE_EXEC_QUEUE_CREATE,
            request=m.DrmXeExecQueueCreate,
            reply=m.DrmXeExecQueueCreateReply,
            doc="Create a queue of batches for one engine class, bound to a VM.",
            errors=(
                _MBZ,
                (EINVAL, "unknown flags"),
                (EINVAL, "width x num_placements zero, too large or not the instances given"),
                (EINVAL, "width other than 1 (parallel submission is not emulated)"),
                (EINVAL, "gt_id, class or instance names no engine, or classes differ"),
                (EINVAL, "VM_BIND engine class (a bind queue): width, placements or instance"),
                (ENOENT, "no such VM, or VM closed"),
                (ENOMEM, "limits.exec_queues: this client holds that many queues already"),
            ),
        ),
        OpSpec(
            op=Op.XE_EXEC_QUEUE_DESTROY,
            request=m.DrmXeExecQueueDestroy,
            reply=m.Empty,
            doc="Destroy an exec queue; batches already queued are dropped.",
            errors=(_MBZ, (ENOENT, "no such exec queue")),
        ),
        OpSpec(
            op=Op.XE_EXEC,
            request=m.DrmXeExec,
            reply=m.Empty,
            doc="Queue the batch at a GPU address of the queue's VM; user fences signal when done.",
            errors=(
                _MBZ,
                (ENOENT, "no such exec queue"),
                (EINVAL, "num_batch_buffer not the queue's width"),
                (EINVAL, "the queue is a bind queue"),
                (ECANCELED, "the queue was banned"),
                (EAGAIN, "too many batches outstanding on the queue"),
                (EINVAL, "sync: reserved, unknown flags or type; more than one user fence"),
                (EOPNOTSUPP, "sync: user fence without SIGNAL"),
                (EINVAL, "sync: user fence address not 8-byte aligned"),
                (ENOENT, "sync: syncobj handle unknown (syncobjs are not emulated)"),
                (ECANCELED, "the VM was closed"),
            ),
        ),
        OpSpec(
            op=Op.XE_WAIT_USER_FENCE,
            request=m.DrmXeWaitUserFence,
            reply=m.DrmXeWaitUserFenceReply,
            blocking=True,
            doc="Wait until (*addr & mask) op (value & mask) holds, or the timeout passes.",
            errors=(
                _MBZ,
                (EINVAL, "unknown flags or op"),
                (EINVAL, "addr not 8-byte aligned"),
                (ENOENT, "exec_queue_id names no queue"),
                (EFAULT, "addr not inside a mapping of this connection"),
                (EFAULT, "addr in a GEM mapping of a foreign import (it faults, as xe's)"),
                (ENOMEM, "addr in a BO the daemon cannot map (out of descriptors or memory)"),
                (EIO, "the exec queue was reset (banned) while waiting"),
                (ETIME, "the timeout passed"),
                (ENODEV, "the device was unplugged while waiting (it never writes again)"),
                (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
            ),
        ),
        OpSpec(
            op=Op.XE_MMIO_REGION_OPEN,
            request=m.DrmXeMmioRegionOpen,
            reply=m.DrmXeMmioRegionOpenReply,
            doc=(
                "Open a part of BAR0 for this file: the read-only info block (shared, sealed) "
                "or a doorbell page of its own. MMAP it at the returned offset."
            ),
            errors=(
                _MBZ,
                (EINVAL, "flags not zero"),
                (EINVAL, "bar_offset or size zero or not page aligned, or beyond BAR0"),
                (EPERM, "the range touches registers that are never exposed"),
                (EINVAL, "not exactly a region DEVICE_QUERY(MMIO_REGIONS) lists"),
                (EBUSY, "this file already has its doorbell page"),
                (ENOSPC, "every doorbell page is taken"),
                _RESERVE,
            ),
        ),
        OpSpec(
            op=Op.XE_MMIO_REGION_CLOSE,
            request=m.DrmXeMmioRegionClose,
            reply=m.Empty,
            doc=(
                "Close a region: its offset no longer maps, and a doorbell page is revoked "
                "(mappings of it fault, SIGBUS). Mappings of the shared read-only info "
                "block keep reading it."
            ),
            errors=((EINVAL, "pad or reserved not zero"), (ENOENT, "no such region")),
        ),
        OpSpec(
            op=Op.XE_VM_EXPORT,
            request=m.DrmXeVmExport,
            reply=m.Empty,
            fds_out=1,
            doc=(
                "Export a VM as a descriptor for an auxiliary driver (proposal). The export "
                "keeps the VM object, not its contents: the VM closes with the file that "
                "created it (its bindings go, an aux driver that registered it gets "
                "AUX_RANGE_INVALIDATED of the whole range, reason vm_closed). Closing every "
                "copy of the descriptor clears the export."
            ),
            errors=(
                (EINVAL, "pad, pad1 or reserved not zero"),
                (EINVAL, "no such VM"),
                (ENOENT, "the VM is closed or banned"),
                (EEXIST, "already exported, or registered with an aux driver"),
                _RESERVE_FD,
                _EXPORTED,
            ),
        ),
        OpSpec(
            op=Op.AUX_VM_IMPORT,
            request=m.XedAuxVmImport,
            reply=m.XedAuxVmImportReply,
            roles=frozenset({Role.AUX}),
            fds_in=1,
            doc=(
                "Register the attached exported VM with this aux driver, on behalf of the "
                "application that exported it; the reply lists its bindings."
            ),
            errors=(
                (EINVAL, "flags or reserved not zero"),
                (EINVAL, "not a VM descriptor of this daemon (another daemon's included)"),
                _GONE,
                (ENOENT, "the VM is closed (the file that created it is gone, included)"),
                (EPERM, "on_behalf_of_pid is not the process that exported it"),
                (EEXIST, "this aux connection has it registered already"),
            ),
        ),
        OpSpec(
            op=Op.AUX_VM_RESOLVE,
            request=m.XedAuxVmResolve,
            reply=m.XedAuxVmResolveReply,
            roles=frozenset({Role.AUX}),
            fds_out=ANY_FDS,
            blocking=True,
            doc=(
                "The memory behind [va, va+length) of a registered VM: one descriptor per "
                "BO, or per host memory under userptr ranges, attached (at most 8), and "
                "where each span lies in them. Watches the range. Host memory being "
                "invalidated is waited for, then revalidated."
            ),
            errors=(
                (ENOENT, "no such vm_handle"),
                (ENOENT, "the VM is closed: the file that created it is gone"),
                (EINVAL, "length zero, or the range beyond the VM"),
                (EFAULT, "a hole: some address in the range is not bound (or NULL)"),
                (EFAULT, "freed host memory under a userptr range"),
                (E2BIG, "more than 8 BOs behind the range, or more than 64 bindings"),
                _RESERVE_FD,
            ),
        ),
        OpSpec(
            op=Op.AUX_VM_UNWATCH,
            while_unplugged=True,
            request=m.XedAuxVmRange,
            reply=m.Empty,
            roles=frozenset({Role.AUX}),
            doc="Stop the invalidation events for watches inside [va, va+length).",
            errors=((ENOENT, "no such vm_handle"),),
        ),
        OpSpec(
            op=Op.AUX_VM_RELEASE,
            while_unplugged=True,
            request=m.XedAuxVmRelease,
            reply=m.Empty,
            roles=frozenset({Role.AUX}),
            doc="Unregister a VM (disconnecting does it for every VM the aux driver held).",
            errors=((ENOENT, "no such vm_handle"),),
        ),
        OpSpec(
            op=Op.AUX_VM_INVALIDATE_DONE,
            while_unplugged=True,
            request=m.XedAuxVmInvalidateDone,
            reply=m.Empty,
            roles=frozenset({Role.AUX}),
            doc=(
                "The aux driver let go of the pages of every range invalidated up to "
                "seqno: a host-memory change waiting on it (HOST_MEMORY_INVALIDATE START) "
                "goes on."
            ),
            errors=(
                (ENOENT, "no such vm_handle"),
                (EINVAL, "seqno zero, or beyond the last invalidation sent"),
            ),
        ),
        *_verbs(),
        OpSpec(
            op=Op.HOST_MEMORY_REGISTER,
            request=m.XedHostMemoryRegister,
            reply=m.XedHostMemoryRegisterReply,
            fds_in=1,
            doc=(
                "Register the attached memfd as this connection's host memory, which "
                "MAP_USERPTR binds may map and the device may reach."
            ),
            errors=(
                (EINVAL, "size zero, not page aligned, beyond the device, or not the memfd's"),
                (EINVAL, "not a memfd on shmem (a pipe, a file on disk, a hugetlbfs memfd)"),
                (EINVAL, "a memfd not sealed F_SEAL_SHRINK: it could shrink under the device"),
                (EINVAL, "a read-only descriptor, or a memfd sealed against writes"),
                (EBUSY, "this connection registered its host memory already"),
                _RESERVE,
            ),
        ),
        OpSpec(
            op=Op.HOST_MEMORY_INVALIDATE,
            request=m.XedHostMemoryInvalidate,
            reply=m.Empty,
            blocking=True,
            doc=(
                "The client library's MMU notifier: host memory under [addr, addr+length) "
                "is freed or replaced; device access waits while it changes, freed pages are "
                "never read. "
                "START returns once every aux driver that resolved those pages has let "
                "them go (AUX_VM_INVALIDATE_DONE, or its registration ended)."
            ),
            errors=((EINVAL, "no host memory registered, or the range outside it"),),
        ),
        OpSpec(
            op=Op.DEBUG_ATTACH,
            request=m.XedDebugAttach,
            reply=m.XedDebugAttachReply,
            roles=frozenset({Role.DEBUGGER}),
            doc=(
                "Attach to the process that has the pid now (never to a later process given "
                "the same pid): its VMs and bindings now, and DEBUG_EVENT for what it does "
                "from here on, until it exits."
            ),
            errors=(
                (ESRCH, "no such process"),
                (EMFILE, "the daemon has no descriptor left for the process's pidfd"),
                (ESRCH, "no drm connection opened by that process (on this device)"),
                (EPERM, "a connection of it opened by a uid not ours, and we are not root"),
                (EBUSY, "another debugger is attached to it"),
            ),
        ),
        OpSpec(
            op=Op.DEBUG_DETACH,
            request=m.XedDebugDetach,
            reply=m.Empty,
            roles=frozenset({Role.DEBUGGER}),
            doc="Detach (disconnecting does it too).",
            errors=((ENOENT, "not attached to that pid"),),
        ),
        OpSpec(
            op=Op.DEBUG_VM_ACCESS,
            request=m.XedDebugVmAccess,
            reply=m.XedDebugVmAccessReply,
            roles=frozenset({Role.DEBUGGER}),
            blocking=True,
            doc=(
                "Read or write a target VM at GPU addresses, across its VMAs, BO and "
                "userptr alike, one VMA after the other as xe's eudebug VM file does. "
                "Each VMA's part is atomic against invalidation, as the kernel copies "
                "under the notifier lock: it sees one generation of a userptr's pages, "
                "and one meeting pages mid-change waits and starts over, whole. A VMA "
                "refused after others were done ends the access short, as pread/pwrite "
                "do: the reply's `length` (and for a read, its data) says how far it "
                "got, with no error; a VMA's error is the answer only if it is the first."
            ),
            errors=(
                (
                    ENOENT,
                    "not a connection opened by the process we are attached to, on this "
                    "device (not one since unplugged)",
                ),
                (EPERM, "the connection was opened by a uid not ours, and we are not root"),
                (ENOENT, "no such VM"),
                (EINVAL, "length zero or above 32 KiB"),
                (EINVAL, "an address with nothing bound (xe: no VMA there)"),
                (EFAULT, "a NULL binding, or a write to a read-only import"),
                (EINVAL, "a userptr range while debugger.userptr_access = false"),
                (
                    EFAULT,
                    "freed host memory; a write to a foreign buffer sealed against writes "
                    "(a read of it reads); memory the daemon cannot map",
                ),
            ),
        ),
        OpSpec(
            op=Op.SYNCOBJ_CREATE,
            request=m.DrmSyncobjCreate,
            reply=m.DrmSyncobjCreateReply,
            doc=(
                "DRM_IOCTL_SYNCOBJ_CREATE: a binary syncobj of this file, empty or holding "
                "a signalled fence (SIGNALED). An EXEC or VM_BIND sync of type SYNCOBJ "
                "puts its job's fence in it (SIGNAL) or waits for the fence it holds."
            ),
            errors=((EINVAL, "flags other than SIGNALED"),),
        ),
        OpSpec(
            op=Op.SYNCOBJ_DESTROY,
            request=m.DrmSyncobjDestroy,
            reply=m.Empty,
            doc="DRM_IOCTL_SYNCOBJ_DESTROY: drop the handle (a job holding its fence goes on).",
            errors=((EINVAL, "pad not zero"), (EINVAL, "no such handle")),
        ),
        OpSpec(
            op=Op.SYNCOBJ_WAIT,
            request=m.DrmSyncobjWait,
            reply=m.DrmSyncobjWaitReply,
            blocking=True,
            doc=(
                "DRM_IOCTL_SYNCOBJ_WAIT: until one (or, WAIT_ALL, every) syncobj's fence is "
                "signalled, or the absolute CLOCK_MONOTONIC timeout_nsec passes. Without "
                "WAIT_FOR_SUBMIT an empty syncobj is EINVAL; with it, the wait also waits "
                "for a fence to be put in."
            ),
            errors=(
                (EINVAL, "flags other than WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_DEADLINE"),
                (EINVAL, "no handles"),
                (ENOENT, "a handle names no syncobj of this file"),
                (EINVAL, "a syncobj holds no fence (without WAIT_FOR_SUBMIT)"),
                (ETIME, "the timeout passed"),
                (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
            ),
        ),
        OpSpec(
            op=Op.SYNCOBJ_RESET,
            request=m.DrmSyncobjArray,
            reply=m.Empty,
            doc="DRM_IOCTL_SYNCOBJ_RESET: each syncobj drops its fence (empty again).",
            errors=(
                (EINVAL, "pad not zero"),
                (EINVAL, "no handles"),
                (ENOENT, "a handle names no syncobj of this file (none is reset)"),
            ),
        ),
        OpSpec(
            op=Op.SYNCOBJ_SIGNAL,
            request=m.DrmSyncobjArray,
            reply=m.Empty,
            doc="DRM_IOCTL_SYNCOBJ_SIGNAL: each syncobj holds a signalled fence from now on.",
            errors=(
                (EINVAL, "pad not zero"),
                (EINVAL, "no handles"),
                (ENOENT, "a handle names no syncobj of this file (none is signalled)"),
            ),
        ),
        OpSpec(
            op=Op.PRIME_HANDLE_TO_FD,
            request=m.DrmPrimeHandle,
            reply=m.DrmPrimeHandleReply,
            fds_out=1,
            doc=(
                "Export a BO as a dma-buf descriptor. The same BO gives the same dma-buf "
                "(same inode) while it has handles; a foreign import re-exports the original."
            ),
            errors=(
                (EINVAL, "flags other than DRM_CLOEXEC | DRM_RDWR"),
                (ENOENT, "no such handle"),
                (EPERM, "the BO is private to a VM"),
                _RESERVE_FD,
                _EXPORTED,
            ),
        ),
        OpSpec(
            op=Op.PRIME_FD_TO_HANDLE,
            request=m.DrmPrimeHandle,
            reply=m.DrmPrimeHandleReply,
            fds_in=1,
            blocking=True,
            doc=(
                "Import a dma-buf. One of this device: the object itself (the exporting file "
                "gets its own handle back). One of another xed daemon: a foreign import "
                "whose pages stay the exporter's."
            ),
            errors=(
                (EBADF, "a closed descriptor: sendmsg(2) refuses it in the caller"),
                _LENT,
                _GONE,
                (EINVAL, "the descriptor is not a dma-buf (a memfd, a pipe, a VM fd, ...)"),
                (EINVAL, "another daemon's descriptor that does not answer as a dma-buf"),
                (
                    EINVAL,
                    "a foreign answer with untrusted memory: not a memfd on shmem, not "
                    "sealed F_SEAL_SHRINK, smaller than the size claimed; a size zero, "
                    "unaligned or beyond the device",
                ),
                _RESERVE,
                (ENOMEM, "limits.bos: a new handle while this client holds that many"),
            ),
        ),
        OpSpec(
            op=Op.DMA_BUF_MMAP,
            request=m.XedMmap,
            reply=m.XedMmapReply,
            fds_in=1,
            fds_out=1,
            blocking=True,
            doc=(
                "mmap(2) of the attached dma-buf (`offset` is the offset into the buffer); "
                "works for any holder of the descriptor, handle or not."
            ),
            errors=(
                _LENT,
                (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
                _GONE,
                (EINVAL, "length zero or offset not page aligned"),
                (EINVAL, "flags not exactly one of MAP_SHARED / MAP_PRIVATE, unknown prot"),
                (EINVAL, "offset + length beyond the buffer"),
                (EINVAL, "a private (copy-on-write) mapping"),
                (EACCES, "a writable mapping of a dma-buf exported without DRM_RDWR"),
                _RESERVE_FD,
            ),
        ),
        OpSpec(
            op=Op.DMA_BUF_IOCTL_SYNC,
            request=m.DmaBufSync,
            reply=m.Empty,
            fds_in=1,
            blocking=True,
            doc="Begin (START) or end (END) CPU access to the attached dma-buf.",
            errors=(
                _LENT,
                (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
                _GONE,
                (EINVAL, "flags outside DMA_BUF_SYNC_VALID_FLAGS_MASK"),
                (EINVAL, "neither READ nor WRITE"),
            ),
        ),
        OpSpec(
            op=Op.DMA_BUF_LLSEEK,
            request=m.DmaBufLlseek,
            reply=m.DmaBufLlseekReply,
            fds_in=1,
            blocking=True,
            doc="lseek(2) on the attached dma-buf: (0, SEEK_END) tells its size.",
            errors=(
                _LENT,
                (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
                _GONE,
                (EINVAL, "anything but offset 0 with SEEK_SET or SEEK_END"),
            ),
        ),
        OpSpec(
            op=Op.DMA_BUF_ATTACH,
            request=m.DmaBufAttach,
            reply=m.DmaBufAttachReply,
            roles=frozenset({Role.PEER}),
            fds_out=1,
            doc=(
                "Spoken on a dma-buf's own descriptor by another daemon importing it: the "
                "exporter answers with its memory (zero copy). Not valid on a connection."
            ),
            errors=(
                (EINVAL, "the descriptor is not a dma-buf (e.g. an exported VM)"),
                (ENODEV, "a dma-buf of a device since unplugged"),
                (ENOMEM, "the exporter cannot open its memory (out of descriptors or memory)"),
                (EMFILE, "the peer left answers with memory unread (a few may be in flight)"),
            ),
        ),
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
}

EVENTS: dict[Event, type] = {
    Event.EXEC_QUEUE_BANNED: m.ExecQueueBanned,
    Event.PROTOCOL_ERROR: m.ProtocolErrorInfo,
    Event.AUX_RANGE_INVALIDATED: m.AuxRangeInvalidated,
    Event.DEBUG_EVENT: m.DebugEventInfo,
    Event.DAEMON_STOPPING: m.DaemonStopping,
}
