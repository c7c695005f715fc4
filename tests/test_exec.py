"""Exec queues, EXEC, the command streamer and WAIT_USER_FENCE, through real daemons."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from errno import ECANCELED, EFAULT, EINVAL, EIO, ENOENT, EOPNOTSUPP, ETIME
from typing import Any

import pytest
from conftest import baseline, spawn_client
from helpers import BATCH_VA, FENCE, WAIT, Gpu, errno_of

from clients import Batch, Device, Mapping, XeError, user_fence
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_USER_FENCE,
    DRM_XE_UFENCE_WAIT_FLAG_ABSTIME,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    MI_NOOP,
    PAGE_SIZE,
    EngineClass,
    UfenceOp,
)

LONG_MAX = (1 << 63) - 1
DATA_VA = 0x2_0000_0000
SRC_VA = 0x3_0000_0000
UNBOUND_VA = 0x7_0000_0000


def mapped_bo(dev: Device, size: int) -> tuple[int, Mapping]:
    bo = dev.gem_create(size)
    return bo, dev.mmap_bo(bo)


def eci(engine_class: int = EngineClass.RENDER, instance: int = 0, gt: int = 0) -> Any:
    return m.DrmXeEngineClassInstance(engine_class=engine_class, engine_instance=instance, gt_id=gt)


def create_queue(dev: Device, **fields: Any) -> int:
    """EXEC_QUEUE_CREATE with explicit fields (one render instance by default)."""
    values: dict[str, Any] = dict(width=1, num_placements=1, instances=(eci(),))
    values.update(fields)
    reply = dev.ioctl(Op.XE_EXEC_QUEUE_CREATE, m.DrmXeExecQueueCreate(**values))
    queue: int = reply.exec_queue_id
    return queue


def raw_exec(dev: Device, **fields: Any) -> None:
    values: dict[str, Any] = dict(num_batch_buffer=1)
    values.update(fields)
    dev.ioctl(Op.XE_EXEC, m.DrmXeExec(**values))


def raw_wait(dev: Device, **fields: Any) -> int:
    """WAIT_USER_FENCE as sent: `addr` is a user address already (no translation)."""
    reply = dev.ioctl(Op.XE_WAIT_USER_FENCE, m.DrmXeWaitUserFence(**fields))
    left: int = reply.timeout
    return left


# --- EXEC_QUEUE_CREATE / DESTROY --------------------------------------------------------


def test_exec_queue_create_ids_start_at_one_and_lowest_free_is_reused(dev: Device) -> None:
    """Exec queue ids of a new file are 1, 2, 3…; a destroyed queue's id is handed out next."""
    vm = dev.vm_create()
    assert [dev.exec_queue_create(vm) for _ in range(3)] == [1, 2, 3]
    dev.exec_queue_destroy(2)
    assert dev.exec_queue_create(vm) == 2
    assert dev.exec_queue_create(vm) == 4


@pytest.mark.parametrize(
    "engine_class,instance",
    [
        (EngineClass.RENDER, 0),
        (EngineClass.COPY, 0),
        (EngineClass.VIDEO_DECODE, 0),
        (EngineClass.COMPUTE, 0),
        (EngineClass.COMPUTE, 1),
    ],
)
def test_exec_queue_create_on_each_engine_of_the_device(
    dev: Device, engine_class: int, instance: int
) -> None:
    """Every engine of the default device (render, copy, video decode, 2 compute) takes a queue."""
    vm = dev.vm_create()
    assert dev.exec_queue_create(vm, engine_class, instance) == 1


def test_exec_queue_create_low_latency_hint_is_accepted(dev: Device) -> None:
    """flags = LOW_LATENCY_HINT (1) is the one accepted flag."""
    vm = dev.vm_create()
    assert create_queue(dev, vm_id=vm, flags=1) == 1


def test_exec_queue_create_unknown_flags_is_einval(dev: Device) -> None:
    """A flag other than LOW_LATENCY_HINT is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(create_queue, dev, vm_id=vm, flags=2) == EINVAL
    assert errno_of(create_queue, dev, vm_id=vm, flags=3) == EINVAL


@pytest.mark.parametrize("reserved", [(1, 0), (0, 1)])
def test_exec_queue_create_reserved_is_einval(dev: Device, reserved: tuple[int, int]) -> None:
    """EXEC_QUEUE_CREATE with reserved non-zero is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(create_queue, dev, vm_id=vm, reserved=reserved) == EINVAL


@pytest.mark.parametrize(
    "width,num_placements,count",
    [(1, 0, 0), (0, 1, 0), (1, 10, 10), (1, 2, 1), (1, 1, 2)],
    ids=["no-placements", "width-0", "more-than-9", "fewer-instances", "more-instances"],
)
def test_exec_queue_create_bad_width_times_placements_is_einval(
    dev: Device, width: int, num_placements: int, count: int
) -> None:
    """width x num_placements zero, above 9, or not the number of instances is EINVAL."""
    vm = dev.vm_create()
    instances = tuple(eci() for _ in range(count))
    err = errno_of(
        create_queue, dev, vm_id=vm, width=width, num_placements=num_placements, instances=instances
    )
    assert err == EINVAL


