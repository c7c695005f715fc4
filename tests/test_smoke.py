"""The path every program takes: connect, create, map, bind, execute, wait, read."""

from __future__ import annotations

from clients import Batch, Device, user_fence

BASE = 0x1_0000_0000


def test_batch_writes_through_vm_and_fence_wakes_waiter(dev: Device) -> None:
    """A batch's store lands in the BO, the CPU mapping sees it, the fence wakes us."""
    bo = dev.gem_create(0x10000)
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, BASE)
    queue = dev.exec_queue_create(vm)
    with dev.mmap_bo(bo) as m:
        batch = Batch().store_dword(BASE + 0x1000, 0xC0FFEE).end()
        m[0x100 : 0x100 + len(batch)] = batch.tobytes()
        dev.exec(queue, BASE + 0x100, syncs=[user_fence(BASE + 0x2000, 1)])
        dev.wait_user_fence(m.user_address(0x2000), 1)
        assert m.read_u32(0x1000) == 0xC0FFEE
