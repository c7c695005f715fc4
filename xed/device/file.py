"""XeFile: the drm_file. Everything a client holds hangs off it.

A drm file is opened by one connection (its own, whose last close releases it) and may
be acted on by channels: connections of other processes, such as a child that forked
with the program's descriptor (connection.py). Handles, VMs, offsets are the file's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocols import messages as m
from protocols.ops import Event, Node, Role

from .. import log as xlog
from . import eudebug
from .ids import IdAllocator
from .limits import Account, UidAccount, refuse_over
from .memory import reported_bytes
from .process import Instance

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice
    from .eudebug import Attachment
    from .exec_queue import XeExecQueue
    from .mmio import XeMmioRegion
    from .pages import BarrierPage
    from .syncobj import DrmSyncobj
    from .userptr import HostArena
    from .vm import XeVm
    from .vm_export import AuxRegistration


def _comm(pid: int) -> str:
    """The peer's command name, for the admin view (it may be gone already).

    Any bytes the process chose (prctl(PR_SET_NAME)): not always UTF-8, so undecodable
    ones are replaced, and the name is cut to 16 bytes of UTF-8, the width ADMIN_CLIENTS
    counts with (ADMIN_CLIENTS_LISTED)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            raw = comm.read().rstrip(b"\n")
    except OSError:
        return "?"
    name = raw.decode("utf-8", "replace").encode()[:16]
    return name.decode("utf-8", "ignore")  # a character the cut split goes whole


