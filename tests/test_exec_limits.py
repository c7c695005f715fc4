"""EXEC's bounds on work not done yet: MAX_PENDING_JOBS on one queue, and
MAX_PENDING_JOBS_PER_FILE over all the queues of a file (without it 16384 queues of
4096 jobs, about 460 bytes of the daemon each, would be 30 GB). Past either, EXEC is
EAGAIN; a queue destroyed with jobs waiting gives its count back.
"""

from __future__ import annotations

from errno import EAGAIN
from typing import Any

from conftest import baseline
from helpers import errno_of
from test_lifecycle import wait_for_baseline

from clients import Device, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import PAGE_SIZE
from tests.test_syncobj import stall
from tests.test_userptr import END_REPLACED, invalidate
from xed.device.exec_queue import MAX_PENDING_JOBS, MAX_PENDING_JOBS_PER_FILE
from xed.log import RATELIMIT_BURST

UNBOUND_VA = 0x7_0000_0000  # nothing is bound there: a batch there faults


def sync_only(dev: Device, queue: int, *syncs: m.DrmXeSync) -> None:
    """An EXEC of no batch: a job that signals its syncs after the queue's earlier work
    and its waits."""
    dev.ioctl(Op.XE_EXEC, m.DrmXeExec(exec_queue_id=queue, num_batch_buffer=0, syncs=syncs))


def test_pending_jobs_are_bounded_per_queue_and_per_file(fresh_daemon: DaemonProcess) -> None:
    """Jobs held back by a fence fill a queue to MAX_PENDING_JOBS (then EAGAIN there) and
    the file to MAX_PENDING_JOBS_PER_FILE (then EAGAIN on an idle queue too); destroying
    a full queue makes room; once the fence signals every job runs and nothing is left."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        rig, gate = stall(dev)
        wait = syncobj.wait_sync(gate)
        queues = [
            dev.exec_queue_create(rig.vm)
            for _ in range(MAX_PENDING_JOBS_PER_FILE // MAX_PENDING_JOBS + 1)
        ]
        room = MAX_PENDING_JOBS_PER_FILE - 1  # the rig's stalled job counts too
        for n, queue in enumerate(queues[:-1]):
            for _ in range(min(MAX_PENDING_JOBS, room)):
                sync_only(dev, queue, wait)
                room -= 1
            if n == 0:  # the queue's own bound, before the file's
                assert errno_of(sync_only, dev, queue, wait) == EAGAIN
        assert room == 0
        assert errno_of(sync_only, dev, queues[-1], wait) == EAGAIN  # the file's
        dev.exec_queue_destroy(queues.pop(0))  # its jobs go, and their count
        sync_only(dev, queues[-1], wait)
        invalidate(dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
        last = syncobj.create(dev)
        sync_only(dev, queues[-1], syncobj.signal_sync(last))
        assert syncobj.wait(dev, [last]) == 0  # behind every job of that queue
        rig.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_warnings_a_client_causes_are_rate_limited_per_file(make_daemon: Any) -> None:
    """A client can fault and ban queues as fast as it can make them: each ban still
    counts (ADMIN_STATUS bans) and reaches the client, but the daemon's warning of it is
    rate-limited per file (10 in 5 s, as the kernel's ratelimited messages), so the
    client cannot make the daemon write without end."""
    bans = 40
    daemon = make_daemon()
    with Device.open(daemon.socket_path) as dev:
        vm, done = dev.vm_create(), syncobj.create(dev)
        for _ in range(bans):
            queue = dev.exec_queue_create(vm)
            dev.exec(queue, UNBOUND_VA, syncs=[syncobj.signal_sync(done)])  # faults
            syncobj.wait(dev, [done])
            assert dev.exec_queue_banned(queue)
            dev.exec_queue_destroy(queue)
        with Device.open(daemon.socket_path, role="admin") as adm:
            assert adm.admin_status().bans == bans
    logged = daemon.log_text().count('"event": "exec_queue_banned"')
    assert RATELIMIT_BURST <= logged < bans
