"""Foreign imports: a dma-buf exported by one daemon and imported on another, as between
two drm devices. The import is the exporter's pages (a batch on daemon 2 reads and writes
daemon 1's bytes); its GEM mmap does what `imported_mmap` says (fault as xe does, refuse
as i915 does, or forward); a read-only dma-buf stays read-only; and the import keeps the
exporter's buffer alive, even past the exporting daemon.

A (the test process) is a client of daemon 1; C is an agent (tests/agent.py) on daemon 2,
handed the dma-buf over SCM_RIGHTS.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from agent import Agent
from conftest import baseline
from dma_buf_support import BASE, BATCH, SIZE, exported, ino, wait_for

from clients import Device
from clients.daemon import DaemonProcess
from protocols.constants import DRM_CLOEXEC, PAGE_SIZE

FOREIGN_EXEC = f"""
(fd,) = fds
hc = dev.prime_fd_to_handle(fd)
same = dev.prime_fd_to_handle(fd)
size = dev.dmabuf_size(fd)
os.close(fd)
vm = dev.vm_create()
dev.vm_bind(vm, hc, {BASE})
bb = dev.gem_create(0x10000)
dev.vm_bind(vm, bb, {BATCH})
q = dev.exec_queue_create(vm)
with dev.mmap_bo(bb) as mp:
    batch = (
        Batch()
        .copy_dword({BATCH} + 0x2000, {BASE} + 0x20)
        .store_dword({BASE} + 0x10, 0xC0FFEE)
        .store_dword({BASE} + {SIZE} - 4, 0x600DF00D)
        .end()
    )
    mp[0:len(batch)] = batch.tobytes()
    dev.exec(q, {BATCH}, syncs=[user_fence({BATCH} + 0x1000, 1)])
    dev.wait_user_fence(mp.user_address(0x1000), 1)
    copied = mp.read_u32(0x2000)
result = [hc, same, size, copied]
"""


def test_foreign_import_is_the_exporters_pages(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A foreign import bound on daemon 2 is daemon 1's pages: a batch reads, writes A's bytes."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a)
        try:
            with a.mmap_bo(handle) as mine:
                mine.write_u32(0x20, 0x12345678)
                hc, same, size, copied = c.run(FOREIGN_EXEC, [fd])
                assert hc == same
                assert size == SIZE
                assert copied == 0x12345678
                assert mine.read_u32(0x10) == 0xC0FFEE
                assert mine.read_u32(SIZE - 4) == 0x600DF00D
        finally:
            os.close(fd)


FOREIGN_GEM_MMAP_TOUCHED = """
import ctypes, resource, signal
(fd,) = fds
hc = dev.prime_fd_to_handle(fd)
mp = dev.mmap_bo(hc)  # GEM_MMAP_OFFSET and MMAP both succeed
length = len(mp)
address = mp.address
statuses = []
for touch in ("read", "write"):
    pid = os.fork()
    if pid == 0:  # the child inherits the mapping (a BO's is not MADV_DONTFORK)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if touch == "read":
            ctypes.string_at(address, 4)
        else:
            ctypes.memmove(address, b"mine", 4)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    statuses.append(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status))
try:  # a user fence there is memory the CPU cannot reach: as copy_from_user, EFAULT
    dev.wait_user_fence(mp.user_address(0), 0, timeout=0)
    statuses.append(0)
except XeError as exc:
    statuses.append(exc.errno)
with dev.dmabuf_mmap(fd) as dm, dev.cpu_access(fd):
    seen = dm[0:8].decode()
os.close(fd)
result = [length, statuses, seen]
"""


def test_foreign_import_gem_mmap_faults_by_default(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """By default (imported_mmap = "xe") GEM_MMAP_OFFSET and MMAP of a foreign import
    succeed and the first access, read or write, raises SIGBUS, as on xe (TTM); a user
    fence there is EFAULT; the dma-buf's own mmap works, the exporter's bytes untouched."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, b"exporter")
        try:
            length, statuses, seen = c.run(FOREIGN_GEM_MMAP_TOUCHED, [fd])
            assert length == SIZE
            assert statuses == [signal.SIGBUS, signal.SIGBUS, errno.EFAULT]
            assert seen == "exporter"
            with a.mmap_bo(handle) as mine:
                assert mine[0:8] == b"exporter"
        finally:
            os.close(fd)


def test_foreign_import_gem_mmap_offset_is_enodev_when_refused(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """With imported_mmap = "refuse" (i915's answer) GEM_MMAP_OFFSET of a foreign import is
    ENODEV naming DMA_BUF_IOCTL_SYNC; the dma-buf's own mmap works."""
    d1, d2 = make_daemon(), make_daemon('[dma_buf]\nimported_mmap = "refuse"\n')
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, b"exporter")
        try:
            result = c.run(
                """
                (fd,) = fds
                hc = dev.prime_fd_to_handle(fd)
                try:
                    dev.gem_mmap_offset(hc)
                    refusal = None
                except XeError as exc:
                    refusal = [exc.errno, exc.detail]
                with dev.dmabuf_mmap(fd) as mp, dev.cpu_access(fd):
                    seen = mp[0:8].decode()
                    mp[8:12] = b"sync"
                os.close(fd)
                result = [refusal, seen]
                """,
                [fd],
            )
            (err, detail), seen = result
            assert err == errno.ENODEV
            assert "DMA_BUF_IOCTL_SYNC" in detail
            assert seen == "exporter"
            with a.mmap_bo(handle) as mine:
                assert mine[8:12] == b"sync"
        finally:
            os.close(fd)