def test_exec_queue_create_gt_1_is_einval(dev: Device) -> None:
    """An instance on GT 1 (the device has only GT 0) is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(create_queue, dev, vm_id=vm, instances=(eci(gt=1),)) == EINVAL


def test_exec_queue_create_bind_queue(gpu: Gpu) -> None:
    """The VM_BIND engine class makes a bind queue: one placement, instance 0 (else
    EINVAL), a VM of the file (else ENOENT); an EXEC on it is EINVAL."""
    dev, vm = gpu.dev, gpu.vm
    bind = eci(EngineClass.VM_BIND)
    queue = create_queue(dev, vm_id=vm, instances=(bind,))
    assert errno_of(dev.exec, queue, gpu.place(Batch().end())) == EINVAL
    assert errno_of(create_queue, dev, vm_id=vm, instances=(eci(EngineClass.VM_BIND, 1),)) == EINVAL
    two = dict(num_placements=2, instances=(bind, bind))
    assert errno_of(create_queue, dev, vm_id=vm, **two) == EINVAL
    assert errno_of(create_queue, dev, vm_id=999, instances=(bind,)) == ENOENT
    dev.exec_queue_destroy(queue)


def test_exec_queue_create_width_2_is_einval(dev: Device) -> None:
    """Parallel submission (width 2) is not emulated: EINVAL."""
    vm = dev.vm_create()
    two = (eci(EngineClass.COMPUTE, 0), eci(EngineClass.COMPUTE, 1))
    err = errno_of(create_queue, dev, vm_id=vm, width=2, num_placements=1, instances=two)
    assert err == EINVAL


@pytest.mark.parametrize(
    "engine_class,instance",
    [(EngineClass.VIDEO_ENHANCE, 0), (EngineClass.RENDER, 1), (EngineClass.COMPUTE, 2), (9, 0)],
    ids=["video-enhance-0", "render-1", "compute-2", "class-9"],
)
def test_exec_queue_create_instance_naming_no_engine_is_einval(
    dev: Device, engine_class: int, instance: int
) -> None:
    """An instance naming no engine of the device is EINVAL."""
    vm = dev.vm_create()
    err = errno_of(create_queue, dev, vm_id=vm, instances=(eci(engine_class, instance),))
    assert err == EINVAL


def test_exec_queue_create_second_placement_naming_no_engine_is_einval(dev: Device) -> None:
    """Every placement must name an engine: a missing second one is EINVAL."""
    vm = dev.vm_create()
    two = (eci(EngineClass.COMPUTE, 0), eci(EngineClass.COMPUTE, 5))
    err = errno_of(create_queue, dev, vm_id=vm, num_placements=2, instances=two)
    assert err == EINVAL


def test_exec_queue_create_mixed_classes_is_einval(dev: Device) -> None:
    """Placements of different engine classes are EINVAL; of one class they are fine."""
    vm = dev.vm_create()
    mixed = (eci(EngineClass.RENDER, 0), eci(EngineClass.COMPUTE, 0))
    assert errno_of(create_queue, dev, vm_id=vm, num_placements=2, instances=mixed) == EINVAL
    same = (eci(EngineClass.COMPUTE, 0), eci(EngineClass.COMPUTE, 1))
    assert create_queue(dev, vm_id=vm, num_placements=2, instances=same) == 1


def test_exec_queue_create_unknown_vm_is_enoent(dev: Device) -> None:
    """A queue on a VM this file does not have is ENOENT."""
    assert errno_of(dev.exec_queue_create, 5) == ENOENT
    assert errno_of(dev.exec_queue_create, 0) == ENOENT


def test_exec_queue_create_destroyed_vm_is_enoent(dev: Device) -> None:
    """A queue on a destroyed VM is ENOENT."""
    vm = dev.vm_create()
    dev.vm_destroy(vm)
    assert errno_of(dev.exec_queue_create, vm) == ENOENT


def test_exec_queue_create_extensions_is_einval(dev: Device) -> None:
    """EXEC_QUEUE_CREATE with extensions non-zero is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(create_queue, dev, vm_id=vm, extensions=1) == EINVAL


def test_exec_queue_create_engine_checked_before_vm(dev: Device) -> None:
    """The engine is checked before the VM: a bad engine on an unknown VM is EINVAL."""
    assert errno_of(create_queue, dev, vm_id=9, instances=(eci(gt=1),)) == EINVAL


def test_exec_queue_create_vm_checked_before_extensions(dev: Device) -> None:
    """The VM is checked before extensions: both wrong is ENOENT."""
    assert errno_of(create_queue, dev, vm_id=9, extensions=1) == ENOENT


