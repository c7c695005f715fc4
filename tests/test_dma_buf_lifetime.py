"""dma-buf lifetimes: what the daemon frees and when, what survives it (mappings), leaks
over many cycles, and a 1 GiB buffer shared by eight processes without a copy.

Releasing happens when the last descriptor of a dma-buf closes, which the daemon learns
asynchronously (EOF on its end); tests poll the daemon's counts for a bounded time.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from agent import Agent
from conftest import baseline
from dma_buf_support import exported, ino, wait_for

from clients import Device
from clients.daemon import DaemonProcess
from protocols.constants import DRM_CLOEXEC, PAGE_SIZE

GiB = 1 << 30
MiB = 1 << 20
LEAK_CYCLES = 10_000


def held(daemon: DaemonProcess, before: tuple[int, Any], **extra: int) -> None:
    """The daemon holds exactly `extra` more objects than at `before`."""
    _, counts = baseline(daemon)
    for name, more in extra.items():
        assert getattr(counts, name) == getattr(before[1], name) + more, (name, counts)


def test_closing_every_copy_and_handle_frees_everything_but_mappings_survive(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Closing every dma-buf copy and handle frees all in the daemon; mappings keep the data."""
    d = fresh_daemon
    b = agents(d)
    with Device.open(d.socket_path) as a:
        before = baseline(d)
        handle, fd = exported(a, b"lifetime")
        second = a.prime_handle_to_fd(handle)
        mine = a.mmap_bo(handle)
        try:
            b.run(
                """
                (fd,) = fds
                hb = dev.prime_fd_to_handle(fd)
                theirs = dev.dmabuf_mmap(fd)
                copies = [fd, os.dup(fd)]
                """,
                [fd],
            )
            held(d, before, bos=1, dma_bufs=1, mmap_offsets=1)
            a.gem_close(handle)
            os.close(fd)
            os.close(second)
            held(d, before, bos=1, dma_bufs=1, mmap_offsets=1)
            b.run("for c in copies: os.close(c)")
            # B's handle still holds the object, and through it the dma-buf (obj->dma_buf)
            held(d, before, bos=1, dma_bufs=1, mmap_offsets=1)
            b.run("dev.gem_close(hb)")
            assert wait_for(d, lambda now: now == before) == before
            assert mine[0:8] == b"lifetime"
            assert b.run("result = theirs[0:8].decode()") == "lifetime"
            mine[100:105] = b"after"
            assert b.run("result = theirs[100:105].decode()") == "after"
        finally:
            mine.close()


def test_last_handle_close_releases_an_unshared_dma_buf(fresh_daemon: DaemonProcess) -> None:
    """With no descriptor left, the dma-buf lives (same inode) until the last handle closes."""
    d = fresh_daemon
    with Device.open(d.socket_path) as a:
        before = baseline(d)
        handle, fd = exported(a)
        first = ino(fd)
        os.close(fd)
        held(d, before, bos=1, dma_bufs=1)
        again = a.prime_handle_to_fd(handle)
        try:
            assert ino(again) == first
        finally:
            os.close(again)
        a.gem_close(handle)
        assert wait_for(d, lambda now: now == before) == before


