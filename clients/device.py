"""The client library: ioctl-like calls on an xed device, synchronous like the code it
stands in for. Every refusal raises XeError carrying the kernel's errno.

    dev = Device.open()
    bo = dev.gem_create(1 << 20)
    with dev.mmap_bo(bo) as m:
        m[0:5] = b"hello"
"""

from __future__ import annotations

import errno
import mmap
import os
import warnings
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import attrs

from protocols import (
    PROTOCOL_VERSION,
    EventMessage,
    Op,
)
from protocols import (
    messages as m,
)
from protocols.cli import connect_timeout, socket_path
from protocols.constants import (
    DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN,
    DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY,
    DRM_XE_GEM_CPU_CACHING_WB,
    DRM_XE_GEM_CPU_CACHING_WC,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER,
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_USER_FENCE,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    DRM_XE_VM_BIND_OP_UNMAP,
    DRM_XE_VM_GET_PROPERTY_FAULTS,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    XE_PLACEMENT_SYSMEM,
    XED_PCI_BARRIER_ACKS_RECORD,
    EngineClass,
    Query,
    UfenceOp,
)

from . import unplug
from .barrier import PciBarrier
from .errors import XeError
from .host_memory import HostMemory
from .mapping import Mapping
from .prime import PrimeOps
from .roles import RoleOps
from .rpc import RpcConnection
from .transport import SeqpacketTransport, unreachable

ONE_SECOND_NS = 1_000_000_000
# struct drm_version has no input: one immutable record serves every call
_NO_VERSION_ARGS = m.DrmVersion()
# an enum's member is slow to look up on its class (EnumType.__getattr__ on 3.11)
_VERSION = Op.VERSION


def user_fence(addr: int, value: int) -> m.DrmXeSync:
    """A drm_xe_sync that writes `value` at `addr` when the work is done."""
    return m.DrmXeSync(
        type=DRM_XE_SYNC_TYPE_USER_FENCE,
        flags=DRM_XE_SYNC_FLAG_SIGNAL,
        addr=addr,
        timeline_value=value,
    )


def _deprecated(old: str, new: str, frames: int = 1) -> None:
    """Warn that `old` is deprecated, at the line of the caller of the API function
    `frames` levels up from here (1: the function that called us)."""
    message = f"{old} is deprecated: use {new}"
    warnings.warn(message, DeprecationWarning, stacklevel=2 + frames)


def _renamed(deprecated: dict[str, int], where: str, size: int | None) -> int | None:
    """`size`, or what a caller still passes as `range=` (which shadows a builtin)."""
    if set(deprecated) - {"range"}:
        raise TypeError(f"{where}() got unexpected keywords {sorted(deprecated)}")
    if "range" in deprecated:
        _deprecated(f"{where}(range=)", "size=", frames=2)
        return deprecated["range"]
    return size


