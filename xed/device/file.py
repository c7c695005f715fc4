"""XeFile: one connection, the drm_file. Everything a client holds hangs off it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocols.ops import Event, Role

from .ids import IdAllocator

if TYPE_CHECKING:
    from .bo import XeBo
    from .device import XeDevice
    from .exec_queue import XeExecQueue
    from .vm import XeVm


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
    ) -> None:
        self.device = device
        self.client_id = client_id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.role: Role | None = None
        self.log = log
        self.send_event = send_event
        self.handles: dict[int, XeBo] = {}
        self.vms: dict[int, XeVm] = {}
        self.exec_queues: dict[int, XeExecQueue] = {}
        # drm_prime_file_private: dma-buf (ours, or a foreign key) -> handle in this file
        self.prime_handles: dict[Any, int] = {}
        self._handle_ids = IdAllocator()
        self.vm_ids = IdAllocator()
        self.exec_queue_ids = IdAllocator()
        device.files.add(self)

    # --- GEM handles (drm_gem_handle_create / _delete) ---------------------------------
    def handle_create(self, bo: XeBo) -> int:
        handle = self._handle_ids.alloc()
        self.handles[handle] = bo.get()
        bo.mmap_node().allow(self)
        bo.handle_opened()
        return handle

    def handle_delete(self, handle: int) -> None:
        bo = self.handles.pop(handle)
        self._handle_ids.release(handle)
        for key in [k for k, h in self.prime_handles.items() if h == handle]:
            del self.prime_handles[key]
        bo.mmap_node().revoke(self)
        bo.handle_closed()
        bo.put()

    def vm_destroy(self, vm_id: int) -> None:
        vm = self.vms.pop(vm_id)
        self.vm_ids.release(vm_id)
        vm.close()
        vm.put()

    def release(self) -> None:
        """The last close of the DRM fd: queues, then VMs, then handles (xe_file_close)."""
        for queue_id in list(self.exec_queues):
            self.exec_queues.pop(queue_id).destroy()
        for vm_id in list(self.vms):
            self.vm_destroy(vm_id)
        for handle in list(self.handles):
            self.handle_delete(handle)
        for exported in list(self.device.exported.values()):
            exported.forget(self)
        self.device.files.discard(self)
