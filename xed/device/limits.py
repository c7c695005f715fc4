"""What one client may hold ([limits]), and the descriptors the daemon keeps for everyone.

Per file: GEM handles, VMs, exec queues, and the exported objects (dma-bufs, VM exports)
it created that are still alive. A create ioctl past one of them is ENOMEM, the errno of
an allocation the kernel could not make, so user space's existing error paths apply;
nobody else notices. An exported object outlives the file's handles and often the file
itself (another process holds its descriptor): it keeps its creator's Account and gives
the charge back only when it is freed, so handing descriptors on and closing handles
does not reset the count.

Daemon-wide: every BO, exported object and mapping answer costs the daemon a descriptor,
and RLIMIT_NOFILE is shared by every client. While fewer than `descriptor_reserve` are
free, requests that would open one for a client are refused (EMFILE when the call hands
a descriptor back, ENOMEM otherwise), so the last ones stay for what must always work:
accepting a connection, HELLO, the admin role. Linux hands out the lowest free
descriptor, so a probe dup() that lands at or above RLIMIT_NOFILE - reserve says that
every descriptor below that mark is taken: one system call pair, on allocating ops only.

A spare descriptor (/dev/null) is kept for accept(): with the table full, it is closed
to accept the connection waiting in the backlog, which is answered at once and closed,
and the spare is opened again (the classic trick; see server.py, the accept loop).
"""

from __future__ import annotations

import os
import resource
from errno import EMFILE, ENFILE, ENOMEM
from typing import TYPE_CHECKING, Any

import structlog

from protocols import SHORTAGE, SPECS, Op

from .errors import IoctlError

if TYPE_CHECKING:
    from ..config import LimitsConfig
    from .file import XeFile

_log = structlog.get_logger("xed")

# ops whose answer makes the daemon open a descriptor for the client: a BO's memfd, an
# exported object's socketpair, the descriptor a reply carries, a page of its own
OPENS_DESCRIPTORS = frozenset(
    {
        Op.XE_GEM_CREATE,
        Op.MMAP,
        Op.PRIME_HANDLE_TO_FD,
        Op.SYNCOBJ_HANDLE_TO_FD,
        Op.DMA_BUF_EXPORT_SYNC_FILE,
        Op.SYNC_FILE_MERGE,
        Op.SW_SYNC_TIMELINE_CREATE,
        Op.SW_SYNC_CREATE_FENCE,
        Op.PRIME_FD_TO_HANDLE,
        Op.DMA_BUF_MMAP,
        Op.XE_VM_EXPORT,
        Op.AUX_VM_RESOLVE,
        Op.XE_MMIO_REGION_OPEN,
        Op.HOST_MEMORY_REGISTER,
        Op.UNPLUG_NOTICE,
        Op.DEBUG_ATTACH,  # the target's pidfd, kept while attached
    }
)


def out_of_errno(op: Op) -> int:
    """EMFILE for a call that hands a descriptor back (as get_unused_fd_flags fails),
    ENOMEM for any other."""
    return EMFILE if SPECS[op].fds_out else ENOMEM


class Account:
    """The exported objects one file created that are still alive, and its timeline
    points not signalled yet. Each object (and point) keeps the
    account it was charged to, so the charge goes back when the object is freed, after
    its file is gone if need be."""

    def __init__(self) -> None:
        self.exported = 0
        self.points = 0  # timeline points added by the file, not signalled yet


class UidAccount:
    """What all the files of one uid make the daemon hold (limits.objects_per_uid): one
    for each GEM handle, VM, exec queue, GPU mapping, syncobj handle, job not done and
    queued bind op. Each is charged where it is made and given back where it goes (an
    object outliving its file, a VM kept by an export, gives it back when freed)."""

    __slots__ = ("objects",)

    def __init__(self) -> None:
        self.objects = 0


# the [limits] fields whose objects a uid's account counts
_UID_COUNTED = frozenset({"bos", "vms", "exec_queues", "syncobjs"})


def refuse_over(xef: XeFile, what: str, held: int, adding: int = 1) -> None:
    """ENOMEM if `adding` more would take the file past its limit of `what` (a [limits]
    field), or, for what the uid's account counts, the uid past limits.objects_per_uid."""
    refuse_past(xef, what, held, getattr(xef.device.limits, what), f"limits.{what}", adding)
    if what in _UID_COUNTED:
        refuse_over_uid(xef, adding)