class Device(PrimeOps, RoleOps):
    """One connection to the daemon: the equivalent of an open render node."""

    def __init__(
        self,
        transport: SeqpacketTransport,
        role: str = "drm",
        node: str = "primary",
        join: str = "",
    ) -> None:
        self.transport = transport
        where = transport.sock.getpeername()  # the socket's path: errors name it
        self.rpc = RpcConnection(transport, f"the daemon at {where}" if where else "the daemon")
        self.events = self.rpc.events  # EXEC_QUEUE_BANNED and others, as they came
        self._bo_sizes: dict[int, int] = {}
        self._mappings: list[Mapping] = []
        self._barrier: PciBarrier | None = None
        self._unmapped: PciBarrier | None = None  # its running number, while unmapped
        try:
            hello: m.HelloReply = self.ioctl(
                Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role=role, node=node, join=join)
            )
        except BaseException:
            transport.close()  # a refused open (ENODEV, EACCES...) keeps nothing open
            raise
        self.identity = hello.device
        self.client_id = hello.client_id
        # the drm file's secret: a process given it may join the file (keep it private)
        self.token = hello.token

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        role: str = "drm",
        node: str = "primary",
        join: str = "",
        *,
        timeout: float | None = None,
    ) -> Device:
        """Connect to the daemon at `path` (default: $XED_SOCKET, else the runtime
        socket) and say HELLO, waiting at most `timeout` seconds for each (default:
        $XED_TIMEOUT, else 5). An unreachable daemon raises the OSError of its errno
        (TimeoutError if it never answers) with the socket path as `filename` and what
        to check as `strerror`; a refused HELLO raises XeError.

        `node`: "primary" (/dev/dri/card0) or "render" (renderD128, which refuses
        GEM_FLINK and GEM_OPEN). `join`: another Device's `token`: this connection acts
        on that drm file (same handles, VMs and offsets) instead of opening a new one;
        closing it releases nothing, and the file's release closes it."""
        where = socket_path(path)
        wait = connect_timeout(timeout)
        transport = SeqpacketTransport.connect(where, wait)
        transport.sock.settimeout(wait)
        try:
            device = cls(transport, role, node, join)
        except TimeoutError:  # the socket's own: connected, but HELLO went unanswered
            raise unreachable(errno.ETIMEDOUT, where, wait) from None
        transport.sock.settimeout(None)
        return device

    def close(self) -> None:
        """Close the connection: the daemon releases everything this file held."""
        self.transport.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the one way to talk to the daemon ------------------------------------------------
    def ioctl(self, op: Op, args: Any, fds: Sequence[int] = ()) -> Any:
        """Send one request; return its reply record, or raise XeError."""
        result, received = self.rpc.call(op, args, fds)
        if received:  # most replies carry none
            for fd in received:
                os.close(fd)
        return result

    def ioctl_fds(self, op: Op, args: Any, fds: Sequence[int] = ()) -> tuple[Any, tuple[int, ...]]:
        """Like ioctl(), but hand back the descriptors the reply carries (caller closes)."""
        result: tuple[Any, tuple[int, ...]] = self.rpc.call(op, args, fds)
        return result

    # --- DRM core and queries ---------------------------------------------------------------
    def version(self) -> m.DrmVersionReply:
        # no descriptor comes with a VERSION reply (the library refuses one): nothing
        # for ioctl() to close
        reply: m.DrmVersionReply = self.rpc.call(_VERSION, _NO_VERSION_ARGS)[0]
        return reply

    def query(self, query: Query) -> m.DrmXeDeviceQueryReply:
        reply: m.DrmXeDeviceQueryReply = self.ioctl(
            Op.XE_DEVICE_QUERY, m.DrmXeDeviceQuery(query=query)
        )
        return reply

    def mem_regions(self) -> tuple[m.DrmXeMemRegion, ...]:
        return self.query(Query.MEM_REGIONS).mem_regions

    def engines(self) -> tuple[m.DrmXeEngine, ...]:
        return self.query(Query.ENGINES).engines

    def placement(self, *names: str) -> int:
        """GEM_CREATE.placement for memory regions by name: "system", "vram0", "vram1"...,
        or "vram" for every VRAM region; KeyError for a region this device lacks."""
        bits = {}
        for region in self.mem_regions():
            vram = region.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM
            bits[f"vram{region.instance - 1}" if vram else "system"] = 1 << region.instance
        mask = 0
        for name in names:
            if name == "vram":
                mask |= sum(bit for key, bit in bits.items() if key.startswith("vram"))
            else:
                mask |= bits[name]
        if not mask:
            raise KeyError(f"no memory region {', '.join(names)} on this device")
        return mask

    def alignment(self, placement: int = XE_PLACEMENT_SYSMEM) -> int:
        """What a BO's size and its GPU addresses must be multiples of for `placement`:
        the largest min_page_size of its regions (DEVICE_QUERY MEM_REGIONS)."""
        sizes = [r.min_page_size for r in self.mem_regions() if placement & 1 << r.instance]
        if not sizes:
            raise ValueError(f"placement {placement:#x} names no region of this device")
        return max(sizes)

    # --- buffer objects ---------------------------------------------------------------------
    def gem_create(
        self,
        size: int,
        placement: int = XE_PLACEMENT_SYSMEM,
        flags: int = 0,
        vm_id: int = 0,
        cpu_caching: int | None = None,
        *,
        vm: int | None = None,
    ) -> int:
        """Create a BO; cpu_caching defaults to WB in system memory only, WC otherwise.
        `vm_id` makes it private to that VM (`vm=` is the deprecated spelling)."""
        if vm is not None:
            _deprecated("gem_create(vm=)", "vm_id=")
            vm_id = vm
        if cpu_caching is None:
            sysmem_only = placement == XE_PLACEMENT_SYSMEM
            cpu_caching = DRM_XE_GEM_CPU_CACHING_WB if sysmem_only else DRM_XE_GEM_CPU_CACHING_WC
        reply: m.DrmXeGemCreateReply = self.ioctl(
            Op.XE_GEM_CREATE,
            m.DrmXeGemCreate(
                size=size,
                placement=placement,
                flags=flags,
                vm_id=vm_id,
                cpu_caching=cpu_caching,
            ),
        )
        self._bo_sizes[reply.handle] = size
        return reply.handle

    def gem_close(self, handle: int) -> None:
        self.ioctl(Op.GEM_CLOSE, m.DrmGemClose(handle=handle))
        self._bo_sizes.pop(handle, None)

    def gem_flink(self, handle: int) -> int:
        """GEM_FLINK: the object's global name (primary node only)."""
        reply: m.DrmGemFlinkReply = self.ioctl(Op.GEM_FLINK, m.DrmGemFlink(handle=handle))
        return reply.name

    def gem_open(self, name: int) -> tuple[int, int]:
        """GEM_OPEN: a new handle to the object `name` names, and its size."""
        reply: m.DrmGemOpenReply = self.ioctl(Op.GEM_OPEN, m.DrmGemOpen(name=name))
        self._bo_sizes[reply.handle] = reply.size
        return reply.handle, reply.size

    def gem_mmap_offset(
        self,
        handle: int,
        flags: int = 0,
        *,
        extensions: int = 0,
        reserved: tuple[int, int] = (0, 0),
    ) -> int:
        """XE_GEM_MMAP_OFFSET: the fake offset to mmap. Every field of the uAPI struct
        can be set, must-be-zero ones included, to try the kernel's checks."""
        args = m.DrmXeGemMmapOffset(
            extensions=extensions, handle=handle, flags=flags, reserved=reserved
        )
        reply: m.DrmXeGemMmapOffsetReply = self.ioctl(Op.XE_GEM_MMAP_OFFSET, args)
        return reply.offset

    def mmap_fd(
        self,
        offset: int,
        length: int,
        prot: int = PROT_READ | PROT_WRITE,
        flags: int = MAP_SHARED,
    ) -> tuple[int, int, int]:
        """The MMAP request alone: the descriptor the daemon answers with, the offset in
        it to map and the length to map (the request's, rounded up to whole pages). The
        descriptor is yours to keep and close: map it yourself, pass it on, or map it
        again later. mmap() does all of it for you."""
        reply, (fd,) = self.ioctl_fds(
            Op.MMAP, m.XedMmap(offset=offset, length=length, prot=prot, flags=flags)
        )
        return fd, reply.offset, reply.length

    def mmap(
        self,
        offset: int,
        length: int,
        prot: int = PROT_READ | PROT_WRITE,
        flags: int = MAP_SHARED,
    ) -> Mapping:
        """mmap(2) of the DRM file at a fake offset: the daemon checks, we map its fd.
        Once the device is unplugged the mapping reads zeros, and what is written to it
        afterwards reaches nobody (clients/unplug.py)."""
        watch = self.unplug_watch()
        fd, file_offset, length = self.mmap_fd(offset, length, prot, flags)
        try:
            mapping = Mapping(fd, length, prot, file_offset, fake_offset=offset)
        finally:
            os.close(fd)
        watch.add(mapping)
        self._mappings.append(mapping)
        return mapping

    def mmap_bo(self, handle: int, length: int | None = None) -> Mapping:
        """Map a BO this connection created (whole by default)."""
        if length is None:
            length = self._bo_sizes[handle]
        return self.mmap(self.gem_mmap_offset(handle), length)

    def unplug_watch(self) -> unplug.UnplugWatch:
        """This device's notice page in this process (asked for once, UNPLUG_NOTICE)."""

        def notice() -> int:
            _reply, (fd,) = self.ioctl_fds(Op.UNPLUG_NOTICE, m.XedUnplugNotice())
            return fd

        return unplug.watch(self.identity.instance, notice)

    def wait_unplugged(self, timeout: float | None = None) -> bool:
        """Wait until the device is unplugged and every mapping this process made of it
        reads from private zero pages (the kernel's dummy page); False after `timeout`
        seconds."""
        try:
            watch = self.unplug_watch()
        except XeError as exc:
            if exc.errno != errno.ENODEV:
                raise
            # unplugged before this process mapped anything of it: nothing to fall
            # (a watch exists as soon as one mapping does)
            return True
        return watch.wait(timeout)

    def track_mapping(self, mapping: Mapping) -> None:
        """Let user_address() translate CPU addresses inside `mapping`."""
        self._mappings.append(mapping)

    def user_address(self, address: int) -> int:
        """A CPU address inside one of our mappings, as the daemon names user memory."""
        self._mappings = [mp for mp in self._mappings if not mp.closed]
        for mapping in self._mappings:
            if mapping.contains(address):
                return mapping.fake_offset + (address - mapping.address)
        raise ValueError(f"{address:#x} is not inside a mapping of this device")

    # --- MMIO regions and the PCI barrier page ---------------------------------------------
    def mmio_regions(self) -> tuple[m.DrmXeMmioRegion, ...]:
        return self.query(Query.MMIO_REGIONS).mmio_regions

    def mmio_open(self, name: str) -> m.DrmXeMmioRegionOpenReply:
        """Open the region DEVICE_QUERY lists under `name` ("info", "doorbell")."""
        for region in self.mmio_regions():
            if region.name == name:
                reply: m.DrmXeMmioRegionOpenReply = self.ioctl(
                    Op.XE_MMIO_REGION_OPEN,
                    m.DrmXeMmioRegionOpen(bar_offset=region.bar_offset, size=region.size),
                )
                return reply
        raise ValueError(f"the device lists no MMIO region {name!r}")

    def mmio_close(self, region_id: int) -> None:
        self.ioctl(Op.XE_MMIO_REGION_CLOSE, m.DrmXeMmioRegionClose(region_id=region_id))

    def mmap_mmio(self, region: m.DrmXeMmioRegionOpenReply, writable: bool = False) -> Mapping:
        """Map a whole region. Register space is uncached on real hardware: every access
        goes to the device, so read it for each value you need. The mapping is not
        inherited by fork() (MADV_DONTFORK): a child must open its own."""
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        mapping = self.mmap(region.offset, region.size, prot)
        mapping.madvise(mmap.MADV_DONTFORK)
        mapping.inherited = False
        return mapping

    def pci_barrier_offset(self) -> int:
        """GEM_MMAP_OFFSET with DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER: never hard-coded."""
        return self.gem_mmap_offset(0, DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER)

    def pci_barrier(self) -> None:
        """A PCI memory barrier: one store to the barrier page (mapped on first use).
        The mapping is inherited by fork() as the kernel's is, and stays after close():
        a child's barriers count for this file too (clients/barrier.py)."""
        barrier = self._barrier
        if barrier is None:
            self.pci_barrier_mapping()
            barrier = self._barrier
            assert barrier is not None
        barrier.store()

    def pci_barrier_mapping(self) -> Mapping:
        """The barrier page pci_barrier() stores to (mapped now if it is not yet)."""
        if self._barrier is None:
            page = self.mmap(self.pci_barrier_offset(), PAGE_SIZE, PROT_WRITE)
            if self._unmapped is None:
                self._barrier = PciBarrier(page, self.unplug_watch().address)
            else:  # its running number goes on
                self._barrier, self._unmapped = self._unmapped, None
                self._barrier.attach(page)
        return self._barrier.page

    def pci_barrier_unmap(self) -> None:
        """Unmap the barrier page pci_barrier() stores to, in this process (a forked
        child keeps its copy), closed or not: the device lets go of a closed file's page
        as soon as nobody maps it, not at its next sweep (up to a second later). The
        Mapping pci_barrier_mapping() gave is closed. A later pci_barrier() maps the page
        again, and its running number (shared with forked children) goes on."""
        if self._barrier is not None:
            self._barrier.unmap()
            self._barrier, self._unmapped = None, self._barrier

    @property
    def barriers_written(self) -> int:
        """Barriers stored through this device, by this process and its forked children."""
        barrier = self._barrier or self._unmapped
        return barrier.written if barrier is not None else 0

    def pci_barrier_drain(self, attempts: int = 3) -> None:
        """Make sure the device has seen our last barrier: repeat it (the device counts a
        repeated number once) and wait for the page to read 0xdeadbeef again."""
        if self._barrier is not None:
            self._barrier.drain(attempts)

    def pci_barrier_acks(self, record: bool = True) -> m.XedPciBarrierAcksReply:
        """PCI_BARRIER_ACKS: when the device read this file's barriers since the last
        call, as (running number, CLOCK_MONOTONIC ns) in `seqs` and `counted_ns` (the
        device goes on recording if `record`, from the first call on). Compare with
        time.monotonic_ns() taken before pci_barrier() and barriers_written after it:
        the barrier was counted at the first time whose number reached its own."""
        flags = XED_PCI_BARRIER_ACKS_RECORD if record else 0
        reply: m.XedPciBarrierAcksReply = self.ioctl(
            Op.PCI_BARRIER_ACKS, m.XedPciBarrierAcks(flags=flags)
        )
        return reply

    # --- VMs --------------------------------------------------------------------------------
    def vm_create(self, flags: int = 0) -> int:
        reply: m.DrmXeVmCreateReply = self.ioctl(Op.XE_VM_CREATE, m.DrmXeVmCreate(flags=flags))
        return reply.vm_id

    def vm_destroy(self, vm: int) -> None:
        self.ioctl(Op.XE_VM_DESTROY, m.DrmXeVmDestroy(vm_id=vm))

    def vm_faults(self, vm: int) -> list[m.XeVmFault]:
        """The page faults work on `vm` met (the first 50): VM_GET_PROPERTY(FAULTS),
        asked for their size, then for them."""
        args = m.DrmXeVmGetProperty(vm_id=vm, property=DRM_XE_VM_GET_PROPERTY_FAULTS)
        reply: m.DrmXeVmGetPropertyReply = self.ioctl(Op.XE_VM_GET_PROPERTY, args)
        if reply.size:
            args = m.DrmXeVmGetProperty(
                vm_id=vm, property=DRM_XE_VM_GET_PROPERTY_FAULTS, size=reply.size
            )
            reply = self.ioctl(Op.XE_VM_GET_PROPERTY, args)
        return list(reply.faults)

    def vm_bind(
        self,
        vm: int,
        bo: int,
        addr: int,
        size: int | None = None,
        obj_offset: int = 0,
        flags: int = 0,
        syncs: Iterable[m.DrmXeSync] = (),
        **deprecated: int,
    ) -> None:
        """Map `size` bytes of BO `bo` (all of it by default) at GPU address `addr`
        (the bind op's `range`; `range=` is the deprecated spelling, IGT's is `size`)."""
        size = _renamed(deprecated, "vm_bind", size)
        if size is None:
            size = self._bo_sizes[bo] - obj_offset
        op = m.DrmXeVmBindOp(
            obj=bo, obj_offset=obj_offset, range=size, addr=addr,
            op=DRM_XE_VM_BIND_OP_MAP, flags=flags,
        )  # fmt: skip
        self.vm_bind_ops(vm, [op], syncs)

    def vm_unbind(self, vm: int, addr: int, size: int | None = None, **deprecated: int) -> None:
        """Unmap `size` bytes at GPU address `addr` (`range=` deprecated, as vm_bind)."""
        size = _renamed(deprecated, "vm_unbind", size)
        if size is None:
            raise TypeError("vm_unbind() needs the size to unmap")
        op = m.DrmXeVmBindOp(addr=addr, range=size, op=DRM_XE_VM_BIND_OP_UNMAP)
        self.vm_bind_ops(vm, [op])

    def vm_bind_ops(
        self, vm: int, ops: Iterable[m.DrmXeVmBindOp], syncs: Iterable[m.DrmXeSync] = ()
    ) -> None:
        """VM_BIND with an explicit array of drm_xe_vm_bind_op."""
        syncs = [self._user_sync(s) for s in syncs]
        self.ioctl(Op.XE_VM_BIND, m.DrmXeVmBind(vm_id=vm, binds=tuple(ops), syncs=tuple(syncs)))

    def _user_sync(self, sync: m.DrmXeSync) -> m.DrmXeSync:
        """VM_BIND user fences are user pointers: translate ones inside our mappings."""
        if sync.type != DRM_XE_SYNC_TYPE_USER_FENCE:
            return sync
        try:
            addr = self.user_address(sync.addr)
        except ValueError:
            return sync  # not ours to translate: let the daemon judge it
        # everything else as the caller set it; mypy sees the records through
        # dataclass_transform, not as attrs classes
        return attrs.evolve(sync, addr=addr)  # type: ignore[misc]

    def vm_export(
        self, vm: int, *, pad: int = 0, pad1: int = 0, reserved: tuple[int, int] = (0, 0)
    ) -> int:
        """XE_VM_EXPORT: the VM as a descriptor to hand to an auxiliary driver. The
        must-be-zero fields can be set, to try the kernel's checks."""
        args = m.DrmXeVmExport(vm_id=vm, pad=pad, pad1=pad1, reserved=reserved)
        _reply, (fd,) = self.ioctl_fds(Op.XE_VM_EXPORT, args)
        return fd

    def wait_event(self, timeout: float | None = None) -> EventMessage:
        """The next event from the daemon (queued ones first); TimeoutError if none came."""
        return self.rpc.wait_event(timeout)

    # --- userptr ------------------------------------------------------------------------------
    def host_memory(self, size: int) -> HostMemory:
        """This connection's host memory (register it once): userptr binds map into it."""
        return HostMemory(self, size)

    def vm_bind_userptr(
        self, vm: int, host: HostMemory, offset: int, addr: int, length: int, flags: int = 0
    ) -> None:
        """MAP_USERPTR: [offset, offset+length) of host memory at GPU address `addr`."""
        op = m.DrmXeVmBindOp(
            obj_offset=host.user_address(offset), range=length, addr=addr,
            op=DRM_XE_VM_BIND_OP_MAP_USERPTR, flags=flags,
        )  # fmt: skip
        self.vm_bind_ops(vm, [op])

    # --- exec queues and execution ----------------------------------------------------------
    def exec_queue_create(
        self,
        vm: int,
        engine_class: int = EngineClass.RENDER,
        instance: int = 0,
        gt: int = 0,
        *,
        width: int = 1,
        priority: int | None = None,
    ) -> int:
        """A queue on engine `instance` of `engine_class`; `width` above 1, a parallel
        queue whose lanes run on that instance and the width - 1 after it (each EXEC
        then gives one batch a lane); `priority` (0-2; 2 takes CAP_SYS_NICE) set
        through the SET_PROPERTY extension, as Mesa sets a global priority."""
        chain: tuple[m.DrmXeExtSetProperty, ...] = ()
        if priority is not None:
            chain = (
                m.DrmXeExtSetProperty(
                    property=DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY, value=priority
                ),
            )
        instances = tuple(
            m.DrmXeEngineClassInstance(
                engine_class=engine_class, engine_instance=instance + lane, gt_id=gt
            )
            for lane in range(width)
        )
        reply: m.DrmXeExecQueueCreateReply = self.ioctl(
            Op.XE_EXEC_QUEUE_CREATE,
            m.DrmXeExecQueueCreate(
                extensions=int(bool(chain)),  # the C struct's pointer: the chain follows
                width=width,
                num_placements=1,
                vm_id=vm,
                instances=instances,
                chain=chain,
            ),
        )
        return reply.exec_queue_id

    def exec_queue_banned(self, queue: int) -> bool:
        """EXEC_QUEUE_GET_PROPERTY(BAN): whether the queue was banned (reset)."""
        args = m.DrmXeExecQueueGetProperty(
            exec_queue_id=queue, property=DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN
        )
        reply: m.DrmXeExecQueueGetPropertyReply = self.ioctl(Op.XE_EXEC_QUEUE_GET_PROPERTY, args)
        return bool(reply.value)

    def exec_queue_destroy(self, queue: int) -> None:
        self.ioctl(Op.XE_EXEC_QUEUE_DESTROY, m.DrmXeExecQueueDestroy(exec_queue_id=queue))

    def exec(
        self, queue: int, batch_addr: int | Sequence[int], syncs: Iterable[m.DrmXeSync] = ()
    ) -> None:
        """Submit the batch at GPU address `batch_addr` (a parallel queue: a sequence,
        one batch a lane); returns once it is queued."""
        lanes: tuple[int, ...] = ()
        if isinstance(batch_addr, int):
            address, count = batch_addr, 1
        else:
            address, lanes = 0, tuple(batch_addr)
            count = len(lanes)
        self.ioctl(
            Op.XE_EXEC,
            m.DrmXeExec(
                exec_queue_id=queue,
                address=address,
                addresses=lanes,
                num_batch_buffer=count,
                syncs=tuple(syncs),
            ),
        )

    def wait_user_fence(
        self,
        addr: int,
        value: int,
        timeout: int = ONE_SECOND_NS,
        op: UfenceOp = UfenceOp.EQ,
        mask: int = 0xFFFF_FFFF_FFFF_FFFF,
        exec_queue: int = 0,
        flags: int = 0,
    ) -> int:
        """Wait until the u64 at CPU address `addr` (in one of our mappings) passes
        `op value`; `timeout` in ns (negative: forever). Returns the time left."""
        reply: m.DrmXeWaitUserFenceReply = self.ioctl(
            Op.XE_WAIT_USER_FENCE,
            m.DrmXeWaitUserFence(
                addr=self.user_address(addr), op=op, flags=flags, value=value, mask=mask,
                timeout=timeout, exec_queue_id=exec_queue,
            ),
        )  # fmt: skip
        return reply.timeout
