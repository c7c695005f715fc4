"""VM export and the auxiliary driver's view of a VM (proposal: "drm/xe: support sharing
VM info between XE drivers").

An application exports its VM as a descriptor (an exported object, see export.py) and
hands it to an auxiliary driver (role `aux`), which imports it on behalf of that
application: the proposal shares a VM with another driver, not with another
application, so the importer must name the exporting process. The export and every
registration hold a reference to the VM object, not to its contents: when the file that
created the VM closes, the VM closes with it (xe_file_close -> xe_vm_close_and_put), its
bindings go, and a registered aux driver is told once, with an invalidation of the whole
address space (reason "vm_closed"). From then on the VM is closed: an import is ENOENT,
and so is a resolve. A registered aux driver resolves address ranges to the BOs behind
them (zero copy: their descriptors) and hears of every later bind or unbind that touches
a range it resolved, as an MMU notifier would tell it: its view of that range is stale.

A userptr range resolves to the host memory's own pages, as an on-demand-paging RDMA
driver maps user memory: nothing is pinned. Before those pages change, the notifier
(HOST_MEMORY_INVALIDATE START) tells the aux driver and waits until it acknowledges
that it let them go (AUX_VM_INVALIDATE_DONE), as mmu_interval_notifier's invalidate
callback waits for the device; a resolve that meets pages mid-change waits for the
change to end and revalidates, and one that meets freed pages fails with EFAULT.

What one registration keeps is bounded (MAX_WATCHES, MAX_HOST_MAPS, MAX_UNACKED): past a
bound a resolve is refused with ENOMEM, as the kernel's would be when it cannot allocate
the notifier (ib_umem_odp_get). Nothing is dropped to make room: the aux driver would
hear of a change that never happened, and the IB-like one retires a region for good on
any invalidation but a userptr one. A watch goes when a bind or unbind touches its range,
on AUX_VM_UNWATCH, or with the registration.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import os
from collections.abc import Iterator
from errno import E2BIG, EEXIST, EFAULT, EINVAL, ENOENT, EPERM
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocols import MAX_FDS
from protocols import messages as m
from protocols.ops import Event

from .errors import GpuFault, IoctlError, refuse_if
from .export import ExportedObject, exported_as
from .limits import charge_export, refuse_over, refuse_past
from .userptr import HostArena, UserptrBusy

if TYPE_CHECKING:
    from .bo import XeBo
    from .file import XeFile
    from .vm import XeVm


# the spans one AUX_VM_RESOLVE reply holds (its record refuses more); mypy sees records
# through dataclass_transform, not as attrs classes
_RESOLVE_REPLY: Any = m.XedAuxVmResolveReply
MAX_SPANS: int = attrs.fields(_RESOLVE_REPLY).spans.metadata["max_items"]
# the bindings one AUX_VM_IMPORT reply lists, likewise
_IMPORT_REPLY: Any = m.XedAuxVmImportReply
MAX_BINDINGS: int = attrs.fields(_IMPORT_REPLY).bindings.metadata["max_items"]

# What one registration may keep; past each, AUX_VM_RESOLVE is ENOMEM. Every resolve of a
# new range adds a watch (~140 bytes) and every bind of the VM's owner looks at them: an
# aux driver resolving without end would grow the daemon without end. An RDMA driver
# watches a range per memory region, and applications register a few large regions, not
# thousands: 4096 is far past what they hold at once and under a megabyte.
MAX_WATCHES = 4096
# the pieces of host memory held (a resolve of a userptr range adds one per span; an
# acknowledgement may cut one in two, which takes a change of the application's own
# memory, so a registration may hold more, and then only resolves that hold less answer)
MAX_HOST_MAPS = 4096
# invalidations sent while pages were held and not acknowledged yet: a driver answers each
# as it handles it (the IB-like one at once), so this many outstanding means it stopped
MAX_UNACKED = 4096


class XeVmExport(ExportedObject):
    kind = "vm_export"

    def __init__(self, vm: XeVm, exporter: XeFile) -> None:
        super().__init__(vm.device)
        self.vm = vm.get()
        self.exporter_pid = exporter.pid
        vm.export = self

    def info(self) -> m.XedExportedInfo:
        holders = [r.aux.client_id for r in self.vm.registrations][:8]
        return m.XedExportedInfo(
            kind=self.kind,
            ino=self.ino,
            exporter_pid=self.exporter_pid,
            registered_by=tuple(holders + [0] * (8 - len(holders))),
        )

    def release(self) -> None:
        """The last copy of the VM descriptor is closed: the export is cleared."""
        if self.vm.export is self:
            self.vm.export = None
        self.vm.put()


@attrs.frozen
class HostMap:
    """Host memory [lo, hi) the aux driver got from a resolve, seen at GPU address `va`;
    `since`: the invalidations sent before it was handed out (they do not cover it)."""

    arena: HostArena
    lo: int
    hi: int
    va: int
    since: int

    @property
    def va_end(self) -> int:
        return self.va + self.hi - self.lo

    def overlaps(self, start: int, end: int) -> bool:
        return self.va < end and start < self.va_end

    def outside(self, start: int, end: int) -> list[HostMap]:
        """What is left of this map once GPU range [start, end) is cut out of it."""
        left = [(self.va, min(start, self.va_end)), (max(end, self.va), self.va_end)]
        return [
            attrs.evolve(self, lo=self.lo + a - self.va, hi=self.lo + b - self.va, va=a)
            for a, b in left
            if a < b
        ]


class _Ranges:
    """Ranges (tuples starting with start, end; unique) sorted by start: those overlapping
    a range are found by bisection, not by walking them all (a bind of the VM's owner
    asks on every call). No range is longer than the longest, so one starting at or
    before start - longest ends by start; the longest is the top of a max-heap of the
    lengths present (stale tops are popped when met, and the heap is rebuilt when stale
    entries pile up), so that ranges coming and going never cost a walk of them all."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, ...]] = []
        self._lengths: dict[int, int] = {}  # length -> how many ranges have it
        self._heap: list[int] = []  # -length, for each length present (and stale ones)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._items)

    def __contains__(self, item: tuple[Any, ...]) -> bool:
        i = bisect.bisect_left(self._items, item)
        return i < len(self._items) and self._items[i] == item

    def add(self, item: tuple[Any, ...]) -> None:
        bisect.insort(self._items, item)
        length = item[1] - item[0]
        if length not in self._lengths:
            heapq.heappush(self._heap, -length)
            if len(self._heap) > 2 * len(self._lengths) + 16:
                self._heap = [-n for n in (*self._lengths, length)]
                heapq.heapify(self._heap)
        self._lengths[length] = self._lengths.get(length, 0) + 1

    def remove(self, item: tuple[Any, ...]) -> None:
        del self._items[bisect.bisect_left(self._items, item)]
        length = item[1] - item[0]
        if self._lengths[length] == 1:
            del self._lengths[length]
        else:
            self._lengths[length] -= 1

    def _longest(self) -> int:
        while self._heap and -self._heap[0] not in self._lengths:
            heapq.heappop(self._heap)
        return -self._heap[0] if self._heap else 0

    def overlapping(self, start: int, end: int) -> list[tuple[Any, ...]]:
        lo = bisect.bisect_left(self._items, (start - self._longest() + 1,))
        hi = bisect.bisect_left(self._items, (end,), lo)
        return [r for r in self._items[lo:hi] if r[1] > start]

    def inside(self, start: int, end: int) -> list[tuple[Any, ...]]:
        lo = bisect.bisect_left(self._items, (start,))
        hi = bisect.bisect_left(self._items, (end,), lo)  # the rest start at or past end
        return [r for r in self._items[lo:hi] if r[1] <= end]

    def clear(self) -> None:
        self._items.clear()
        self._lengths.clear()
        self._heap.clear()


