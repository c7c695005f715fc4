"""VM_CREATE and VM_DESTROY with their documented errors, VM_BIND's gpuvm semantics as the
GPU sees them (a batch stores through the VM, the CPU mappings show where it landed), and
VM_BIND's syncs. VM_BIND's argument checks, a long list in the documented order, are in
test_vm_bind_checks.py, which imports the helpers from here."""

from __future__ import annotations

from errno import EBUSY, ECANCELED, EFAULT, EINVAL, ENOENT, EOPNOTSUPP
from typing import Any

import pytest
from helpers import BATCH_VA, Gpu, errno_of

from clients import Batch, Device, Mapping, user_fence
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_USER_FENCE,
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_FLAG_READONLY,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    DRM_XE_VM_CREATE_FLAG_FAULT_MODE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
    PAGE_SIZE,
)

DATA_VA = 0x2_0000_0000
OTHER_VA = 0x3_0000_0000


def bind_op(**fields: Any) -> m.DrmXeVmBindOp:
    """A drm_xe_vm_bind_op: a one-page MAP of `obj` at DATA_VA unless told otherwise."""
    values: dict[str, Any] = dict(op=DRM_XE_VM_BIND_OP_MAP, addr=DATA_VA, range=PAGE_SIZE)
    values.update(fields)
    return m.DrmXeVmBindOp(**values)


def mapped_bo(dev: Device, size: int) -> tuple[int, Mapping]:
    bo = dev.gem_create(size)
    return bo, dev.mmap_bo(bo)


# --- VM_CREATE ------------------------------------------------------------------------


def test_vm_create_ids_start_at_one_and_lowest_free_is_reused(dev: Device) -> None:
    """VM ids of a new file are 1, 2, 3…; a destroyed VM's id is the next one handed out."""
    assert [dev.vm_create() for _ in range(4)] == [1, 2, 3, 4]
    dev.vm_destroy(3)
    dev.vm_destroy(2)
    assert dev.vm_create() == 2
    assert dev.vm_create() == 3
    assert dev.vm_create() == 5


def test_vm_create_accepts_known_flag_combinations(dev: Device) -> None:
    """SCRATCH_PAGE, LR_MODE and both together create VMs."""
    for flags in (
        DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
        DRM_XE_VM_CREATE_FLAG_LR_MODE,
        DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE | DRM_XE_VM_CREATE_FLAG_LR_MODE,
    ):
        assert dev.vm_create(flags) > 0


@pytest.mark.parametrize(
    "fields",
    [{"extensions": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1)}],
    ids=["extensions", "reserved0", "reserved1"],
)
def test_vm_create_extensions_or_reserved_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """VM_CREATE with extensions or reserved non-zero is EINVAL."""
    assert errno_of(dev.ioctl, Op.XE_VM_CREATE, m.DrmXeVmCreate(**fields)) == EINVAL


def test_vm_create_unknown_flags_is_einval(dev: Device) -> None:
    """VM_CREATE with a flag outside SCRATCH_PAGE|LR_MODE|FAULT_MODE is EINVAL."""
    assert errno_of(dev.vm_create, 1 << 3) == EINVAL
    assert errno_of(dev.vm_create, DRM_XE_VM_CREATE_FLAG_LR_MODE | 1 << 31) == EINVAL


def test_vm_create_scratch_page_with_fault_mode_is_einval(dev: Device) -> None:
    """SCRATCH_PAGE together with FAULT_MODE (even with LR_MODE) is EINVAL."""
    flags = (
        DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE
        | DRM_XE_VM_CREATE_FLAG_FAULT_MODE
        | DRM_XE_VM_CREATE_FLAG_LR_MODE
    )
    assert errno_of(dev.vm_create, flags) == EINVAL


def test_vm_create_fault_mode_without_lr_mode_is_einval(dev: Device) -> None:
    """FAULT_MODE without LR_MODE is EINVAL."""
    assert errno_of(dev.vm_create, DRM_XE_VM_CREATE_FLAG_FAULT_MODE) == EINVAL


