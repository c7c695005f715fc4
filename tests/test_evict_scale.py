"""Eviction at scale (xed/device/residency.py): an EXEC that brings back many BOs of its
VM, and a VM_BIND of an LR VM whose MAPs each make room, walk each region's LRU past
the VM's own BOs once for them all, and a bind short of CPU-visible VRAM finds the
visible BOs without sorting the LRU. None may change what is evicted: the residency
functions are run on many BOs of several VMs next to a model of the code as it was (one
walk of the whole LRU per BO, the LRU sorted visible first when the CPU-visible part is
short), and every BO's place, each LRU's order, each VM's evicted list, the order BOs
were moved in and each errno must agree. Then one daemon: an EXEC bringing back
hundreds of BOs, its ENOMEM, and nothing left behind.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest import baseline
from test_lifecycle import wait_for_baseline

from clients import Batch, Device, XeError
from protocols.constants import (
    DRM_XE_MEM_REGION_CLASS_SYSMEM,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_PREFETCH,
    XE_PLACEMENT_VRAM0,
)
from tests.helpers import BATCH_VA, Gpu
from tests.test_evict import VA, used
from xed.device import residency
from xed.device.errors import IoctlError
from xed.device.memory import MemRegion

K = 4096


# --- a model of the code as it was ---------------------------------------------------------


class Fake:
    """What residency.py reads of a BO, a VM or the device."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def old_charge(bo: Any, region: MemRegion, visible: bool) -> None:
    region.charge(bo.size, visible)
    region.lru[bo] = None
    bo.region, bo.visible = region, visible


def old_uncharge(bo: Any) -> None:
    bo.region.uncharge(bo.size, bo.visible)
    del bo.region.lru[bo]
    bo.region, bo.visible = None, False


def old_move(bo: Any, region: MemRegion, visible: bool, moved: Any) -> None:
    if bo.region is not None:
        old_uncharge(bo)
    old_charge(bo, region, visible)
    out = residency.evicted(bo)
    for vm in bo.bound_in:
        if out and not vm.fault_mode:
            vm.evicted[bo] = None
        else:
            vm.evicted.pop(bo, None)
    if moved is not None:
        moved(bo)


def old_make_room(bo: Any, region: MemRegion, visible: bool, keep: Any, moved: Any) -> bool:
    short = region.used + bo.size - region.total
    short_visible = region.cpu_visible_used + bo.size - region.cpu_visible if visible else 0
    system = residency._system(bo)
    room = system.total - system.used
    victims = []
    candidates: Any = region.lru
    if short_visible > 0:
        candidates = sorted(region.lru, key=lambda other: not other.visible)
    for victim in candidates:
        if short <= 0 and short_visible <= 0:
            break
        if victim is bo or victim.size > room or keep(victim):
            continue
        if short <= 0 and not victim.visible:
            continue
        victims.append(victim)
        room -= victim.size
        short -= victim.size
        if victim.visible:
            short_visible -= victim.size
    if short > 0 or short_visible > 0:
        return False
    for victim in victims:
        old_move(victim, system, False, moved)
    return True


def old_validate(bo: Any, keep: Any, moved: Any = None) -> None:
    region = bo.region
    if not bo.placement:
        return
    if region is not None and region in bo.placement:
        del region.lru[bo]
        region.lru[bo] = None
        return
    for target in bo.placement:
        visible = residency._visible_in(bo, target)
        if target.fits(bo.size, visible) or old_make_room(bo, target, visible, keep, moved):
            old_move(bo, target, visible, moved)
            return
    raise IoctlError(errno.ENOMEM, "no room")


def old_validate_vm(vm: Any) -> None:
    for bo in list(vm.evicted):
        old_validate(bo, lambda other: vm in other.bound_in)


def old_prepare_binds(vm: Any, ops: list[Any], bos: list[Any]) -> None:
    """prepare_binds() as it was, for MAPs and PREFETCHes (not in fault mode): each
    PREFETCH's BOs, in the order of their first VMA in its range, checked against
    their placement and migrated."""
    keep = residency.bind_keep(vm)
    for op, bo in zip(ops, bos, strict=True):
        if op.op == DRM_XE_VM_BIND_OP_MAP:
            old_validate(bo, keep)
            continue
        region = vm.device.regions[op.prefetch_mem_region_instance]
        for target in vm.bos_in(op.addr, op.addr + op.range):
            if region not in target.placement:
                raise IoctlError(errno.EINVAL, "prefetch outside placement")
            if target.region is region:
                continue
            visible = residency._visible_in(target, region)
            if not (
                region.fits(target.size, visible)
                or old_make_room(target, region, visible, keep, None)
            ):
                raise IoctlError(errno.ENOMEM, "no room")
            old_move(target, region, visible, None)


