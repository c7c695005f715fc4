"""Hw engine groups, through a real daemon: a page-fault-mode job does not run while a
dma-fence job of its group (render with compute, copy, the video classes) does, and a
running one is suspended at its next preemption point until they are done, as xe's
hw engine group modes have it. Other groups, and long-running VMs without faults
(preempt-fence mode), are not held."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from helpers import BATCH_VA, FENCE, SPIN_COUNT, Gpu, end_spinner, start_spinner

from clients import Batch, Device
from clients.daemon import DaemonProcess
from protocols.constants import (
    DRM_XE_VM_CREATE_FLAG_FAULT_MODE,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    EngineClass,
)

LR = DRM_XE_VM_CREATE_FLAG_LR_MODE
FAULT = LR | DRM_XE_VM_CREATE_FLAG_FAULT_MODE
STORED = 0x58  # where a store lands in a Gpu's batch BO (past the spinner's marks)
HELD = 0.3  # s: how long a held job is watched not running (never a bound on speed)


@pytest.fixture
def device(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    """A daemon of the test's own: no other test's job is running in its groups."""
    dev = Device.open(fresh_daemon.socket_path)
    yield dev
    dev.close()


def still(read: Callable[[], int], quiet: float = 0.1) -> int:
    """The value `read` gives once it has held still for `quiet` seconds (a turn the
    spinner had under way when it was suspended ends first, however late it runs)."""
    deadline = time.monotonic() + 10
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the faulting spinner was never suspended"
        time.sleep(0.005)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def store(gpu: Gpu, queue: int) -> int:
    """Submit a store of 0xBEEF at STORED on `queue`; its user-fence value."""
    return gpu.submit(Batch().store_dword(BATCH_VA + STORED, 0xBEEF).end(), queue)


def held(gpu: Gpu, seq: int) -> bool:
    """The job of `seq` has not run (nor signalled) for HELD seconds."""
    end = time.monotonic() + HELD
    while time.monotonic() < end:
        if gpu.cpu.read_u32(STORED) or gpu.cpu.read_u64(FENCE) == seq:
            return False
        time.sleep(0.005)
    return True


def test_a_faulting_job_waits_for_the_dma_fence_jobs_of_its_group(device: Device) -> None:
    """xe_exec_mix_modes' spinner-interrupted-dma-fence: a dma-fence spinner on render,
    then a page-fault-mode VM's store on compute (the same group): the store runs only
    once the spinner has ended."""
    fence_mode, faulting = Gpu(device), Gpu(device, FAULT)
    spin = start_spinner(fence_mode, fence_mode.queue)
    seq = store(faulting, device.exec_queue_create(faulting.vm, EngineClass.COMPUTE))
    assert held(faulting, seq)
    end_spinner(fence_mode, spin)
    faulting.wait(seq)
    assert faulting.cpu.read_u32(STORED) == 0xBEEF


@pytest.mark.parametrize(
    "flags,engine",
    [
        (FAULT, EngineClass.COPY),  # another group
        (LR, EngineClass.COMPUTE),  # preempt-fence mode: in no group
        (0, EngineClass.COMPUTE),  # a dma-fence job beside another
    ],
)
def test_jobs_not_held(device: Device, flags: int, engine: EngineClass) -> None:
    fence_mode, other = Gpu(device), Gpu(device, flags)
    spin = start_spinner(fence_mode, fence_mode.queue)
    seq = store(other, device.exec_queue_create(other.vm, engine))
    other.wait(seq)  # while the spinner spins
    assert other.cpu.read_u32(STORED) == 0xBEEF
    assert fence_mode.cpu.read_u64(FENCE) != spin
    end_spinner(fence_mode, spin)


def test_a_running_faulting_job_is_suspended_and_resumed(device: Device) -> None:
    """xe_exec_mix_modes' spinner-interrupted-lr, watched closer: a page-fault-mode
    spinner stops turning while a dma-fence job of its group runs, and turns again
    once it is done."""
    faulting, fence_mode = Gpu(device, FAULT), Gpu(device)
    lr_spin = start_spinner(faulting, faulting.queue, count=True)
    compute = device.exec_queue_create(fence_mode.vm, EngineClass.COMPUTE)
    spin = start_spinner(fence_mode, compute)
    turns = still(lambda: faulting.cpu.read_u32(SPIN_COUNT))  # its turn under way ends
    time.sleep(HELD)
    assert faulting.cpu.read_u32(SPIN_COUNT) == turns  # suspended
    end_spinner(fence_mode, spin)
    deadline = time.monotonic() + 10
    while faulting.cpu.read_u32(SPIN_COUNT) == turns:  # resumed
        assert time.monotonic() < deadline, "the faulting spinner was never resumed"
        time.sleep(0.001)
    end_spinner(faulting, lr_spin)
