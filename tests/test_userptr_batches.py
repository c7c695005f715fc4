"""Batches at work on host memory bound by MAP_USERPTR: reading and writing it, user fences
in it, and the notifier (free and replace under a userptr, a batch stalled by an
invalidation in progress). These tests run the GPU rather than check ioctl arguments, so
they live apart from test_userptr.py, whose rig, fixtures and helpers they share.

The test process is the application; the daemon is a real process of its own. Host
memory is a real memfd the client library maps and registers.
"""

from __future__ import annotations

import mmap
import threading
import time
from errno import ECANCELED, ETIME

import test_userptr
from conftest import baseline
from test_userptr import (
    DATA_VA,
    END_FREED,
    END_REPLACED,
    MARK,
    START,
    USERPTR_VA,
    WAIT,
    Rig,
    errno_of,
    invalidate,
)

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from clients.host_memory import HostMemory
from protocols.constants import PAGE_SIZE

# test_userptr's fixtures, for this module's tests too
hm, rig = test_userptr.hm, test_userptr.rig

STALLED = 50_000_000  # ns: long enough for the queue to reach the stalled instruction
LONG_BATCH = 1500  # instructions: past the command streamer's first checkpoint, not its second


# --- batches reading and writing host memory -------------------------------------------------


def test_batch_reads_userptr_memory(rig: Rig) -> None:
    """A batch copies from a userptr range into a BO: the BO holds the host memory's bytes."""
    payload = bytes(range(256)) * 16
    rig.hm[PAGE_SIZE : 2 * PAGE_SIZE] = payload
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA + PAGE_SIZE, PAGE_SIZE).end())
    assert rig.data[0:PAGE_SIZE] == payload
    assert rig.data[PAGE_SIZE : PAGE_SIZE + 4] == bytes([MARK]) * 4


def test_batch_writes_userptr_memory(rig: Rig) -> None:
    """store_dword into a userptr range lands in the application's host memory."""
    rig.run(
        Batch()
        .store_dword(USERPTR_VA + 0x10, 0xC0FFEE)
        .store_qword(USERPTR_VA + 3 * PAGE_SIZE + 8, 0x1122_3344_5566_7788)
        .end()
    )
    assert rig.hm.mapping.read_u32(0x10) == 0xC0FFEE
    assert rig.hm.mapping.read_u64(3 * PAGE_SIZE + 8) == 0x1122_3344_5566_7788


def test_batch_copies_bo_into_userptr_across_pages(rig: Rig) -> None:
    """A copy from a BO into a userptr range across a page boundary lands in host memory."""
    rig.data[0:64] = b"0123456789abcdef" * 4
    rig.run(Batch().mem_copy(USERPTR_VA + PAGE_SIZE - 32, DATA_VA, 64).end())
    assert rig.hm[PAGE_SIZE - 32 : PAGE_SIZE + 32] == b"0123456789abcdef" * 4


def test_batch_atomic_on_userptr_memory(rig: Rig) -> None:
    """MI_ATOMIC INC on a userptr dword increments the application's value."""
    rig.hm.mapping.write_u32(0x40, 41)
    rig.run(Batch().atomic_inc(USERPTR_VA + 0x40).end())
    assert rig.hm.mapping.read_u32(0x40) == 42


def test_userptr_bound_at_an_offset_of_host_memory(dev: Device) -> None:
    """MAP_USERPTR of a middle part of host memory maps exactly those bytes at addr."""
    r = Rig(dev, bind_userptr=False)
    try:
        dev.vm_bind_userptr(r.vm, r.hm, 2 * PAGE_SIZE, USERPTR_VA, PAGE_SIZE)
        r.hm[2 * PAGE_SIZE : 2 * PAGE_SIZE + 8] = b"page two"
        r.run(Batch().mem_copy(DATA_VA, USERPTR_VA, 8).store_dword(USERPTR_VA + 8, 7).end())
        assert r.data[0:8] == b"page two"
        assert r.hm.mapping.read_u32(2 * PAGE_SIZE + 8) == 7
        seq = r.submit(Batch().store_dword(USERPTR_VA + PAGE_SIZE, 1).end())
        r.wait(seq)
        r.wait(seq)  # a second blocking wait: the ban event is out before its reply
        assert [e.address for e in r.ban_events()] == [USERPTR_VA + PAGE_SIZE]  # not mapped
    finally:
        r.close()