SLOT = 0x10000  # each VMA of a World's VM: one BO at an address of its own


class FakeVm(Fake):
    """What residency.py reads of a VM: its VMAs too, each one SLOT at `vmas`' key."""

    def vmas_in(self, start: int, end: int) -> list[Any]:
        vmas = sorted(self.vmas.items())
        return [Fake(bo=bo) for addr, bo in vmas if start < addr + SLOT and addr < end]

    def bos_in(self, start: int, end: int) -> list[Any]:
        return list(dict.fromkeys(v.bo for v in self.vmas_in(start, end)))

    def map(self, bo: Any) -> None:
        self.vmas[self.next_slot * SLOT] = bo
        self.next_slot += 1
        residency.bound(bo, self)

    def unmap(self, bo: Any) -> None:
        """The last VMA of `bo`."""
        addr = max(addr for addr, other in self.vmas.items() if other is bo)
        del self.vmas[addr]
        residency.unbound(bo, self)


class World:
    """A device's regions, VMs and BOs, driven either by residency.py or by the model."""

    def __init__(self, new: bool, vram: int, visible: int, system: int, vms: int) -> None:
        self.new = new
        self.regions = {
            0: MemRegion(DRM_XE_MEM_REGION_CLASS_SYSMEM, 0, system, system),
            1: MemRegion(DRM_XE_MEM_REGION_CLASS_VRAM, 1, vram, visible),
        }
        self.device = Fake(regions=self.regions)
        self.vms = [
            FakeVm(
                lr_mode=i % 3 == 1,
                fault_mode=False,
                evicted={},
                device=self.device,
                vmas={},
                next_slot=0,
            )
            for i in range(vms)
        ]
        self.bos: list[Any] = []
        self.failed: set[int] = set()  # BOs whose creation was refused
        self.moves: list[int] = []  # the moved() callback's BOs, in order

    def _moved(self, bo: Any) -> None:
        self.moves.append(self.bos.index(bo))

    def create(
        self, size: int, where: tuple[int, ...], wants_visible: bool, deferred: bool = False
    ) -> int | None:
        """A BO placed as GEM_CREATE's; `deferred`: left unbacked (DEFER_BACKING)."""
        bo = Fake(
            device=self.device,
            size=size,
            placement=tuple(self.regions[i] for i in where),
            wants_visible=wants_visible,
            region=None,
            visible=False,
            bound_in={},
        )
        self.bos.append(bo)
        if deferred:
            return None
        try:
            residency.place(bo)  # unchanged: one code for both
        except IoctlError as exc:
            self.failed.add(len(self.bos) - 1)
            return exc.errno
        return None

    def creates(self, n: int, size: int, where: tuple[int, ...], visible_every: int) -> None:
        """`n` BOs in one step, every `visible_every`th wanting CPU-visible VRAM."""
        for i in range(n):
            self.create(size, where, i % visible_every == 0)

    def bind(self, vm: int, bo: int) -> int | None:
        the_vm, the_bo = self.vms[vm], self.bos[bo]
        if bo in self.failed:
            return errno.ENOENT  # a BO whose creation failed
        keep = residency.bind_keep(the_vm)
        try:
            if self.new:
                walks = residency.Walks(keep, lasting=False, moved=self._moved)
                residency.validate(the_bo, walks)
            else:
                old_validate(the_bo, keep, self._moved)
        except IoctlError as exc:
            return exc.errno
        the_vm.map(the_bo)
        return None

    def binds(self, vm: int, items: list[Any]) -> int | None:
        """One VM_BIND: a MAP of each BO (an index; those whose creation failed left
        out), a PREFETCH for each ("prefetch", region, first slot, end slot), in turn,
        each checked (its BOs validated, migrated), then, if all were, each MAP made."""
        ops: list[Any] = []
        the_bos: list[Any] = []
        for item in items:
            if isinstance(item, int):
                if item not in self.failed:
                    ops.append(Fake(op=DRM_XE_VM_BIND_OP_MAP))
                    the_bos.append(self.bos[item])
                continue
            _, region, first, end = item
            ops.append(
                Fake(
                    op=DRM_XE_VM_BIND_OP_PREFETCH,
                    addr=first * SLOT,
                    range=(end - first) * SLOT,
                    prefetch_mem_region_instance=region,
                )
            )
            the_bos.append(None)
        the_vm = self.vms[vm]
        try:
            (residency.prepare_binds if self.new else old_prepare_binds)(the_vm, ops, the_bos)
        except IoctlError as exc:
            return exc.errno
        for the_bo in the_bos:
            if the_bo is not None:
                the_vm.map(the_bo)
        return None

    def unbind(self, vm: int, bo: int) -> None:
        if self.vms[vm] in self.bos[bo].bound_in:
            self.vms[vm].unmap(self.bos[bo])

    def exec(self, vm: int) -> int | None:
        try:
            (residency.validate_vm if self.new else old_validate_vm)(self.vms[vm])
        except IoctlError as exc:
            return exc.errno
        return None

    def free(self, bo: int) -> None:
        the_bo = self.bos[bo]
        for vm in list(the_bo.bound_in):
            while vm in the_bo.bound_in:
                vm.unmap(the_bo)
        if the_bo.region is not None:
            (residency.uncharge if self.new else old_uncharge)(the_bo)

    def state(self) -> Any:
        """Everything eviction decides, by BO and VM index."""
        index = {bo: i for i, bo in enumerate(self.bos)}
        vm_index = {vm: i for i, vm in enumerate(self.vms)}
        return (
            [(bo.region and bo.region.instance, bo.visible) for bo in self.bos],
            {i: [index[bo] for bo in r.lru] for i, r in self.regions.items()},
            {i: (r.used, r.cpu_visible_used) for i, r in self.regions.items()},
            [[index[bo] for bo in vm.evicted] for vm in self.vms],
            [sorted((vm_index[vm], n) for vm, n in bo.bound_in.items()) for bo in self.bos],
            list(self.moves),
        )

    def check_visible_lru(self) -> None:
        for region in self.regions.values():
            assert list(region.visible_lru) == [bo for bo in region.lru if bo.visible]