def test_vm_create_fault_mode_with_lr_mode(dev: Device) -> None:
    """FAULT_MODE|LR_MODE makes a VM in page-fault mode (what it changes: test_evict.py);
    the refusals before it allocated nothing."""
    flags = DRM_XE_VM_CREATE_FLAG_FAULT_MODE
    assert errno_of(dev.vm_create, flags) == EINVAL
    assert dev.vm_create(flags | DRM_XE_VM_CREATE_FLAG_LR_MODE) == 1


# --- VM_DESTROY -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields", [{"pad": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1)}], ids=["pad", "r0", "r1"]
)
def test_vm_destroy_pad_or_reserved_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """VM_DESTROY with pad or reserved non-zero is EINVAL, and the VM lives on."""
    vm = dev.vm_create()
    args = m.DrmXeVmDestroy(vm_id=vm, **fields)
    assert errno_of(dev.ioctl, Op.XE_VM_DESTROY, args) == EINVAL
    dev.vm_destroy(vm)


def test_vm_destroy_pad_checked_before_unknown_vm_is_einval(dev: Device) -> None:
    """pad is checked before the VM is looked up: pad on an unknown VM is EINVAL."""
    args = m.DrmXeVmDestroy(vm_id=77, pad=1)
    assert errno_of(dev.ioctl, Op.XE_VM_DESTROY, args) == EINVAL


def test_vm_destroy_unknown_vm_is_enoent(dev: Device) -> None:
    """VM_DESTROY of an id this file never had is ENOENT."""
    assert errno_of(dev.vm_destroy, 1) == ENOENT
    assert errno_of(dev.vm_destroy, 0) == ENOENT


def test_vm_destroy_twice_is_enoent(dev: Device) -> None:
    """The second VM_DESTROY of the same VM is ENOENT."""
    vm = dev.vm_create()
    dev.vm_destroy(vm)
    assert errno_of(dev.vm_destroy, vm) == ENOENT


def test_vm_destroy_other_files_vm_is_enoent(daemon: Any, dev: Device) -> None:
    """VM ids are per file: another connection cannot destroy our VM (ENOENT)."""
    vm = dev.vm_create()
    with Device.open(daemon.socket_path) as other:
        assert errno_of(other.vm_destroy, vm) == ENOENT
    dev.vm_destroy(vm)


def test_vm_destroy_lr_vm_with_exec_queue_is_ebusy(dev: Device) -> None:
    """An LR-mode VM with an exec queue on it cannot be destroyed (EBUSY) until it goes."""
    vm = dev.vm_create(DRM_XE_VM_CREATE_FLAG_LR_MODE)
    queue = dev.exec_queue_create(vm)
    assert errno_of(dev.vm_destroy, vm) == EBUSY
    dev.exec_queue_destroy(queue)
    dev.vm_destroy(vm)


def test_vm_destroy_with_exec_queue_then_exec_is_ecanceled(gpu: Gpu) -> None:
    """A non-LR VM with an exec queue destroys fine; EXEC on that queue is then ECANCELED."""
    dev = gpu.dev
    gpu.run(Batch().store_dword(BATCH_VA + 0x40, 1).end())
    dev.vm_destroy(gpu.vm)
    assert errno_of(dev.exec, gpu.queue, BATCH_VA + 0x100) == ECANCELED
    dev.exec_queue_destroy(gpu.queue)


# --- VM_BIND: what the GPU sees ---------------------------------------------------------


def test_vm_bind_map_over_middle_of_a_mapping_replaces_that_page(gpu: Gpu) -> None:
    """MAP of B over the middle page of A's range: the middle store lands in B, the rest in A."""
    dev = gpu.dev
    a, cpu_a = mapped_bo(dev, 3 * PAGE_SIZE)
    b, cpu_b = mapped_bo(dev, PAGE_SIZE)
    dev.vm_bind(gpu.vm, a, DATA_VA)
    dev.vm_bind(gpu.vm, b, DATA_VA + PAGE_SIZE)
    batch = Batch()
    for page in range(3):
        batch.store_dword(DATA_VA + page * PAGE_SIZE + 0x10, 0xA0 + page)
    gpu.run(batch.end())
    assert cpu_a.read_u32(0x10) == 0xA0
    assert cpu_a.read_u32(PAGE_SIZE + 0x10) == 0  # A's middle page is no longer mapped
    assert cpu_a.read_u32(2 * PAGE_SIZE + 0x10) == 0xA2  # the tail keeps A's offsets
    assert cpu_b.read_u32(0x10) == 0xA1


