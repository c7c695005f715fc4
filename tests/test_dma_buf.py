"""dma-buf sharing between processes: PRIME export/import and mmap of the dma-buf
itself, and strict CPU-access checking (device access during an open CPU write window).

Process A is the test process; B is a spawned client process ("agent", tests/agent.py)
that runs the snippets the test sends it. Descriptors travel between A and an agent over
a Unix SOCK_SEQPACKET connection of their own, with SCM_RIGHTS (clients.fdpass): the
daemon is not involved in that hop. What is refused is in test_dma_buf_errors.py,
imports of another daemon's dma-buf in test_dma_buf_foreign.py.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from typing import Any

from agent import Agent
from conftest import baseline
from dma_buf_support import BASE, BATCH, SIZE, errno_of, exported, ino, wait_for

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
    DRM_CLOEXEC,
    PAGE_SIZE,
)

# --- PRIME between processes (IGT prime_self_import / prime_mmap scenarios) ----------------


def test_importer_writes_exporter_reads_the_same_pages(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """B imports A's dma-buf and maps its handle: each sees the other's writes (one copy)."""
    b = agents(daemon)
    handle, fd = exported(dev, b"from A")
    try:
        with dev.mmap_bo(handle) as mine:
            seen = b.run(
                f"""
                (fd,) = fds
                h = dev.prime_fd_to_handle(fd)
                os.close(fd)
                mp = dev.mmap_bo(h)
                result = mp[0:6].decode()
                mp[{PAGE_SIZE}:{PAGE_SIZE + 6}] = b"from B"
                mp[{SIZE - 1}] = 0x5A
                """,
                [fd],
            )
            assert seen == "from A"
            assert mine[PAGE_SIZE : PAGE_SIZE + 6] == b"from B"
            assert mine[SIZE - 1] == 0x5A
            mine[100:107] = b"A again"
            assert b.run("result = mp[100:107].decode()") == "A again"
    finally:
        os.close(fd)


def test_dma_buf_maps_in_process_that_never_held_a_handle(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """B maps the dma-buf itself, never importing it: same pages, and B's file has no handle."""
    b = agents(daemon)
    handle, fd = exported(dev, b"shared")
    try:
        with dev.mmap_bo(handle) as mine:
            result = b.run(
                """
                (buf,) = fds
                size = dev.dmabuf_size(buf)
                with dev.cpu_access(buf):
                    mp = dev.dmabuf_mmap(buf)
                    seen = mp[0:6].decode()
                    mp[8:14] = b"answer"
                result = [size, len(mp), seen, errno_of(dev.gem_close, 1)]
                """,
                [fd],
            )
            assert result == [SIZE, SIZE, "shared", errno.EINVAL]
            assert mine[8:14] == b"answer"
            mine[20:24] = b"more"
            assert b.run("result = mp[20:24].decode()") == "more"
    finally:
        os.close(fd)


def test_self_import_returns_the_exporting_handle(dev: Device) -> None:
    """Importing a dma-buf in the file that exported it gives back the original handle."""
    handle, fd = exported(dev)
    try:
        assert dev.prime_fd_to_handle(fd) == handle
        assert dev.prime_fd_to_handle(fd) == handle
    finally:
        os.close(fd)


def test_export_twice_gives_the_same_dma_buf(dev: Device) -> None:
    """Exporting a BO twice gives two descriptors of one dma-buf (the same st_ino)."""
    handle = dev.gem_create(SIZE)
    first = dev.prime_handle_to_fd(handle)
    second = dev.prime_handle_to_fd(handle, DRM_CLOEXEC)
    try:
        assert first != second
        assert ino(first) == ino(second)
        other = dev.gem_create(SIZE)
        third = dev.prime_handle_to_fd(other)
        try:
            assert ino(third) != ino(first)
        finally:
            os.close(third)
    finally:
        os.close(first)
        os.close(second)