def script(seed: int, bos: int, steps: int, vms: int) -> list[tuple[Any, ...]]:
    """A random run of creates, binds, unbinds, EXECs and frees."""
    rng = random.Random(seed)
    sizes = [K, K, 2 * K, 3 * K, 4 * K, 8 * K, 16 * K]
    places = [(1,), (1,), (1,), (1, 0), (0, 1), (0,)]
    ops: list[tuple[Any, ...]] = []
    created = 0
    for _ in range(bos):
        ops.append(("create", rng.choice(sizes), rng.choice(places), rng.random() < 0.3))
        created += 1
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.45:
            ops.append(("bind", rng.randrange(vms), rng.randrange(created)))
        elif roll < 0.6:
            ops.append(("unbind", rng.randrange(vms), rng.randrange(created)))
        elif roll < 0.8:
            ops.append(("exec", rng.randrange(vms)))
        elif roll < 0.9:
            ops.append(("create", rng.choice(sizes), rng.choice(places), rng.random() < 0.3))
            created += 1
        else:
            ops.append(("free", rng.randrange(created)))
    return ops


def run(world: World, ops: list[tuple[Any, ...]], freed: set[int]) -> list[Any]:
    results: list[Any] = []
    for op in ops:
        kind, *args = op
        if kind in ("bind", "unbind") and args[1] in freed:
            continue
        if kind == "binds":
            args[1] = [x for x in args[1] if not isinstance(x, int) or x not in freed]
        if kind == "free":
            if args[0] in freed:
                continue
            freed.add(args[0])
        results.append((op, getattr(world, kind)(*args), world.state()))
        if world.new:
            world.check_visible_lru()
    return results


def compare(make: Callable[[bool], World], ops: list[tuple[Any, ...]]) -> None:
    new, old = run(make(True), ops, set()), run(make(False), ops, set())
    assert len(new) == len(old)
    for got, want in zip(new, old, strict=True):
        assert got == want, f"after {want[0]}"


@pytest.mark.parametrize("seed", range(12))
def test_random_runs_evict_as_before(seed: int) -> None:
    """Many small BOs of five VMs (LR and not) in 256 KiB of VRAM, a quarter of it
    CPU-visible, some system memory tight enough that room for a victim runs out."""
    system = 3 * 1024 * 1024 if seed % 2 else 400 * K
    ops = script(seed, bos=120, steps=1500, vms=5)
    compare(lambda new: World(new, vram=256 * K, visible=64 * K, system=system, vms=5), ops)