@pytest.mark.parametrize(
    "fields", [{"pad": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1)}], ids=["pad", "r0", "r1"]
)
def test_exec_queue_destroy_pad_or_reserved_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """EXEC_QUEUE_DESTROY with pad or reserved non-zero is EINVAL; the queue lives on."""
    vm = dev.vm_create()
    queue = dev.exec_queue_create(vm)
    args = m.DrmXeExecQueueDestroy(exec_queue_id=queue, **fields)
    assert errno_of(dev.ioctl, Op.XE_EXEC_QUEUE_DESTROY, args) == EINVAL
    dev.exec_queue_destroy(queue)


def test_exec_queue_destroy_unknown_is_enoent(dev: Device) -> None:
    """Destroying a queue this file does not have, or destroying one twice, is ENOENT."""
    assert errno_of(dev.exec_queue_destroy, 1) == ENOENT
    vm = dev.vm_create()
    queue = dev.exec_queue_create(vm)
    dev.exec_queue_destroy(queue)
    assert errno_of(dev.exec_queue_destroy, queue) == ENOENT


# --- EXEC: argument checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"extensions": 1}, {"pad": (0, 1, 0)}, {"reserved": (1, 0)}, {"reserved": (0, 1)}],
    ids=["extensions", "pad", "reserved0", "reserved1"],
)
def test_exec_extensions_pad_or_reserved_is_einval(gpu: Gpu, fields: dict[str, Any]) -> None:
    """EXEC with extensions, pad or reserved non-zero is EINVAL."""
    address = gpu.place(Batch().end())
    err = errno_of(raw_exec, gpu.dev, exec_queue_id=gpu.queue, address=address, **fields)
    assert err == EINVAL


def test_exec_mbz_checked_before_queue_lookup(dev: Device) -> None:
    """extensions is checked before the queue: both wrong gives EINVAL."""
    assert errno_of(raw_exec, dev, exec_queue_id=77, extensions=1) == EINVAL


def test_exec_unknown_queue_is_enoent(gpu: Gpu) -> None:
    """EXEC on a queue this file does not have (or destroyed) is ENOENT."""
    address = gpu.place(Batch().end())
    assert errno_of(gpu.dev.exec, 99, address) == ENOENT
    gpu.dev.exec_queue_destroy(gpu.queue)
    assert errno_of(gpu.dev.exec, gpu.queue, address) == ENOENT


def test_exec_num_batch_buffer_2_is_einval(gpu: Gpu) -> None:
    """num_batch_buffer other than 0 or the queue's width (1) is EINVAL."""
    address = gpu.place(Batch().end())
    err = errno_of(raw_exec, gpu.dev, exec_queue_id=gpu.queue, address=address, num_batch_buffer=2)
    assert err == EINVAL


@pytest.mark.parametrize("kind", [DRM_XE_SYNC_TYPE_SYNCOBJ, DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ])
def test_exec_syncobj_sync_is_enoent(gpu: Gpu, kind: int) -> None:
    """SYNCOBJ and TIMELINE_SYNCOBJ syncs naming no syncobj of the file: ENOENT (more in
    test_syncobj.py)."""
    sync = m.DrmXeSync(type=kind, flags=DRM_XE_SYNC_FLAG_SIGNAL, handle=3, timeline_value=1)
    assert errno_of(gpu.dev.exec, gpu.queue, gpu.place(Batch().end()), [sync]) == ENOENT


@pytest.mark.parametrize(
    "fields",
    [
        {"flags": DRM_XE_SYNC_FLAG_SIGNAL | 4},
        {"type": 3},
        {"reserved": (1, 0)},
        {"reserved": (0, 1)},
        {"addr": BATCH_VA + 4},
    ],
    ids=["flags", "type", "reserved0", "reserved1", "unaligned-addr"],
)
def test_exec_bad_sync_is_einval(gpu: Gpu, fields: dict[str, Any]) -> None:
    """A sync with unknown flags or type, reserved set, or an unaligned fence is EINVAL."""
    values: dict[str, Any] = dict(
        type=DRM_XE_SYNC_TYPE_USER_FENCE,
        flags=DRM_XE_SYNC_FLAG_SIGNAL,
        addr=BATCH_VA + 0x40,
        timeline_value=5,
    )
    values.update(fields)
    address = gpu.place(Batch().end())
    assert errno_of(gpu.dev.exec, gpu.queue, address, [m.DrmXeSync(**values)]) == EINVAL


def test_exec_user_fence_without_signal_is_eopnotsupp(gpu: Gpu) -> None:
    """A user fence without SIGNAL is EOPNOTSUPP."""
    sync = m.DrmXeSync(type=DRM_XE_SYNC_TYPE_USER_FENCE, addr=BATCH_VA + 0x40, timeline_value=1)
    assert errno_of(gpu.dev.exec, gpu.queue, gpu.place(Batch().end()), [sync]) == EOPNOTSUPP


def test_exec_two_user_fences_is_einval(gpu: Gpu) -> None:
    """More than one user fence on an EXEC is EINVAL, and the batch does not run."""
    batch = Batch().store_dword(BATCH_VA + 0x60, 1).end()
    syncs = [user_fence(BATCH_VA + 0x40, 1), user_fence(BATCH_VA + 0x48, 2)]
    assert errno_of(gpu.dev.exec, gpu.queue, gpu.place(batch), syncs) == EINVAL
    gpu.run(Batch().end())  # anything queued before this would have run by now
    assert gpu.cpu.read_u32(0x60) == 0
    assert gpu.cpu.read_u64(0x40) == gpu.cpu.read_u64(0x48) == 0