def test_exec_user_fence_in_host_memory(rig: Rig) -> None:
    """An EXEC user fence at a userptr GPU address is written to host memory and waitable."""
    rig.dev.exec(rig.queue, rig.place(Batch().end()), syncs=[user_fence(USERPTR_VA + 0x100, 77)])
    rig.dev.wait_user_fence(rig.hm.mapping.user_address(0x100), 77, timeout=WAIT)
    assert rig.hm.mapping.read_u64(0x100) == 77


def test_vm_bind_user_fence_in_host_memory(rig: Rig) -> None:
    """A VM_BIND user fence at a host-memory user address is written there."""
    fence = user_fence(rig.hm.mapping.user_address(0x200), 0xFE)
    rig.dev.vm_bind(rig.vm, rig.data_bo, 0x6_0000_0000, syncs=[fence])
    rig.dev.wait_user_fence(rig.hm.mapping.user_address(0x200), 0xFE, timeout=WAIT)
    assert rig.hm.mapping.read_u64(0x200) == 0xFE


def test_wait_user_fence_on_host_memory_written_by_the_cpu(dev: Device, hm: HostMemory) -> None:
    """WAIT_USER_FENCE reads host memory the application wrote itself."""
    hm.mapping.write_u64(0x300, 5)
    dev.wait_user_fence(hm.mapping.user_address(0x300), 5, timeout=0)
    assert errno_of(dev.wait_user_fence, hm.mapping.user_address(0x300), 6, timeout=0) == ETIME


# --- notifiers ---------------------------------------------------------------------------------


def test_replace_under_userptr_batch_reads_new_contents(rig: Rig) -> None:
    """replace() under a userptr: a later batch reads the new contents, not the old."""
    rig.hm[0:PAGE_SIZE] = b"A" * PAGE_SIZE
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA, PAGE_SIZE).end())
    assert rig.data[0:PAGE_SIZE] == b"A" * PAGE_SIZE
    rig.hm.replace(0, b"B" * PAGE_SIZE)
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA, PAGE_SIZE).end())
    assert rig.data[0:PAGE_SIZE] == b"B" * PAGE_SIZE
    assert not rig.ban_events()


def test_replace_then_batch_write_lands_in_host_memory(rig: Rig) -> None:
    """After replace(), a batch store goes to the host memory the application now holds."""
    rig.hm.replace(PAGE_SIZE, bytes(PAGE_SIZE))
    rig.run(Batch().store_dword(USERPTR_VA + PAGE_SIZE + 4, 0xABCD).end())
    assert rig.hm.mapping.read_u32(PAGE_SIZE + 4) == 0xABCD


def test_free_under_userptr_batch_faults_and_never_reads_freed_pages(rig: Rig) -> None:
    """free() under a userptr: a reading batch faults (ban, then ECANCELED) and copies nothing."""
    rig.hm[0 : 2 * PAGE_SIZE] = b"\x11" * (2 * PAGE_SIZE)
    rig.hm.free(PAGE_SIZE, PAGE_SIZE)
    other = rig.dev.exec_queue_create(rig.vm)
    seq = rig.submit(Batch().mem_copy(DATA_VA, USERPTR_VA, 2 * PAGE_SIZE).end())
    rig.wait(seq)
    rig.wait(seq)  # a second blocking wait: the ban event is out before its reply
    events = rig.ban_events()
    assert [e.exec_queue_id for e in events] == [rig.queue]
    assert USERPTR_VA <= events[0].address < USERPTR_VA + 2 * PAGE_SIZE
    assert "freed" in events[0].reason
    assert rig.data[0 : 2 * PAGE_SIZE] == bytes([MARK]) * (2 * PAGE_SIZE)  # nothing copied
    assert errno_of(rig.dev.exec, rig.queue, rig.place(Batch().end())) == ECANCELED
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA, PAGE_SIZE).end(), other)
    assert rig.data[0:PAGE_SIZE] == b"\x11" * PAGE_SIZE