# a piece of host memory held, as _Held indexes it: (va, va_end, order, HostMap)
_Piece = tuple[int, int, int, HostMap]


class _Held:
    """The pieces of host memory one registration holds, indexed by GPU address: a
    resolve, an acknowledgement or an unwatch finds the pieces it changes by bisection.
    `order`: a piece's place among them, which a piece cut in parts keeps; a host memory
    change reports pieces in that order. Each arena knows who holds some of its pages
    (aux_users)."""

    def __init__(self, holder: AuxRegistration) -> None:
        self._holder = holder
        self._index = _Ranges()
        self._arenas: dict[HostArena, int] = {}  # pieces held in each
        self._orders = itertools.count()

    def __len__(self) -> int:
        return len(self._index)

    def pieces(self) -> list[HostMap]:
        """In the order they were handed out (the parts of one piece, by address)."""
        return [r[3] for r in sorted(self._index, key=lambda r: (r[2], r[0]))]

    def plan(self, new: list[HostMap]) -> tuple[list[_Piece], list[_Piece]]:
        """(pieces let go, pieces held) once `new` (pieces not overlapping one another) is
        handed out. Pages held already at the same addresses are held once, by the new
        piece: one invalidation each, not one per resolve. Only a piece of the same arena
        seen at the same shift (va - lo) holds the same pages at the same addresses."""

        def same(h: HostMap, n: HostMap) -> bool:
            return h.arena is n.arena and h.va - h.lo == n.va - n.lo

        gone: dict[tuple[int, int, int], _Piece] = {}
        for n in new:
            for piece in self._index.overlapping(n.va, n.va_end):
                if same(piece[3], n):
                    gone[piece[:3]] = piece
        held: list[_Piece] = []
        for va, end, order, h in gone.values():
            parts = [h]
            for n in new:
                if same(h, n) and n.overlaps(va, end):
                    parts = [p for part in parts for p in part.outside(n.va, n.va_end)]
            held += [(p.va, p.va_end, order, p) for p in parts]
        held += [(n.va, n.va_end, next(self._orders), n) for n in new]
        return list(gone.values()), held

    def apply(self, gone: list[_Piece], held: list[_Piece]) -> None:
        for piece in gone:
            self._index.remove(piece)
            arena = piece[3].arena
            self._arenas[arena] -= 1
            if not self._arenas[arena]:
                del self._arenas[arena]
                arena.aux_users.discard(self._holder)
        for piece in held:
            self._index.add(piece)
            arena = piece[3].arena
            if arena not in self._arenas:
                self._arenas[arena] = 0
                arena.aux_users.add(self._holder)
            self._arenas[arena] += 1

    def let_go(self, start: int, end: int, seq: int) -> None:
        """The aux driver let go of GPU range [start, end) as invalidation `seq` asked:
        the pieces held before it was sent lose those pages (one held since keeps them)."""
        gone: list[_Piece] = [r for r in self._index.overlapping(start, end) if r[3].since < seq]
        held = [(p.va, p.va_end, o, p) for _, _, o, h in gone for p in h.outside(start, end)]
        self.apply(gone, held)

    def unwatch(self, start: int, end: int) -> None:
        """Let go of the pieces inside GPU range [start, end)."""
        self.apply(self._index.inside(start, end), [])

    def clear(self) -> None:
        self.apply(list(self._index), [])