def test_vm_bind_obj_offset_maps_from_inside_the_bo(gpu: Gpu) -> None:
    """MAP with obj_offset: GPU address `addr` reaches BO byte `obj_offset`."""
    dev = gpu.dev
    bo, cpu = mapped_bo(dev, 4 * PAGE_SIZE)
    dev.vm_bind(gpu.vm, bo, DATA_VA, size=PAGE_SIZE, obj_offset=2 * PAGE_SIZE)
    gpu.run(Batch().store_dword(DATA_VA + 4, 0x0FF5E7).end())
    assert cpu.read_u32(2 * PAGE_SIZE + 4) == 0x0FF5E7
    assert cpu.read_u32(4) == 0


def test_vm_unbind_part_of_a_mapping_faults_there_and_the_rest_works(gpu: Gpu) -> None:
    """UNMAP of A's middle page: a store there bans the queue; the head and tail still work."""
    dev = gpu.dev
    a, cpu_a = mapped_bo(dev, 3 * PAGE_SIZE)
    dev.vm_bind(gpu.vm, a, DATA_VA)
    dev.vm_unbind(gpu.vm, DATA_VA + PAGE_SIZE, PAGE_SIZE)
    gpu.run(Batch().store_dword(DATA_VA, 1).store_dword(DATA_VA + 2 * PAGE_SIZE, 3).end())
    assert (cpu_a.read_u32(0), cpu_a.read_u32(2 * PAGE_SIZE)) == (1, 3)
    gpu.expect_ban(Batch().store_dword(DATA_VA + PAGE_SIZE, 2).end(), gpu.queue)
    assert cpu_a.read_u32(PAGE_SIZE) == 0
    queue = dev.exec_queue_create(gpu.vm)
    batch = Batch().store_dword(DATA_VA + 8, 11).store_dword(DATA_VA + 2 * PAGE_SIZE + 8, 33)
    gpu.run(batch.end(), queue)
    assert (cpu_a.read_u32(8), cpu_a.read_u32(2 * PAGE_SIZE + 8)) == (11, 33)


def test_vm_unbind_of_an_unmapped_range_succeeds(dev: Device) -> None:
    """UNMAP removes whatever lies in its range, mapped or not: a hole is no error."""
    vm = dev.vm_create()
    dev.vm_unbind(vm, DATA_VA, 16 * PAGE_SIZE)


def test_vm_bind_unmap_all_removes_every_mapping_of_the_bo(gpu: Gpu) -> None:
    """UNMAP_ALL of A removes both of A's mappings and leaves B's."""
    dev = gpu.dev
    a, cpu_a = mapped_bo(dev, PAGE_SIZE)
    b, cpu_b = mapped_bo(dev, PAGE_SIZE)
    dev.vm_bind(gpu.vm, a, DATA_VA)
    dev.vm_bind(gpu.vm, a, OTHER_VA)
    dev.vm_bind(gpu.vm, b, DATA_VA + PAGE_SIZE)
    unmap_all = bind_op(op=DRM_XE_VM_BIND_OP_UNMAP_ALL, obj=a, addr=0, range=0)
    dev.vm_bind_ops(gpu.vm, [unmap_all])
    gpu.run(Batch().store_dword(DATA_VA + PAGE_SIZE, 0xB).end())
    assert cpu_b.read_u32(0) == 0xB
    gpu.expect_ban(Batch().store_dword(DATA_VA, 1).end(), gpu.queue)
    second = dev.exec_queue_create(gpu.vm)
    gpu.expect_ban(Batch().store_dword(OTHER_VA, 2).end(), second)
    assert cpu_a.read_u32(0) == 0


