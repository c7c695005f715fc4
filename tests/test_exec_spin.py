"""Batches that jump and loop, through real daemons: MI_BATCH_BUFFER_START (a jump, or a
second-level call that returns), MI_CONDITIONAL_BATCH_BUFFER_END and MI_ARB_CHECK, the
instructions of IGT's spinners: a batch that polls a dword until the CPU writes it, and
the job timeout that bans a queue whose batch never ends (none on an LR-mode VM)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import BATCH_VA, FENCE, WAIT, Gpu, errno_of

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols.constants import DRM_XE_VM_CREATE_FLAG_LR_MODE, MI_BATCH_BUFFER_START, PAGE_SIZE

DATA_VA = 0x2_0000_0000
START, END = 0x40, 0x48  # the spinner's marks in the data BO


@pytest.fixture
def data(gpu: Gpu) -> Iterator[Any]:
    bo = gpu.dev.gem_create(PAGE_SIZE)
    gpu.dev.vm_bind(gpu.vm, bo, DATA_VA)
    cpu = gpu.dev.mmap_bo(bo)
    yield cpu
    cpu.close()


def place_spinner(gpu: Gpu) -> int:
    """The spinner in one piece: START mark, then the loop, then the jump back."""
    base = gpu.place(Batch().raw(*([0] * 32)))  # reserve room, then write it whole
    loop = base + 16
    batch = (
        Batch()
        .store_dword(DATA_VA + START, 0xC0FFEE)
        .arb_check()
        .cond_end(DATA_VA + END, 0, mode=0)
        .batch_start(loop)
    )
    offset = base - BATCH_VA
    gpu.cpu[offset : offset + len(batch)] = batch.tobytes()
    return base


def wait_started(data: Any) -> None:
    deadline = time.monotonic() + 10
    while data.read_u32(START) != 0xC0FFEE:
        assert time.monotonic() < deadline, "the spinner never started"
        time.sleep(0.001)


def test_a_spinner_runs_until_the_cpu_ends_it(gpu: Gpu, data: Any) -> None:
    """The batch loops (its fence does not come) until the CPU writes 0 where it polls."""
    data.write_u32(END, 0xFFFF_FFFF)
    seq = gpu.submit_at(place_spinner(gpu))
    wait_started(data)
    time.sleep(0.2)
    assert gpu.cpu.read_u64(FENCE) != seq  # still spinning
    data.write_u32(END, 0)
    gpu.wait(seq)
    assert not gpu.banned_queues()


@pytest.mark.parametrize(
    "mode,memory,value,goes_on",
    [
        (None, 5, 4, True),  # legacy: on while memory > value
        (None, 4, 4, False),
        (0, 5, 4, True),
        (1, 4, 4, True),
        (1, 3, 4, False),
        (2, 3, 4, True),
        (2, 4, 4, False),
        (3, 4, 4, True),
        (4, 4, 4, True),
        (4, 5, 4, False),
        (5, 5, 4, True),
        (5, 4, 4, False),
    ],
)
def test_conditional_end_compares_as_its_mode_says(
    gpu: Gpu, data: Any, mode: int | None, memory: int, value: int, goes_on: bool
) -> None:
    """The batch goes on past MI_CONDITIONAL_BATCH_BUFFER_END while the comparison holds
    (MAD_GT, GTE, LT, LTE, EQ, NEQ), and ends there otherwise."""
    data.write_u32(0x10, memory)
    batch = Batch().cond_end(DATA_VA + 0x10, value, mode).store_dword(DATA_VA + 0x14, 1).end()
    gpu.run(batch)
    assert data.read_u32(0x14) == int(goes_on)


def test_a_second_level_batch_returns_to_its_caller(gpu: Gpu, data: Any) -> None:
    """A second-level MI_BATCH_BUFFER_START runs the callee to its end, then the caller
    goes on; a plain one jumps for good (what follows it never runs)."""
    callee = gpu.place(Batch().store_dword(DATA_VA + 0x20, 1).end())
    elsewhere = gpu.place(Batch().store_dword(DATA_VA + 0x28, 3).end())
    gpu.run(
        Batch()
        .batch_start(callee, second_level=True)
        .store_dword(DATA_VA + 0x24, 2)
        .batch_start(elsewhere)
        .store_dword(DATA_VA + 0x2C, 4)
        .end()
    )
    assert [data.read_u32(off) for off in (0x20, 0x24, 0x28, 0x2C)] == [1, 2, 3, 0]


def test_a_jump_without_the_ppgtt_bit_is_taken_in_the_vm(gpu: Gpu, data: Any) -> None:
    """xe_exec_store's basic-cond-batch jumps with MI_BATCH_BUFFER_START | 1 alone: a
    user's batch has its VM for its only address space, so the jump lands there."""
    target = gpu.place(Batch().store_dword(DATA_VA + 0x30, 5).end())
    gpu.run(Batch().raw(MI_BATCH_BUFFER_START, target & 0xFFFF_FFFF, target >> 32))
    assert data.read_u32(0x30) == 5


def test_calls_nested_too_deep_fault(gpu: Gpu) -> None:
    """A second-level batch calling another is more than the engines nest: a fault."""
    inner = gpu.place(Batch().end())
    middle = gpu.place(Batch().batch_start(inner, second_level=True).end())
    gpu.wait(gpu.submit(Batch().batch_start(middle, second_level=True).end()))
    assert gpu.ban_events(gpu.queue)[0].reason == "batch buffers nested too deep"