def test_free_under_userptr_batch_store_faults(rig: Rig) -> None:
    """free() under a userptr: a batch storing there faults, and the freed page stays zero."""
    rig.hm.free(0, PAGE_SIZE)
    seq = rig.submit(Batch().store_dword(USERPTR_VA + 8, 0x5EED).end())
    rig.wait(seq)
    rig.wait(seq)
    events = rig.ban_events()
    assert [e.exec_queue_id for e in events] == [rig.queue]
    assert events[0].address == USERPTR_VA + 8
    assert rig.hm.mapping.read_u32(8) == 0
    assert errno_of(rig.dev.exec, rig.queue, rig.place(Batch().end())) == ECANCELED


def test_batch_stalls_while_invalidation_in_progress(rig: Rig) -> None:
    """Between START and END a batch touching the range waits; after END it reads new contents."""
    rig.hm[0:8] = b"old data"
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, START)
    seq = rig.submit(Batch().mem_copy(DATA_VA, USERPTR_VA, 8).end())
    assert errno_of(rig.wait, seq, STALLED) == ETIME  # stalled, as on a GPU page fault
    assert rig.data[0:8] == bytes([MARK]) * 8
    rig.hm[0:8] = b"new data"
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
    rig.wait(seq)
    assert rig.data[0:8] == b"new data"
    assert not rig.ban_events()


def test_invalidation_waits_for_the_jobs_submitted_before_it(
    rig: Rig, daemon: DaemonProcess
) -> None:
    """START waits for a job already submitted on a VM mapping the pages, as xe's notifier
    waits on the VM's fences: the job reads the contents it was submitted over, though it
    can only run once replace() has begun, and replace() returns once the job is done.
    (The job is held back by an invalidation of the next page, which a second connection
    to the same file ends while replace() waits.)"""
    rig.hm[0:8] = b"old data"
    invalidate(rig.dev, rig.hm.base + PAGE_SIZE, PAGE_SIZE, START)
    seq = rig.submit(Batch().mem_copy(DATA_VA, USERPTR_VA, PAGE_SIZE + 8).end())
    replaced = threading.Event()

    def replace() -> None:
        rig.hm.replace(0, b"new data")
        replaced.set()

    with Device.open(daemon.socket_path, join=rig.dev.token) as joined:
        worker = threading.Thread(target=replace)
        worker.start()
        try:
            assert not replaced.wait(0.2)  # START waits for the job, which waits on page 1
            invalidate(joined, rig.hm.base + PAGE_SIZE, PAGE_SIZE, END_REPLACED)
        finally:
            worker.join(timeout=30)
    assert replaced.is_set()
    rig.wait(seq)
    assert rig.data[0:8] == b"old data"
    assert rig.hm[0:8] == b"new data"
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA, 8).end())
    assert rig.data[0:8] == b"new data"
    assert not rig.ban_events()


def test_batch_stalled_by_invalidation_faults_if_freed(rig: Rig) -> None:
    """A batch stalled on START faults (ban) when the invalidation ends with the pages freed."""
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, START)
    seq = rig.submit(Batch().mem_copy(DATA_VA, USERPTR_VA, 8).end())
    assert errno_of(rig.wait, seq, STALLED) == ETIME
    rig.hm.mapping.madvise(mmap.MADV_REMOVE, 0, PAGE_SIZE)
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, END_FREED)
    rig.wait(seq)
    rig.wait(seq)
    assert [e.exec_queue_id for e in rig.ban_events()] == [rig.queue]
    assert rig.data[0:8] == bytes([MARK]) * 8


