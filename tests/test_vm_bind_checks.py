"""VM_BIND's argument checks, in the documented order: each refusal, which check comes
first when two apply, and that a refused bind array applies nothing. A list this long is
kept apart from test_vm.py (VM_CREATE, VM_DESTROY, what the GPU sees, syncs) so either can
be read whole; the helpers both use stay there."""

from __future__ import annotations

from errno import EFAULT, EINVAL, ENOENT
from typing import Any

import pytest
from helpers import Gpu, errno_of
from test_vm import DATA_VA, OTHER_VA, bind_op, mapped_bo

from clients import Batch, Device, user_fence
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_VM_BIND_FLAG_CHECK_PXP,
    DRM_XE_VM_BIND_FLAG_DUMPABLE,
    DRM_XE_VM_BIND_FLAG_IMMEDIATE,
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_FLAG_READONLY,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    DRM_XE_VM_BIND_OP_PREFETCH,
    DRM_XE_VM_BIND_OP_UNMAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    PAGE_SIZE,
    EngineClass,
)

VA_SIZE = 1 << 48  # the default device's va_bits


# --- VM_BIND: argument checks, in the documented order ---------------------------------


def test_vm_bind_unknown_vm_is_einval(dev: Device) -> None:
    """VM_BIND naming no VM of this file is EINVAL (not ENOENT), even with no binds."""
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind, 42, bo, DATA_VA) == EINVAL
    assert errno_of(dev.vm_bind_ops, 42, []) == EINVAL


@pytest.mark.parametrize(
    "fields",
    [{"pad": 1}, {"pad2": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1)}, {"extensions": 1}],
    ids=["pad", "pad2", "reserved0", "reserved1", "extensions"],
)
def test_vm_bind_pad_pad2_reserved_or_extensions_is_einval(
    dev: Device, fields: dict[str, Any]
) -> None:
    """VM_BIND with pad, pad2, reserved or extensions non-zero is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    args = m.DrmXeVmBind(vm_id=vm, binds=(bind_op(obj=bo),), **fields)
    assert errno_of(dev.ioctl, Op.XE_VM_BIND, args) == EINVAL


@pytest.mark.parametrize(
    "fields",
    [
        {"extensions": 1},
        {"pad": 1},
        {"pad2": 1},
        {"reserved": (1, 0, 0)},
        {"reserved": (0, 0, 1)},
    ],
    ids=["extensions", "pad", "pad2", "reserved0", "reserved2"],
)
def test_vm_bind_op_mbz_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """A bind op with extensions, pad, pad2 or reserved non-zero is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, **fields)]) == EINVAL


def test_vm_bind_pat_index_32_is_einval(dev: Device) -> None:
    """pat_index 32 (past the PAT table) is EINVAL; 31 is accepted."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, pat_index=32)]) == EINVAL
    dev.vm_bind_ops(vm, [bind_op(obj=bo, pat_index=31)])


def test_vm_bind_unknown_op_is_einval(dev: Device) -> None:
    """A bind op above PREFETCH (4) is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, op=5)]) == EINVAL


@pytest.mark.parametrize("flag", [1 << 5, 1 << 6, 1 << 30], ids=["mirror", "autoreset", "30"])
def test_vm_bind_unknown_flags_is_einval(dev: Device, flag: int) -> None:
    """A bind flag outside READONLY|IMMEDIATE|NULL|DUMPABLE|CHECK_PXP is EINVAL (CPU
    address mirroring and its autoreset need a fault-mode VM, which is not emulated);
    the known ones pass, CHECK_PXP a no-op on a BO without PXP (IGT xe_vm's
    bind-flag-invalid binds with each)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, flags=flag)]) == EINVAL
    known = DRM_XE_VM_BIND_FLAG_READONLY | DRM_XE_VM_BIND_FLAG_IMMEDIATE
    known |= DRM_XE_VM_BIND_FLAG_DUMPABLE | DRM_XE_VM_BIND_FLAG_CHECK_PXP
    dev.vm_bind_ops(vm, [bind_op(obj=bo, flags=known)])


def test_vm_bind_null_with_obj_is_einval(dev: Device) -> None:
    """A NULL binding naming an object is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    op = bind_op(obj=bo, flags=DRM_XE_VM_BIND_FLAG_NULL)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_vm_bind_null_with_obj_offset_is_einval(dev: Device) -> None:
    """A NULL binding with a non-zero obj_offset is EINVAL."""
    vm = dev.vm_create()
    op = bind_op(obj_offset=PAGE_SIZE, flags=DRM_XE_VM_BIND_FLAG_NULL)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