@pytest.fixture
def quick(make_daemon: Any) -> DaemonProcess:
    daemon: DaemonProcess = make_daemon("[device]\njob_timeout_ms = 200\n")
    return daemon


def test_a_batch_past_the_job_timeout_bans_its_queue(quick: DaemonProcess) -> None:
    """A spinner nobody ends is a hang: past [device] job_timeout_ms its queue is
    banned (the fence comes all the same), and the next EXEC is ECANCELED."""
    with Device.open(quick.socket_path) as dev:
        gpu = Gpu(dev)
        bo = dev.gem_create(PAGE_SIZE)
        dev.vm_bind(gpu.vm, bo, DATA_VA)
        with dev.mmap_bo(bo) as data:
            data.write_u32(END, 0xFFFF_FFFF)
            gpu.wait(gpu.submit_at(place_spinner(gpu)))
        (event,) = gpu.ban_events(gpu.queue)
        assert event.reason.startswith("job timeout")
        assert errno_of(dev.exec, gpu.queue, gpu.place(Batch().end())) == 125  # ECANCELED


def test_an_lr_mode_vm_has_no_job_timeout(quick: DaemonProcess) -> None:
    """A long-running VM's job may run as long as it likes: the spinner is still going
    after twice the timeout, and ends when the CPU says."""
    with Device.open(quick.socket_path) as dev:
        gpu = Gpu(dev, DRM_XE_VM_CREATE_FLAG_LR_MODE)
        bo = dev.gem_create(PAGE_SIZE)
        dev.vm_bind(gpu.vm, bo, DATA_VA)
        with dev.mmap_bo(bo) as data:
            data.write_u32(END, 0xFFFF_FFFF)
            fence = user_fence(BATCH_VA + FENCE, 1)
            dev.exec(gpu.queue, place_spinner(gpu), syncs=[fence])
            wait_started(data)
            time.sleep(0.4)
            data.write_u32(END, 0)
            dev.wait_user_fence(gpu.cpu.user_address(FENCE), 1, timeout=WAIT)
        assert not gpu.banned_queues()


# --- registers: MI_LOAD_REGISTER_IMM/_REG, MI_STORE_REGISTER_MEM, MI_MATH, semaphores ---------
CS_MMIO = 1 << 19
GPR = 0x600  # CS_GPR(n) = 0x600 + 8n
LRI = (0x22 << 23) | CS_MMIO
LRR = (0x2A << 23) | CS_MMIO | (1 << 18) | 1
SRM = (0x24 << 23) | CS_MMIO | 2
MATH = 0x1A << 23
SEMAPHORE_WAIT = (0x1C << 23) | (1 << 15) | 2  # polling


def alu(opcode: int, op1: int = 0, op2: int = 0) -> int:
    return opcode << 20 | op1 << 10 | op2


def srm(reg: int, addr: int) -> tuple[int, ...]:
    return (SRM, reg, addr & 0xFFFF_FFFF, addr >> 32)


def test_registers_compute_and_store(gpu: Gpu, data: Any) -> None:
    """GPRs loaded from the batch and from each other, MI_MATH's SUB and AND on them, the
    64-bit result's two halves stored; the context timestamp counts up in a batch."""
    batch = Batch().raw(
        LRI | 3, GPR + 0, 50, GPR + 8, 8,  # R0 = 50, R1 = 8 (two pairs)
        LRR, GPR + 8, GPR + 16,  # R2 = R1
        MATH | 3,
        alu(0x080, 0x20, 0),  # SRCA = R0
        alu(0x080, 0x21, 2),  # SRCB = R2
        alu(0x101),  # ACCU = SRCA - SRCB
        alu(0x180, 3, 0x31),  # R3 = ACCU
        *srm(GPR + 24, DATA_VA + 0x80),  # R3 low
        *srm(GPR + 28, DATA_VA + 0x84),  # R3 high
        LRR, 0x3A8, GPR + 32,  # R4 = CTX_TIMESTAMP
        *srm(GPR + 32, DATA_VA + 0x88),
    ).end()  # fmt: skip
    gpu.run(batch)
    assert (data.read_u32(0x80), data.read_u32(0x84)) == (42, 0)


def test_a_semaphore_waits_for_the_cpu(gpu: Gpu, data: Any) -> None:
    """MI_SEMAPHORE_WAIT (polling, EQ) holds the batch until the dword is what it waits
    for; the store after it lands then."""
    data.write_u32(0x90, 0)
    wait = SEMAPHORE_WAIT | 4 << 12  # SAD_EQ_SDD
    seq = gpu.submit(
        Batch().raw(wait, 7, 0x90, DATA_VA >> 32).store_dword(DATA_VA + 0x94, 1).end()
    )
    time.sleep(0.2)
    assert data.read_u32(0x94) == 0
    data.write_u32(0x90, 7)
    gpu.wait(seq)
    assert data.read_u32(0x94) == 1


def test_a_register_not_emulated_is_a_bad_instruction(gpu: Gpu) -> None:
    """A register outside the GPRs and timestamps, or an absolute (not engine-relative)
    offset: the queue is banned."""
    for batch in (Batch().raw(LRI | 1, 0x2000, 1), Batch().raw(LRI & ~CS_MMIO | 1, GPR, 1)):
        queue = gpu.dev.exec_queue_create(gpu.vm)
        gpu.wait(gpu.submit(batch.end(), queue))
    assert len(gpu.banned_queues()) == 2