def refuse_past(
    xef: XeFile, what: str, held: int, limit: int, name: str, adding: int = 1, hint: str = ""
) -> None:
    """ENOMEM, counted and logged as a limit (limit_hit), if `adding` more of `what` than
    the `held` would pass `limit` (`name`: where it is set; `hint`: what makes room)."""
    if held + adding <= limit:
        return
    limit_hit(xef, what)
    more = f" and this call may add {adding}" if adding > 1 else ""
    raise IoctlError(
        ENOMEM, f"this client holds {held} {what}{more}: {name} is {limit}" + (hint and f"; {hint}")
    )


def refuse_over_uid(xef: XeFile, adding: int, errno: int = ENOMEM) -> None:
    """`errno` (ENOMEM) if `adding` more objects would take the file's uid past
    limits.objects_per_uid over all its connections."""
    held, limit = xef.uid_account.objects, xef.device.limits.objects_per_uid
    if held + adding <= limit:
        return
    limit_hit(xef, "objects_per_uid")
    raise IoctlError(
        errno,
        f"uid {xef.uid} holds {held} objects over its connections: "
        f"limits.objects_per_uid is {limit}",
    )


def limit_hit(xef: XeFile, what: str) -> None:
    """Count a refusal. The first of each kind per file is a warning; the rest show only
    as the refusal's own info event, so a client retrying in a loop cannot flood the log."""
    xef.device.stats["limits_hit"] += 1
    if what not in xef.limits_warned:
        xef.limits_warned.add(what)
        xef.log.warning("limit_reached", limit=what)


def charge_export(xef: XeFile, obj: Any) -> None:
    """`obj` (a new exported object) counts against its creator until it is freed."""
    obj.account = xef.account
    xef.account.exported += 1


def uncharge_export(obj: Any) -> None:
    account: Account | None = getattr(obj, "account", None)
    if account is not None:
        account.exported -= 1
        obj.account = None


class DescriptorReserve:
    """The daemon's descriptor headroom, and the spare descriptor accept() relies on."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.reserve = limits.descriptor_reserve
        self.spare: int | None = None
        self.reopen_spare()
        self.low = False  # in a low episode: warned once, until descriptors come back

    def reopen_spare(self) -> bool:
        if self.spare is None:
            try:
                self.spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def close_spare(self) -> bool:
        """Give the spare's slot up (to accept into it); False if there is none."""
        if self.spare is None:
            return False
        os.close(self.spare)
        self.spare = None
        return True

    def short(self) -> bool:
        """True while fewer than `reserve` descriptors are free (see the module's doc)."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return False
        try:
            probe = self._probe()
        except OSError as exc:
            if exc.errno in SHORTAGE:
                return True
            raise
        os.close(probe)
        return probe >= limit - self.reserve

    def _probe(self) -> int:
        if self.spare is not None:
            return os.dup(self.spare)
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def check(self, xef: XeFile, op: Op) -> None:
        """Refuse an op that would open a descriptor while the reserve is reached."""
        if not self.short():
            if self.low:
                self.low = False
                _log.info("descriptors_available")
            return
        xef.device.stats["limits_hit"] += 1
        self.warn_low(op=op.name, client_id=xef.client_id)
        raise IoctlError(
            out_of_errno(op),
            f"the daemon is down to its last {self.reserve} descriptors "
            "(limits.descriptor_reserve): they are kept for new connections",
        )

    def warn_low(self, **fields: Any) -> None:
        """Once per episode: a client refusing in a loop must not flood the log."""
        if not self.low:
            self.low = True
            _log.warning("descriptors_low", reserve=self.reserve, **fields)

    def close(self) -> None:
        self.close_spare()


def out_of_resources(xef: XeFile, op: Op, exc: OSError) -> IoctlError:
    """An OSError of exhaustion inside a handler (EMFILE from dup, ENOMEM from mmap...):
    the client's errno for it, counted and logged as a limit, not as a crash."""
    name = "descriptors" if exc.errno in (EMFILE, ENFILE) else "memory"
    limit_hit(xef, f"daemon {name}")
    err = out_of_errno(op) if name == "descriptors" else ENOMEM
    return IoctlError(err, f"the daemon is out of {name}: {exc.strerror}")
