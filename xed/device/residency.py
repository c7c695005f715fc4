"""Where a BO counts: TTM's placement, eviction and validation, kept as accounting.

A BO's pages are its memfd wherever it is placed; its place decides which region it is
charged to, and so which ioctls find room. xe lets TTM make room in VRAM by evicting
idle BOs to system memory, and validates a BO (brings it back into its placement) where
the GPU needs it resident. Emulated:

- GEM_CREATE (and the first CPU map or export of a DEFER_BACKING BO) charges the first
  region of the placement with room. A VRAM-only BO that finds none is made evicted, in
  system memory: TTM evicts older BOs for it instead, but which BO sits outside VRAM is
  nothing user space sees. ENOMEM only for a BO larger than its regions themselves, or
  with system memory full too.
- VM_BIND validates the BO of each MAP, evicting the least recently validated BOs to
  system memory. A VM in LR mode does not evict its own BOs for it (xe_bo_validate
  without allow_res_evict): past VRAM its bind is ENOMEM, as IGT's xe_vm overcommit-*
  expect; another VM's BOs, LR or not, may go (xe preempts an LR VM's queues for it,
  and its rebind worker brings them back: here, its next EXEC does).
- EXEC validates every evicted BO bound in the queue's VM, evicting BOs of other VMs
  only (xe_vm_validate_rebind): a VM whose bound BOs alone outgrow VRAM is ENOMEM at
  EXEC, as overcommit-nonfault-vram-no-lr expects.
- A VM in page-fault mode needs no room: its binds back a BO where there is some, its
  EXEC validates nothing (the GPU's faults would migrate what it touches), and PREFETCH
  moves its BOs' charge to the region asked (xe_bo_migrate).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from errno import EINVAL, ENOMEM
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import (
    DRM_XE_MEM_REGION_CLASS_SYSMEM,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_PREFETCH,
)

from .errors import IoctlError, refuse_if

if TYPE_CHECKING:
    from .bo import XeBo
    from .memory import MemRegion
    from .vm import XeVm

Keep = Callable[["XeBo"], bool]
Moved = Callable[["XeBo"], None]  # told of each BO charged to another region


def _visible_in(bo: XeBo, region: MemRegion) -> bool:
    """Whether `bo` in `region` counts against the CPU-visible part."""
    return bo.wants_visible and region.mem_class == DRM_XE_MEM_REGION_CLASS_VRAM


def _system(bo: XeBo) -> MemRegion:
    regions = bo.device.regions.values()
    return next(r for r in regions if r.mem_class == DRM_XE_MEM_REGION_CLASS_SYSMEM)


def _charge(bo: XeBo, region: MemRegion, visible: bool) -> None:
    region.charge(bo.size, visible)  # ENOMEM past its room
    region.lru[bo] = None  # last: the most recently placed
    if visible:
        region.visible_lru[bo] = None
    bo.region, bo.visible = region, visible


def uncharge(bo: XeBo) -> None:
    """Give back what `bo` is charged (it is freed, or moves)."""
    region = bo.region
    assert region is not None
    region.uncharge(bo.size, bo.visible)
    del region.lru[bo]
    if bo.visible:
        del region.visible_lru[bo]
    bo.region, bo.visible = None, False


def evicted(bo: XeBo) -> bool:
    """Charged outside its placement: in system memory, its placement VRAM only."""
    return bo.region is not None and bo.region not in bo.placement


def place(bo: XeBo) -> None:
    """TTM's placement of a new BO (or a deferred one's first CPU map or export): the
    first region of its placement with room; else, evicted, system memory; ENOMEM if
    it is larger than every region of its placement, or system memory is full too."""
    for region in bo.placement:
        visible = _visible_in(bo, region)
        if region.fits(bo.size, visible):
            _charge(bo, region, visible)
            return
    could_hold = [
        r
        for r in bo.placement
        if bo.size <= r.total and (not _visible_in(bo, r) or bo.size <= r.cpu_visible)
    ]
    system = _system(bo)
    if not could_hold or system in bo.placement:
        last = bo.placement[-1]
        _charge(bo, last, _visible_in(bo, last))  # the region's own ENOMEM
        raise AssertionError("charge() of a region that does not fit must raise")
    _charge(bo, system, False)


def validate(bo: XeBo, walks: Walks) -> None:
    """xe_bo_validate: make `bo` resident in its placement (a deferred BO backed there),
    evicting the least recently validated BOs that `walks.keep` does not hold; ENOMEM if
    they cannot make room. A BO in its placement already is only marked used; a foreign
    import (no placement: another daemon's pages) has nothing to validate. `walks`: the
    eviction candidates, and who is told of each BO put last in an LRU (Walks)."""
    region = bo.region
    if not bo.placement:
        return
    if region is not None and region in bo.placement:
        del region.lru[bo]
        region.lru[bo] = None
        if bo.visible:
            del region.visible_lru[bo]
            region.visible_lru[bo] = None
        walks.came(bo)
        return
    for target in bo.placement:
        if _bring(bo, target, walks):
            return
    raise IoctlError(
        ENOMEM, f"no room for {bo.size} bytes in the BO's placement, evicting what may be"
    )


def _bring(bo: XeBo, region: MemRegion, walks: Walks) -> bool:
    """Charge `bo` to `region` if it has room, or once _make_room() made some."""
    visible = _visible_in(bo, region)
    if not (region.fits(bo.size, visible) or _make_room(bo, region, visible, walks)):
        return False
    _move(bo, region, visible, walks)
    return True


def _move(bo: XeBo, region: MemRegion, visible: bool, walks: Walks) -> None:
    """Charge `bo` to `region` instead, and tell each VM binding it whether it is
    evicted now (fault-mode VMs keep no such list: their faults bring BOs back), and
    `walks` that it was charged there (Walks.charged)."""
    if bo.region is not None:
        uncharge(bo)
    _charge(bo, region, visible)
    out = evicted(bo)
    for vm in bo.bound_in:
        if out and not vm.fault_mode:
            vm.evicted[bo] = None
        else:
            vm.evicted.pop(bo, None)
    walks.charged(bo)


def _make_room(bo: XeBo, region: MemRegion, visible: bool, walks: Walks) -> bool:
    """Evict BOs of `region` to system memory, least recently used first, until `bo`
    fits; nothing is evicted unless enough can be. Short of the CPU-visible part, the
    visible BOs come first (they free both parts), then, if the whole region is still
    short, the others: each kind least recently used first, as `walks` hands them out."""
    short = region.used + bo.size - region.total
    short_visible = region.cpu_visible_used + bo.size - region.cpu_visible if visible else 0
    system = _system(bo)
    room = system.total - system.used
    victims = []
    walk = walks.of(region)
    kinds = (walk.visible, walk.invisible) if short_visible > 0 else (walk.all,)
    for later, kind in enumerate(kinds):
        if later and short_visible > 0:
            return False  # the others free none of the CPU-visible part
        for victim in kind():
            if short <= 0 and short_visible <= 0:
                break
            if victim is bo or victim.size > room:
                continue
            if short <= 0 and not victim.visible:
                continue  # only the CPU-visible part is short: it frees none
            victims.append(victim)
            room -= victim.size
            short -= victim.size
            if victim.visible:
                short_visible -= victim.size
    if short > 0 or short_visible > 0:
        return False
    for victim in victims:
        _move(victim, system, False, walks)
    return True


class Walks:
    """The eviction candidates of each region for _make_room(): its BOs that `keep`
    does not hold, least recently used first (all of them, the CPU-visible ones, the
    others).

    `lasting`: for many _make_room() in a row (validate_vm's, a VM_BIND's), each region
    is walked once for them all, so that the BOs `keep` holds are gone past once, not
    once a BO validated. That holds what the LRU does while `keep` holds of each BO what
    it held first, and while every BO put last in a region's LRU meanwhile is told
    (came(): validate(), _move() and place() callers pass these walks on): a region's
    LRU is then the BOs it held at the first walk, in that order, less those that came
    since, then those, in the order they last came. Not lasting (a single call), each
    walk goes over the region's LRU as it is."""

    def __init__(self, keep: Keep, lasting: bool = True, moved: Moved | None = None) -> None:
        self.keep = keep
        self.lasting = lasting
        self.moved = moved
        self._walks: dict[int, _Walk] = {}

    def of(self, region: MemRegion) -> _Walk:
        if not self.lasting:
            return _Walk(region, self.keep, lasting=False)
        walk = self._walks.get(id(region))
        if walk is None or walk.region is not region:
            walk = self._walks[id(region)] = _Walk(region, self.keep, lasting=True)
        return walk

    def came(self, bo: XeBo) -> None:
        """`bo` was put last in its region's LRU (charged there, or marked used)."""
        walk = self._walks.get(id(bo.region))
        if walk is not None and walk.region is bo.region:
            walk.came(bo)

    def charged(self, bo: XeBo) -> None:
        """`bo` was charged to another region (moved, or placed): it came last in that
        region's LRU, and `moved` is told."""
        self.came(bo)
        if self.moved is not None:
            self.moved(bo)


class _Walk:
    """One region's candidates (Walks): each of all(), visible(), invisible() yields
    them, least recently used first."""

    def __init__(self, region: MemRegion, keep: Keep, lasting: bool) -> None:
        self.region = region
        self.keep = keep
        self.lasting = lasting
        self._kinds: dict[str, _Lasting] = {}  # lasting: each kind once asked for

    def came(self, bo: XeBo) -> None:
        for lasting in self._kinds.values():
            lasting.came(bo)

    def all(self) -> Iterator[XeBo]:
        keep = self.keep
        return self._kind("all", self.region.lru, lambda bo: not keep(bo))

    def visible(self) -> Iterator[XeBo]:
        keep = self.keep
        lru = self.region.visible_lru
        return self._kind("visible", lru, lambda bo: bo.visible and not keep(bo))

    def invisible(self) -> Iterator[XeBo]:
        keep = self.keep
        return self._kind("invisible", self.region.lru, lambda bo: not (bo.visible or keep(bo)))

    def _kind(self, kind: str, lru: Iterable[XeBo], admit: Keep) -> Iterator[XeBo]:
        """The BOs of `lru` that `admit` admits, least recently used first."""
        if not self.lasting:
            return (bo for bo in lru if admit(bo))
        lasting = self._kinds.get(kind)
        if lasting is None:
            lasting = self._kinds[kind] = _Lasting(self.region, lru, admit)
        return iter(lasting)


class _Lasting:
    """The BOs of `bos` (a region's LRU, taken as it is at the first use) that `admit`
    admits, found lazily and remembered, then those admitted that came into the LRU
    since (came()), in the order they last came: each iteration yields those still in
    the region, in order, and goes on through `bos` only past what earlier ones found.
    See Walks for when that is the LRU's order."""

    def __init__(self, region: MemRegion, bos: Iterable[XeBo], admit: Keep) -> None:
        self.region = region
        self.admit = admit
        self._bos = bos
        self._rest: Iterator[XeBo] | None = None
        self._found: deque[XeBo] = deque()
        # admitted BOs put last in the LRU since it was taken, the last to come last
        self._came: OrderedDict[XeBo, None] = OrderedDict()

    def came(self, bo: XeBo) -> None:
        if self._rest is None:
            return  # the LRU is yet to be taken: as it is then, `bo` last
        self._came.pop(bo, None)
        if self.admit(bo):
            self._came[bo] = None

    def _in_place(self, bo: XeBo) -> bool:
        """Whether `bo` is a candidate where the LRU as first taken has it: in the region
        still, and admitted, not come again since (admitted, it is in _came then)."""
        return bo.region is self.region and bo not in self._came and self.admit(bo)

    def __iter__(self) -> Iterator[XeBo]:
        region, found, came, in_place = self.region, self._found, self._came, self._in_place
        while found and not in_place(found[0]):
            found.popleft()  # evicted by the call before, or come again since
        for bo in found:
            if in_place(bo):
                yield bo
        if self._rest is None:
            self._rest = iter(list(self._bos))
        for bo in self._rest:
            if in_place(bo):
                found.append(bo)
                yield bo
        while came and next(iter(came)).region is not region:
            came.popitem(last=False)  # gone from the region (back, it comes again)
        for bo in came:
            if bo.region is region:
                yield bo


def bind_keep(vm: XeVm) -> Keep:
    """What a MAP bind in `vm` may not evict: the VM's own BOs, in LR mode."""
    if vm.lr_mode:
        return lambda other: vm in other.bound_in
    return lambda _other: False


def prepare_binds(vm: XeVm, ops: Sequence[m.DrmXeVmBindOp], bos: Sequence[XeBo | None]) -> None:
    """What a VM_BIND's ops need of memory, before any is made: each MAP's BO validated
    (in fault mode only backed, if DEFER_BACKING left it unbacked: the GPU's faults
    migrate it later); each PREFETCH's BOs migrated to its region. ENOMEM without room;
    EINVAL for a PREFETCH to a region outside a BO's placement (xe_bo_can_migrate).

    Op by op, in order, each PREFETCH's BOs in the order of their first VMA in its
    range. A PREFETCH looks only at what earlier ones to its region did not cover
    (_Prefetched): the BOs there were checked and migrated already, and another
    migration of one still in the region does nothing."""
    prefetched: dict[int, _Prefetched] = {}  # by region instance

    def moved(bo: XeBo) -> None:
        for done in prefetched.values():
            done.moved(bo)

    # in LR mode each MAP's room is made past the VM's own BOs: the walks of the regions
    # go past them once for all the ops (Walks; keep holds the same BOs throughout, as
    # nothing is bound before every op is checked)
    walks = Walks(bind_keep(vm), moved=moved)
    for op, bo in zip(ops, bos, strict=True):
        if bo is not None and op.op == DRM_XE_VM_BIND_OP_MAP:
            if not vm.fault_mode:
                validate(bo, walks)
            elif bo.region is None and bo.placement:
                place(bo)
                walks.charged(bo)
        elif op.op == DRM_XE_VM_BIND_OP_PREFETCH:
            instance = op.prefetch_mem_region_instance
            done = prefetched.get(instance)
            if done is None:
                done = prefetched[instance] = _Prefetched(vm.device.regions[instance])
            done.prefetch(vm, op.addr, op.addr + op.range, walks)


class _Prefetched:
    """The PREFETCH ops of one VM_BIND to one region so far: the address ranges they
    covered (disjoint, ascending) and the BOs they found there, each checked against
    its placement and migrated to the region. Migrating one of those again is a no-op
    while it stays in the region (_migrate; its placement does not change): `away`
    holds those that moved since (evicted, migrated elsewhere), and while there are
    any, an op walks all of its range (the BOs' order and errors as they were)."""

    def __init__(self, region: MemRegion) -> None:
        self.region = region
        self.covered: list[tuple[int, int]] = []
        self.bos: set[XeBo] = set()
        self.away: set[XeBo] = set()

    def moved(self, bo: XeBo) -> None:
        if bo in self.bos:
            if bo.region is self.region:
                self.away.discard(bo)
            else:
                self.away.add(bo)

    def prefetch(self, vm: XeVm, start: int, end: int, walks: Walks) -> None:
        gaps = self._cover(start, end)
        if self.away:
            for target in vm.bos_in(start, end):
                self._migrate(target, walks)
            return
        # BOs first seen here have their VMAs over [start, end) in the gaps only, so
        # they come in the order of their first VMA in the range; the others are in
        # the region still (nothing away), their migration a no-op
        for target in (v.bo for a, b in gaps for v in vm.vmas_in(a, b) if v.bo):
            if target in self.bos:
                continue
            self._migrate(target, walks)
            if self.away:  # that evicted a BO from here: the rest of the op as it was
                rest = vm.bos_in(start, end)
                for later in rest[rest.index(target) + 1 :]:
                    self._migrate(later, walks)
                return

    def _migrate(self, bo: XeBo, walks: Walks) -> None:
        refuse_if(self.region not in bo.placement, EINVAL, "prefetch outside placement")
        _migrate(bo, self.region, walks)
        self.bos.add(bo)
        self.away.discard(bo)

    def _cover(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) no earlier op covered, ascending; covered now."""
        gaps: list[tuple[int, int]] = []
        before: list[tuple[int, int]] = []
        after: list[tuple[int, int]] = []
        pos, low, high = start, start, end
        for s, e in self.covered:
            if e < start:
                before.append((s, e))
            elif s > end:
                after.append((s, e))
            else:  # overlapping or touching: merged into [low, high)
                if s > pos:
                    gaps.append((pos, s))
                pos = max(pos, e)
                low, high = min(low, s), max(high, e)
        if pos < end:
            gaps.append((pos, end))
        self.covered = [*before, (low, high), *after]
        return gaps


def _migrate(bo: XeBo, region: MemRegion, walks: Walks) -> None:
    """xe_bo_migrate: charge `bo` to `region` of its placement, evicting as validate()
    does; ENOMEM without room."""
    if bo.region is not region and not _bring(bo, region, walks):
        raise IoctlError(ENOMEM, f"no room for {bo.size} bytes in region {region.instance}")


def validate_vm(vm: XeVm) -> None:
    """xe_vm_validate_rebind, at EXEC: every evicted BO bound in `vm` comes back,
    evicting BOs of other VMs only; ENOMEM if they do not fit."""

    def keep(other: XeBo) -> bool:
        return vm in other.bound_in

    # what each validate() evicts is of other VMs, what it brings back of this one: the
    # walks of the regions go past this VM's BOs once for them all (Walks)
    walks = Walks(keep)
    for bo in list(vm.evicted):
        validate(bo, walks)


def bound(bo: XeBo, vm: XeVm) -> None:
    """A VMA of `vm` maps `bo` (one more)."""
    bo.bound_in[vm] = bo.bound_in.get(vm, 0) + 1
    if evicted(bo) and not vm.fault_mode:
        vm.evicted[bo] = None


def unbound(bo: XeBo, vm: XeVm) -> None:
    """A VMA of `vm` over `bo` went."""
    left = bo.bound_in[vm] - 1
    if left:
        bo.bound_in[vm] = left
    else:
        del bo.bound_in[vm]
        vm.evicted.pop(bo, None)