def test_vm_bind_null_binding_reads_zero_and_swallows_writes(gpu: Gpu) -> None:
    """A NULL binding: stores and atomics to it vanish without a fault, and it reads zero."""
    dev = gpu.dev
    bo, cpu = mapped_bo(dev, PAGE_SIZE)
    dev.vm_bind(gpu.vm, bo, DATA_VA)
    null = bind_op(addr=OTHER_VA, range=2 * PAGE_SIZE, flags=DRM_XE_VM_BIND_FLAG_NULL)
    dev.vm_bind_ops(gpu.vm, [null])
    cpu.write_u32(0, 0xFFFF_FFFF)
    cpu.write_u32(4, 0xFFFF_FFFF)
    batch = (
        Batch()
        .store_dword(OTHER_VA + 0x10, 0x1234)
        .atomic_inc(OTHER_VA + 0x10)
        .copy_dword(DATA_VA, OTHER_VA + 0x10)
        .mem_copy(DATA_VA + 4, OTHER_VA + PAGE_SIZE - 2, 4)  # crosses inside the NULL range
        .end()
    )
    gpu.run(batch)
    assert cpu.read_u32(0) == 0
    assert cpu.read_u32(4) == 0


def test_vm_bind_readonly_binding_faults_on_write(gpu: Gpu) -> None:
    """A READONLY binding can be read by the GPU, but a store to it bans the queue."""
    dev = gpu.dev
    ro, cpu_ro = mapped_bo(dev, PAGE_SIZE)
    rw, cpu_rw = mapped_bo(dev, PAGE_SIZE)
    cpu_ro.write_u32(0, 0xCAFE)
    dev.vm_bind(gpu.vm, ro, OTHER_VA, flags=DRM_XE_VM_BIND_FLAG_READONLY)
    dev.vm_bind(gpu.vm, rw, DATA_VA)
    gpu.run(Batch().copy_dword(DATA_VA, OTHER_VA).end())
    assert cpu_rw.read_u32(0) == 0xCAFE
    gpu.expect_ban(Batch().store_dword(OTHER_VA, 0xBAD).end(), gpu.queue)
    assert cpu_ro.read_u32(0) == 0xCAFE


def test_vm_bind_bo_stays_alive_while_bound_after_gem_close(gpu: Gpu) -> None:
    """GEM_CLOSE of a bound BO keeps it alive: a batch still writes where our mapping sees."""
    dev = gpu.dev
    bo, cpu = mapped_bo(dev, PAGE_SIZE)
    dev.vm_bind(gpu.vm, bo, DATA_VA)
    dev.gem_close(bo)
    gpu.run(Batch().store_dword(DATA_VA + 0x20, 0xA11FE).end())
    assert cpu.read_u32(0x20) == 0xA11FE


# --- VM_BIND syncs ------------------------------------------------------------------------


def test_vm_bind_user_fence_writes_value_at_the_cpu_address(dev: Device) -> None:
    """A VM_BIND user fence writes its value into our mapping at the CPU address given."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    fence_bo, fence = mapped_bo(dev, PAGE_SIZE)
    dev.vm_bind(vm, bo, DATA_VA, syncs=[user_fence(fence.user_address(0x18), 0xFEED_0000_0001)])
    assert fence.read_u64(0x18) == 0xFEED_0000_0001
    dev.wait_user_fence(fence.user_address(0x18), 0xFEED_0000_0001, timeout=0)


def test_vm_bind_user_fence_outside_any_mapping_is_efault(dev: Device) -> None:
    """A VM_BIND user fence at an address in no mapping of this file is EFAULT."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[user_fence(0x1000, 1)]) == EFAULT


