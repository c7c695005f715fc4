"""Exec queues and EXEC, through real daemons: what a submission may ask for and what is
refused before any batch runs. The batches' running, their faults and WAIT_USER_FENCE are
in test_exec_cs.py, so each module stays short enough to read whole.
"""

from __future__ import annotations

import os
from errno import E2BIG, EFAULT, EINVAL, ENOENT, EOPNOTSUPP, EPERM
from typing import Any

import pytest
from helpers import BATCH_VA, NOBODY, WAIT, ForkedChild, Gpu, errno_of, needs_root

from clients import Batch, Device, XeError, user_fence
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    CHAIN_BODY_FAULT,
    CHAIN_LINK_FAULT,
    CHAIN_TOO_LONG,
    DRM_XE_SYNC_FLAG_SIGNAL,
    DRM_XE_SYNC_TYPE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
    DRM_XE_SYNC_TYPE_USER_FENCE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    EngineClass,
)


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


def test_exec_queue_create_width_2_on_compute_is_einval(dev: Device) -> None:
    """Parallel submission (width 2) on the compute class, which has no multi-LRC, is
    EINVAL (test_exec_parallel.py: the classes that have it)."""
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
    """EXEC_QUEUE_CREATE with extensions non-zero but no chain read from it is EINVAL
    (the C library always sends the links, or how reading them failed)."""
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


# --- EXEC_QUEUE_GET_PROPERTY ----------------------------------------------------------------


def get_queue_property(dev: Device, **fields: Any) -> int:
    reply = dev.ioctl(Op.XE_EXEC_QUEUE_GET_PROPERTY, m.DrmXeExecQueueGetProperty(**fields))
    value: int = reply.value
    return value


def test_exec_queue_ban_property_turns_once_a_batch_faults(gpu: Gpu) -> None:
    """BAN is 0 for a queue that has run well (whatever `value` held going in), 1 once a
    batch of it faulted; another queue on the same VM stays 0."""
    other = gpu.dev.exec_queue_create(gpu.vm)
    gpu.run(Batch().end())
    assert get_queue_property(gpu.dev, exec_queue_id=gpu.queue, value=0xFFFF) == 0
    gpu.wait(gpu.submit_at(0x7_0000_0000))
    assert gpu.dev.exec_queue_banned(gpu.queue)
    assert not gpu.dev.exec_queue_banned(other)


def test_exec_queue_get_property_refusals(gpu: Gpu) -> None:
    """reserved non-zero: EINVAL, before the lookup; no such queue: ENOENT; a property
    other than BAN (0): EINVAL. extensions is not looked at, as in xe."""
    q = gpu.queue
    assert errno_of(get_queue_property, gpu.dev, exec_queue_id=0xFFFF, reserved=(1, 0)) == EINVAL
    assert errno_of(get_queue_property, gpu.dev, exec_queue_id=0xFFFF) == ENOENT
    assert errno_of(get_queue_property, gpu.dev, exec_queue_id=q, property=1) == EINVAL
    assert get_queue_property(gpu.dev, exec_queue_id=q, extensions=1) == 0


# --- EXEC_QUEUE_CREATE's extension chain (SET_PROPERTY) ---------------------------------------


def link(prop: int = 0, value: int = 1, **fields: int) -> m.DrmXeExtSetProperty:
    return m.DrmXeExtSetProperty(property=prop, value=value, **fields)


def with_chain(dev: Device, vm: int, *links: m.DrmXeExtSetProperty, end: int = 0) -> int:
    return create_queue(dev, vm_id=vm, extensions=1, chain=links, chain_end=end)


def test_exec_queue_priority_and_timeslice_are_taken(dev: Device) -> None:
    """Priorities 0 to 2 (HIGH as root, which holds CAP_SYS_NICE) and a timeslice in
    range, alone or chained, on an engine queue and on a bind queue."""
    vm = dev.vm_create()
    for priority in (0, 1, 2):
        assert dev.exec_queue_create(vm, priority=priority)
    assert with_chain(dev, vm, link(1, 1), link(1, 10_000_000), link(0, 1))
    bind = create_queue(
        dev, vm_id=vm, instances=(eci(EngineClass.VM_BIND),), extensions=1, chain=(link(),)
    )
    assert bind


