"""A GT reset (ADMIN_GT_RESET, what debugfs gtN/force_reset asks), through a real daemon:
a queue with a job running is banned as xe's GuC submission bans it, and every other
queue goes on, with the jobs it had not started yet."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from errno import ECANCELED, EINVAL, EIO
from pathlib import Path

import pytest
from helpers import BATCH_VA, FENCE, Gpu, errno_of, start_spinner

from clients import Batch, Device, syncobj
from clients.daemon import DaemonProcess
from protocols.constants import DRM_XE_VM_CREATE_FLAG_LR_MODE, EngineClass

STORED = 0x58  # where a store lands in a Gpu's batch BO


@pytest.fixture
def pair(fresh_daemon: DaemonProcess) -> Iterator[tuple[Device, Device]]:
    """A drm file and the admin, on a daemon of the test's own."""
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path, role="admin") as admin,
    ):
        yield dev, admin


def test_a_reset_bans_the_queue_with_a_job_running(pair: tuple[Device, Device]) -> None:
    dev, admin = pair
    spinning, idle = Gpu(dev), Gpu(dev)
    seq = start_spinner(spinning)
    assert admin.admin_gt_reset(0) == 1
    spinning.wait(seq)  # the job ended as a GPU fault: its fence comes (a dma-fence VM)
    spinning.wait(seq)  # the ban event, sent beside the replies, is out by now
    events = spinning.ban_events(spinning.queue)
    assert events and events[0].reason == "GT reset: the job was running"
    assert errno_of(dev.exec, spinning.queue, spinning.place(Batch().end())) == ECANCELED
    idle.run(Batch().store_dword(BATCH_VA + STORED, 5).end())  # the others go on
    assert idle.cpu.read_u32(STORED) == 5
    assert spinning.cpu.read_u64(FENCE) == seq


def test_a_job_not_started_is_not_banned(pair: tuple[Device, Device]) -> None:
    """A job waiting for its in-fence (the spinner's) when the GT resets is not banned:
    it runs once the spinner's job has ended with the reset."""
    dev, admin = pair
    spinning, waiting = Gpu(dev), Gpu(dev)
    gate, done = syncobj.create(dev), syncobj.create(dev)
    seq = start_spinner(spinning, syncs=[syncobj.signal_sync(gate)])
    store = waiting.place(Batch().store_dword(BATCH_VA + STORED, 9).end())
    dev.exec(waiting.queue, store, syncs=[syncobj.wait_sync(gate), syncobj.signal_sync(done)])
    assert admin.admin_gt_reset(0) == 1  # the spinner's queue only
    spinning.wait(seq)
    syncobj.wait(dev, [done], syncobj.deadline_in(10))
    assert waiting.cpu.read_u32(STORED) == 9
    assert not waiting.ban_events(waiting.queue)


def test_a_compute_queue_on_the_gt_is_reset_too(pair: tuple[Device, Device]) -> None:
    dev, admin = pair
    gpu = Gpu(dev)
    compute = dev.exec_queue_create(gpu.vm, EngineClass.COMPUTE)
    seq = start_spinner(gpu, compute)
    assert admin.admin_gt_reset(0) == 1
    gpu.wait(seq)
    gpu.wait(seq)
    assert gpu.ban_events(compute)


def test_a_gt_that_is_not_there_is_einval(pair: tuple[Device, Device]) -> None:
    _, admin = pair
    assert errno_of(admin.admin_gt_reset, 7) == EINVAL


def xec_run_sh(socket_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(socket_path), "--"]
    return subprocess.run([*cmd, "sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_a_program_resets_the_gt_through_debugfs(fresh_daemon: DaemonProcess) -> None:
    """Under `xec run`, writing "1" to debugfs dri/0/gt0/force_reset resets the GT, as
    IGT's xe_force_gt_reset does; opening it without writing (IGT's probe) does not."""
    path = fresh_daemon.socket_path
    reset = "/sys/kernel/debug/dri/0/gt0/force_reset"
    with Device.open(path) as dev:
        gpu = Gpu(dev)
        seq = start_spinner(gpu)
        probe = xec_run_sh(path, f": > {reset}_sync && cat {reset} && test -f {reset}")
        assert probe.returncode == 0, probe.stderr
        assert gpu.cpu.read_u64(FENCE) != seq and not gpu.banned_queues()
        done = xec_run_sh(path, f"echo 1 > {reset}")
        assert done.returncode == 0, done.stderr
        gpu.wait(seq)
        gpu.wait(seq)
        events = gpu.ban_events(gpu.queue)  # the reset's, not the job timeout's
        assert [e.reason for e in events] == ["GT reset: the job was running"]


def test_xed_ctl_gt_reset(fresh_daemon: DaemonProcess) -> None:
    """`xed ctl gt-reset` says how many queues it banned; a GT not there is refused."""
    path = str(fresh_daemon.socket_path)
    ctl = [sys.executable, "-m", "xed", "ctl", "--socket", path, "gt-reset"]
    with Device.open(fresh_daemon.socket_path) as dev:
        gpu = Gpu(dev)
        seq = start_spinner(gpu)
        done = subprocess.run([*ctl, "--json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"gt": 0, "banned": 1}
        gpu.wait(seq)
    refused = subprocess.run([*ctl, "--gt", "3"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no GT 3" in refused.stderr


def test_jobs_behind_a_reset_lr_job_never_write_their_fences(
    pair: tuple[Device, Device],
) -> None:
    """On a long-running VM the reset job, and a job queued behind it that the banned
    queue drops, never write their user fences (the ring's stores): a wait on the queue
    answers EIO, as xe's."""
    dev, admin = pair
    gpu = Gpu(dev, DRM_XE_VM_CREATE_FLAG_LR_MODE)
    seq = start_spinner(gpu)
    behind = gpu.submit(Batch().store_dword(BATCH_VA + STORED, 4).end())
    assert admin.admin_gt_reset(0) == 1
    for value in (seq, behind):
        assert errno_of(gpu.wait, value, gpu.queue) == EIO
    assert gpu.cpu.read_u64(FENCE) == 0 and gpu.cpu.read_u32(STORED) == 0