def test_vm_bind_user_fence_of_another_files_bo_is_efault(daemon: Any, dev: Device) -> None:
    """A user address inside another connection's BO is not ours: EFAULT."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    with Device.open(daemon.socket_path) as other:
        theirs = other.gem_create(PAGE_SIZE)
        offset = other.gem_mmap_offset(theirs)
        sync = user_fence(offset, 1)  # a raw user address: not inside any of our mappings
        assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[sync]) == EFAULT


def test_vm_bind_user_fence_on_a_bind_without_binds_is_eopnotsupp(dev: Device) -> None:
    """A user fence on a sync-only VM_BIND (no binds) is EOPNOTSUPP."""
    vm = dev.vm_create()
    _, fence = mapped_bo(dev, PAGE_SIZE)
    sync = user_fence(fence.user_address(0), 1)
    assert errno_of(dev.vm_bind_ops, vm, [], [sync]) == EOPNOTSUPP
    assert fence.read_u64(0) == 0


def test_vm_bind_two_user_fences_is_einval(dev: Device) -> None:
    """More than one user fence on a VM_BIND is EINVAL, and neither is written."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    _, fence = mapped_bo(dev, PAGE_SIZE)
    syncs = [user_fence(fence.user_address(0), 1), user_fence(fence.user_address(8), 2)]
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=syncs) == EINVAL
    assert fence.read_u64(0) == fence.read_u64(8) == 0


@pytest.mark.parametrize("kind", [DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ])
def test_vm_bind_syncobj_sync_is_enoent(dev: Device, kind: int) -> None:
    """SYNCOBJ and TIMELINE_SYNCOBJ syncs naming no syncobj of the file: ENOENT (more in
    test_syncobj.py)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    sync = m.DrmXeSync(type=kind, flags=DRM_XE_SYNC_FLAG_SIGNAL, handle=1, timeline_value=1)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[sync]) == ENOENT


@pytest.mark.parametrize(
    "fields",
    [
        {"flags": DRM_XE_SYNC_FLAG_SIGNAL | 2},
        {"type": 3},
        {"reserved": (1, 0)},
        {"reserved": (0, 1)},
    ],
    ids=["flags", "type", "reserved0", "reserved1"],
)
def test_vm_bind_sync_flags_type_or_reserved_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """A sync with unknown flags, an unknown type or reserved set is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    _, fence = mapped_bo(dev, PAGE_SIZE)
    values: dict[str, Any] = dict(
        type=DRM_XE_SYNC_TYPE_USER_FENCE,
        flags=DRM_XE_SYNC_FLAG_SIGNAL,
        addr=fence.user_address(0),
        timeline_value=1,
    )
    values.update(fields)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[m.DrmXeSync(**values)]) == EINVAL
    assert fence.read_u64(0) == 0


def test_vm_bind_user_fence_without_signal_is_eopnotsupp(dev: Device) -> None:
    """A user fence without the SIGNAL flag is EOPNOTSUPP (user fences only signal)."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    _, fence = mapped_bo(dev, PAGE_SIZE)
    sync = m.DrmXeSync(
        type=DRM_XE_SYNC_TYPE_USER_FENCE, flags=0, addr=fence.user_address(0), timeline_value=1
    )
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[sync]) == EOPNOTSUPP


def test_vm_bind_unaligned_user_fence_is_einval(dev: Device) -> None:
    """A user fence address not 8-byte aligned is EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    _, fence = mapped_bo(dev, PAGE_SIZE)
    sync = user_fence(fence.user_address(4), 1)
    assert errno_of(dev.vm_bind, vm, bo, DATA_VA, syncs=[sync]) == EINVAL


def test_vm_bind_sync_reserved_is_einval_raw(dev: Device) -> None:
    """The daemon refuses a VM_BIND user fence with reserved set (raw request): EINVAL."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    _, fence = mapped_bo(dev, PAGE_SIZE)
    sync = m.DrmXeSync(
        type=DRM_XE_SYNC_TYPE_USER_FENCE,
        flags=DRM_XE_SYNC_FLAG_SIGNAL,
        addr=dev.user_address(fence.user_address(0)),
        timeline_value=1,
        reserved=(0, 1),
    )
    args = m.DrmXeVmBind(vm_id=vm, binds=(bind_op(obj=bo),), syncs=(sync,))
    assert errno_of(dev.ioctl, Op.XE_VM_BIND, args) == EINVAL
    assert fence.read_u64(0) == 0