@pytest.mark.parametrize(
    "bad",
    [
        link(value=3),  # above HIGH
        link(prop=2),  # PXP_TYPE and later: not taken
        link(prop=15),
        link(pad2=1),
        link(pad=1),
        link(name=1),
    ],
    ids=["priority-3", "property-2", "property-15", "property-pad", "link-pad", "name-1"],
)
def test_exec_queue_bad_extension_is_einval_and_makes_no_queue(
    dev: Device, bad: m.DrmXeExtSetProperty
) -> None:
    """A link or property xe refuses is EINVAL, wherever it is in the chain, and no
    queue is left: the next one made takes the lowest id."""
    vm = dev.vm_create()
    assert errno_of(with_chain, dev, vm, link(), bad) == EINVAL
    assert errno_of(with_chain, dev, vm, bad) == EINVAL
    assert dev.exec_queue_create(vm) == 1


def test_exec_queue_chain_ends_in_the_kernels_order(dev: Device) -> None:
    """A link that could not be read: EFAULT, after the links before it are checked; a
    17th link: E2BIG; the VM is looked up before any of it (ENOENT)."""
    vm = dev.vm_create()
    assert errno_of(with_chain, dev, vm, link(), end=CHAIN_LINK_FAULT) == EFAULT
    assert errno_of(with_chain, dev, vm, link(value=9), end=CHAIN_LINK_FAULT) == EINVAL
    assert errno_of(with_chain, dev, vm, link(), end=CHAIN_BODY_FAULT) == EFAULT
    assert errno_of(with_chain, dev, vm, link(name=1), end=CHAIN_BODY_FAULT) == EINVAL
    assert errno_of(with_chain, dev, vm, end=CHAIN_LINK_FAULT) == EFAULT
    assert errno_of(with_chain, dev, vm, *[link()] * 16, end=CHAIN_TOO_LONG) == E2BIG
    assert errno_of(with_chain, dev, 99, link(value=9), end=CHAIN_LINK_FAULT) == ENOENT
    assert errno_of(with_chain, dev, vm, link(), end=4) == EINVAL
    assert errno_of(create_queue, dev, vm_id=vm, chain=(link(),)) == EINVAL  # no extensions
    assert dev.exec_queue_create(vm) == 1


def test_a_high_priority_takes_cap_sys_nice_now(fresh_daemon: Any) -> None:
    """HIGH is EPERM for a process without CAP_SYS_NICE, checked as the queue is made:
    one connected as root that dropped to uid 65534 since, as IGT's child does. NORMAL
    is still taken, and a timeslice out of range is EINVAL without the capability."""
    needs_root()

    def work(report: Any, wait_go: Any) -> None:
        with Device.open(fresh_daemon.socket_path) as dev:
            vm = dev.vm_create()
            high = dev.exec_queue_create(vm, priority=2)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            report(
                {
                    "high_as_root": high,
                    "high": errno_of_call(dev.exec_queue_create, vm, priority=2),
                    "normal": dev.exec_queue_create(vm, priority=1),
                    "timeslice": errno_of_call(with_chain, dev, vm, link(1, 0)),
                }
            )

    child = ForkedChild(fresh_daemon.socket_path, work)
    result = child.report()
    assert child.join() == 0
    assert result == {"high_as_root": 1, "high": EPERM, "normal": 2, "timeslice": EINVAL}


def errno_of_call(call: Any, *args: Any, **kwargs: Any) -> int:
    """errno_of for a forked child, where pytest.raises is not wanted: 0 on success."""
    try:
        call(*args, **kwargs)
    except XeError as exc:
        return exc.errno or -1
    return 0
