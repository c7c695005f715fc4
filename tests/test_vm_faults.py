"""VM_GET_PROPERTY(FAULTS), through a real daemon: the page faults a VM's batches met,
each as xe describes it (the page's canonical address, read or write, not present or a
write the binding refuses), the first 50 kept; the size probe and every refusal."""

from __future__ import annotations

from errno import EINVAL, ENOENT
from typing import Any

import pytest
from helpers import Gpu, errno_of

from clients import Batch, Device
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_READONLY,
    DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE,
    FAULT_ACCESS_TYPE_READ,
    FAULT_ACCESS_TYPE_WRITE,
    FAULT_TYPE_NOT_PRESENT,
    FAULT_TYPE_WRITE_ACCESS,
    PAGE_SIZE,
)

UNBOUND = 0x7_0000_0000
RO_VA = 0x3_0000_0000


def get_property(dev: Device, **fields: Any) -> m.DrmXeVmGetPropertyReply:
    reply: m.DrmXeVmGetPropertyReply = dev.ioctl(
        Op.XE_VM_GET_PROPERTY, m.DrmXeVmGetProperty(**fields)
    )
    return reply


def fault_on_a_new_queue(gpu: Gpu, batch: Batch) -> None:
    """Run a faulting batch on a queue of its own (the fault bans it)."""
    gpu.wait(gpu.submit(batch, gpu.dev.exec_queue_create(gpu.vm)))


def test_a_vm_without_faults_reports_none(gpu: Gpu) -> None:
    """Size 0 asked, 0 answered: no fault yet, and a batch that ran well adds none."""
    gpu.run(Batch().end())
    assert get_property(gpu.dev, vm_id=gpu.vm).size == 0
    assert gpu.dev.vm_faults(gpu.vm) == []


def test_faults_as_xe_reports_them(gpu: Gpu) -> None:
    """A store to nothing (write, not present), a batch fetched from nothing (read, not
    present), a store to a READONLY binding (write, write access): each the page, to
    4 KiB, in the order met."""
    bo = gpu.dev.gem_create(PAGE_SIZE)
    gpu.dev.vm_bind(gpu.vm, bo, RO_VA, flags=DRM_XE_VM_BIND_FLAG_READONLY)
    fault_on_a_new_queue(gpu, Batch().store_dword(UNBOUND + 0x1234, 1).end())
    queue = gpu.dev.exec_queue_create(gpu.vm)
    gpu.wait(gpu.submit_at(UNBOUND + 0x5000, queue))
    fault_on_a_new_queue(gpu, Batch().store_dword(RO_VA + 8, 1).end())
    faults = gpu.dev.vm_faults(gpu.vm)
    assert [(f.address, f.access_type, f.fault_type) for f in faults] == [
        (UNBOUND + 0x1000, FAULT_ACCESS_TYPE_WRITE, FAULT_TYPE_NOT_PRESENT),
        (UNBOUND + 0x5000, FAULT_ACCESS_TYPE_READ, FAULT_TYPE_NOT_PRESENT),
        (RO_VA, FAULT_ACCESS_TYPE_WRITE, FAULT_TYPE_WRITE_ACCESS),
    ]
    assert {(f.address_precision, f.fault_level) for f in faults} == {(4096, 0)}
    assert get_property(gpu.dev, vm_id=gpu.vm).size == 3 * 48


def test_an_address_above_the_top_bit_is_reported_canonical(gpu: Gpu) -> None:
    """A fault at 0x8000_0000_1234 of a 48-bit VM is 0xffff_8000_0000_1000."""
    fault_on_a_new_queue(gpu, Batch().store_dword(0x8000_0000_1234, 1).end())
    assert [f.address for f in gpu.dev.vm_faults(gpu.vm)] == [0xFFFF_8000_0000_1000]


