"""The command streamer, its faults and WAIT_USER_FENCE, through real daemons: what happens
to a batch once EXEC has accepted it. These tests watch the work itself (the stores it
makes, the ban a fault brings, the fence a waiter sees), so they live apart from
test_exec.py's checks of the queue and EXEC arguments.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from errno import ECANCELED, EFAULT, EINVAL, EIO, ENOENT, ETIME
from typing import Any

import pytest
from conftest import baseline, spawn_client
from helpers import BATCH_VA, FENCE, WAIT, Gpu, errno_of

from clients import Batch, Device, Mapping, XeError
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_UFENCE_WAIT_FLAG_ABSTIME,
    MI_ATOMIC,
    MI_NOOP,
    PAGE_SIZE,
    UfenceOp,
)

LONG_MAX = (1 << 63) - 1
DATA_VA = 0x2_0000_0000
SRC_VA = 0x3_0000_0000
UNBOUND_VA = 0x7_0000_0000


def mapped_bo(dev: Device, size: int) -> tuple[int, Mapping]:
    bo = dev.gem_create(size)
    return bo, dev.mmap_bo(bo)


def raw_wait(dev: Device, **fields: Any) -> int:
    """WAIT_USER_FENCE as sent: `addr` is a user address already (no translation)."""
    reply = dev.ioctl(Op.XE_WAIT_USER_FENCE, m.DrmXeWaitUserFence(**fields))
    left: int = reply.timeout
    return left


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


def test_cs_store_to_a_canonical_address(gpu: Gpu) -> None:
    """An address with its top bit's sign extension above the VM's 48 bits (the
    canonical form IGT xe_vm writes: 0xffff_8000_0000_0004) is the 48-bit address."""
    high = 0x8000_0000_0000
    bo, cpu = mapped_bo(gpu.dev, PAGE_SIZE)
    gpu.dev.vm_bind(gpu.vm, bo, high)
    gpu.run(Batch().store_dword(0xFFFF_0000_0000_0000 | high | 4, 0xABCD).end())
    assert cpu.read_u64(0) >> 32 == 0xABCD
    cpu.close()


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


@pytest.mark.parametrize(
    "op,old,operand,new",
    [
        (0x01, 0b1100, 0b1010, 0b1000),  # AND
        (0x02, 0b1100, 0b1010, 0b1110),  # OR
        (0x03, 0b1100, 0b1010, 0b0110),  # XOR
        (0x04, 7, 9, 9),  # MOVE
        (0x06, 0, None, 0xFFFF_FFFF),  # DEC, wrapping
        (0x08, 10, 3, 7),  # SUB
        (0x09, 3, 10, 7),  # RSUB
        (0x0A, 0xFFFF_FFFF, 1, 1),  # IMAX: -1 < 1
        (0x0B, 0xFFFF_FFFF, 1, 0xFFFF_FFFF),  # IMIN
        (0x0C, 0xFFFF_FFFF, 1, 0xFFFF_FFFF),  # UMAX
        (0x0D, 0xFFFF_FFFF, 1, 1),  # UMIN
    ],
    ids=["and", "or", "xor", "move", "dec", "sub", "rsub", "imax", "imin", "umax", "umin"],
)
def test_cs_atomic_operations_on_a_dword(
    gpu: Gpu, data: Mapping, op: int, old: int, operand: int | None, new: int
) -> None:
    """Each MI_ATOMIC operation on a dword (signed for IMAX and IMIN), the next untouched."""
    data.write_u32(0x50, old)
    data.write_u32(0x54, 0x5A5A_5A5A)
    gpu.run(Batch().atomic(DATA_VA + 0x50, op, operand).end())
    assert (data.read_u32(0x50), data.read_u32(0x54)) == (new, 0x5A5A_5A5A)


def test_cs_atomic_operations_on_a_qword(gpu: Gpu, data: Mapping) -> None:
    """The qword forms take a two-dword operand: DEC borrows from the high dword, ADD
    carries into it, IMIN compares 64-bit signed."""
    data.write_u64(0x60, 0x1_0000_0000)
    data.write_u64(0x68, 0xFFFF_FFFF)
    data.write_u64(0x70, 5)
    batch = (
        Batch()
        .atomic(DATA_VA + 0x60, 0x06, qword=True)
        .atomic(DATA_VA + 0x68, 0x07, 1, qword=True)
        .atomic(DATA_VA + 0x70, 0x0B, 0xFFFF_FFFF_FFFF_FFFE, qword=True)
    )
    gpu.run(batch.end())
    assert data.read_u64(0x60) == 0xFFFF_FFFF
    assert data.read_u64(0x68) == 0x1_0000_0000
    assert data.read_u64(0x70) == 0xFFFF_FFFF_FFFF_FFFE


def test_cs_atomic_without_its_operand_is_a_bad_instruction(gpu: Gpu) -> None:
    """An operation that needs an operand, given none inline (it would come from the
    GPRs, which are not emulated), or the 2-qword forms: the queue is banned."""
    for header_op in (0x07, 0x47):  # ADD from the GPRs; a 16-byte form
        queue = gpu.dev.exec_queue_create(gpu.vm)
        gpu.wait(gpu.submit(Batch().raw(MI_ATOMIC | header_op << 8 | 1, DATA_VA, 0).end(), queue))
    assert len(gpu.banned_queues()) == 2


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