def test_exec_bringing_back_hundreds_evicts_as_before() -> None:
    """VM 0 fills VRAM with 600 BOs, VMs 2 and 3 bind 200 more, evicting VM 0's oldest;
    VM 0's EXEC brings them back, evicting the others' least recently used first
    (visible ones and not, sizes mixed), then VM 2's and VM 3's do; then VM 0's BOs
    alone outgrow VRAM: ENOMEM, with nothing evicted for the BO that did not fit."""
    ops: list[tuple[Any, ...]] = []
    for i in range(600):
        ops.append(("create", K, (1,), i % 7 == 0))
        ops.append(("bind", 0, i))
    for i in range(600, 800):
        ops.append(("create", (1 + i % 3) * K, (1,), i % 5 == 0))
        ops.append(("bind", 2 + i % 2, i))
    ops += [("exec", 0), ("exec", 2), ("exec", 3), ("exec", 0)]
    for i in range(800, 900):
        ops.append(("create", K, (1,), False))
        ops.append(("bind", 0, i))
    ops += [("exec", 0), ("free", 600), ("exec", 0), ("exec", 2)]

    def make(new: bool) -> World:
        return World(new, vram=600 * K, visible=100 * K, system=64 * 1024 * K, vms=4)

    compare(make, ops)
    world = make(True)
    results = run(world, ops, set())
    errnos = [got for op, got, _ in results if op[0] == "exec"]
    assert errnos[:4] == [None] * 4
    assert errno.ENOMEM in errnos[4:]
    assert len(world.state()[1][0]) > 0  # some were evicted on the way


def test_alternating_visible_binds_evict_as_before() -> None:
    """Two BOs that cannot both sit in CPU-visible VRAM, bound in turn while many BOs
    fill the LRU: each bind evicts the other, visible first; then VRAM itself short
    too, the invisible ones follow, least recently used first."""
    ops: list[tuple[Any, ...]] = [("create", K, (1,), i % 50 == 0) for i in range(900)]
    ops += [("create", 48 * K, (1,), True), ("create", 48 * K, (1,), True)]
    ops += [("bind", i % 2, 900 + i % 2) for i in range(40)]
    ops += [("create", 64 * K, (1,), True), ("bind", 0, 902), ("bind", 1, 900)]

    def make(new: bool) -> World:
        return World(new, vram=1000 * K, visible=64 * K, system=64 * 1024 * K, vms=2)

    compare(make, ops)


def script_binds(seed: int, bos: int, steps: int, vms: int) -> list[tuple[Any, ...]]:
    """A random run as script()'s, with VM_BINDs of arrays of MAPs too, most of them of
    the LR VMs (1 and 4), of BOs in VRAM, evicted or never backed (DEFER_BACKING),
    bound in the VM or not, some more than once in an array; and PREFETCHes among
    them, to either region, of address ranges the VM maps BOs in."""
    rng = random.Random(seed)
    sizes = [K, K, 2 * K, 3 * K, 4 * K, 8 * K, 16 * K]
    places = [(1,), (1,), (1,), (1, 0), (0, 1), (0,)]
    ops: list[tuple[Any, ...]] = []
    created = 0

    def create() -> tuple[Any, ...]:
        deferred = rng.random() < 0.15
        return ("create", rng.choice(sizes), rng.choice(places), rng.random() < 0.3, deferred)

    for _ in range(bos):
        ops.append(create())
        created += 1
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.2:
            ops.append(("bind", rng.randrange(vms), rng.randrange(created)))
        elif roll < 0.45:
            vm = rng.choice([1, 4, 1, 4, 0, 2])
            array = [rng.randrange(created) for _ in range(rng.randrange(1, 40))]
            items: list[Any] = [*array, *rng.sample(array, min(len(array), rng.randrange(3)))]
            for _ in range(rng.choice([0, 0, 1, 3])):
                first = rng.randrange(300)
                prefetch = ("prefetch", rng.choice([0, 1, 1]), first, first + rng.randrange(1, 40))
                items.insert(rng.randrange(len(items) + 1), prefetch)
            ops.append(("binds", vm, items))
        elif roll < 0.6:
            ops.append(("unbind", rng.randrange(vms), rng.randrange(created)))
        elif roll < 0.75:
            ops.append(("exec", rng.randrange(vms)))
        elif roll < 0.9:
            ops.append(create())
            created += 1
        else:
            ops.append(("free", rng.randrange(created)))
    return ops