@pytest.mark.parametrize("op", [DRM_XE_VM_BIND_OP_UNMAP, DRM_XE_VM_BIND_OP_PREFETCH])
def test_vm_bind_null_outside_map_is_einval(dev: Device, op: int) -> None:
    """The NULL flag on anything but MAP is EINVAL."""
    vm = dev.vm_create()
    bind = bind_op(op=op, flags=DRM_XE_VM_BIND_FLAG_NULL)
    assert errno_of(dev.vm_bind_ops, vm, [bind]) == EINVAL


def test_vm_bind_map_without_obj_is_einval(dev: Device) -> None:
    """MAP without an object (and without NULL) is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=0)]) == EINVAL


def test_vm_bind_unmap_with_obj_is_einval(dev: Device) -> None:
    """UNMAP naming an object is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, bo, DATA_VA)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(op=DRM_XE_VM_BIND_OP_UNMAP, obj=bo)]) == EINVAL


@pytest.mark.parametrize(
    "with_obj,addr,range_",
    [(True, DATA_VA, 0), (True, 0, PAGE_SIZE), (False, 0, 0)],
    ids=["addr", "range", "no-obj"],
)
def test_vm_bind_unmap_all_with_addr_or_range_or_without_obj_is_einval(
    dev: Device, with_obj: bool, addr: int, range_: int
) -> None:
    """UNMAP_ALL takes the object only: addr or range set, or no object, is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, bo, DATA_VA)
    op = bind_op(op=DRM_XE_VM_BIND_OP_UNMAP_ALL, obj=bo if with_obj else 0, addr=addr, range=range_)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_vm_bind_map_userptr_without_host_memory_is_efault(dev: Device) -> None:
    """MAP_USERPTR of an address outside this file's (unregistered) host memory: EFAULT."""
    vm = dev.vm_create()
    op = bind_op(op=DRM_XE_VM_BIND_OP_MAP_USERPTR, obj_offset=0x7000_0000_0000)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EFAULT


def test_vm_bind_prefetch_checks(dev: Device) -> None:
    """PREFETCH with an obj, a prefetch region outside PREFETCH, a region the device
    lacks, or one outside the placement of a BO in its range: EINVAL. Over system
    memory, of a system-memory BO, it is accepted."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, bo, DATA_VA)
    prefetch = DRM_XE_VM_BIND_OP_PREFETCH
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(op=prefetch, obj=bo)]) == EINVAL
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, prefetch_mem_region_instance=1)]) == (
        EINVAL
    )
    for region in (2, 31, 32):
        ops = [bind_op(op=prefetch, prefetch_mem_region_instance=region)]
        assert errno_of(dev.vm_bind_ops, vm, ops) == EINVAL
    ops = [bind_op(op=prefetch, prefetch_mem_region_instance=1)]  # VRAM: not its placement
    assert errno_of(dev.vm_bind_ops, vm, ops) == EINVAL
    dev.vm_bind_ops(vm, [bind_op(op=prefetch)])
    dev.vm_bind_ops(vm, [bind_op(op=prefetch, addr=OTHER_VA)])  # nothing there: nothing to do


@pytest.mark.parametrize(
    "fields",
    [
        {"addr": DATA_VA + 8},
        {"range": PAGE_SIZE + 8},
        {"obj_offset": 8},
        {"addr": DATA_VA + PAGE_SIZE // 2},
    ],
    ids=["addr", "range", "obj_offset", "addr-half-page"],
)
def test_vm_bind_unaligned_addr_range_or_obj_offset_is_einval(
    dev: Device, fields: dict[str, Any]
) -> None:
    """addr, range and obj_offset must be page aligned: EINVAL otherwise."""
    vm = dev.vm_create()
    bo = dev.gem_create(4 * PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, **fields)]) == EINVAL


def test_vm_bind_unaligned_unmap_is_einval(dev: Device) -> None:
    """UNMAP with an unaligned addr or range is EINVAL."""
    vm = dev.vm_create()
    for fields in ({"addr": DATA_VA + 1}, {"range": 1}):
        op = bind_op(op=DRM_XE_VM_BIND_OP_UNMAP, **fields)
        assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


@pytest.mark.parametrize("op", [DRM_XE_VM_BIND_OP_MAP, DRM_XE_VM_BIND_OP_UNMAP])
def test_vm_bind_range_zero_is_einval(dev: Device, op: int) -> None:
    """A MAP or UNMAP of zero bytes is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    obj = bo if op == DRM_XE_VM_BIND_OP_MAP else 0
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(op=op, obj=obj, range=0)]) == EINVAL