class AuxRegistration:
    """One aux connection's hold on a VM, the ranges it watches, and the host memory
    pages it was handed and has not yet acknowledged letting go of."""

    def __init__(self, aux: XeFile, vm: XeVm, handle: int) -> None:
        self.aux = aux
        self.vm = vm.get()
        self.handle = handle
        # (start, end) of each range resolved since it changed; the order they came in
        # matters to nothing (an invalidation reports the bind's range, not the watches)
        self.watches = _Ranges()
        self.held = _Held(self)
        self.seqno = 0  # invalidations sent
        self.acked = 0  # invalidations the aux driver has acknowledged
        # (seqno, start, end) of each invalidation sent while pages were held, oldest first
        self._unacked: collections.deque[tuple[int, int, int]] = collections.deque()
        self._ack = trio.Event()
        self.released = False
        vm.registrations.add(self)

    @property
    def host_maps(self) -> list[HostMap]:
        """The pieces of host memory held, in the order they were handed out."""
        return self.held.pieces()

    def refuse_over_limits(self, start: int, end: int, gone: int, held: int) -> None:
        """ENOMEM if the resolve of [start, end) would keep more than a registration may
        (the module's bounds): a range watched already and pages held already do not
        count twice. `gone`, `held`: the pieces of host memory it lets go of and holds
        (_Held.plan)."""
        aux, hint = self.aux, f"vm_handle {self.handle}: unwatch, acknowledge or release first"
        if (start, end) not in self.watches:
            refuse_past(aux, "aux_watches", len(self.watches), MAX_WATCHES, "MAX_WATCHES", 1, hint)
        if held > gone:
            pieces, more = len(self.held), held - gone
            refuse_past(aux, "aux_host_maps", pieces, MAX_HOST_MAPS, "MAX_HOST_MAPS", more, hint)
        refuse_past(aux, "aux_unacked", len(self._unacked), MAX_UNACKED, "MAX_UNACKED", 1, hint)

    def watch(self, start: int, end: int) -> None:
        if (start, end) not in self.watches:
            self.watches.add((start, end))

    def touched(self, start: int, length: int, reason: str) -> None:
        """A bind or unbind covered [start, start+length): tell the aux driver once, and
        forget the watches it made stale (it resolves again if it still cares)."""
        stale = self.watches.overlapping(start, start + length)
        if not stale:
            return
        for watch in stale:
            self.watches.remove(watch)
        self._invalidate(start, length, reason)

    def vm_closed(self) -> None:
        """The VM closed under the aux driver (its creator's file is gone): everything it
        was handed is stale and nothing more can be resolved. It hears it once, as an
        invalidation of the whole address space with reason "vm_closed"; the pages it
        held are no longer held for it (nobody waits for an acknowledgement: the VM's
        memory goes now, as the kernel's notifier release does not wait either)."""
        self.watches.clear()
        self._let_go_of_everything()
        self._invalidate(0, self.vm.size, "vm_closed")

    def host_changing(self, arena: HostArena, lo: int, hi: int) -> int:
        """Host memory [lo, hi) is about to change: tell the aux driver of every range it
        holds there. The seqno to wait for, or 0 if it holds none of it."""
        last = 0
        for h in self.host_maps:
            if h.arena is arena and h.lo < hi and lo < h.hi:
                start, stop = max(lo, h.lo), min(hi, h.hi)
                last = self._invalidate(h.va + start - h.lo, stop - start, "userptr")
        return last

    def _invalidate(self, va: int, length: int, reason: str) -> int:
        self.seqno += 1
        if self.held:  # an ack matters only to pages held before it was sent
            self._unacked.append((self.seqno, va, va + length))
        self.aux.send_event(
            Event.AUX_RANGE_INVALIDATED,
            m.AuxRangeInvalidated(
                vm_handle=self.handle, va=va, length=length, reason=reason, seqno=self.seqno
            ),
        )
        return self.seqno

    def acknowledge(self, seqno: int) -> None:
        """The aux driver let go of every range invalidated up to `seqno`."""
        while self._unacked and self._unacked[0][0] <= seqno:
            seq, start, end = self._unacked.popleft()  # only these pages were let go
            self.held.let_go(start, end, seq)
        if not self.held:  # an acknowledgement lets go of held pages only: none are left
            self._unacked.clear()
        self.acked = max(self.acked, seqno)
        self._ack.set()
        self._ack = trio.Event()

    async def wait_acknowledged(self, seqno: int) -> None:
        """Until the aux driver acknowledged `seqno`, or its registration ended."""
        while self.acked < seqno and not self.released:
            await self._ack.wait()

    def unwatch(self, start: int, end: int) -> None:
        """The aux driver no longer cares about what lies inside [start, end)."""
        for watch in self.watches.inside(start, end):
            self.watches.remove(watch)
        self.held.unwatch(start, end)
        if not self.held:  # as after an acknowledgement
            self._unacked.clear()

    def _let_go_of_everything(self) -> None:
        self.held.clear()
        self._unacked.clear()  # they would let go of nothing

    def release(self) -> None:
        self.vm.registrations.discard(self)
        self.watches.clear()
        self._let_go_of_everything()
        self.released = True
        self._ack.set()  # whoever waits for this aux driver waits no more
        self.vm.put()