@pytest.mark.parametrize("seed", range(6))
def test_random_lr_binds_evict_as_before(seed: int) -> None:
    """As test_random_runs_evict_as_before, with arrays of MAPs: in LR mode each MAP's
    room is made past the VM's own BOs, and may evict a BO an earlier MAP of the array
    validated (bound only once every op is checked)."""
    system = 3 * 1024 * 1024 if seed % 2 else 400 * K
    ops = script_binds(seed, bos=150, steps=1200, vms=5)
    compare(lambda new: World(new, vram=256 * K, visible=64 * K, system=system, vms=5), ops)


def test_lr_bind_of_hundreds_evicts_as_before() -> None:
    """LR VM 1 fills most of VRAM with 600 BOs, VM 0 the rest with 200 (sizes mixed,
    some visible); 300 more BOs come while VRAM is full (evicted) or unbacked. One bind
    of VM 1 maps them all: each MAP evicts VM 0's least recently used, then, VM 0's all
    gone, the BOs earlier MAPs of the array validated (not bound yet); with MAPs of BOs
    resident already (put last in the LRU), of one twice, of visible BOs short of the
    CPU-visible part. Then VM 1's EXEC (its own BOs alone outgrow VRAM: ENOMEM) and
    binds that cannot make room: ENOMEM midway, the BOs validated before staying."""
    ops: list[tuple[Any, ...]] = [("creates", 600, K, (1,), 9), ("binds", 1, list(range(600)))]
    for i in range(600, 800):
        ops.append(("create", (1 + i % 3) * K, (1,), i % 5 == 0))
    ops.append(("binds", 0, list(range(600, 800))))
    for i in range(800, 1100):
        ops.append(("create", (1 + i % 2) * K, (1,), i % 11 == 0, i % 4 == 0))
    ops.append(("create", 4 * K, (1, 0), False))  # 1100: resident, in no VM
    array = [*range(800, 900), 1100, 650, *range(900, 1000), 850, *range(1000, 1100)]
    ops.append(("binds", 1, array))
    ops += [("exec", 0), ("exec", 1)]
    for i in range(1101, 1201):
        ops.append(("create", 2 * K, (1,), i % 3 == 0))
    ops.append(("binds", 4, list(range(1101, 1201))))
    ops.append(("binds", 1, list(range(1101, 1201))))
    ops.append(("create", 400 * K, (1,), False, True))  # 1201
    ops.append(("binds", 4, [*range(1101, 1150), 1201, *range(1150, 1201)]))
    ops += [("exec", 4), ("binds", 0, list(range(1101, 1201))), ("exec", 1)]

    def make(new: bool) -> World:
        return World(new, vram=800 * K, visible=120 * K, system=64 * 1024 * K, vms=5)

    compare(make, ops)
    results = run(make(True), ops, set())
    errnos = [got for op, got, _ in results if op[0] in ("binds", "exec")]
    assert errnos[0] is None  # the bind of 300
    assert errno.ENOMEM in errnos


def test_binds_with_prefetches_evict_as_before() -> None:
    """PREFETCHes among the MAPs of a bind: one brings a BO into full VRAM, evicting,
    and a later MAP needs all of VRAM, that BO too (VM 0, not LR); then in LR VM 1, a
    PREFETCH of its own BO between MAPs that evict the BOs earlier MAPs validated."""
    ops: list[tuple[Any, ...]] = [("creates", 8, 8 * K, (1,), 3)]
    ops += [("bind", 2, i) for i in range(8)]  # VRAM full
    ops += [("create", 8 * K, (1, 0), False), ("bind", 0, 8)]  # in system memory
    ops += [("create", 8 * K, (1,), False), ("create", 64 * K, (1,), False)]  # evicted
    ops.append(("binds", 0, [9, ("prefetch", 1, 0, 1), 10]))
    ops += [("create", 8 * K, (1, 0), True), ("bind", 1, 11)]  # slot 0 of VM 1
    ops += [("creates", 6, 8 * K, (1,), 2), ("bind", 1, 12)]
    ops.append(("binds", 1, [13, 14, ("prefetch", 1, 0, 2), 15, 16, ("prefetch", 0, 0, 1), 17]))
    ops += [("exec", 1), ("exec", 0)]

    def make(new: bool) -> World:
        return World(new, vram=64 * K, visible=32 * K, system=64 * 1024 * K, vms=5)

    compare(make, ops)
    results = run(make(True), ops, set())
    assert [got for op, got, _ in results if op[0] == "binds"][0] is None


