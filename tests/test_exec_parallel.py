"""Parallel submission (an exec queue of width above 1, xe's multi-LRC queues), through a
real daemon whose device has four video decode and two video enhance engines: which
queues EXEC_QUEUE_CREATE makes, what a parallel EXEC must carry, and that every lane's
batch runs."""

from __future__ import annotations

from collections.abc import Iterator
from errno import ECANCELED, EFAULT, EINVAL
from typing import Any

import pytest
from conftest import baseline, serving
from helpers import BATCH_VA, FENCE, Gpu, errno_of
from test_exec import create_queue, eci, raw_exec
from test_lifecycle import wait_for_baseline

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols.constants import PAGE_SIZE, EngineClass

VCS, VECS = EngineClass.VIDEO_DECODE, EngineClass.VIDEO_ENHANCE
DATA_VA = 0x2_0000_0000
UNBOUND_VA = 0x7_0000_0000
DEVICE = """
[device.engines]
render = 1
copy = 1
video_decode = 4
video_enhance = 2
compute = 2
"""


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with that device for the module (each test opens a file of its own)."""
    with serving(tmp_path_factory.mktemp("video-daemon"), DEVICE) as proc:
        yield proc


@pytest.fixture
def vgpu(video: DaemonProcess) -> Iterator[Gpu]:
    with Device.open(video.socket_path) as dev:
        yield Gpu(dev)


def lanes(engine_class: int, *instances: int) -> tuple[Any, ...]:
    return tuple(eci(engine_class, i) for i in instances)


# --- EXEC_QUEUE_CREATE -------------------------------------------------------------------


@pytest.mark.parametrize(
    "engine_class,width,placements,instances",
    [
        (VCS, 2, 1, (0, 1)),
        (VCS, 4, 1, (0, 1, 2, 3)),
        (VCS, 2, 1, (2, 3)),
        (VECS, 2, 1, (0, 1)),
        # two placements of two lanes: lane i is instances[j * width + i]
        (VCS, 2, 2, (0, 1, 2, 3)),
        (VCS, 2, 2, (2, 3, 0, 1)),
    ],
    ids=["vcs-2", "vcs-4", "vcs-2-from-2", "vecs-2", "vcs-2x2", "vcs-2x2-swapped"],
)
def test_parallel_queue_on_contiguous_lanes_of_a_multi_lrc_class(
    vgpu: Gpu, engine_class: int, width: int, placements: int, instances: tuple[int, ...]
) -> None:
    """A video class (xe's multi-LRC classes) takes a parallel queue whose lanes' engines
    each follow the previous lane's."""
    queue = create_queue(
        vgpu.dev,
        vm_id=vgpu.vm,
        width=width,
        num_placements=placements,
        instances=lanes(engine_class, *instances),
    )
    assert queue > vgpu.queue


@pytest.mark.parametrize(
    "engine_class,width,placements,instances",
    [
        (VCS, 2, 1, (1, 0)),  # lane 1 below lane 0
        (VCS, 2, 1, (0, 2)),  # a gap between the lanes
        (VCS, 3, 1, (0, 1, 1)),
        (VCS, 2, 2, (0, 2, 1, 3)),  # lane 0 is {0, 1}, lane 1 {2, 3}: not one up
        (VCS, 2, 1, (3, 4)),  # no instance 4
        (EngineClass.COMPUTE, 2, 1, (0, 1)),  # no multi-LRC on compute
        (EngineClass.RENDER, 1, 2, (0, 1)),  # a virtual queue naming a missing engine
    ],
    ids=["descending", "gap", "repeated", "2x2-interleaved", "no-engine", "compute", "no-rcs1"],
)
def test_parallel_queue_refused_where_xe_refuses_it(
    vgpu: Gpu, engine_class: int, width: int, placements: int, instances: tuple[int, ...]
) -> None:
    """Lanes not side by side, an engine the device lacks, or a class without multi-LRC
    (render, copy, compute) is EINVAL, as calc_validate_logical_mask refuses it."""
    err = errno_of(
        create_queue,
        vgpu.dev,
        vm_id=vgpu.vm,
        width=width,
        num_placements=placements,
        instances=lanes(engine_class, *instances),
    )
    assert err == EINVAL


def test_parallel_queue_lanes_of_one_class_and_gt(vgpu: Gpu) -> None:
    """A lane of another class, or on another GT, is EINVAL."""
    mixed = (eci(VCS, 0), eci(VECS, 1))
    assert errno_of(create_queue, vgpu.dev, vm_id=vgpu.vm, width=2, instances=mixed) == EINVAL
    other_gt = (eci(VCS, 0), eci(VCS, 1, gt=1))
    assert errno_of(create_queue, vgpu.dev, vm_id=vgpu.vm, width=2, instances=other_gt) == EINVAL


# --- EXEC on a parallel queue -----------------------------------------------------------------


@pytest.fixture
def data(vgpu: Gpu) -> Iterator[Any]:
    bo = vgpu.dev.gem_create(4 * PAGE_SIZE)
    vgpu.dev.vm_bind(vgpu.vm, bo, DATA_VA)
    cpu = vgpu.dev.mmap_bo(bo)
    yield cpu
    cpu.close()


def run_parallel(gpu: Gpu, queue: int, batches: list[Batch], seq: int) -> None:
    """EXEC one batch a lane with a user fence of value `seq`; wait for it."""
    addresses = [gpu.place(batch) for batch in batches]
    gpu.dev.exec(queue, addresses, syncs=[user_fence(BATCH_VA + FENCE, seq)])
    gpu.wait(seq)


@pytest.mark.parametrize("width", [2, 4])
def test_every_lane_runs_its_own_batch(vgpu: Gpu, data: Any, width: int) -> None:
    """A parallel EXEC runs each lane's batch (each stores its own value); the job's
    fence comes once all have run, and the next job runs after it."""
    queue = vgpu.dev.exec_queue_create(vgpu.vm, VCS, width=width)
    for round_ in (1, 2):
        stores = [
            Batch().store_dword(DATA_VA + 8 * lane, 100 * round_ + lane).end()
            for lane in range(width)
        ]
        run_parallel(vgpu, queue, stores, round_)
        assert [data.read_u64(8 * lane) & 0xFFFF_FFFF for lane in range(width)] == [
            100 * round_ + lane for lane in range(width)
        ]


def test_parallel_exec_needs_one_batch_a_lane(vgpu: Gpu) -> None:
    """num_batch_buffer must be the queue's width (or 0): EINVAL otherwise; addresses on a
    queue of width 1 are EINVAL."""
    queue = vgpu.dev.exec_queue_create(vgpu.vm, VCS, width=2)
    end = vgpu.place(Batch().end())
    assert errno_of(vgpu.dev.exec, queue, end) == EINVAL  # one batch
    assert errno_of(vgpu.dev.exec, queue, [end] * 3) == EINVAL
    assert errno_of(vgpu.dev.exec, vgpu.queue, [end, end]) == EINVAL  # width 1
    err = errno_of(raw_exec, vgpu.dev, exec_queue_id=vgpu.queue, address=end, addresses=(end,))
    assert err == EINVAL
    vgpu.dev.exec(queue, [end, end])


def test_parallel_exec_without_its_addresses_is_efault(vgpu: Gpu) -> None:
    """The right count but no addresses (what the library sends when the array `address`
    points at cannot be read) is EFAULT, after the count and the syncs are checked."""
    queue = vgpu.dev.exec_queue_create(vgpu.vm, VCS, width=2)
    assert errno_of(raw_exec, vgpu.dev, exec_queue_id=queue, num_batch_buffer=2) == EFAULT
    assert errno_of(raw_exec, vgpu.dev, exec_queue_id=queue, num_batch_buffer=3) == EINVAL
    one = (vgpu.place(Batch().end()),)
    err = errno_of(raw_exec, vgpu.dev, exec_queue_id=queue, num_batch_buffer=2, addresses=one)
    assert err == EFAULT


def test_parallel_exec_with_no_batch_signals_after_the_earlier_jobs(vgpu: Gpu) -> None:
    """num_batch_buffer 0 runs nothing; its user fence comes after the queue's earlier work."""
    queue = vgpu.dev.exec_queue_create(vgpu.vm, VCS, width=2)
    end = vgpu.place(Batch().end())
    vgpu.dev.exec(queue, [end, end])
    raw_exec(
        vgpu.dev,
        exec_queue_id=queue,
        num_batch_buffer=0,
        syncs=(user_fence(BATCH_VA + FENCE, 7),),
    )
    vgpu.wait(7)


def test_a_faulting_lane_bans_the_queue(vgpu: Gpu, data: Any) -> None:
    """A lane whose batch faults bans the whole queue (the fence is still written); the
    next EXEC is ECANCELED."""
    queue = vgpu.dev.exec_queue_create(vgpu.vm, VCS, width=2)
    good = Batch().store_dword(DATA_VA, 0x5A5A).end()
    bad = Batch().store_dword(UNBOUND_VA, 1).end()
    run_parallel(vgpu, queue, [good, bad], 1)
    assert data.read_u64(0) & 0xFFFF_FFFF == 0x5A5A
    assert vgpu.banned_queues() == [queue]
    assert errno_of(vgpu.dev.exec, queue, [vgpu.place(Batch().end())] * 2) == ECANCELED


def test_parallel_queues_leave_nothing_behind(video: DaemonProcess) -> None:
    """Parallel queues with jobs in flight, left to the file's close, are all released."""
    before = baseline(video)
    with Device.open(video.socket_path) as dev:
        gpu = Gpu(dev)
        for _ in range(3):
            queue = dev.exec_queue_create(gpu.vm, VECS, width=2)
            end = gpu.place(Batch().end())
            dev.exec(queue, [end, end])
        gpu.wait(gpu.submit(Batch().end()))
    assert wait_for_baseline(video, before) == before