def test_a_batch_stopped_for_another_reason_is_no_page_fault(gpu: Gpu) -> None:
    """An unknown instruction bans the queue but met no page: nothing is reported."""
    fault_on_a_new_queue(gpu, Batch().raw(0xFFFF_FFFF).end())
    assert gpu.banned_queues()
    assert gpu.dev.vm_faults(gpu.vm) == []


def test_the_first_50_are_kept_and_a_part_may_be_asked_for(gpu: Gpu) -> None:
    """55 faults keep the first 50; a size of 2 x 48 gives the first two."""
    for i in range(55):
        fault_on_a_new_queue(gpu, Batch().store_dword(UNBOUND + i * PAGE_SIZE, 1).end())
    faults = gpu.dev.vm_faults(gpu.vm)
    assert [f.address for f in faults] == [UNBOUND + i * PAGE_SIZE for i in range(50)]
    two = get_property(gpu.dev, vm_id=gpu.vm, size=2 * 48)
    assert (two.size, list(two.faults)) == (96, faults[:2])


def test_faults_are_the_vms_own(gpu: Gpu) -> None:
    """Another VM of the same file has met none."""
    fault_on_a_new_queue(gpu, Batch().store_dword(UNBOUND, 1).end())
    assert gpu.dev.vm_faults(gpu.dev.vm_create()) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"extensions": 1},
        {"pad": 1},
        {"reserved": (0, 0, 1)},
        {"extensions": 0xDEADBEEF, "vm_id": 0},  # before the VM is looked up (IGT's)
    ],
    ids=["extensions", "pad", "reserved", "before-the-vm"],
)
def test_mbz_fields_are_einval(gpu: Gpu, fields: dict[str, Any]) -> None:
    fields.setdefault("vm_id", gpu.vm)
    assert errno_of(get_property, gpu.dev, **fields) == EINVAL


def test_refusals(gpu: Gpu) -> None:
    """No such VM: ENOENT; a property other than FAULTS: EINVAL; a size beyond the
    faults there are, or not a multiple of 48: EINVAL."""
    assert errno_of(get_property, gpu.dev, vm_id=0xDEAD) == ENOENT
    assert errno_of(get_property, gpu.dev, vm_id=gpu.vm, property=1) == EINVAL
    assert errno_of(get_property, gpu.dev, vm_id=gpu.vm, size=0xFFFF_FFFF) == EINVAL
    fault_on_a_new_queue(gpu, Batch().store_dword(UNBOUND, 1).end())
    assert errno_of(get_property, gpu.dev, vm_id=gpu.vm, size=47) == EINVAL
    assert errno_of(get_property, gpu.dev, vm_id=gpu.vm, size=96) == EINVAL
    assert get_property(gpu.dev, vm_id=gpu.vm, size=48).size == 48


def test_scratch_page_takes_what_would_fault(dev: Device) -> None:
    """In a VM made with SCRATCH_PAGE a store to nothing is dropped and a load from
    nothing reads zero: no fault is recorded, the queue runs on; a READONLY binding
    still refuses its store."""
    gpu = Gpu(dev, DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE)
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(gpu.vm, bo, RO_VA)
    with dev.mmap_bo(bo) as view:
        view[:4] = b"\xff\xff\xff\xff"
        gpu.run(Batch().store_dword(UNBOUND + 0x1234, 1).copy_dword(RO_VA, UNBOUND + 8).end())
        assert bytes(view[:4]) == bytes(4)
    assert dev.vm_faults(gpu.vm) == []
    assert gpu.banned_queues() == []
    dev.vm_bind(gpu.vm, bo, RO_VA + PAGE_SIZE, flags=DRM_XE_VM_BIND_FLAG_READONLY)
    fault_on_a_new_queue(gpu, Batch().store_dword(RO_VA + PAGE_SIZE, 1).end())
    assert [f.fault_type for f in dev.vm_faults(gpu.vm)] == [FAULT_TYPE_WRITE_ACCESS]
    gpu.close()