def test_exec_num_batch_buffer_0_only_signals(gpu: Gpu) -> None:
    """num_batch_buffer 0 is sync-only: the fence signals and the batch at `address` never runs."""
    address = gpu.place(Batch().store_dword(BATCH_VA + 0x60, 0xDEAD).end())
    fence = user_fence(BATCH_VA + 0x40, 9)
    raw_exec(gpu.dev, exec_queue_id=gpu.queue, address=address, num_batch_buffer=0, syncs=(fence,))
    gpu.dev.wait_user_fence(gpu.cpu.user_address(0x40), 9, timeout=WAIT)
    gpu.run(Batch().end())
    assert gpu.cpu.read_u32(0x60) == 0


def test_exec_num_batch_buffer_0_signals_after_earlier_work(gpu: Gpu) -> None:
    """A sync-only EXEC's fence comes after the queue's earlier batches have run."""
    batch = Batch()
    for _ in range(2000):  # long enough to take several device steps
        batch.atomic_inc(BATCH_VA + 0x60)
    gpu.dev.exec(gpu.queue, gpu.place(batch.end()))
    fence = user_fence(BATCH_VA + 0x40, 1)
    raw_exec(gpu.dev, exec_queue_id=gpu.queue, num_batch_buffer=0, syncs=(fence,))
    gpu.dev.wait_user_fence(gpu.cpu.user_address(0x40), 1, timeout=WAIT)
    assert gpu.cpu.read_u32(0x60) == 2000


def test_exec_on_lr_vm_runs(dev: Device) -> None:
    """A queue on an LR-mode VM executes batches like any other."""
    g = Gpu(dev, DRM_XE_VM_CREATE_FLAG_LR_MODE)
    g.run(Batch().store_dword(BATCH_VA + 0x60, 0x1F).end())
    assert g.cpu.read_u32(0x60) == 0x1F
    g.close()


# --- the command streamer ---------------------------------------------------------------------


@pytest.fixture
def data(gpu: Gpu) -> Iterator[Mapping]:
    """A 16 KiB BO bound at DATA_VA in the gpu's VM, mapped for the CPU."""
    bo, cpu = mapped_bo(gpu.dev, 4 * PAGE_SIZE)
    gpu.dev.vm_bind(gpu.vm, bo, DATA_VA)
    yield cpu
    cpu.close()


def test_cs_store_dword(gpu: Gpu, data: Mapping) -> None:
    """MI_STORE_DATA_IMM of a dword writes exactly that dword."""
    data.write_u64(0x10, 0xFFFF_FFFF_FFFF_FFFF)
    gpu.run(Batch().store_dword(DATA_VA + 0x10, 0x1234_5678).end())
    assert data.read_u64(0x10) == 0xFFFF_FFFF_1234_5678


def test_cs_store_qword(gpu: Gpu, data: Mapping) -> None:
    """MI_STORE_DATA_IMM of a qword writes all 64 bits, little-endian."""
    gpu.run(Batch().store_qword(DATA_VA + 0x18, 0x1122_3344_5566_7788).end())
    assert data.read_u64(0x18) == 0x1122_3344_5566_7788
    assert data[0x18] == 0x88


def test_cs_store_crossing_a_page_boundary(gpu: Gpu, data: Mapping) -> None:
    """A qword store across two pages of one binding lands whole."""
    gpu.run(Batch().store_qword(DATA_VA + PAGE_SIZE - 4, 0xAAAA_BBBB_CCCC_DDDD).end())
    assert data.read_u64(PAGE_SIZE - 4) == 0xAAAA_BBBB_CCCC_DDDD


def test_cs_atomic_inc(gpu: Gpu, data: Mapping) -> None:
    """MI_ATOMIC INC adds one to a dword, wrapping at 32 bits without touching the next."""
    data.write_u32(0x20, 41)
    data.write_u32(0x24, 0xFFFF_FFFF)
    gpu.run(Batch().atomic_inc(DATA_VA + 0x20).atomic_inc(DATA_VA + 0x24).end())
    assert data.read_u32(0x20) == 42
    assert data.read_u32(0x24) == 0
    assert data.read_u32(0x28) == 0


def test_cs_atomic_inc64(gpu: Gpu, data: Mapping) -> None:
    """MI_ATOMIC INC8B increments a qword, carrying into the high dword."""
    data.write_u64(0x30, 0xFFFF_FFFF)
    gpu.run(Batch().atomic_inc64(DATA_VA + 0x30).end())
    assert data.read_u64(0x30) == 0x1_0000_0000


