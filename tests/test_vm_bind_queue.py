"""VM_BINDs that wait: answered at once, made later on their bind queue, as xe's.

A bind whose syncs wait on a fence not signalled yet is queued on the bind queue it
names (else the VM's own): the ioctl answers at once, its SIGNAL syncobjs hold its fence
from then on, and the binds are made once the fences have signalled and the queue's
earlier binds are made. Later binds over the same addresses, or in a page-table block
nothing mapped before a queued bind (xe's bind-execqueues-conflict), wait for it on any
queue; other queues go on. A bind with a user fence still waits in its ioctl.
"""

from __future__ import annotations

from errno import EAGAIN, ETIME

import pytest
from conftest import baseline
from test_lifecycle import wait_for_baseline

from clients import Batch, Device, XeError, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_UNMAP,
    PAGE_SIZE,
    EngineClass,
)
from tests.test_syncobj import LATE_VA, stall
from tests.test_userptr import END_REPLACED, Rig, invalidate
from xed.device.bind_queue import MAX_QUEUED_BIND_OPS, MAX_QUEUED_SPANS

BLOCK = 1 << 21  # a page-table block


def bind(dev: Device, rig: Rig, bo: int, addr: int, queue: int = 0, *syncs: m.DrmXeSync) -> None:
    op = m.DrmXeVmBindOp(obj=bo, range=PAGE_SIZE, addr=addr, op=DRM_XE_VM_BIND_OP_MAP)
    args = m.DrmXeVmBind(vm_id=rig.vm, exec_queue_id=queue, binds=(op,), syncs=syncs)
    dev.ioctl(Op.XE_VM_BIND, args)


def done(dev: Device, handle: int) -> bool:
    """Whether the syncobj's fence has signalled (a wait that does not wait)."""
    try:
        syncobj.wait(dev, [handle], timeout_nsec=0)
    except XeError as exc:
        assert exc.errno == ETIME
        return False
    return True


def bind_queue(dev: Device, rig: Rig) -> int:
    return dev.exec_queue_create(rig.vm, engine_class=EngineClass.VM_BIND)


def test_a_bind_that_waits_answers_at_once_and_is_made_later(daemon: DaemonProcess) -> None:
    """Bound once the fence it waits for signals, not before; a batch then reaches it."""
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue, bound = bind_queue(dev, rig), syncobj.create(dev)
        bo = dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate), syncobj.signal_sync(bound))
        assert not done(dev, bound)
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        assert syncobj.wait(dev, [bound]) == 0
        rig.run(Batch().store_dword(LATE_VA, 0x5EED).end())
        assert dev.mmap_bo(bo).read_u32(0) == 0x5EED
        rig.close()


def test_binds_of_one_queue_are_made_in_order(daemon: DaemonProcess) -> None:
    """A bind with nothing to wait for, behind a queued one of its queue, waits too."""
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue, first, second = bind_queue(dev, rig), syncobj.create(dev), syncobj.create(dev)
        bo = dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate), syncobj.signal_sync(first))
        bind(dev, rig, bo, LATE_VA + BLOCK, queue, syncobj.signal_sync(second))
        assert not done(dev, second)
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        syncobj.wait(dev, [first, second], wait_all=True)  # until all have signalled
        assert all(done(dev, h) for h in (first, second))
        rig.close()


def test_other_queues_go_on_unless_they_touch_a_queued_bind(daemon: DaemonProcess) -> None:
    """Another queue's bind elsewhere is made at once; one over the queued bind's
    addresses, or in the page-table block it is the first to fill, waits for it."""
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        a, b = bind_queue(dev, rig), bind_queue(dev, rig)
        queued, apart, over, near = (syncobj.create(dev) for _ in range(4))
        bo = dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, LATE_VA, a, syncobj.wait_sync(gate), syncobj.signal_sync(queued))
        bind(dev, rig, bo, LATE_VA + 4 * BLOCK, b, syncobj.signal_sync(apart))
        bind(dev, rig, bo, LATE_VA, b, syncobj.signal_sync(over))
        bind(dev, rig, bo, LATE_VA + PAGE_SIZE, 0, syncobj.signal_sync(near))
        assert done(dev, apart)
        assert not done(dev, over) and not done(dev, near)
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        syncobj.wait(dev, [queued, over, near], wait_all=True)  # until all have signalled
        assert all(done(dev, h) for h in (queued, over, near))
        rig.close()


def test_a_destroyed_queue_drops_its_binds_and_signals(fresh_daemon: DaemonProcess) -> None:
    """EXEC_QUEUE_DESTROY of a bind queue with binds queued (one waiting, one behind it):
    their fences signal (no wait waits for ever), the binds are never made, and nothing
    they held is left once the file is closed."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue, bound = bind_queue(dev, rig), syncobj.create(dev)
        bo = dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate), syncobj.signal_sync(bound))
        behind = syncobj.create(dev)
        bind(dev, rig, bo, LATE_VA + 4 * BLOCK, queue, syncobj.signal_sync(behind))
        dev.exec_queue_destroy(queue)
        syncobj.wait(dev, [bound, behind], wait_all=True)  # until all have signalled
        assert all(done(dev, h) for h in (bound, behind))
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        probe, ran = dev.exec_queue_create(rig.vm), syncobj.create(dev)
        address = rig.place(Batch().store_dword(LATE_VA, 1).end())
        dev.exec(probe, address, syncs=[syncobj.signal_sync(ran)])
        assert syncobj.wait(dev, [ran]) == 0
        assert [f.address for f in dev.vm_faults(rig.vm)] == [LATE_VA]  # never bound
        rig.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_binds_queued_when_the_file_closes_leave_nothing(fresh_daemon: DaemonProcess) -> None:
    """A file closed with binds queued on its VM's own queue and on a bind queue: the
    daemon lets go of everything (its descriptors and objects as before)."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue, bo = bind_queue(dev, rig), dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate))
        bind(dev, rig, bo, LATE_VA + 2 * BLOCK, 0, syncobj.wait_sync(gate))
    assert wait_for_baseline(fresh_daemon, before) == before


