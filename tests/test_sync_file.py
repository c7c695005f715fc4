"""Fences as descriptors, through real daemons: a syncobj's descriptor (SYNCOBJ_HANDLE_TO_FD,
FD_TO_HANDLE), sync files (EXPORT_SYNC_FILE, IMPORT_SYNC_FILE) that poll readable once
their fence is signalled, and a dma-buf's reservation (DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
IMPORT_SYNC_FILE): what xe_dma_buf_sync does, each errno the kernel gives, and nothing
left behind in the daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from errno import EINVAL, ENOENT, ENOMEM, ENOTTY, EOPNOTSUPP
from typing import Any

import pytest
from helpers import BATCH_VA, Gpu, end_spinner, errno_of, readable, start_spinner
from test_lifecycle import baseline, wait_for_baseline

from clients import Batch, Device, syncobj
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_WRITE,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE,
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE,
    PAGE_SIZE,
)
from xed.device.sync_file import MAX_FENCES

EXPORT = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
IMPORT = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
TIMELINE = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
STORED = 0x58  # where the importer's store lands in its batch BO


@pytest.fixture
def two(fresh_daemon: DaemonProcess) -> Iterator[tuple[Device, Device]]:
    """Two drm files of one daemon of the test's own (its counts are the test's)."""
    first, second = Device.open(fresh_daemon.socket_path), Device.open(fresh_daemon.socket_path)
    yield first, second
    first.close()
    second.close()


def spinning(gpu: Gpu) -> tuple[int, int]:
    """(the spinner's user-fence value, a syncobj holding its fence)."""
    done = syncobj.create(gpu.dev)
    return start_spinner(gpu, syncs=[syncobj.signal_sync(done)]), done


def test_a_sync_file_polls_readable_once_its_fence_signals(two: tuple[Device, Device]) -> None:
    dev, _ = two
    gpu = Gpu(dev)
    seq, done = spinning(gpu)
    sync_fd = syncobj.export_sync_file(dev, done)
    assert not readable(sync_fd, 0.1)
    copy = os.dup(sync_fd)
    end_spinner(gpu, seq)
    assert readable(sync_fd, 10)
    # the signal is the end of the file: reading it takes it from nobody
    assert os.read(copy, 16) == b"" and readable(sync_fd) and readable(copy)
    os.close(copy)
    os.close(sync_fd)


def test_an_exec_waits_for_an_imported_sync_file(two: tuple[Device, Device]) -> None:
    """A job of another drm file waits, through a syncobj that imported the sync file
    of the first file's spinner, until the spinner ends."""
    dev, other = two
    gpu, importer = Gpu(dev), Gpu(other)
    seq, done = spinning(gpu)
    sync_fd = syncobj.export_sync_file(dev, done)
    waits, signals = syncobj.create(other), syncobj.create(other)
    syncobj.import_sync_file(other, waits, sync_fd)
    store = importer.place(Batch().store_dword(BATCH_VA + STORED, 0xC0FFEE).end())
    other.exec(
        importer.queue, store, syncs=[syncobj.wait_sync(waits), syncobj.signal_sync(signals)]
    )
    time.sleep(0.05)
    assert errno_of(syncobj.wait, other, [signals], syncobj.deadline_in(0.1)) == 62  # ETIME
    assert importer.cpu.read_u32(STORED) == 0
    end_spinner(gpu, seq)
    syncobj.wait(other, [signals], syncobj.deadline_in(10))
    assert importer.cpu.read_u32(STORED) == 0xC0FFEE
    os.close(sync_fd)


def test_a_syncobj_descriptor_is_the_same_syncobj_in_another_file(
    two: tuple[Device, Device],
) -> None:
    dev, other = two
    gpu = Gpu(dev)
    shared = syncobj.create(dev)
    fd = syncobj.handle_to_fd(dev, shared)
    there = syncobj.fd_to_handle(other, fd)
    os.close(fd)
    # a fence put in through one handle is the other's too
    seq = start_spinner(gpu, syncs=[syncobj.signal_sync(shared)])
    assert errno_of(syncobj.wait, other, [there], 0) == 62  # ETIME: not signalled yet
    end_spinner(gpu, seq)
    syncobj.wait(other, [there], syncobj.deadline_in(10))
    syncobj.reset(other, [there])
    assert errno_of(syncobj.wait, dev, [shared], 0) == EINVAL  # empty through both


@pytest.mark.parametrize(
    "imported,exported,busy",
    [
        (DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_WRITE, True),
        (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_READ, False),  # a reader waits for writers only
        (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, True),  # a writer waits for readers too
        (DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_READ, True),
        (DMA_BUF_SYNC_RW, DMA_BUF_SYNC_READ, True),  # RW puts a writer's fence in
    ],
)
def test_a_dma_buf_reservation(
    two: tuple[Device, Device], imported: int, exported: int, busy: bool
) -> None:
    """xe_dma_buf_sync's export-dma-buf-*-sync: a spinner's fence put in a dma-buf as a
    reader's or a writer's, and what an export for reading or writing then waits for."""
    dev, other = two
    gpu = Gpu(dev)
    dma_buf = dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE))
    seq, done = spinning(gpu)
    spin_fd = syncobj.export_sync_file(dev, done)
    other.dmabuf_import_sync_file(dma_buf, spin_fd, imported)
    sync_fd = other.dmabuf_export_sync_file(dma_buf, exported)
    assert readable(sync_fd, 0.05) is not busy
    end_spinner(gpu, seq)
    assert readable(sync_fd, 10)
    for fd in (sync_fd, spin_fd, dma_buf):
        os.close(fd)


