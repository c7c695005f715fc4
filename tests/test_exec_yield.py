"""The daemon's one event loop is everyone's: work queued behind a fence and let go at
once (a backlog of EXEC jobs, of VM_BINDs), and a batch of long MI_MATHs, let the other
clients in as they go, a turn at a time (cs.py: TURN_INSTRUCTIONS, Turn), rather than
hold them off to the end. Checked by order, never by time: another connection's call
is answered while the work it waited behind is still under way (its last fence not
signalled yet), and a short batch on another queue runs in the middle of a long one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from errno import ETIME

import pytest
from helpers import BATCH_VA, FENCE, LONG_WAIT, WAIT, Gpu

from clients import Batch, Device, XeError, user_fence
from clients import syncobj as so
from clients.daemon import DaemonProcess
from protocols import messages as m
from protocols.constants import DRM_XE_VM_BIND_OP_MAP

# an MI_MATH of 256 ALU words, and MI_SEMAPHORE_WAIT (polling, EQ), as test_exec_spin.py
CS_MMIO = 1 << 19
GPR = 0x600
LRI = (0x22 << 23) | CS_MMIO
SRM = (0x24 << 23) | CS_MMIO | 2
MATH_256 = (0x1A << 23) | 0xFF
SEMAPHORE_WAIT_EQ = (0x1C << 23) | (1 << 15) | (4 << 12) | 2
LONG_VA, LONG_BO_SIZE = 0x2_0000_0000, 1 << 20  # the long batch's own BO


def alu(opcode: int, op1: int = 0, op2: int = 0) -> int:
    return opcode << 20 | op1 << 10 | op2


# R0 += R1, four ALU words; an MI_MATH holds 64 of them
ADD_R1_TO_R0 = (alu(0x080, 0x20, 0), alu(0x080, 0x21, 1), alu(0x100), alu(0x180, 0, 0x31))


@pytest.fixture
def sock(fresh_daemon: DaemonProcess) -> str:
    """A daemon of the test's own: nothing else runs in it, and its counts are ours."""
    return str(fresh_daemon.socket_path)


@pytest.fixture
def dev(sock: str) -> Iterator[Device]:
    with Device.open(sock) as device:
        yield device


@pytest.fixture
def other(sock: str) -> Iterator[Device]:
    """Another client of the same daemon: the bystander whose call must get in."""
    with Device.open(sock) as device:
        yield device


def gate(dev: Device) -> tuple[int, int]:
    """A syncobj holding a sw_sync point not reached yet: (the syncobj, its timeline);
    `so.sw_sync_inc(dev, timeline)` signals it."""
    timeline = so.sw_sync_timeline(dev)
    point = so.sw_sync_fence(dev, timeline, 1)
    handle = so.create(dev)
    so.import_sync_file(dev, handle, point)
    os.close(point)
    return handle, timeline


def signalled(dev: Device, handles: list[int]) -> bool:
    """Whether any of the syncobjs is signalled now (a wait that times out at once)."""
    try:
        so.wait(dev, handles, timeout_nsec=0)
    except XeError as error:
        assert error.errno == ETIME, error
        return False
    return True


def uid_objects(admin: Device, dev: Device) -> int:
    (info,) = [c for c in admin.admin_clients() if c.client_id == dev.client_id]
    return info.uid_objects


def test_a_backlog_of_short_jobs_lets_another_client_in(
    sock: str, dev: Device, other: Device
) -> None:
    """400 jobs of 1000 MI_NOOPs (each under a turn, so none yields on its own) wait
    behind one fence on one queue. Once it signals, another connection's call is
    answered before the last job has run: the worker lets the others in between jobs.
    Destroying the queue in the middle of the backlog still signals every job's fence
    and gives back every job it counted (the uid's objects are what they were)."""
    jobs = 400
    gpu = Gpu(dev)
    with Device.open(sock, role="admin") as admin:
        batch = gpu.place(Batch().raw(*([0] * 1000)).end())
        waits_for, timeline = gate(dev)
        done = so.create(dev)
        held = uid_objects(admin, dev)
        for i in range(jobs):
            last = i == jobs - 1
            syncs = [so.wait_sync(waits_for)]
            if last:
                syncs += [user_fence(BATCH_VA + FENCE, 1), so.signal_sync(done)]
            dev.exec(gpu.queue, batch, syncs=syncs)
        assert uid_objects(admin, dev) == held + jobs  # a job not done is an object
        so.sw_sync_inc(dev, timeline, 1)
        os.close(timeline)
        other.version()
        assert gpu.cpu.read_u64(FENCE) == 0, "the backlog ran to its end before the call"
        assert not signalled(dev, [done])
        dev.exec_queue_destroy(gpu.queue)  # halted mid-backlog
        so.wait(dev, [done], timeout_nsec=so.deadline_in(WAIT / 1e9))
        assert uid_objects(admin, dev) == held - 1  # the jobs, and the queue itself
    gpu.close()