def test_cs_atomic_add(gpu: Gpu, data: Mapping) -> None:
    """MI_ATOMIC ADD with inline data adds the operand to a dword."""
    data.write_u32(0x40, 1000)
    gpu.run(Batch().atomic_add(DATA_VA + 0x40, 234).atomic_add(DATA_VA + 0x40, 1).end())
    assert data.read_u32(0x40) == 1235


def test_cs_mem_fence_and_noop(gpu: Gpu, data: Mapping) -> None:
    """MI_MEM_FENCE and MI_NOOP are one dword each: the stores around them all land."""
    batch = (
        Batch()
        .store_dword(DATA_VA, 1)
        .noop()
        .noop()
        .mem_fence()
        .store_dword(DATA_VA + 4, 2)
        .noop()
        .end()
    )
    gpu.run(batch)
    assert (data.read_u32(0), data.read_u32(4)) == (1, 2)


def test_cs_flush_dw_without_post_sync(gpu: Gpu, data: Mapping) -> None:
    """MI_FLUSH_DW without a post-sync op writes nothing and is 4 dwords long."""
    gpu.run(Batch().flush_dw().store_dword(DATA_VA + 0x50, 7).end())
    assert data.read_u32(0x50) == 7
    assert data.read_u32(0) == 0


def test_cs_flush_dw_with_post_sync_store(gpu: Gpu, data: Mapping) -> None:
    """MI_FLUSH_DW with a post-sync store writes its dword at the address."""
    gpu.run(Batch().flush_dw(DATA_VA + 0x58, 0xF1_5400).store_dword(DATA_VA + 0x5C, 8).end())
    assert data.read_u32(0x58) == 0xF1_5400
    assert data.read_u32(0x5C) == 8


def test_cs_copy_dword(gpu: Gpu, data: Mapping) -> None:
    """MI_COPY_MEM_MEM copies one dword from src to dst."""
    data.write_u64(0x60, 0x9999_9999_ABCD_EF01)
    gpu.run(Batch().copy_dword(DATA_VA + 0x70, DATA_VA + 0x60).end())
    assert data.read_u64(0x70) == 0xABCD_EF01


def test_cs_mem_copy_across_two_contiguously_bound_bos(gpu: Gpu) -> None:
    """A 64 KiB MEM_COPY from two BOs bound back to back lands whole in a third BO."""
    dev = gpu.dev
    half = 0x8000
    src_a, cpu_a = mapped_bo(dev, half)
    src_b, cpu_b = mapped_bo(dev, half)
    dst, cpu_dst = mapped_bo(dev, 2 * half)
    dev.vm_bind(gpu.vm, src_a, SRC_VA)
    dev.vm_bind(gpu.vm, src_b, SRC_VA + half)
    dev.vm_bind(gpu.vm, dst, DATA_VA)
    pattern = os.urandom(2 * half)
    cpu_a[0:half] = pattern[:half]
    cpu_b[0:half] = pattern[half:]
    gpu.run(Batch().mem_copy(DATA_VA, SRC_VA, 2 * half).end())
    assert cpu_dst[0 : 2 * half] == pattern


def test_cs_batches_on_one_queue_run_in_order(gpu: Gpu, data: Mapping) -> None:
    """100 EXECs of an atomic_inc on one queue, then a fenced one: the counter reads 100."""
    address = gpu.place(Batch().atomic_inc(DATA_VA + 0x80).end())
    for _ in range(100):
        gpu.dev.exec(gpu.queue, address)
    gpu.run(Batch().end())
    assert data.read_u32(0x80) == 100


def test_cs_later_batch_sees_earlier_batch_stores(gpu: Gpu, data: Mapping) -> None:
    """A batch copies what the previous batch on the queue stored (order, not just count)."""
    gpu.dev.exec(gpu.queue, gpu.place(Batch().store_dword(DATA_VA + 0x90, 0x51).end()))
    gpu.run(Batch().copy_dword(DATA_VA + 0x94, DATA_VA + 0x90).end())
    assert data.read_u32(0x94) == 0x51


def test_cs_batch_stores_are_visible_when_its_fence_signals(gpu: Gpu, data: Mapping) -> None:
    """Each batch's fence comes after its own stores: seen across 20 back-to-back batches."""
    for i in range(20):
        seq = gpu.submit(Batch().store_dword(DATA_VA + 0x100 + 4 * i, i + 1).end())
    gpu.wait(seq)
    assert [data.read_u32(0x100 + 4 * i) for i in range(20)] == list(range(1, 21))


# --- faults: the queue is banned ------------------------------------------------------------


def _unknown_opcode(gpu: Gpu) -> tuple[int, int | None]:
    address = gpu.place(Batch().store_dword(DATA_VA, 1).raw(0x1F << 23).end())
    return address, address + 16


def _store_to_unbound(gpu: Gpu) -> tuple[int, int | None]:
    # the event's address here is not pinned: messages.ExecQueueBanned documents "the
    # faulting instruction" while the command streamer reports the unmapped data address
    return gpu.place(Batch().store_dword(DATA_VA, 1).store_dword(UNBOUND_VA, 2).end()), None