def test_nothing_is_left_behind(fresh_daemon: DaemonProcess) -> None:
    """Sync files, syncobj descriptors and reservations go with their last descriptor
    and handle: the daemon's descriptors and objects are back where they were."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        gpu = Gpu(dev)
        seq, done = spinning(gpu)
        dma_buf = dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE))
        fds = [syncobj.export_sync_file(dev, done), syncobj.handle_to_fd(dev, done)]
        dev.dmabuf_import_sync_file(dma_buf, fds[0], DMA_BUF_SYNC_WRITE)
        fds.append(dev.dmabuf_export_sync_file(dma_buf, DMA_BUF_SYNC_WRITE))
        fds.append(syncobj.merge_sync_files(dev, fds[0], fds[2]))
        with Device.open(fresh_daemon.socket_path, role="admin") as adm:
            objects = adm.admin_status().objects
            assert (objects.sync_files, objects.syncobj_fds) == (3, 1)
        for fd in fds:  # closed while the fence is still unsignalled
            os.close(fd)
        end_spinner(gpu, seq)
        os.close(dma_buf)
        gpu.close()
    assert wait_for_baseline(fresh_daemon, before) == before


def test_refusals(two: tuple[Device, Device], tmp_path: Any) -> None:
    dev, _ = two
    empty = syncobj.create(dev)
    signalled = syncobj.create(dev, signaled=True)

    def to_fd(**fields: int) -> int:
        return errno_of(dev.ioctl_fds, Op.SYNCOBJ_HANDLE_TO_FD, m.DrmSyncobjFd(**fields))

    assert to_fd(handle=signalled, pad=1) == EINVAL
    assert to_fd(handle=signalled, flags=1 << 2) == EINVAL
    assert to_fd(handle=999) == EINVAL  # no such syncobj, as a descriptor
    assert to_fd(handle=999, flags=EXPORT) == ENOENT  # ... as a sync file
    assert to_fd(handle=empty, flags=EXPORT) == EINVAL  # no fence to export
    timeline = EXPORT | DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE
    assert to_fd(handle=signalled, flags=timeline, point=1) == EINVAL  # binary: point 0 only
    assert to_fd(handle=signalled, flags=DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE, point=1) == EINVAL

    sync_fd = syncobj.export_sync_file(dev, signalled)
    obj_fd = syncobj.handle_to_fd(dev, signalled)
    dma_buf = dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE))
    memfd = os.memfd_create("not-a-fence")

    def to_handle(fd: int, **fields: int) -> int:
        args = m.DrmSyncobjFd(fd=fd, **fields)
        return errno_of(dev.ioctl, Op.SYNCOBJ_FD_TO_HANDLE, args, [fd])

    assert to_handle(obj_fd, pad=1) == EINVAL
    assert to_handle(obj_fd, flags=1 << 2) == EINVAL
    assert to_handle(obj_fd, flags=TIMELINE, point=1) == EINVAL  # a point, no sync file
    assert to_handle(obj_fd, point=1) == EINVAL  # a point, even without TIMELINE
    plain = m.DrmSyncobjFd(fd=obj_fd, flags=TIMELINE)  # point 0: the plain import
    assert dev.ioctl(Op.SYNCOBJ_FD_TO_HANDLE, plain, [obj_fd]).handle
    assert to_handle(sync_fd) == EINVAL  # a sync file is no syncobj's descriptor
    assert to_handle(dma_buf) == EINVAL
    assert to_handle(memfd) == EINVAL
    assert to_handle(obj_fd, flags=IMPORT, handle=empty) == EINVAL  # not a sync file
    assert to_handle(sync_fd, flags=IMPORT, handle=999) == ENOENT

    for flags in (0, 1 << 2, DMA_BUF_SYNC_RW | 1 << 2):
        assert errno_of(dev.dmabuf_export_sync_file, dma_buf, flags) == EINVAL
        assert errno_of(dev.dmabuf_import_sync_file, dma_buf, sync_fd, flags) == EINVAL
    assert errno_of(dev.dmabuf_export_sync_file, sync_fd, DMA_BUF_SYNC_RW) == EINVAL
    assert errno_of(dev.dmabuf_import_sync_file, memfd, sync_fd, DMA_BUF_SYNC_RW) == EINVAL
    assert errno_of(dev.dmabuf_import_sync_file, dma_buf, obj_fd, DMA_BUF_SYNC_RW) == EINVAL
    for fd in (sync_fd, obj_fd, dma_buf, memfd):
        os.close(fd)


def test_a_reservation_holds_at_most_max_fences(two: tuple[Device, Device]) -> None:
    """A client cannot grow the daemon's memory without bound through one dma-buf:
    past MAX_FENCES unsignalled fences, IMPORT_SYNC_FILE is ENOMEM; signalled ones are
    dropped and do not count."""
    dev, _ = two
    gpu = Gpu(dev)
    seq, done = spinning(gpu)
    spin_fd = syncobj.export_sync_file(dev, done)
    dma_buf = dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE))
    for _ in range(MAX_FENCES):
        dev.dmabuf_import_sync_file(dma_buf, spin_fd, DMA_BUF_SYNC_READ)
    assert errno_of(dev.dmabuf_import_sync_file, dma_buf, spin_fd, DMA_BUF_SYNC_READ) == ENOMEM
    end_spinner(gpu, seq)
    dev.dmabuf_import_sync_file(dma_buf, spin_fd, DMA_BUF_SYNC_READ)  # the signalled went
    for fd in (spin_fd, dma_buf):
        os.close(fd)


def test_another_daemons_dma_buf_is_eopnotsupp(make_daemon: Any) -> None:
    """Fences do not cross daemons: a foreign dma-buf's reservation is its daemon's."""
    exporter, importer = make_daemon(name="a"), make_daemon(name="b")
    with Device.open(exporter.socket_path) as a, Device.open(importer.socket_path) as b:
        dma_buf = a.prime_handle_to_fd(a.gem_create(PAGE_SIZE))
        sync_fd = syncobj.export_sync_file(b, syncobj.create(b, signaled=True))
        assert errno_of(b.dmabuf_export_sync_file, dma_buf, DMA_BUF_SYNC_RW) == EOPNOTSUPP
        assert errno_of(b.dmabuf_import_sync_file, dma_buf, sync_fd, DMA_BUF_SYNC_RW) == EOPNOTSUPP
        os.close(sync_fd)
        os.close(dma_buf)


def test_merged_sync_files_signal_once_both_have(two: tuple[Device, Device]) -> None:
    """SYNC_IOC_MERGE: a sync file of two spinners' fences signals after the second
    ends; SYNC_IOC_FILE_INFO tells its name, status and the fences, each once."""
    dev, _ = two
    first, second = Gpu(dev), Gpu(dev)
    seq1, done1 = spinning(first)
    seq2, done2 = spinning(second)
    fd1, fd2 = syncobj.export_sync_file(dev, done1), syncobj.export_sync_file(dev, done2)
    merged = syncobj.merge_sync_files(dev, fd1, fd2, name="both")
    twice = syncobj.merge_sync_files(dev, merged, fd1)  # fd1's fence is in it already
    info = syncobj.sync_file_info(dev, merged)
    assert (info.name, info.status, info.num_fences) == ("both", 0, 2)
    assert [f.status for f in info.fences] == [0, 0]
    assert syncobj.sync_file_info(dev, twice).num_fences == 2
    too_few = m.SyncFileInfo(num_fences=1)  # room for one of its two
    assert errno_of(dev.ioctl, Op.SYNC_FILE_INFO, too_few, [merged]) == EINVAL
    end_spinner(first, seq1)
    assert readable(fd1, 10) and not readable(merged, 0.05)
    end_spinner(second, seq2)
    assert readable(merged, 10) and readable(twice, 10)
    info = syncobj.sync_file_info(dev, merged)
    assert info.status == 1 and [f.status for f in info.fences] == [1, 1]
    # merged once signalled, the fences are gone: a signalled stub stands for them
    assert syncobj.sync_file_info(dev, syncobj.merge_sync_files(dev, fd1, fd2)).num_fences == 1
    for fd in (fd1, fd2, merged, twice):
        os.close(fd)


def test_sync_file_ioctl_refusals(two: tuple[Device, Device]) -> None:
    dev, _ = two
    sync_fd = syncobj.export_sync_file(dev, syncobj.create(dev, signaled=True))
    dma_buf = dev.prime_handle_to_fd(dev.gem_create(PAGE_SIZE))

    def merge(first: int, second: int, **fields: Any) -> int:
        args = m.SyncMerge(**fields)
        return errno_of(dev.ioctl_fds, Op.SYNC_FILE_MERGE, args, [first, second])

    def info(fd: int, **fields: int) -> int:
        return errno_of(dev.ioctl, Op.SYNC_FILE_INFO, m.SyncFileInfo(**fields), [fd])

    assert merge(dma_buf, sync_fd) == ENOTTY  # the ioctl is not a dma-buf's
    assert merge(sync_fd, sync_fd, flags=1) == EINVAL
    assert merge(sync_fd, sync_fd, pad=1) == EINVAL
    assert merge(sync_fd, dma_buf) == ENOENT  # fd2 is no sync file
    assert info(dma_buf) == ENOTTY
    assert info(sync_fd, flags=1) == EINVAL
    assert info(sync_fd, pad=1) == EINVAL
    for fd in (sync_fd, dma_buf):
        os.close(fd)


def test_a_merge_past_max_fences_is_enomem_and_leaves_nothing(
    fresh_daemon: DaemonProcess,
) -> None:
    """SYNC_IOC_MERGE of more than MAX_FENCES unsignalled fences is ENOMEM; neither it nor
    the sync files closed while their fences were unsignalled leave a descriptor or an
    object behind (what they watched with goes with them)."""
    with Device.open(fresh_daemon.socket_path) as dev:
        gpu = Gpu(dev)
        seq = start_spinner(gpu)
        noop = gpu.place(Batch().end())
        handles = [syncobj.create(dev) for _ in range(MAX_FENCES + 1)]
        for handle in handles:  # queued behind the spinner: each fence unsignalled
            dev.exec(gpu.queue, noop, syncs=[syncobj.signal_sync(handle)])
        before = baseline(fresh_daemon)
        merged = syncobj.export_sync_file(dev, handles[0])
        for handle in handles[1:MAX_FENCES]:
            one = syncobj.export_sync_file(dev, handle)
            bigger = syncobj.merge_sync_files(dev, merged, one)
            os.close(one)
            os.close(merged)
            merged = bigger
        assert syncobj.sync_file_info(dev, merged).num_fences == MAX_FENCES
        last = syncobj.export_sync_file(dev, handles[-1])
        assert errno_of(syncobj.merge_sync_files, dev, merged, last) == ENOMEM
        os.close(last)
        os.close(merged)
        assert wait_for_baseline(fresh_daemon, before) == before  # spinner still on
        end_spinner(gpu, seq)
        gpu.close()