def test_import_in_another_file_gives_a_new_handle_to_the_same_memory(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Another file's import is a handle of its own; importing again gives the same one."""
    b = agents(daemon)
    handle, fd = exported(dev, b"\x11" * 8)
    dup = os.dup(fd)
    try:
        result = b.run(
            """
            one, two = fds
            h1 = dev.prime_fd_to_handle(one)
            h2 = dev.prime_fd_to_handle(one)
            h3 = dev.prime_fd_to_handle(two)
            with dev.mmap_bo(h1) as mp:
                first = mp[0:8].hex()
                mp[0:8] = bytes.fromhex("22") * 8
            result = [h1, h2, h3, first]
            """,
            [fd, dup],
        )
        h1, h2, h3, first = result
        assert h1 == h2 == h3
        assert first == "11" * 8
        with dev.mmap_bo(handle) as mine:
            assert mine[0:8] == b"\x22" * 8
        # a second connection of this very process is another file too
        with Device.open(daemon.socket_path) as again:
            other = again.prime_fd_to_handle(fd)
            assert again.prime_fd_to_handle(dup) == other
            with again.mmap_bo(other) as mp:
                assert mp[0:8] == b"\x22" * 8
    finally:
        os.close(fd)
        os.close(dup)


def test_reexport_from_importer_round_trips(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """B's re-export is A's dma-buf: imports in A as A's handle, or a new one once A closed it."""
    b = agents(daemon)
    handle, fd = exported(dev, b"round")
    original = ino(fd)
    try:
        result, (back,) = b.run_fds(
            """
            (fd,) = fds
            hb = dev.prime_fd_to_handle(fd)
            os.close(fd)
            again = dev.prime_handle_to_fd(hb)
            send = [again]
            result = [hb, os.fstat(again).st_ino, dev.prime_fd_to_handle(again)]
            """,
            [fd],
        )
        hb, reexported_ino, reimported = result
        assert reexported_ino == original
        assert reimported == hb
        try:
            assert ino(back) == original
            assert dev.prime_fd_to_handle(back) == handle
        finally:
            os.close(back)
    finally:
        os.close(fd)
    dev.gem_close(handle)  # A holds nothing now; B's handle keeps the object

    _, (again,) = b.run_fds(
        """
        with dev.mmap_bo(hb) as mp:
            mp[8:13] = b"alive"
        send = [dev.prime_handle_to_fd(hb)]
        """
    )
    try:
        assert ino(again) == original  # B's handle kept the dma-buf (obj->dma_buf)
        new = dev.prime_fd_to_handle(again)
        with dev.mmap_bo(new) as mp:
            assert mp[0:5] == b"round"
            assert mp[8:13] == b"alive"
        assert dev.prime_fd_to_handle(again) == new
    finally:
        os.close(again)


def test_dma_buf_outlives_gem_close_and_still_maps_and_imports(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """With the exporter's only handle closed, the dma-buf still maps with the data and imports."""
    handle, fd = exported(dev, b"refcount")
    try:
        dev.gem_close(handle)
        assert errno_of(dev.gem_mmap_offset, handle) == errno.ENOENT
        with dev.dmabuf_mmap(fd) as mp:
            assert mp[0:8] == b"refcount"
        new = dev.prime_fd_to_handle(fd)
        with dev.mmap_bo(new) as mp:
            assert mp[0:8] == b"refcount"
        again = dev.prime_handle_to_fd(new)
        try:
            assert ino(again) == ino(fd)
        finally:
            os.close(again)
        b = agents(daemon)
        seen = b.run(
            """
            (fd,) = fds
            with dev.mmap_bo(dev.prime_fd_to_handle(fd)) as mp:
                result = mp[0:8].decode()
            os.close(fd)
            """,
            [fd],
        )
        assert seen == "refcount"
    finally:
        os.close(fd)


def test_dup_fds_import_to_the_same_handle(dev: Device) -> None:
    """A dup'd dma-buf imports to the same handle, also after the handle and original are closed."""
    handle, fd = exported(dev, b"dup")
    dup = os.dup(fd)
    try:
        assert dev.prime_fd_to_handle(dup) == handle
        dev.gem_close(handle)
        os.close(fd)
        new = dev.prime_fd_to_handle(dup)
        with dev.mmap_bo(new) as mp:
            assert mp[0:3] == b"dup"
        with dev.dmabuf_mmap(dup) as mp:
            assert mp[0:3] == b"dup"
    finally:
        os.close(dup)


def test_forked_child_maps_the_inherited_dma_buf(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A child forked by B maps the dma-buf it inherited, reads A's bytes, writes its own."""
    b = agents(daemon)
    handle, fd = exported(dev, b"parent")
    try:
        status = b.run(
            """
            (fd,) = fds
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    with dev.dmabuf_mmap(fd) as mp:
                        code = 0 if mp[0:6] == b"parent" else 2
                        mp[8:13] = b"child"
                finally:
                    os._exit(code)
            result = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            os.close(fd)
            """,
            [fd],
        )
        assert status == 0
        with dev.mmap_bo(handle) as mp:
            assert mp[8:13] == b"child"
    finally:
        os.close(fd)


def test_second_bo_does_not_alias_a_released_first(dev: Device, daemon: DaemonProcess) -> None:
    """A second BO exported after a first was released imports as itself (IGT with_two_bos)."""
    with Device.open(daemon.socket_path) as other:
        first, fd1 = exported(dev, b"first")
        imported1 = other.prime_fd_to_handle(fd1)
        os.close(fd1)
        other.gem_close(imported1)
        dev.gem_close(first)
        second, fd2 = exported(dev, b"second")
        try:
            imported2 = other.prime_fd_to_handle(fd2)
            with other.mmap_bo(imported2) as mp:
                assert mp[0:6] == b"second"
        finally:
            os.close(fd2)


def test_dma_buf_mmap_at_an_offset_maps_that_part(dev: Device) -> None:
    """A dma-buf mapping at a page offset shows the buffer's bytes from that offset."""
    handle, fd = exported(dev)
    try:
        with dev.mmap_bo(handle) as whole:
            whole[2 * PAGE_SIZE : 2 * PAGE_SIZE + 5] = b"third"
            with dev.dmabuf_mmap(fd, length=PAGE_SIZE, offset=2 * PAGE_SIZE) as part:
                assert len(part) == PAGE_SIZE
                assert part[0:5] == b"third"
                part[PAGE_SIZE - 4 : PAGE_SIZE] = b"tail"
            assert whole[3 * PAGE_SIZE - 4 : 3 * PAGE_SIZE] == b"tail"
    finally:
        os.close(fd)


def test_dma_buf_mapping_survives_closing_its_descriptor(dev: Device) -> None:
    """A dma-buf mapping outlives its descriptor; map/unmap/map again works (IGT reprime)."""
    handle, fd = exported(dev, b"reprime")
    mp = dev.dmabuf_mmap(fd)
    os.close(fd)
    try:
        assert mp[0:7] == b"reprime"
        fd = dev.prime_handle_to_fd(handle)
        try:
            with dev.dmabuf_mmap(fd) as again:
                assert again[0:7] == b"reprime"
            with dev.dmabuf_mmap(fd) as again:
                assert again[0:7] == b"reprime"
        finally:
            os.close(fd)
    finally:
        mp.close()


# --- strict sync: device access during an open CPU write window ---------------------------


class Submitter:
    """A (the test process): an exported BO bound at BASE and a batch BO bound at BATCH."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.shared, self.fd = exported(dev)
        self.plain = dev.gem_create(0x10000)
        vm = dev.vm_create()
        dev.vm_bind(vm, self.shared, BASE)
        dev.vm_bind(vm, self.plain, BATCH)
        self.queue = dev.exec_queue_create(vm)
        self.batch_map = dev.mmap_bo(self.plain)
        self.seqno = 0

    def submit(self, touch_shared: bool = True) -> None:
        """Run a batch (storing into the exported BO, or only into the plain one); wait."""
        self.seqno += 1
        target = BASE + 0x40 if touch_shared else BATCH + 0x3000
        batch = Batch().store_dword(target, self.seqno).end()
        self.batch_map[0 : len(batch)] = batch.tobytes()
        self.dev.exec(self.queue, BATCH, syncs=[user_fence(BATCH + 0x1000, self.seqno)])
        self.dev.wait_user_fence(self.batch_map.user_address(0x1000), self.seqno)

    def close(self) -> None:
        self.batch_map.close()
        os.close(self.fd)


def violations(daemon: DaemonProcess) -> int:
    with Device.open(daemon.socket_path, role="admin") as adm:
        count: int = adm.admin_status().sync_violations
    return count


def logged_violations(daemon: DaemonProcess) -> list[dict[str, Any]]:
    events = []
    for line in daemon.log_text().splitlines():
        if "dma_buf_sync_violation" in line:
            events.append(json.loads(line))
    return events


def wait_logged(daemon: DaemonProcess, count: int) -> list[dict[str, Any]]:
    """The daemon's dma_buf_sync_violation events, once there are `count` (up to ~5 s)."""
    events = logged_violations(daemon)
    for _ in range(250):
        if len(events) >= count:
            break
        time.sleep(0.02)
        events = logged_violations(daemon)
    return events


STRICT = "[dma_buf]\nstrict_sync = true\n"


def test_strict_sync_reports_device_access_during_a_cpu_write_window(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """strict_sync: a batch in B's CPU write window counts and logs a violation; not after END."""
    d = make_daemon(STRICT)
    b = agents(d)
    with Device.open(d.socket_path) as dev:
        sub = Submitter(dev)
        try:
            b.run(
                """
                (buf,) = fds
                mp = dev.dmabuf_mmap(buf)
                dev.dmabuf_sync(buf, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)
                mp[0:4] = b"cpu!"
                """,
                [sub.fd],
            )
            sub.submit()
            assert violations(d) == 1
            events = wait_logged(d, 1)
            assert len(events) == 1
            assert events[0]["event"] == "dma_buf_sync_violation"
            assert events[0]["dma_buf"] == ino(sub.fd)
            sub.submit(touch_shared=False)  # the window is on another buffer
            assert violations(d) == 1
            b.run("dev.dmabuf_sync(buf, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)")
            sub.submit()
            sub.submit()
            assert violations(d) == 1
            assert len(logged_violations(d)) == 1
        finally:
            sub.close()


def test_strict_sync_counts_the_exporters_own_window(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """strict_sync: the exporter's own write window counts too; a READ-only window does not."""
    d = make_daemon(STRICT)
    with Device.open(d.socket_path) as dev:
        sub = Submitter(dev)
        try:
            with dev.cpu_access(sub.fd, write=True):
                sub.submit()
            assert violations(d) == 1
            with dev.cpu_access(sub.fd, write=False):
                sub.submit()
            sub.submit()
            assert violations(d) == 1
            dev.dmabuf_sync(sub.fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
            sub.submit()
            dev.dmabuf_sync(sub.fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)
            sub.submit()  # the READ half is still open: not a write window
            assert violations(d) == 2
            assert len(wait_logged(d, 2)) == 2
        finally:
            sub.close()


def test_strict_sync_forgets_the_window_of_a_dead_process(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """strict_sync: a write window left open by a process that was killed closes with it."""
    d = make_daemon(STRICT)
    with Device.open(d.socket_path) as dev:
        sub = Submitter(dev)
        try:
            files = baseline(d)[1].files
            b = agents(d)
            b.run("dev.dmabuf_sync(fds[0], DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)", [sub.fd])
            sub.submit()
            assert violations(d) == 1
            b.kill()
            assert wait_for(d, lambda now: now[1].files == files)[1].files == files
            sub.submit()
            assert violations(d) == 1
        finally:
            sub.close()


def test_sync_violations_stay_zero_without_strict_sync(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Without strict_sync, device access during a CPU write window is not counted or logged."""
    b = agents(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        sub = Submitter(dev)
        try:
            b.run("dev.dmabuf_sync(fds[0], DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)", [sub.fd])
            with dev.cpu_access(sub.fd):
                sub.submit()
                sub.submit()
            assert violations(fresh_daemon) == 0
            assert logged_violations(fresh_daemon) == []
        finally:
            sub.close()