def test_sigkilled_holder_of_handles_and_dma_bufs_releases_everything(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A SIGKILLed holder of imports, dma-bufs, mappings and a sync window leaks nothing."""
    d = fresh_daemon
    with Device.open(d.socket_path) as a:
        before = baseline(d)
        b = agents(d)
        h1, fd1 = exported(a, b"one")
        h2, fd2 = exported(a, b"two", flags=DRM_CLOEXEC)
        try:
            b.run(
                """
                one, two = fds
                h1 = dev.prime_fd_to_handle(one)
                m1 = dev.mmap_bo(h1)
                m2 = dev.dmabuf_mmap(two, prot=PROT_READ)
                again = dev.prime_handle_to_fd(h1)
                copies = [os.dup(one), os.dup(two), again]
                dev.dmabuf_sync(two, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)
                """,
                [fd1, fd2],
            )
        finally:
            a.gem_close(h1)
            a.gem_close(h2)
            os.close(fd1)
            os.close(fd2)
        held(d, before, files=1, bos=2, dma_bufs=2, mmap_offsets=2)
        b.kill()
        assert wait_for(d, lambda now: now == before) == before


LEAK_EXPORTER = """
import time
(end,) = fds
link = socket.socket(fileno=end)
fds_before = len(os.listdir("/proc/self/fd"))
start = time.monotonic()
for _ in range(int(argv_cycles)):
    h = dev.gem_create(PAGE_SIZE)
    fd = dev.prime_handle_to_fd(h)
    dev.gem_close(h)  # only the dma-buf (in flight) keeps it now
    fdpass.send_fds(link, b"x", [fd])
    os.close(fd)
    link.recv(1)
link.close()
result = [time.monotonic() - start, len(os.listdir("/proc/self/fd")) - fds_before + 1]
"""

LEAK_IMPORTER = """
(end,) = fds
link = socket.socket(fileno=end)
fds_before = len(os.listdir("/proc/self/fd"))
for _ in range(int(argv_cycles)):
    _, (fd,) = fdpass.recv_fds(link)
    h = dev.prime_fd_to_handle(fd)
    os.close(fd)
    dev.gem_close(h)
    link.send(b"k")
link.close()
result = [0.0, len(os.listdir("/proc/self/fd")) - fds_before + 1]
"""


def test_export_import_close_cycles_leak_nothing(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """10 000 export/send/import/close cycles between two processes leave everything at baseline."""
    d = fresh_daemon
    a, b = agents(d), agents(d)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.start("link_end = fds[0]", [ours.fileno()])
        a.wait()
        b.start("link_end = fds[0]", [theirs.fileno()])
        b.wait()
    finally:
        ours.close()
        theirs.close()
    before = baseline(d)
    setup = f"argv_cycles = {LEAK_CYCLES}\nfds = [link_end]\n"
    a.start(setup + LEAK_EXPORTER)
    b.start(setup + LEAK_IMPORTER)
    (elapsed, a_fd_growth), _ = a.wait()
    (_, b_fd_growth), _ = b.wait()
    # each snippet closed its end of the link, which it had counted: +1 makes it even
    assert (a_fd_growth, b_fd_growth) == (0, 0)
    assert wait_for(d, lambda now: now == before) == before
    print(f"{LEAK_CYCLES} export/import/close cycles in {elapsed:.1f} s")


def shmem() -> int:
    """System shared memory (Shmem in /proc/meminfo), in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem line in /proc/meminfo")


IMPORT_AND_MAP = """
big, small = fds
t = dev.transport
dev.unplug_watch()  # the device's notice page is asked for once, before the first mapping


def cost(fd, through_handle):
    sent, received = t.bytes_sent, t.bytes_received
    if through_handle:
        mp = dev.mmap_bo(dev.prime_fd_to_handle(fd))
    else:
        mp = dev.dmabuf_mmap(fd)
    return t.bytes_sent - sent + t.bytes_received - received, mp


through_handle = bool(int(argv_index) % 2)
big_cost, mp = cost(big, through_handle)
small_cost, small_map = cost(small, through_handle)
small_map.close()
os.close(big)
os.close(small)
result = [big_cost, small_cost, len(mp)]
"""


def touch(index: int) -> str:
    """Write byte `index`+1 at offset `index` of every 4 KiB page of the agent's mapping."""
    return f"""
view = memoryview(mp)
view[{index}::{PAGE_SIZE}] = bytes([{index + 1}]) * (len(mp) // {PAGE_SIZE})
view.release()
"""


def test_one_gib_buffer_shared_by_eight_processes_is_never_copied(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """1 GiB shared by 8 processes: socket bytes as for 4 KiB, Shmem grows by 1 GiB once."""
    d = fresh_daemon
    workers = [agents(d) for _ in range(8)]
    pages = GiB // PAGE_SIZE
    with Device.open(d.socket_path) as a:
        big = a.gem_create(GiB)
        small = a.gem_create(PAGE_SIZE)
        big_fd = a.prime_handle_to_fd(big)
        small_fd = a.prime_handle_to_fd(small)
        mine = a.mmap_bo(big)
        try:
            before = shmem()
            for index, worker in enumerate(workers):
                worker.start(f"argv_index = {index}\n" + IMPORT_AND_MAP, [big_fd, small_fd])
            costs = [worker.wait()[0] for worker in workers]
        finally:
            os.close(big_fd)
            os.close(small_fd)
        try:
            for big_cost, small_cost, length in costs:
                assert length == GiB
                assert abs(big_cost - small_cost) < 16, (big_cost, small_cost)
                assert big_cost < 1024, big_cost
            assert shmem() - before < 64 * MiB, "importing or mapping copied pages"
            for index, worker in enumerate(workers):
                worker.start(touch(index))
            for worker in workers:
                worker.wait()
            growth = shmem() - before
            assert 0.9 * GiB < growth < 1.5 * GiB, f"Shmem grew by {growth / GiB:.2f} GiB"
            for index in range(len(workers)):
                assert mine[index::PAGE_SIZE] == bytes([index + 1]) * pages, index
            peak = shmem()
        finally:
            mine.close()
        for worker in workers:
            worker.run("mp.close()\ndev.close()")
        a.gem_close(big)
        a.gem_close(small)
        _, counts = wait_for(d, lambda now: now[1].bos == 0 and now[1].dma_bufs == 0)
        assert (counts.bos, counts.dma_bufs) == (0, 0)
    # the daemon's last close of a large memfd, which frees its pages, is its reaper
    # thread's (xed/device/reaper.py): given back a moment after the BO is gone
    dropped = 0
    for _ in range(500):  # up to ~10 s, as wait_for
        dropped = peak - shmem()
        if dropped > 0.9 * GiB:
            break
        time.sleep(0.02)
    assert dropped > 0.9 * GiB, f"only {dropped / GiB:.2f} GiB of Shmem was given back"