def test_past_1024_binds_queued_on_a_vm_is_eagain(daemon: DaemonProcess) -> None:
    """Past 1024 binds queued on one VM (each new one is checked against them all),
    VM_BIND answers EAGAIN, as EXEC does past its queue's bound; one that need not wait
    is still made."""
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue = bind_queue(dev, rig)
        bo = dev.gem_create(PAGE_SIZE)
        for _ in range(1024):
            bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate))
        with pytest.raises(XeError) as e:
            bind(dev, rig, bo, LATE_VA, queue, syncobj.wait_sync(gate))
        assert e.value.errno == EAGAIN
        bind(dev, rig, bo, LATE_VA + 8 * BLOCK)  # another queue, nothing to wait for
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        rig.close()


def unmaps(vm: int, first: int, count: int, *syncs: m.DrmXeSync) -> m.DrmXeVmBind:
    """`count` one-page UNMAPs a page apart from `first`: one address span each."""
    ops = tuple(
        m.DrmXeVmBindOp(op=DRM_XE_VM_BIND_OP_UNMAP, addr=first + 2 * n * PAGE_SIZE, range=PAGE_SIZE)
        for n in range(count)
    )
    return m.DrmXeVmBind(vm_id=vm, binds=ops, syncs=syncs)


def test_queued_spans_of_a_vm_and_bind_ops_of_a_file_are_bounded(
    fresh_daemon: DaemonProcess,
) -> None:
    """Binds queued on a VM hold at most MAX_QUEUED_SPANS address spans (each new bind is
    checked against them all), and a file's queued binds at most MAX_QUEUED_BIND_OPS ops
    over all its VMs: past either, a bind that must wait is EAGAIN; one that need not
    wait is still made, and everything queued is made once the fence signals."""
    before = baseline(fresh_daemon)
    per_bind = 256  # one datagram holds them
    with Device.open(fresh_daemon.socket_path) as dev:
        rig, gate = stall(dev)
        vms = [rig.vm] + [dev.vm_create() for _ in range(4)]
        wait = syncobj.wait_sync(gate)
        for vm in vms[:4]:
            for n in range(MAX_QUEUED_SPANS // per_bind):
                dev.ioctl(Op.XE_VM_BIND, unmaps(vm, LATE_VA + n * BLOCK, per_bind, wait))
        assert 4 * MAX_QUEUED_SPANS == MAX_QUEUED_BIND_OPS  # the file is full now too
        with pytest.raises(XeError) as spans:  # the VM's spans
            dev.ioctl(Op.XE_VM_BIND, unmaps(vms[0], LATE_VA, 1, wait))
        with pytest.raises(XeError) as ops:  # a VM with nothing queued: the file's ops
            dev.ioctl(Op.XE_VM_BIND, unmaps(vms[4], LATE_VA, 1, wait))
        assert (spans.value.errno, ops.value.errno) == (EAGAIN, EAGAIN)
        bo = dev.gem_create(PAGE_SIZE)
        dev.vm_bind(vms[4], bo, LATE_VA)  # nothing to wait for: made
        dev.vm_unbind(vms[4], LATE_VA, PAGE_SIZE)
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        last = syncobj.create(dev)
        dev.ioctl(Op.XE_VM_BIND, unmaps(vms[0], LATE_VA, 1, syncobj.signal_sync(last)))
        assert syncobj.wait(dev, [last]) == 0  # behind every queued bind of the VM
        rig.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def peak_memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_a_queued_null_bind_over_half_the_vm_holds_little(daemon: DaemonProcess) -> None:
    """A NULL MAP of 2^46 bytes that must wait holds its span and the two page-table
    blocks it reaches into, not one span per 2 MiB block (33 million of them once: half
    a minute of the event loop and gigabytes): the daemon's peak memory grows by less
    than 64 MiB; a bind inside its range or in a block it fills waits for it, one
    elsewhere does not."""
    huge = 1 << 46
    peak = peak_memory_kib(daemon.pid)
    with Device.open(daemon.socket_path) as dev:
        rig, gate = stall(dev)
        queue, other = bind_queue(dev, rig), bind_queue(dev, rig)
        null = m.DrmXeVmBindOp(
            op=DRM_XE_VM_BIND_OP_MAP, flags=DRM_XE_VM_BIND_FLAG_NULL, addr=huge + PAGE_SIZE,
            range=huge - 2 * PAGE_SIZE,
        )  # fmt: skip
        made, inside, near, apart = (syncobj.create(dev) for _ in range(4))
        syncs = (syncobj.wait_sync(gate), syncobj.signal_sync(made))
        dev.ioctl(
            Op.XE_VM_BIND,
            m.DrmXeVmBind(vm_id=rig.vm, exec_queue_id=queue, binds=(null,), syncs=syncs),
        )
        bo = dev.gem_create(PAGE_SIZE)
        bind(dev, rig, bo, huge + huge // 2, other, syncobj.signal_sync(inside))
        bind(dev, rig, bo, huge, other, syncobj.signal_sync(near))  # its first block
        bind(dev, rig, bo, LATE_VA, 0, syncobj.signal_sync(apart))
        assert done(dev, apart)
        assert not any(done(dev, h) for h in (made, inside, near))
        assert peak_memory_kib(daemon.pid) - peak < 64 * 1024
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        syncobj.wait(dev, [made, inside, near], wait_all=True)
        rig.close()