def test_batch_outside_invalidated_range_is_not_stalled(rig: Rig) -> None:
    """An invalidation of one page does not hold off a batch touching another page."""
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, START)
    try:
        rig.run(Batch().store_dword(USERPTR_VA + 2 * PAGE_SIZE, 9).end())
        assert rig.hm.mapping.read_u32(2 * PAGE_SIZE) == 9
    finally:
        invalidate(rig.dev, rig.hm.base, PAGE_SIZE, END_REPLACED)


def test_batch_stalled_by_overlapping_invalidations_resumes_after_the_last_end(rig: Rig) -> None:
    """A batch stalled under two overlapping invalidations runs once both have ended."""
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, START)
    seq = rig.submit(Batch().store_dword(USERPTR_VA, 0xD0D0).end())
    assert errno_of(rig.wait, seq, STALLED) == ETIME  # the batch waits on page 0
    invalidate(rig.dev, rig.hm.base + PAGE_SIZE, PAGE_SIZE, START)
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
    invalidate(rig.dev, rig.hm.base + PAGE_SIZE, PAGE_SIZE, END_REPLACED)
    rig.wait(seq, timeout=2_000_000_000)  # an upper bound: nothing holds the batch back now
    assert rig.hm.mapping.read_u32(0) == 0xD0D0


def test_connection_close_with_userptr_binds_releases_everything(
    fresh_daemon: DaemonProcess,
) -> None:
    """Closing a connection with host memory, userptr binds and a queue leaves no objects."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        r = Rig(dev)
        r.run(Batch().store_dword(USERPTR_VA, 1).end())
        r.close()
    for _ in range(500):  # the daemon notices the close on its own schedule
        if baseline(fresh_daemon) == before:
            break
        time.sleep(0.01)
    assert baseline(fresh_daemon) == before


# --- user fences in host memory under the notifier ----------------------------------------------


def test_exec_user_fence_over_invalidated_host_memory_waits_then_lands(rig: Rig) -> None:
    """An EXEC's user fence in host memory whose page is being invalidated waits for the
    notifier, as every device access does, then lands at END; nothing is banned."""
    fence_at = 0x100
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, START)
    rig.dev.exec(rig.queue, rig.place(Batch().end()), syncs=[user_fence(USERPTR_VA + fence_at, 77)])
    address = rig.hm.mapping.user_address(fence_at)
    assert errno_of(rig.dev.wait_user_fence, address, 77, timeout=STALLED) == ETIME
    invalidate(rig.dev, rig.hm.base, PAGE_SIZE, END_REPLACED)
    rig.dev.wait_user_fence(address, 77, timeout=WAIT)
    rig.run(Batch().store_dword(USERPTR_VA + 8, 5).end())  # the queue still runs
    assert rig.hm.mapping.read_u32(8) == 5
    assert not rig.ban_events()


def test_replace_under_a_running_batchs_user_fence_again_and_again(rig: Rig) -> None:
    """The library only: a batch long enough to be caught mid-way (it yields every 1024
    instructions), its user fence in host memory, and replace() of the fence's page
    while it runs, again and again: every fence lands, nothing is banned."""
    fence_at = 0x100
    address = rig.hm.mapping.user_address(fence_at)
    batch = Batch()
    for _ in range(LONG_BATCH):
        batch.noop()
    long_batch = rig.place(batch.end())
    for value in range(1, 21):
        fence = user_fence(USERPTR_VA + fence_at, value)
        rig.dev.exec(rig.queue, long_batch, syncs=[fence])
        rig.hm.replace(0, b"new data")  # page 0 (the fence's) changes; the fence's bytes do not
        rig.dev.wait_user_fence(address, value, timeout=WAIT)
    assert not rig.ban_events()