def xe_vm_export_ioctl(xef: XeFile, args: m.DrmXeVmExport) -> tuple[m.Empty, list[int]]:
    """XE_VM_EXPORT (proposal): the VM as a descriptor for an auxiliary driver.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - pad, pad1 or reserved non-zero: EINVAL
    - no such VM: EINVAL
    - the VM is closed: ENOENT
    - the VM is exported already, or registered with an aux driver: EEXIST
    - this file's live exports reach limits.exported: ENOMEM (the export counts against
      its creator until it is released, after the file is gone if need be)
    """
    refuse_if(args.pad or args.pad1 or any(args.reserved), EINVAL, "pad/pad1/reserved")
    vm = xef.vms.get(args.vm_id)
    if vm is None:
        raise IoctlError(EINVAL, f"no VM {args.vm_id}")
    refuse_if(vm.closed, ENOENT, f"VM {args.vm_id} is closed")
    refuse_if(vm.export is not None or vm.registrations, EEXIST, "already exported")
    refuse_over(xef, "exported", xef.account.exported)
    export = XeVmExport(vm, xef)
    charge_export(xef, export)
    try:
        fd = export.new_fd()
    finally:
        export.let_go()  # the descriptor's life is the clients' from now on (if it got one)
    xef.log.info("vm_exported", vm_id=args.vm_id, ino=export.ino)
    return m.Empty(), [fd]