def bind_queue(dev: Device, vm: int) -> int:
    instance = m.DrmXeEngineClassInstance(engine_class=EngineClass.VM_BIND)
    args = m.DrmXeExecQueueCreate(width=1, num_placements=1, vm_id=vm, instances=(instance,))
    queue: int = dev.ioctl(Op.XE_EXEC_QUEUE_CREATE, args).exec_queue_id
    return queue


def test_vm_bind_on_a_bind_queue(dev: Device) -> None:
    """exec_queue_id names a bind queue of the VM: the bind is made (binds are made as
    the ioctl is answered, so in the queue's order). A queue that is not a bind queue,
    or one of another VM: EINVAL; no such queue: ENOENT."""
    vm, other = dev.vm_create(), dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    mine, theirs, engine = bind_queue(dev, vm), bind_queue(dev, other), dev.exec_queue_create(vm)

    def bind(queue: int) -> None:
        args = m.DrmXeVmBind(vm_id=vm, exec_queue_id=queue, binds=(bind_op(obj=bo),))
        dev.ioctl(Op.XE_VM_BIND, args)

    bind(mine)
    assert errno_of(bind, theirs) == EINVAL
    assert errno_of(bind, engine) == EINVAL
    assert errno_of(bind, 999) == ENOENT
    dev.exec_queue_destroy(mine)
    assert errno_of(bind, mine) == ENOENT


def test_vm_bind_to_destroyed_vm_held_by_exec_queue_is_einval(dev: Device) -> None:
    """A VM destroyed while an exec queue holds it is gone from the file: binds are EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    queue = dev.exec_queue_create(vm)
    dev.vm_destroy(vm)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA) == EINVAL
    dev.exec_queue_destroy(queue)


@pytest.mark.parametrize(
    "addr,range_",
    [
        (VA_SIZE - PAGE_SIZE, 2 * PAGE_SIZE),
        (VA_SIZE, PAGE_SIZE),
        (0, VA_SIZE + PAGE_SIZE),
        ((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE),
    ],
    ids=["straddles-top", "at-top", "range-bigger-than-vm", "wraps"],
)
def test_vm_bind_range_beyond_the_vm_is_einval(dev: Device, addr: int, range_: int) -> None:
    """A bind reaching past 2**va_bits (48) is EINVAL."""
    vm = dev.vm_create()
    null = bind_op(addr=addr, range=range_, flags=DRM_XE_VM_BIND_FLAG_NULL)
    assert errno_of(dev.vm_bind_ops, vm, [null]) == EINVAL
    unmap = bind_op(op=DRM_XE_VM_BIND_OP_UNMAP, addr=addr, range=range_)
    assert errno_of(dev.vm_bind_ops, vm, [unmap]) == EINVAL


def test_vm_bind_last_page_of_the_vm_is_accepted(dev: Device) -> None:
    """The last page below 2**48 can be bound (the VM check is not off by one)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, bo, VA_SIZE - PAGE_SIZE)