def test_lr_binds_of_thousands_evict_as_before() -> None:
    """The scale of a daemon's: LR VM 1 holds 3000 BOs, VM 0 300, and VM 1 binds 480
    evicted BOs in one array, then VM 4 (LR) 480 more: each MAP's room past thousands
    of kept BOs."""
    ops: list[tuple[Any, ...]] = [("creates", 3000, K, (1,), 13)]
    ops += [("binds", 1, list(range(j, min(j + 480, 3000)))) for j in range(0, 3000, 480)]
    ops += [("creates", 300, K, (1,), 1000), ("binds", 0, list(range(3000, 3300)))]
    ops += [("creates", 960, K, (1,), 7)]
    ops += [("binds", 1, list(range(3300, 3780))), ("binds", 4, list(range(3780, 4260)))]
    ops += [("exec", 1), ("exec", 0)]

    def make(new: bool) -> World:
        return World(new, vram=3300 * K, visible=400 * K, system=64 * 1024 * K, vms=5)

    compare(make, ops)


# --- one daemon ---------------------------------------------------------------------------

MANY = """\
[device]
vram_size = 2097152
visible_vram_size = 2097152
"""


@pytest.fixture
def daemon_dev(make_daemon: Any) -> Any:
    d = make_daemon(MANY)
    before = baseline(d)
    with Device.open(d.socket_path) as dev:
        yield dev
    assert wait_for_baseline(d, before) == before


def outcome(call: Callable[..., Any], *args: Any) -> int:
    """0, or the errno the call was refused with."""
    try:
        call(*args)
    except XeError as exc:
        assert exc.errno is not None
        return exc.errno
    return 0


def scenario(dev: Device) -> list[Any]:
    """VM A binds 300 BOs of 4 KiB, B 100 of 4, 8 and 12 KiB in turn (2 MiB of VRAM,
    all CPU-visible, nearly full); B binds 100 more, evicting A's oldest; A's EXEC
    brings them back, evicting B's least recently used; B's EXEC then A's again; A
    binds 50 of 12 KiB; B's VM goes; A binds 100 more, and its BOs alone outgrow VRAM:
    its EXEC is ENOMEM. (errno, system memory used, VRAM used) after each step."""
    a, b = Gpu(dev), Gpu(dev)  # their batch BOs in system memory
    system0, vram0, _ = used(dev)
    trace: list[Any] = []

    def note(err: int = 0) -> None:
        system, vram, _ = used(dev)
        trace.append((err, system - system0, vram - vram0))

    def bind(vm: int, sizes: list[int], at: int) -> None:
        for size in sizes:
            bo = dev.gem_create(size, placement=XE_PLACEMENT_VRAM0)
            dev.vm_bind(vm, bo, at)
            at += size
        note()

    def run(gpu: Gpu) -> None:
        err = outcome(gpu.submit, Batch().store_dword(BATCH_VA + 0x80, 1).end())
        note(err)

    bind(a.vm, [K] * 300, VA)
    bind(b.vm, [K * (1 + i % 3) for i in range(100)], VA)
    bind(b.vm, [K * (1 + i % 3) for i in range(100)], VA + 1024 * 1024)
    run(a)
    run(a)
    run(b)
    run(a)
    bind(a.vm, [3 * K] * 50, VA + 1024 * 1024)
    run(a)
    b.close()
    note()
    bind(a.vm, [3 * K] * 100, VA + 2 * 1024 * 1024)
    run(a)
    run(a)  # VRAM holds A's BOs only: ENOMEM, nothing moves
    a.close()
    return trace


# what the code as it was gives (one walk of the LRU per BO validated)
RECORDED = [
    (0, 0, 1228800),
    (0, 0, 2043904),
    (0, 761856, 2097152),
    (0, 761856, 2097152),
    (0, 761856, 2097152),
    (0, 761856, 2097152),
    (0, 765952, 2093056),
    (0, 1384448, 2088960),
    (0, 1384448, 2088960),
    (0, 1384448, 2088960),
    (0, 2613248, 2088960),
    (errno.ENOMEM, 2605056, 2097152),
    (errno.ENOMEM, 2605056, 2097152),
]


def test_exec_brings_back_hundreds_and_is_enomem(daemon_dev: Device) -> None:
    """The daemon as a whole: the usage of each region after each step as before, the
    ENOMEM too, and nothing left behind (the fixture)."""
    assert scenario(daemon_dev) == RECORDED