def test_foreign_import_gem_mmap_forwards_when_configured(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """With imported_mmap = "forward", C's GEM mapping of the import is the exporter's pages."""
    d1 = make_daemon()
    d2 = make_daemon('[dma_buf]\nimported_mmap = "forward"\n')
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, b"forwarded")
        try:
            with a.mmap_bo(handle) as mine:
                seen = c.run(
                    f"""
                    (fd,) = fds
                    hc = dev.prime_fd_to_handle(fd)
                    os.close(fd)
                    mp = dev.mmap_bo(hc)
                    result = [len(mp), mp[0:9].decode()]
                    mp[{PAGE_SIZE}:{PAGE_SIZE + 4}] = b"back"
                    """,
                    [fd],
                )
                assert seen == [SIZE, "forwarded"]
                assert mine[PAGE_SIZE : PAGE_SIZE + 4] == b"back"
                mine[0:3] = b"new"
                assert c.run("result = mp[0:3].decode()") == "new"
        finally:
            os.close(fd)


def test_foreign_import_of_read_only_dma_buf_stays_read_only(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A read-only foreign import: device writes fault, writable maps are EACCES, reads work."""
    d1 = make_daemon()
    d2 = make_daemon('[dma_buf]\nimported_mmap = "forward"\n')
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, flags=DRM_CLOEXEC)
        try:
            with a.mmap_bo(handle) as mine:
                mine.write_u32(0x20, 0xFEEDFACE)
                result = c.run(
                    f"""
                    from protocols.ops import Event
                    (fd,) = fds
                    hc = dev.prime_fd_to_handle(fd)
                    vm = dev.vm_create()
                    dev.vm_bind(vm, hc, {BASE})
                    bb = dev.gem_create(0x10000)
                    dev.vm_bind(vm, bb, {BATCH})
                    q = dev.exec_queue_create(vm)
                    bmap = dev.mmap_bo(bb)
                    def run(batch, seqno):
                        bmap[0:len(batch)] = batch.tobytes()
                        dev.exec(q, {BATCH}, syncs=[user_fence({BATCH} + 0x1000, seqno)])
                        dev.wait_user_fence(bmap.user_address(0x1000), seqno)
                        # a second blocking wait: a ban event is out before its reply
                        dev.wait_user_fence(bmap.user_address(0x1000), seqno)
                    run(Batch().copy_dword({BATCH} + 0x2000, {BASE} + 0x20).end(), 1)
                    copied = bmap.read_u32(0x2000)
                    run(Batch().store_dword({BASE} + 0x20, 0xBAD).end(), 2)
                    bans = [e.data.reason for e in dev.events
                            if e.event == Event.EXEC_QUEUE_BANNED]
                    offset = dev.gem_mmap_offset(hc)
                    with dev.mmap(offset, {SIZE}, prot=PROT_READ) as ro:
                        forwarded = ro.read_u32(0x20)
                    with dev.dmabuf_mmap(fd, prot=PROT_READ) as ro:
                        direct = ro.read_u32(0x20)
                    result = [
                        copied, bans, forwarded, direct,
                        errno_of(dev.mmap, offset, {SIZE}, prot=PROT_READ | PROT_WRITE),
                        errno_of(dev.dmabuf_mmap, fd, prot=PROT_READ | PROT_WRITE),
                    ]
                    bmap.close()
                    os.close(fd)
                    """,
                    [fd],
                )
                copied, bans, forwarded, direct, gem_rw, dmabuf_rw = result
                assert copied == forwarded == direct == 0xFEEDFACE
                assert len(bans) == 1, result
                assert "read-only" in bans[0]
                assert mine.read_u32(0x20) == 0xFEEDFACE
                assert (gem_rw, dmabuf_rw) == (errno.EACCES, errno.EACCES)
        finally:
            os.close(fd)


def test_foreign_reexport_is_the_original_dma_buf(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Re-exporting a foreign import gives A's dma-buf (same st_ino), which imports back in A."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, b"origin")
        try:
            result, (back,) = c.run_fds(
                """
                (fd,) = fds
                hc = dev.prime_fd_to_handle(fd)
                os.close(fd)
                again = dev.prime_handle_to_fd(hc)
                result = [hc, os.fstat(again).st_ino, dev.prime_fd_to_handle(again)]
                send = [again]
                """,
                [fd],
            )
            hc, reexported_ino, reimported = result
            assert reexported_ino == ino(fd)
            assert reimported == hc
            try:
                assert ino(back) == ino(fd)
                assert a.prime_fd_to_handle(back) == handle
            finally:
                os.close(back)
        finally:
            os.close(fd)


def test_concurrent_foreign_imports_of_one_dma_buf_give_one_handle(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Two concurrent imports of one foreign dma-buf on one file give one handle (prime lock)."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        before1 = baseline(d1)
        before2 = baseline(d2)
        # two UMD threads importing at once; one pair could come out right by luck
        bufs = [exported(a, b"once") for _ in range(12)]
        try:
            pairs = c.run(
                """
                from protocols import decode_incoming, encode_request, pack_fds
                pairs = []
                for fd in fds:
                    ids = {0xF001: Op.PRIME_FD_TO_HANDLE, 0xF002: Op.PRIME_FD_TO_HANDLE}
                    request = m.DrmPrimeHandle(fd=fd)
                    for ident in ids:
                        dev.transport.sock.sendmsg(
                            [encode_request(ident, Op.PRIME_FD_TO_HANDLE, request)],
                            pack_fds([fd]),
                        )
                    os.close(fd)
                    replies = {}
                    while len(replies) < 2:
                        data, got = dev.transport.recv()
                        reply = decode_incoming(data, tuple(got), ids)
                        replies[reply.id] = -reply.errno or reply.result.handle
                    pairs.append([replies[0xF001], replies[0xF002]])
                result = pairs
                """,
                [fd for _, fd in bufs],
            )
        finally:
            for handle, fd in bufs:
                a.gem_close(handle)
                os.close(fd)
        assert all(first == second > 0 for first, second in pairs), pairs
        c.run(f"for h in {sorted({h for pair in pairs for h in pair})}: dev.gem_close(h)")
        assert wait_for(d2, lambda now: now == before2) == before2
        assert wait_for(d1, lambda now: now == before1) == before1


def test_foreign_import_outlives_the_exporting_daemon(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """Exporter daemon gone: the import keeps its pages; another file's import of it is EINVAL."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    with Device.open(d1.socket_path) as a:
        handle, fd = exported(a, b"survivor")
        c.run(
            """
            (fd,) = fds
            hc = dev.prime_fd_to_handle(fd)
            keep = dev.dmabuf_mmap(fd)
            dead = fd
            """,
            [fd],
        )
        os.close(fd)
    d1.stop()
    result = c.run(
        f"""
        vm = dev.vm_create()
        dev.vm_bind(vm, hc, {BASE})
        bb = dev.gem_create(0x10000)
        dev.vm_bind(vm, bb, {BATCH})
        q = dev.exec_queue_create(vm)
        with dev.mmap_bo(bb) as mp:
            batch = Batch().store_dword({BASE} + 0x10, 0xA11FE).end()
            mp[0:len(batch)] = batch.tobytes()
            dev.exec(q, {BATCH}, syncs=[user_fence({BATCH} + 0x1000, 1)])
            dev.wait_user_fence(mp.user_address(0x1000), 1)
        with Device.open(dev.transport.sock.getpeername()) as other:
            result = [
                keep[0:8].decode(),
                keep.read_u32(0x10),
                dev.prime_fd_to_handle(dead) == hc,
                errno_of(other.prime_fd_to_handle, dead),
            ]
        keep.close()
        os.close(dead)
        """
    )
    assert result == ["survivor", 0xA11FE, True, errno.EINVAL]


def test_foreign_import_keeps_the_exporters_buffer_alive(
    make_daemon: Callable[..., DaemonProcess], agents: Callable[[DaemonProcess], Agent]
) -> None:
    """A foreign import keeps daemon 1's buffer and dma-buf alive until the importer closes it."""
    d1, d2 = make_daemon(), make_daemon()
    c = agents(d2)
    before2 = baseline(d2)
    with Device.open(d1.socket_path) as a:
        before1 = baseline(d1)
        handle, fd = exported(a, b"keepalive")
        c.run(
            """
            (fd,) = fds
            hc = dev.prime_fd_to_handle(fd)
            os.close(fd)
            """,
            [fd],
        )
        a.gem_close(handle)
        os.close(fd)
        seen = c.run(
            """
            again = dev.prime_handle_to_fd(hc)
            keep = dev.dmabuf_mmap(again)
            os.close(again)
            result = keep[0:9].decode()
            """
        )
        assert seen == "keepalive"
        _, counts = baseline(d1)
        assert counts.dma_bufs == before1[1].dma_bufs + 1 == 1
        assert counts.bos == before1[1].bos + 1
        c.run("dev.gem_close(hc)")
        after1 = wait_for(d1, lambda now: now == before1)
        assert after1 == before1
        after2 = wait_for(d2, lambda now: now == before2)
        assert after2 == before2
        # the mapping C made earlier outlives every record
        assert c.run("result = keep[0:9].decode()") == "keepalive"
