"""The DRM core's ioctls (VERSION, GEM names, binary syncobjs, PRIME) and the dma-buf
file's, with xed's handshake, which opens the drm file."""

from __future__ import annotations

from errno import (
    EACCES,
    EBADF,
    EBUSY,
    EINVAL,
    EMFILE,
    ENODEV,
    ENOENT,
    ENOMEM,
    ENOTTY,
    EOPNOTSUPP,
    EPERM,
    EPROTO,
    ETIME,
)

from .. import messages as m
from .spec import ANY_ROLE, EXPORTED, GONE, LENT, RESERVE, RESERVE_FD, Op, OpSpec, Role

SPECS: tuple[OpSpec, ...] = (
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
                "the daemon has no descriptor left for the connection: it answers, then hangs up",
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
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_CREATE,
        request=m.DrmSyncobjCreate,
        reply=m.DrmSyncobjCreateReply,
        doc=(
            "DRM_IOCTL_SYNCOBJ_CREATE: a syncobj of this file, empty or holding a "
            "signalled fence (SIGNALED). An EXEC or VM_BIND sync of type SYNCOBJ puts "
            "its job's fence in it (SIGNAL) or waits for the fence it holds; one of "
            "type TIMELINE_SYNCOBJ does so with a point of its timeline."
        ),
        errors=(
            (EINVAL, "flags other than SIGNALED"),
            (ENOMEM, "limits.syncobjs: this file holds that many syncobjs (xed)"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
        ),
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
            "for a fence to be put in. No handles: answered at once, as current kernels "
            "answer."
        ),
        errors=(
            (EINVAL, "flags other than WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_DEADLINE"),
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
        op=Op.SYNCOBJ_TIMELINE_WAIT,
        request=m.DrmSyncobjTimelineWait,
        reply=m.DrmSyncobjWaitReply,
        blocking=True,
        doc=(
            "DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT: SYNCOBJ_WAIT for a point of each syncobj "
            "(0: the fence it holds). A point is signalled once its fence and every "
            "point before it are. Without WAIT_FOR_SUBMIT or WAIT_AVAILABLE, a point not "
            "submitted yet is EINVAL; with either, the wait waits for it; with "
            "WAIT_AVAILABLE, a submitted point counts as signalled."
        ),
        errors=(
            (EINVAL, "flags other than WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_AVAILABLE, WAIT_DEADLINE"),
            (EINVAL, "points sent, but not one per handle"),
            (ENOENT, "a handle names no syncobj of this file"),
            (EINVAL, "a point not submitted (without WAIT_FOR_SUBMIT or WAIT_AVAILABLE)"),
            (ETIME, "the timeout passed"),
            (ENOMEM, "[limits] fence_waits waits of this connection asleep already (xed)"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_QUERY,
        request=m.DrmSyncobjTimelineArray,
        reply=m.DrmSyncobjQueryReply,
        doc=(
            "DRM_IOCTL_SYNCOBJ_QUERY: each syncobj's timeline value, the latest point "
            "signalled with every point before it; with LAST_SUBMITTED, the latest point "
            "submitted. 0 for a syncobj holding no timeline point."
        ),
        errors=(
            (EINVAL, "flags other than LAST_SUBMITTED"),
            (EINVAL, "no handles"),
            (ENOENT, "a handle names no syncobj of this file"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_TRANSFER,
        request=m.DrmSyncobjTransfer,
        reply=m.Empty,
        blocking=True,
        doc=(
            "DRM_IOCTL_SYNCOBJ_TRANSFER: the fence of `src_handle` at `src_point` (0: the "
            "fence it holds) becomes the point `dst_point` of `dst_handle` (0: the fence "
            "it holds, replaced). With WAIT_FOR_SUBMIT, a source point not submitted yet "
            "is waited for, up to 5 s."
        ),
        errors=(
            (EINVAL, "pad not zero"),
            (ENOENT, "dst_handle names no syncobj of this file"),
            (EINVAL, "flags other than WAIT_FOR_SUBMIT"),
            (ENOENT, "src_handle names no syncobj of this file"),
            (EINVAL, "the source point not submitted (without WAIT_FOR_SUBMIT)"),
            (ETIME, "WAIT_FOR_SUBMIT: not submitted within 5 s"),
            (ENOMEM, "limits.timeline_points: this file's points the daemon holds (xed)"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_TIMELINE_SIGNAL,
        request=m.DrmSyncobjTimelineArray,
        reply=m.Empty,
        doc=(
            "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL: each syncobj gets its point, a signalled "
            "fence, signalled once the points before it are (point 0 too, numbered as "
            "its latest point)."
        ),
        errors=(
            (EINVAL, "flags not zero"),
            (EINVAL, "no handles"),
            (ENOENT, "a handle names no syncobj of this file (none is signalled)"),
            (EINVAL, "points sent, but not one per handle"),
            (ENOMEM, "limits.timeline_points: this file's points the daemon holds (xed)"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_HANDLE_TO_FD,
        request=m.DrmSyncobjFd,
        reply=m.DrmSyncobjFdReply,
        fds_out=1,
        doc=(
            "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: the syncobj as a descriptor another process "
            "(or drm file) imports with FD_TO_HANDLE; with EXPORT_SYNC_FILE, a sync file "
            "of the fence it holds now instead, which polls readable (POLLIN) once that "
            "fence is signalled. TIMELINE (with EXPORT_SYNC_FILE) asks for the fence of "
            "`point` (0: the fence it holds)."
        ),
        errors=(
            RESERVE_FD,
            (EINVAL, "pad not zero"),
            (EINVAL, "flags other than none, EXPORT_SYNC_FILE, EXPORT_SYNC_FILE | TIMELINE"),
            (EINVAL, "no flags: the handle names no syncobj of this file"),
            (ENOENT, "EXPORT_SYNC_FILE: the handle names no syncobj of this file"),
            (EINVAL, "EXPORT_SYNC_FILE: no fence at the point (nothing held, not submitted)"),
            (EINVAL, "no EXPORT_SYNC_FILE: a point other than 0"),
            (ENOMEM, "limits.exported: this client's exported objects still alive"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_FD_TO_HANDLE,
        request=m.DrmSyncobjFd,
        reply=m.DrmSyncobjFdReply,
        fds_in=1,
        doc=(
            "DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE: a new handle of this file for the syncobj "
            "the attached descriptor stands for (the same syncobj: a fence put in through "
            "either handle is seen through both); with IMPORT_SYNC_FILE, the syncobj "
            "`handle` holds the attached sync file's fence from now on instead (with "
            "TIMELINE and a `point`: it becomes that point)."
        ),
        errors=(
            (EINVAL, "pad not zero"),
            (EINVAL, "flags other than IMPORT_SYNC_FILE and TIMELINE"),
            (EINVAL, "the descriptor is not a syncobj's (IMPORT_SYNC_FILE: not a sync file)"),
            GONE,
            (ENOENT, "IMPORT_SYNC_FILE: the handle names no syncobj of this file"),
            (ENOMEM, "IMPORT_SYNC_FILE at a point: limits.timeline_points pending (xed)"),
            (ENOMEM, "a new handle: limits.syncobjs, or limits.objects_per_uid (xed)"),
            (EINVAL, "a point without IMPORT_SYNC_FILE"),
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
            RESERVE_FD,
            EXPORTED,
            (ENOMEM, "a DEFER_BACKING BO larger than its placement, or system memory full too"),
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
            LENT,
            GONE,
            (EINVAL, "the descriptor is not a dma-buf (a memfd, a pipe, a VM fd, ...)"),
            (EINVAL, "another daemon's descriptor that does not answer as a dma-buf"),
            (
                EINVAL,
                "a foreign answer with untrusted memory: not a memfd on shmem, not "
                "sealed F_SEAL_SHRINK, smaller than the size claimed; a size zero, "
                "unaligned or beyond the device",
            ),
            RESERVE,
            (ENOMEM, "limits.bos: a new handle while this client holds that many"),
            (ENOMEM, "limits.objects_per_uid: the uid's connections hold that many together (xed)"),
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
            LENT,
            (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
            GONE,
            (EINVAL, "length zero or offset not page aligned"),
            (EINVAL, "flags not exactly one of MAP_SHARED / MAP_PRIVATE, unknown prot"),
            (EINVAL, "offset + length beyond the buffer"),
            (EINVAL, "a private (copy-on-write) mapping"),
            (EACCES, "a writable mapping of a dma-buf exported without DRM_RDWR"),
            RESERVE_FD,
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
            LENT,
            (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
            GONE,
            (EINVAL, "flags outside DMA_BUF_SYNC_VALID_FLAGS_MASK"),
            (EINVAL, "neither READ nor WRITE"),
        ),
    ),
    OpSpec(
        op=Op.DMA_BUF_EXPORT_SYNC_FILE,
        request=m.DmaBufSyncFile,
        reply=m.Empty,
        fds_in=1,
        fds_out=1,
        blocking=True,
        doc=(
            "DMA_BUF_IOCTL_EXPORT_SYNC_FILE on the attached dma-buf: a sync file of the "
            "fences in its reservation that the access asked must wait for (WRITE: every "
            "fence, readers' and writers'; READ: the writers'). It polls readable once "
            "they are all signalled; with none, at once. The fences are those put in "
            "with IMPORT_SYNC_FILE (xe's own jobs add bookkeeping fences only, which "
            "neither export sees)."
        ),
        errors=(
            LENT,
            RESERVE_FD,
            (EINVAL, "flags outside DMA_BUF_SYNC_RW, or neither READ nor WRITE"),
            GONE,
            (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
            (EOPNOTSUPP, "another daemon's dma-buf: its fences are that daemon's"),
            (ENOMEM, "limits.exported: this client's exported objects still alive"),
        ),
    ),
    OpSpec(
        op=Op.DMA_BUF_IMPORT_SYNC_FILE,
        request=m.DmaBufSyncFile,
        reply=m.Empty,
        fds_in=2,
        blocking=True,
        doc=(
            "DMA_BUF_IOCTL_IMPORT_SYNC_FILE: the sync file attached second joins the "
            "reservation of the dma-buf attached first, as a writer's fence (WRITE or "
            "RW) or a reader's (READ)."
        ),
        errors=(
            LENT,
            (EINVAL, "flags outside DMA_BUF_SYNC_RW, or neither READ nor WRITE"),
            GONE,
            (EINVAL, "the first descriptor is not a dma-buf (or answers with untrusted memory)"),
            (EINVAL, "the second descriptor is not a sync file"),
            (EOPNOTSUPP, "another daemon's dma-buf: its fences are that daemon's"),
            (ENOMEM, "the dma-buf's reservation holds MAX_FENCES unsignalled fences"),
        ),
    ),
    OpSpec(
        op=Op.SYNC_FILE_MERGE,
        request=m.SyncMerge,
        reply=m.Empty,
        fds_in=2,
        fds_out=1,
        doc=(
            "SYNC_IOC_MERGE on the sync file attached first, with `fd2`'s attached "
            "second: a new sync file that signals once both have (their unsignalled "
            "fences, each once)."
        ),
        errors=(
            RESERVE_FD,
            (ENOTTY, "the first descriptor is not a sync file (the ioctl is not its)"),
            (EINVAL, "flags or pad not zero"),
            (ENOENT, "the second descriptor is not a sync file"),
            GONE,
            (ENOMEM, "limits.exported: this client's exported objects still alive"),
            (ENOMEM, "more than MAX_FENCES fences in the merged file"),
        ),
    ),
    OpSpec(
        op=Op.SYNC_FILE_INFO,
        request=m.SyncFileInfo,
        reply=m.SyncFileInfoReply,
        fds_in=1,
        doc=(
            "SYNC_IOC_FILE_INFO on the attached sync file: its name, its status (1: every "
            "fence signalled) and its fences; with num_fences 0, their number alone."
        ),
        errors=(
            (ENOTTY, "the descriptor is not a sync file (the ioctl is not its)"),
            (EINVAL, "flags or pad not zero"),
            (EINVAL, "num_fences not 0 and below the number of fences"),
            GONE,
        ),
    ),
    OpSpec(
        op=Op.SW_SYNC_TIMELINE_CREATE,
        request=m.SwSyncTimelineCreate,
        reply=m.Empty,
        fds_out=1,
        doc=(
            "open(2) of debugfs's `sync/sw_sync` (the kernel's validation timelines, "
            "which IGT drives fences with): a new timeline at 0, as a descriptor. Each "
            "fence made on it signals once INC brings the timeline to its point; when "
            "the last copy is closed, those still unsignalled signal with ENOENT."
        ),
        errors=(
            RESERVE_FD,
            (ENOMEM, "limits.exported: this client's exported objects still alive"),
        ),
    ),
    OpSpec(
        op=Op.SW_SYNC_CREATE_FENCE,
        request=m.SwSyncCreateFence,
        reply=m.Empty,
        fds_in=1,
        fds_out=1,
        doc=(
            "SW_SYNC_IOC_CREATE_FENCE on the attached timeline: a sync file of the point "
            "`value` (the same fence as an unsignalled point there already; signalled "
            "at once if the timeline has passed it, counting as the kernel does across "
            "the wrap at 2^32)."
        ),
        errors=(
            RESERVE_FD,
            (ENOTTY, "the descriptor is not a timeline (the ioctl is not its)"),
            GONE,
            (ENOMEM, "limits.exported: this client's exported objects still alive"),
        ),
    ),
    OpSpec(
        op=Op.SW_SYNC_INC,
        request=m.SwSyncInc,
        reply=m.Empty,
        fds_in=1,
        doc=(
            "SW_SYNC_IOC_INC on the attached timeline: it advances by `value`, and every "
            "point it reaches is signalled before the answer."
        ),
        errors=(
            (ENOTTY, "the descriptor is not a timeline (the ioctl is not its)"),
            GONE,
        ),
    ),
    OpSpec(
        op=Op.SW_SYNC_CLOSED,
        request=m.SwSyncClosed,
        reply=m.Empty,
        doc=(
            "Sent by the library after close(2) of a timeline's descriptor: if that was "
            "its last copy the timeline is released now, as the kernel's release() runs "
            "within the close, so its unsignalled fences have signalled (ENOENT) before "
            "close returns. Anything else (not a timeline, copies left) changes nothing."
        ),
        errors=(),
    ),
    OpSpec(
        op=Op.SYNCOBJ_EVENTFD_REGISTER,
        request=m.SyncobjEventfdRegister,
        reply=m.Empty,
        doc=(
            "A SYNCOBJ_EVENTFD registration, which the C library makes on a channel of "
            "the file's own before the ioctl returns, and then waits on there "
            "(SYNCOBJ_EVENTFD_WAIT) to count the program's eventfd itself. It holds "
            "the syncobj no more than the kernel's registration does."
        ),
        errors=(
            (EINVAL, "flags other than WAIT_AVAILABLE, or pad not zero"),
            (ENOENT, "no syncobj of that handle in this file"),
            (EBUSY, "this connection's registration is not answered yet (waited on or not)"),
        ),
    ),
    OpSpec(
        op=Op.SYNCOBJ_EVENTFD_WAIT,
        request=m.Empty,
        reply=m.Empty,
        blocking=True,
        doc=(
            "The wait on this connection's registration: answered once its point is "
            "signalled (WAIT_AVAILABLE: submitted; a point not submitted yet is waited "
            "for), or ENOENT once the syncobj is freed (its last handle destroyed, no "
            "descriptor left), as the kernel frees a registration with its syncobj. It "
            "counts against no limits.fence_waits (each registration is a connection)."
        ),
        errors=(
            (EINVAL, "no registration on this connection, or its WAIT is under way"),
            (ENOENT, "the syncobj was freed before the point came"),
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
            LENT,
            (EINVAL, "the descriptor is not a dma-buf (or answers with untrusted memory)"),
            GONE,
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
)