def _runs_off_its_binding(gpu: Gpu) -> tuple[int, int | None]:
    page = gpu.dev.gem_create(PAGE_SIZE)  # zero-filled: all MI_NOOP, no MI_BATCH_BUFFER_END
    gpu.dev.vm_bind(gpu.vm, page, SRC_VA)
    return SRC_VA, SRC_VA + PAGE_SIZE


def _unbound_batch(gpu: Gpu) -> tuple[int, int | None]:
    return UNBOUND_VA, UNBOUND_VA


FAULTS = {
    "unknown-opcode": _unknown_opcode,
    "store-to-unbound-address": _store_to_unbound,
    "runs-off-its-binding": _runs_off_its_binding,
    "unbound-batch-address": _unbound_batch,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cs_fault_bans_the_queue_and_others_carry_on(gpu: Gpu, data: Mapping, fault: str) -> None:
    """A faulting batch bans its queue: fence still written, EXEC_QUEUE_BANNED, then ECANCELED."""
    assert MI_NOOP == 0
    address, where = FAULTS[fault](gpu)
    other = gpu.dev.exec_queue_create(gpu.vm)
    seq = gpu.submit_at(address)
    gpu.wait(seq)  # the faulting exec's fence is written all the same (as xe does)
    # the event is queued before the fence is written but travels beside the replies;
    # a second blocking wait makes the daemon's reader yield, so it is out by then
    gpu.wait(seq)
    events = gpu.ban_events(gpu.queue)
    assert len(events) == 1
    if where is not None:
        assert events[0].address == where
    assert errno_of(gpu.dev.exec, gpu.queue, gpu.place(Batch().end())) == ECANCELED
    # the other queue on the same VM, and the daemon, carry on
    gpu.run(Batch().store_dword(DATA_VA + 0x200, 0x0C).end(), other)
    assert data.read_u32(0x200) == 0x0C
    assert gpu.banned_queues() == [gpu.queue]
    assert gpu.dev.exec_queue_create(gpu.vm) > 0


def test_cs_fault_drops_later_batches_but_signals_their_fences(gpu: Gpu, data: Mapping) -> None:
    """A batch queued behind a faulting one is refused (ECANCELED) or dropped, fence signalled."""
    gpu.dev.exec(gpu.queue, UNBOUND_VA)
    try:
        seq = gpu.submit(Batch().store_dword(DATA_VA + 0x300, 1).end())
    except XeError as exc:  # the fault came first: the queue already refuses work
        assert exc.errno == ECANCELED
    else:  # queued before the fault: it never runs, but its fence is written
        gpu.wait(seq)
    gpu.run(Batch().end(), gpu.dev.exec_queue_create(gpu.vm))
    assert data.read_u32(0x300) == 0


def test_cs_stores_before_a_fault_have_landed(gpu: Gpu, data: Mapping) -> None:
    """Stores a batch made before it faulted stay in memory."""
    address, _ = _store_to_unbound(gpu)
    gpu.wait(gpu.submit_at(address))
    assert data.read_u32(0) == 1


def test_cs_fault_in_one_file_leaves_another_file_alone(daemon: Any, gpu: Gpu) -> None:
    """A ban in one connection sends no event to another and its queues keep running."""
    with Device.open(daemon.socket_path) as other_dev:
        other = Gpu(other_dev)
        seq = gpu.submit_at(UNBOUND_VA)
        gpu.wait(seq)
        gpu.wait(seq)  # a second blocking wait: the ban event is out before its reply
        assert gpu.banned_queues() == [gpu.queue]
        other.run(Batch().store_dword(BATCH_VA + 0x60, 3).end())
        assert other.cpu.read_u32(0x60) == 3
        assert not other_dev.events
        other.close()


# --- WAIT_USER_FENCE -------------------------------------------------------------------------


@pytest.fixture
def fence(dev: Device) -> Iterator[Mapping]:
    """A one-page BO mapped for the CPU, its first qword holding 10."""
    _, cpu = mapped_bo(dev, PAGE_SIZE)
    cpu.write_u64(0, 10)
    yield cpu
    cpu.close()


@pytest.mark.parametrize(
    "op,true_value,false_value",
    [
        (UfenceOp.EQ, 10, 11),
        (UfenceOp.NEQ, 11, 10),
        (UfenceOp.GT, 9, 10),
        (UfenceOp.GTE, 10, 11),
        (UfenceOp.LT, 11, 10),
        (UfenceOp.LTE, 10, 9),
    ],
)
def test_wait_user_fence_ops(
    dev: Device, fence: Mapping, op: UfenceOp, true_value: int, false_value: int
) -> None:
    """*addr op value (memory on the left): the true case returns, the false one is ETIME."""
    left = dev.wait_user_fence(fence.user_address(0), true_value, timeout=WAIT, op=op)
    assert 0 <= left <= WAIT
    err = errno_of(dev.wait_user_fence, fence.user_address(0), false_value, timeout=0, op=op)
    assert err == ETIME


def test_wait_user_fence_compares_unsigned_64_bit(dev: Device, fence: Mapping) -> None:
    """The comparison is unsigned over all 64 bits."""
    fence.write_u64(0, 0xFFFF_FFFF_FFFF_FFFF)
    dev.wait_user_fence(fence.user_address(0), 1, timeout=0, op=UfenceOp.GT)
    fence.write_u64(0, 0x1_0000_0000)
    dev.wait_user_fence(fence.user_address(0), 0xFFFF_FFFF, timeout=0, op=UfenceOp.GT)
    err = errno_of(dev.wait_user_fence, fence.user_address(0), 0, timeout=0, op=UfenceOp.EQ)
    assert err == ETIME


def test_wait_user_fence_mask(dev: Device, fence: Mapping) -> None:
    """Only the masked bits of memory and value are compared."""
    fence.write_u64(0, 0x1234_5678_0000_12AB)
    dev.wait_user_fence(fence.user_address(0), 0xAB, timeout=0, mask=0xFF)
    dev.wait_user_fence(fence.user_address(0), 0xFFFF_FFFF_FFFF_FFAB, timeout=0, mask=0xFF)
    err = errno_of(dev.wait_user_fence, fence.user_address(0), 0xAB, timeout=0, mask=0xFFFF)
    assert err == ETIME


def test_wait_user_fence_timeout_0_checks_once(dev: Device, fence: Mapping) -> None:
    """timeout 0 looks once: ETIME if the value is not there, success (0 left) if it is."""
    assert errno_of(dev.wait_user_fence, fence.user_address(0), 99, timeout=0) == ETIME
    assert dev.wait_user_fence(fence.user_address(0), 10, timeout=0) == 0


def test_wait_user_fence_short_timeout_is_etime(dev: Device, fence: Mapping) -> None:
    """A 1 ms wait for a value that is never written is ETIME."""
    assert errno_of(dev.wait_user_fence, fence.user_address(0), 99, timeout=1_000_000) == ETIME


def test_wait_user_fence_negative_timeout_waits_for_the_gpu(gpu: Gpu, data: Mapping) -> None:
    """timeout < 0 waits without limit: it returns once the GPU writes the fence."""
    batch = Batch()
    for _ in range(3000):
        batch.atomic_inc(DATA_VA)
    seq = gpu.submit(batch.end())
    left = gpu.dev.wait_user_fence(gpu.cpu.user_address(FENCE), seq, timeout=-1)
    assert 0 < left <= LONG_MAX
    assert data.read_u32(0) == 3000


def test_wait_user_fence_abstime_past_deadline_is_etime(dev: Device, fence: Mapping) -> None:
    """ABSTIME with a deadline already past is ETIME for a value that is not there."""
    err = errno_of(
        dev.wait_user_fence,
        fence.user_address(0),
        99,
        timeout=time.monotonic_ns(),
        flags=DRM_XE_UFENCE_WAIT_FLAG_ABSTIME,
    )
    assert err == ETIME


def test_wait_user_fence_abstime_future_deadline_returns_on_the_fence(gpu: Gpu) -> None:
    """ABSTIME with a deadline ahead returns once the GPU writes the fence."""
    seq = gpu.submit(Batch().end())
    deadline = time.monotonic_ns() + WAIT
    gpu.dev.wait_user_fence(
        gpu.cpu.user_address(FENCE), seq, timeout=deadline, flags=DRM_XE_UFENCE_WAIT_FLAG_ABSTIME
    )


def test_wait_user_fence_relative_timeout_returns_time_left(gpu: Gpu) -> None:
    """A relative wait answers with the time left: 0 <= left <= timeout."""
    seq = gpu.submit(Batch().end())
    left = gpu.dev.wait_user_fence(gpu.cpu.user_address(FENCE), seq, timeout=WAIT)
    assert 0 <= left <= WAIT


def test_wait_user_fence_woken_by_a_cpu_write(dev: Device, fence: Mapping) -> None:
    """A waiter also passes when the CPU, not the GPU, writes the value into the fence."""
    outcome: dict[str, Any] = {}
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            outcome["left"] = dev.wait_user_fence(fence.user_address(0), 77, timeout=WAIT)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(10)
    fence.write_u64(0, 77)
    thread.join(10)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert 0 <= outcome["left"] <= WAIT


def _user(dev: Device, cpu: Mapping, offset: int = 0) -> int:
    """The user address (as sent on the wire) of byte `offset` of a mapping."""
    return dev.user_address(cpu.user_address(offset))


@pytest.mark.parametrize(
    "fields",
    [
        {"extensions": 1},
        {"pad": 1},
        {"pad2": 1},
        {"reserved": (1, 0)},
        {"reserved": (0, 1)},
    ],
    ids=["extensions", "pad", "pad2", "reserved0", "reserved1"],
)
def test_wait_user_fence_mbz_is_einval(dev: Device, fence: Mapping, fields: dict[str, Any]) -> None:
    """WAIT_USER_FENCE with extensions, pad, pad2 or reserved non-zero is EINVAL."""
    err = errno_of(raw_wait, dev, addr=_user(dev, fence), value=10, timeout=WAIT, **fields)
    assert err == EINVAL


def test_wait_user_fence_unknown_flags_is_einval(dev: Device, fence: Mapping) -> None:
    """A flag other than ABSTIME is EINVAL."""
    err = errno_of(dev.wait_user_fence, fence.user_address(0), 10, timeout=0, flags=2)
    assert err == EINVAL


def test_wait_user_fence_op_6_is_einval(dev: Device, fence: Mapping) -> None:
    """An op above LTE (5) is EINVAL."""
    err = errno_of(raw_wait, dev, addr=_user(dev, fence), op=6, value=10, timeout=0)
    assert err == EINVAL


def test_wait_user_fence_unaligned_addr_is_einval(dev: Device, fence: Mapping) -> None:
    """A fence address not 8-byte aligned is EINVAL."""
    err = errno_of(raw_wait, dev, addr=_user(dev, fence) + 4, value=10, timeout=0)
    assert err == EINVAL


def test_wait_user_fence_unknown_exec_queue_is_enoent(dev: Device, fence: Mapping) -> None:
    """A non-zero exec_queue_id naming no queue is ENOENT, even when the value is there."""
    err = errno_of(dev.wait_user_fence, fence.user_address(0), 10, timeout=0, exec_queue=5)
    assert err == ENOENT


def test_wait_user_fence_alignment_checked_before_exec_queue(dev: Device, fence: Mapping) -> None:
    """An unaligned addr with an unknown exec queue is EINVAL (alignment comes first)."""
    args = dict(addr=_user(dev, fence) + 4, value=10, timeout=0, exec_queue_id=5)
    assert errno_of(raw_wait, dev, **args) == EINVAL


@pytest.mark.parametrize("addr", [0, 0x1000, 0x7F00_0000_0000], ids=["null", "low", "high"])
def test_wait_user_fence_address_in_no_mapping_is_efault(dev: Device, addr: int) -> None:
    """A user address in no mapping of this connection is EFAULT."""
    assert errno_of(raw_wait, dev, addr=addr, value=0, timeout=0) == EFAULT


def test_wait_user_fence_on_another_files_bo_is_efault(daemon: Any, dev: Device) -> None:
    """The fake offset of another connection's BO is not our memory: EFAULT."""
    with Device.open(daemon.socket_path) as other:
        bo = other.gem_create(PAGE_SIZE)
        theirs = other.gem_mmap_offset(bo)
        assert errno_of(raw_wait, dev, addr=theirs, value=0, timeout=0) == EFAULT


def test_wait_user_fence_past_the_end_of_a_bo_is_efault(dev: Device, fence: Mapping) -> None:
    """A user address just past the end of our BO (in the guard page) is EFAULT."""
    assert errno_of(raw_wait, dev, addr=_user(dev, fence) + PAGE_SIZE, value=0, timeout=0) == EFAULT


def test_wait_user_fence_eio_when_the_queue_is_banned(gpu: Gpu) -> None:
    """Waiting with exec_queue_id for a value that never comes: EIO once that queue is banned."""
    gpu.submit_at(UNBOUND_VA)
    err = errno_of(
        gpu.dev.wait_user_fence,
        gpu.cpu.user_address(0x800),
        0xAAAA,
        timeout=WAIT,
        exec_queue=gpu.queue,
    )
    assert err == EIO


def test_wait_user_fence_on_banned_queue_passes_if_value_is_there(gpu: Gpu) -> None:
    """The value is tested before the reset: a banned queue's written fence still passes."""
    seq = gpu.submit_at(UNBOUND_VA)
    gpu.wait(seq)
    gpu.wait(seq, exec_queue=gpu.queue)
    assert errno_of(gpu.wait, seq + 1, exec_queue=gpu.queue) == EIO


def test_client_disconnecting_during_an_endless_wait_leaves_the_daemon_clean(
    fresh_daemon: Any,
) -> None:
    """A client killed in an endless WAIT_USER_FENCE: the daemon answers and frees its objects."""
    before = baseline(fresh_daemon)
    child = spawn_client(
        fresh_daemon.socket_path,
        """
        from protocols import Op, encode_request, messages
        bo = dev.gem_create(4096)
        m = dev.mmap_bo(bo)
        wait = messages.DrmXeWaitUserFence(
            addr=dev.user_address(m.user_address(0)), value=1, timeout=-1
        )
        dev.transport.sock.send(encode_request(1000, Op.XE_WAIT_USER_FENCE, wait))
        print("sent", flush=True)
        dev.transport.recv()  # never answered
        print("answered", flush=True)
        """,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "sent"
    finally:
        child.kill()
        child.communicate(timeout=30)
    with Device.open(fresh_daemon.socket_path) as dev:
        assert dev.version().name
    # the daemon notices hang-ups (the child's, and each admin visit's) on its own
    # schedule: look again until it has caught up (no sleeping, a bounded number of looks)
    for _ in range(200):
        now = baseline(fresh_daemon)
        if now == before:
            break
    assert now == before