def aux_vm_import_ioctl(
    xef: XeFile, args: m.XedAuxVmImport, fds: tuple[int, ...]
) -> m.XedAuxVmImportReply:
    """AUX_VM_IMPORT: register the attached VM descriptor with this aux driver.

    Checks, in order:
    - flags or reserved non-zero: EINVAL
    - not an exported VM of this daemon (a dma-buf, any other file, another daemon's
      VM descriptor): EINVAL; one of a device since unplugged (unplug.py): ENODEV
    - the VM is closed: ENOENT
    - on_behalf_of_pid is not the process that exported the VM: EPERM
    - this aux connection has registered it already: EEXIST
    The reply lists the VM's first MAX_BINDINGS bindings (what its record holds).
    """
    refuse_if(args.flags or any(args.reserved), EINVAL, "flags/reserved")
    (fd,) = fds
    export = exported_as(xef.device, fd, XeVmExport, EINVAL, "not an exported VM of this daemon")
    vm = export.vm
    refuse_if(vm.closed, ENOENT, "the VM is closed")
    refuse_if(
        args.on_behalf_of_pid != export.exporter_pid,
        EPERM,
        f"pid {args.on_behalf_of_pid} did not export this VM: a VM is shared with a "
        "driver, not with another application",
    )
    refuse_if(any(r.aux is xef for r in vm.registrations), EEXIST, "registered by this aux already")
    bindings = _bindings(vm)  # the reply is made before anything is registered
    handle = xef.aux_ids.alloc()
    xef.aux_vms[handle] = AuxRegistration(xef, vm, handle)
    xef.log.info("aux_vm_imported", vm_handle=handle, on_behalf_of=args.on_behalf_of_pid)
    return m.XedAuxVmImportReply(
        vm_handle=handle, va_bits=xef.device.config.va_bits, bindings=bindings
    )


def _bindings(vm: XeVm) -> tuple[m.XedAuxBinding, ...]:
    """The VM's first MAX_BINDINGS bindings, in address order (AUX_VM_RESOLVE reaches
    every one)."""
    return tuple(
        m.XedAuxBinding(
            va=vma.start,
            range=vma.end - vma.start,
            bo_size=vma.bo.size if vma.bo else 0,
            bo_offset=vma.bo_offset if vma.bo else 0,  # a NULL binding has no BO offset
        )
        for vma in itertools.islice(vm.iter_vmas(), MAX_BINDINGS)
    )


def _registration(xef: XeFile, handle: int) -> AuxRegistration:
    registration = xef.aux_vms.get(handle)
    if registration is None:
        raise IoctlError(ENOENT, f"no vm_handle {handle}")
    return registration