def test_vm_bind_unknown_bo_handle_is_enoent(dev: Device) -> None:
    """MAP of a handle this file does not have is ENOENT; so is UNMAP_ALL of one."""
    vm = dev.vm_create()
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=999)]) == ENOENT
    unmap_all = bind_op(op=DRM_XE_VM_BIND_OP_UNMAP_ALL, obj=999, addr=0, range=0)
    assert errno_of(dev.vm_bind_ops, vm, [unmap_all]) == ENOENT


def test_vm_bind_closed_bo_handle_is_enoent(dev: Device) -> None:
    """MAP of a handle after GEM_CLOSE is ENOENT."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    dev.gem_close(bo)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo)]) == ENOENT


@pytest.mark.parametrize(
    "obj_offset,range_",
    [(0, 3 * PAGE_SIZE), (PAGE_SIZE, 2 * PAGE_SIZE), (2 * PAGE_SIZE, PAGE_SIZE)],
    ids=["range", "offset+range", "offset-at-end"],
)
def test_vm_bind_range_beyond_the_bo_is_einval(dev: Device, obj_offset: int, range_: int) -> None:
    """A MAP whose obj_offset + range runs past the BO's end is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(2 * PAGE_SIZE)
    op = bind_op(obj=bo, obj_offset=obj_offset, range=range_)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_vm_bind_vm_private_bo_into_another_vm_is_einval(dev: Device) -> None:
    """A BO created private to one VM cannot be bound into another (EINVAL), only its own."""
    vm_a = dev.vm_create()
    vm_b = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE, vm_id=vm_a)
    assert errno_of(dev.vm_bind, vm_b, bo, DATA_VA) == EINVAL
    dev.vm_bind(vm_a, bo, DATA_VA)


def test_vm_bind_exec_queue_id_checked_before_handle(dev: Device) -> None:
    """exec_queue_id is checked before handles: a queue that is no bind queue with an
    unknown handle gives EINVAL, not ENOENT."""
    vm = dev.vm_create()
    queue = dev.exec_queue_create(vm)
    args = m.DrmXeVmBind(vm_id=vm, exec_queue_id=queue, binds=(bind_op(obj=999),))
    assert errno_of(dev.ioctl, Op.XE_VM_BIND, args) == EINVAL


def test_vm_bind_vm_range_checked_before_handle_is_einval(dev: Device) -> None:
    """A bind beyond the VM with an unknown handle is EINVAL (VM range comes first)."""
    vm = dev.vm_create()
    op = bind_op(obj=999, addr=VA_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_vm_bind_op_checks_come_before_syncs(dev: Device) -> None:
    """A malformed bind with a SYNCOBJ sync is EINVAL (bind checks precede sync parsing)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    sync = m.DrmXeSync(type=DRM_XE_SYNC_TYPE_SYNCOBJ, flags=DRM_XE_SYNC_FLAG_SIGNAL, handle=1)
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=bo, pat_index=40)], [sync]) == EINVAL


def test_vm_bind_handle_checked_before_syncs_is_enoent(dev: Device) -> None:
    """An unknown handle with an unmapped user fence is ENOENT (handles precede syncs)."""
    vm = dev.vm_create()
    assert errno_of(dev.vm_bind_ops, vm, [bind_op(obj=999)], [user_fence(0x1000, 1)]) == ENOENT


def test_vm_bind_empty_binds_is_a_legal_sync_only_bind(dev: Device) -> None:
    """VM_BIND with no binds (and no syncs) succeeds and changes nothing."""
    vm = dev.vm_create()
    dev.vm_bind_ops(vm, [])
    dev.vm_destroy(vm)


def test_vm_bind_refused_array_applies_nothing(gpu: Gpu) -> None:
    """A bind array refused for its second op leaves the first unapplied (checks precede)."""
    dev = gpu.dev
    bo, cpu = mapped_bo(dev, PAGE_SIZE)
    ops = [bind_op(obj=bo, addr=DATA_VA), bind_op(obj=999, addr=OTHER_VA)]
    assert errno_of(dev.vm_bind_ops, gpu.vm, ops) == ENOENT
    gpu.expect_ban(Batch().store_dword(DATA_VA, 0x5EED).end(), gpu.queue)
    assert cpu.read_u32(0) == 0