class XeFile:
    def __init__(
        self,
        device: XeDevice,
        client_id: int,
        pid: int,
        uid: int,
        gid: int,
        log: Any,
        send_event: Callable[[Event, Any], None],
        *,
        process: Instance | None = None,
        peer_gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.device = device
        self.client_id = client_id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        # the process instance that opened it (None: gone before it was accepted); the
        # debugger reaches files of the process it attached to, never of a newcomer
        # that was given the same pid
        self.process = process
        # whether the client's end is closed (its EOF waits for the reader)
        self.peer_gone = peer_gone
        self.generation = device.generation  # of the device it was opened on
        self.role: Role | None = None
        self.node = Node.PRIMARY  # role drm: the device node it was opened on
        self.token = ""  # role drm: the secret a channel joins it by (HELLO.join)
        # connections of other processes acting on this file (connection.py):
        # closed by the file's release, never releasing anything of it themselves
        self.channels: set[Any] = set()
        self.comm = _comm(pid)
        self.log = log
        self.send_event = send_event
        self.handles: dict[int, XeBo] = {}
        self.vms: dict[int, XeVm] = {}
        self.exec_queues: dict[int, XeExecQueue] = {}
        self.vma_count = 0  # GPU mappings over all its VMs (limits.vmas)
        self.queued_bind_ops = 0  # of binds waiting on its VMs (bind_queue.py)
        self.pending_jobs = 0  # EXECs not done yet over all its queues (exec_queue.py)
        # drm_prime_file_private: dma-buf (ours, or a foreign key) -> handle in this file
        self.prime_handles: dict[Any, int] = {}
        self.mmio_regions: dict[int, XeMmioRegion] = {}
        self.mmio_ids = IdAllocator()
        self.barrier_page: BarrierPage | None = None
        self.aux_vms: dict[int, AuxRegistration] = {}  # role aux: the VMs it imported
        self.aux_ids = IdAllocator()
        self.host: HostArena | None = None  # host memory for userptr, once registered
        self.debugging: set[Attachment] = set()  # role debugger: what it is attached to
        self._handle_ids = IdAllocator()
        self.vm_ids = IdAllocator()
        self.exec_queue_ids = IdAllocator()
        self.syncobjs: dict[int, DrmSyncobj] = {}
        self._syncobj_ids = IdAllocator()
        self.account = Account()  # exported objects keep it: they may outlive the file
        # shared by every file of the uid (limits.objects_per_uid); objects keep the file
        self.uid_account = device.uid_accounts.setdefault(uid, UidAccount())
        self.limits_warned: set[str] = set()  # limits already logged as warnings
        self._warnings = xlog.RateLimit()  # what its work makes the device warn of
        self.blocking = 0  # its connections' blocking requests under way
        device.files.add(self)

    def info(self) -> m.XedClientInfo:
        return m.XedClientInfo(
            client_id=self.client_id,
            pid=self.pid,
            uid=self.uid,
            gid=self.gid,
            role=self.role.value if self.role else "",
            comm=self.comm,
            bos=len(self.handles),
            bo_bytes=reported_bytes(sum(bo.size for bo in self.handles.values())),
            vms=len(self.vms),
            exec_queues=len(self.exec_queues),
            mmio_regions=len(self.mmio_regions),
            barriers=self.barrier_page.count if self.barrier_page else 0,
            doorbell_rings=sum(
                r.doorbell.rings for r in self.mmio_regions.values() if r.doorbell is not None
            ),
            vm_exports=sum(1 for vm in self.vms.values() if vm.export is not None),
            exported=self.account.exported,
            aux_vms=len(self.aux_vms),
            node=self.node.value if self.role is Role.DRM else "",
            channels=len(self.channels),
            blocking=self.blocking,
            vmas=self.vma_count,
            uid_objects=self.uid_account.objects,
        )

    def warn(self, event: str, **fields: Any) -> None:
        """A warning the client's own work causes (a GPU fault it made, a race it ran):
        rate-limited per file as the kernel's ratelimited messages are, since a client
        repeats it as fast as it can submit. What the limit held back is logged as
        warnings_suppressed, with a count, when the next one passes."""
        self._warnings.log(self.log.warning, event, "warnings_suppressed", **fields)

    # --- GEM handles (drm_gem_handle_create / _delete) ---------------------------------
    def handle_create(self, bo: XeBo) -> int:
        handle = self._handle_ids.alloc()
        self.handles[handle] = bo.get()
        self.uid_account.objects += 1
        bo.mmap_node().allow(self)
        bo.handle_opened()
        return handle

    def handle_delete(self, handle: int, prime_keys: list[Any] | None = None) -> None:
        """Drop the handle, and the dma-bufs prime_handles maps to it: `prime_keys`,
        when the caller knows them (release(): a scan of prime_handles per handle would
        make closing a file of many exports quadratic)."""
        bo = self.handles.pop(handle)
        self.uid_account.objects -= 1
        self._handle_ids.release(handle)
        if prime_keys is None:
            prime_keys = [k for k, h in self.prime_handles.items() if h == handle]
        for key in prime_keys:
            del self.prime_handles[key]
        bo.mmap_node().revoke(self)
        bo.handle_closed()
        bo.put()

    def vm_destroy(self, vm_id: int) -> None:
        vm = self.vms.pop(vm_id)
        self.vm_ids.release(vm_id)
        # xe_vm_close_and_put: closed now, even exported or registered (their references
        # keep only the closed object)
        vm.close()
        vm.put()

    def syncobj_create(self, syncobj: DrmSyncobj) -> int:
        """A new handle for `syncobj`: ENOMEM once this file holds limits.syncobjs."""
        refuse_over(self, "syncobjs", len(self.syncobjs))
        handle = self._syncobj_ids.alloc()
        self.syncobjs[handle] = syncobj
        self.device.counts["syncobj"] += 1
        self.uid_account.objects += 1
        return handle

    def syncobj_destroy(self, handle: int) -> None:
        """Drop the handle; a job or a wait holding its fence is not disturbed."""
        del self.syncobjs[handle]
        self._syncobj_ids.release(handle)
        self.device.counts["syncobj"] -= 1
        self.uid_account.objects -= 1

    def release_aux_vm(self, handle: int) -> None:
        self.aux_ids.release(handle)
        self.aux_vms.pop(handle).release()

    def release(self) -> None:
        """The last close of the DRM fd: queues, then VMs, then handles (xe_file_close)."""
        eudebug.target_closed(self)
        eudebug.debugger_closed(self)
        for handle in list(self.aux_vms):
            self.release_aux_vm(handle)
        for queue_id in list(self.exec_queues):
            self.exec_queues.pop(queue_id).destroy()
        for vm_id in list(self.vms):
            self.vm_destroy(vm_id)
        prime_keys: dict[int, list[Any]] = {}  # each handle's, in prime_handles' order
        for key, handle in self.prime_handles.items():
            prime_keys.setdefault(handle, []).append(key)
        for handle in list(self.handles):
            self.handle_delete(handle, prime_keys.get(handle, []))
        for handle in list(self.syncobjs):
            self.syncobj_destroy(handle)
        for exported in list(self.device.exported.values()):
            exported.forget(self)
        if self.host is not None:  # after the VMs: no userptr VMA refers to it any more
            self.host.close()
            self.host = None
        for region_id in list(self.mmio_regions):
            self.mmio_regions.pop(region_id).close()
        if self.barrier_page is not None:  # its mappings hold the device, not the file
            self.log.info("barrier_page_released", **self.barrier_page.summary())
            self.device.watcher.orphan(self.barrier_page)
            self.barrier_page = None
        self.device.files.discard(self)