async def aux_vm_resolve_ioctl(
    xef: XeFile, args: m.XedAuxVmResolve
) -> tuple[m.XedAuxVmResolveReply, list[int]]:
    """AUX_VM_RESOLVE: the memory behind [va, va+length), and a watch on the range.

    Checks, in order:
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - no such vm_handle: ENOENT
    - the VM is closed (the file that created it is gone): ENOENT
    - length zero or the range beyond the VM: EINVAL
    - any address of the range unbound, or bound NULL: EFAULT
    - freed host memory under a userptr range: EFAULT
    - more than MAX_FDS distinct BOs and host memories, or more than MAX_SPANS spans
      (bindings: one BO bound many times over): E2BIG. The range is looked at no
      further than its first MAX_SPANS + 1 spans: beyond them, a hole, a NULL binding,
      freed or changing host memory, or more BOs are not looked for
    - the registration would watch more than MAX_WATCHES ranges, hold more than
      MAX_HOST_MAPS pieces of host memory, or has MAX_UNACKED invalidations of held pages
      unacknowledged: ENOMEM (a range watched, or pages held, already count once)
    Host memory under a userptr range that is being invalidated is waited for (as
    hmm_range_fault retries), and the whole range is then resolved again; the wait
    counts against limits.fence_waits of the aux file (ENOMEM past it: wait_idle_for).
    """
    while True:
        registration = _registration(xef, args.vm_handle)  # again: it may end meanwhile
        vm = registration.vm
        refuse_if(vm.closed, ENOENT, "the VM is closed: the file that created it is gone")
        refuse_if(
            not args.length or args.va + args.length > vm.size, EINVAL, "empty or beyond the VM"
        )
        try:
            spans, backing = _resolve(vm, args.va, args.va + args.length)
        except UserptrBusy as busy:
            xef.device.stats["userptr_retries"] += 1
            await busy.arena.wait_idle_for(xef)  # ENOMEM past limits.fence_waits
            continue
        break
    host = [
        HostMap(memory, span.offset, span.offset + span.length, span.va, registration.seqno)
        for span in spans
        if isinstance(memory := backing[span.fd_index], HostArena)
    ]
    gone, held = registration.held.plan(host)  # checked before anything is held
    registration.refuse_over_limits(args.va, args.va + args.length, len(gone), len(held))
    fds: list[int] = []
    try:  # the descriptors first: running out of them must leave nothing watched or held
        for memory in backing:
            fds.append(os.dup(memory.memfd))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    registration.watch(args.va, args.va + args.length)
    registration.held.apply(gone, held)  # the pages are the aux driver's until it acks
    return m.XedAuxVmResolveReply(spans=tuple(spans)), fds


def _resolve(vm: XeVm, pos: int, end: int) -> tuple[list[m.XedAuxSpan], list[XeBo | HostArena]]:
    """The spans of [pos, end) and what backs them; raises before anything is held."""
    spans: list[m.XedAuxSpan] = []
    backing: list[XeBo | HostArena] = []
    try:
        for vma, offset, n in vm._spans(pos, end - pos, write=False):
            memory = vm._memory(vma, offset, n)  # a userptr: freed faults, changing is busy
            va = vma.start + offset
            refuse_if(memory is None, EFAULT, f"NULL binding at {va:#x}")
            assert memory is not None
            if memory not in backing:
                backing.append(memory)
            spans.append(
                m.XedAuxSpan(
                    va=va, length=n, fd_index=backing.index(memory), offset=vma.bo_offset + offset
                )
            )
            if len(spans) > MAX_SPANS:
                break  # E2BIG below, without walking the rest of the range
    except GpuFault as fault:  # a hole, or freed host memory
        raise IoctlError(EFAULT, f"{fault.reason} at {fault.address:#x}") from None
    refuse_if(len(backing) > MAX_FDS, E2BIG, f"{len(backing)} BOs behind the range")
    refuse_if(len(spans) > MAX_SPANS, E2BIG, f"{len(spans)} bindings behind the range")
    return spans, backing


def aux_vm_unwatch_ioctl(xef: XeFile, args: m.XedAuxVmRange) -> m.Empty:
    """AUX_VM_UNWATCH. Checks: no such vm_handle: ENOENT."""
    _registration(xef, args.vm_handle).unwatch(args.va, args.va + args.length)
    return m.Empty()


def aux_vm_invalidate_done_ioctl(xef: XeFile, args: m.XedAuxVmInvalidateDone) -> m.Empty:
    """AUX_VM_INVALIDATE_DONE: the aux driver let go of every range invalidated up to
    seqno (the return of mmu_interval_notifier's invalidate callback).

    Checks, in order:
    - no such vm_handle: ENOENT
    - seqno zero, or beyond the last invalidation sent: EINVAL
    """
    registration = _registration(xef, args.vm_handle)
    refuse_if(
        not 0 < args.seqno <= registration.seqno,
        EINVAL,
        f"seqno {args.seqno}: {registration.seqno} invalidations were sent",
    )
    registration.acknowledge(args.seqno)
    return m.Empty()


def aux_vm_release_ioctl(xef: XeFile, args: m.XedAuxVmRelease) -> m.Empty:
    """AUX_VM_RELEASE. Checks: no such vm_handle: ENOENT."""
    registration = _registration(xef, args.vm_handle)
    xef.release_aux_vm(registration.handle)
    return m.Empty()