def test_a_backlog_of_short_jobs_runs_in_order(dev: Device) -> None:
    """The jobs of a backlog let go at once still run one after the other, in
    submission order: each adds one, and the last one's user fence sees them all."""
    jobs = 300
    gpu = Gpu(dev)
    counter = BATCH_VA + 0x20
    batch = gpu.place(Batch().raw(*([0] * 900)).atomic_inc(counter).end())
    check = gpu.place(Batch().copy_dword(BATCH_VA + 0x28, counter).end())
    waits_for, timeline = gate(dev)
    for _ in range(jobs):
        dev.exec(gpu.queue, batch, syncs=[so.wait_sync(waits_for)])
    dev.exec(gpu.queue, check, syncs=[user_fence(BATCH_VA + FENCE, 1)])
    so.sw_sync_inc(dev, timeline, 1)
    os.close(timeline)
    gpu.wait(1, timeout=LONG_WAIT)
    assert gpu.cpu.read_u32(0x28) == jobs
    gpu.close()


def test_queued_binds_let_another_client_in(sock: str, dev: Device, other: Device) -> None:
    """Four VMs' 32 binds of 490 MAPs each wait behind one fence. Once it signals,
    another connection's call is answered before any VM's last bind is made: the bind
    queues' workers let the others in between binds. Two VMs destroyed in the middle
    drop the rest of theirs: every last fence signals all the same, and once the VMs
    are gone the uid holds what it held before."""
    with Device.open(sock, role="admin") as admin:
        bo = dev.gem_create(2 << 20)
        waits_for, timeline = gate(dev)
        lasts = [so.create(dev) for _ in range(4)]
        held = uid_objects(admin, dev)
        vms = [dev.vm_create() for _ in range(4)]
        for vm, last in zip(vms, lasts, strict=True):
            for b in range(32):
                ops = [
                    m.DrmXeVmBindOp(
                        obj=bo, range=2 << 20, addr=(1 << 32) + ((b * 490 + j) << 21),
                        op=DRM_XE_VM_BIND_OP_MAP,
                    )
                    for j in range(490)
                ]  # fmt: skip
                syncs = [so.wait_sync(waits_for)]
                if b == 31:
                    syncs.append(so.signal_sync(last))
                dev.vm_bind_ops(vm, ops, syncs=syncs)
        so.sw_sync_inc(dev, timeline, 1)
        os.close(timeline)
        other.version()
        assert not signalled(dev, lasts), "the binds were all made before the call"
        dev.vm_destroy(vms[0])
        dev.vm_destroy(vms[1])
        deadline = so.deadline_in(LONG_WAIT / 1e9)
        so.wait(dev, lasts, timeout_nsec=deadline, wait_all=True)
        dev.vm_destroy(vms[2])
        dev.vm_destroy(vms[3])
        assert uid_objects(admin, dev) == held


def test_math_alu_words_count_toward_the_turn(dev: Device) -> None:
    """A batch of 960 MI_MATHs of 256 ALU words (960 instructions: under a turn if an
    MI_MATH counted one) on one queue, and a short batch on another, both let go by one
    fence. The short one waits for the long one to start (a semaphore), then copies the
    long one's end-of-math mark: it is not there yet, since the ALU words count toward
    the long batch's turn and it lets the short one run in the middle. The long batch's
    sums are still right."""
    gpu = Gpu(dev)
    started, math_done, seen, total = (BATCH_VA + off for off in (0x20, 0x24, 0x28, 0x30))
    maths = 960
    math = [MATH_256, *(ADD_R1_TO_R0 * 64)]
    code = (
        Batch()
        .raw(LRI | 3, GPR + 0, 0, GPR + 8, 1)  # R0 = 0, R1 = 1
        .store_dword(started, 1)
        .raw(*(math * maths))
        .store_dword(math_done, 1)
        .raw(SRM, GPR + 0, total & 0xFFFF_FFFF, total >> 32)
        .end()
        .tobytes()
    )
    long_bo = dev.gem_create(LONG_BO_SIZE)
    dev.vm_bind(gpu.vm, long_bo, LONG_VA)
    with dev.mmap_bo(long_bo) as mapped:
        mapped[0 : len(code)] = code
    long_batch = LONG_VA
    short_batch = gpu.place(
        Batch()
        .raw(SEMAPHORE_WAIT_EQ, 1, started & 0xFFFF_FFFF, started >> 32)
        .copy_dword(seen, math_done)
        .end()
    )
    other_queue = dev.exec_queue_create(gpu.vm)
    waits_for, timeline = gate(dev)
    long_done, short_done = so.create(dev), so.create(dev)
    dev.exec(gpu.queue, long_batch, syncs=[so.wait_sync(waits_for), so.signal_sync(long_done)])
    dev.exec(other_queue, short_batch, syncs=[so.wait_sync(waits_for), so.signal_sync(short_done)])
    so.sw_sync_inc(dev, timeline, 1)
    os.close(timeline)
    deadline = so.deadline_in(LONG_WAIT / 1e9)
    so.wait(dev, [long_done, short_done], timeout_nsec=deadline, wait_all=True)
    assert gpu.cpu.read_u32(0x28) == 0, "the long batch's MI_MATHs ran without a turn"
    assert gpu.cpu.read_u32(0x24) == 1
    assert gpu.cpu.read_u32(0x30) == maths * 64
    gpu.close()
