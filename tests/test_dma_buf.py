"""dma-buf sharing between processes: PRIME export/import, mmap, llseek and SYNC of the
dma-buf itself, foreign imports between two daemons, and strict CPU-access checking.

Process A is the test process; B (and C, on another daemon) are spawned client
processes ("agents") that run the snippets the test sends them. Descriptors travel
between A and an agent over a Unix SOCK_SEQPACKET connection of their own, with
SCM_RIGHTS (clients.fdpass): the daemon is not involved in that hop.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import mmap
import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import baseline, spawn_client

from clients import Batch, Device, fdpass, user_fence
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_VALID_FLAGS_MASK,
    DMA_BUF_SYNC_WRITE,
    DRM_CLOEXEC,
    DRM_RDWR,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    SEEK_END,
    SEEK_SET,
)

BASE = 0x1_0000_0000  # where a test binds the shared BO
BATCH = 0x2_0000_0000  # where it binds its batch BO
RW = PROT_READ | PROT_WRITE
SIZE = 4 * PAGE_SIZE

# --- agents: client processes that run the test's snippets ---------------------------------

# The agent connects back to the test over an abstract-namespace SOCK_SEQPACKET socket
# (argv[0] names it) and then runs one snippet per stdin line. A snippet finds the
# descriptors the test sent with it in `fds`, sets `result` (JSON-able) and may put
# descriptors in `send` to hand them to the test. Names persist between snippets.
AGENT = r"""
import os, socket, traceback
from clients import fdpass
from protocols import Op, messages as m
from protocols.constants import *

peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
peer.connect("\0" + argv[0])


def errno_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


ns = dict(globals())
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = json.loads(line)
    ns["fds"] = fdpass.recv_fds(peer)[1] if cmd["fds"] else []
    ns["result"] = None
    ns["send"] = []
    try:
        exec(cmd["code"], ns)
        reply = {"result": ns["result"], "sent": bool(ns["send"])}
    except Exception:
        reply = {"error": traceback.format_exc(), "sent": False}
    if reply["sent"]:
        fdpass.send_fds(peer, b"fds", ns["send"])
        for fd in ns["send"]:
            os.close(fd)
    print(json.dumps(reply), flush=True)
"""


class Agent:
    """A client process of its own, connected to `socket_path`, running snippets."""

    _names = itertools.count()

    def __init__(self, socket_path: Path) -> None:
        name = f"xed-dma-buf-test-{os.getpid()}-{next(self._names)}"
        self.killed = False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            listener.bind("\0" + name)
            listener.listen(1)
            listener.settimeout(30)
            self.proc = spawn_client(socket_path, AGENT, name)
            try:
                self.sock, _ = listener.accept()
            except OSError:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
                raise AssertionError(f"agent did not connect:\n{err}") from None
        finally:
            listener.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, code: str, fds: Sequence[int] = ()) -> None:
        """Send a snippet (and copies of `fds`) without waiting for its answer."""
        assert self.proc.stdin is not None
        if fds:
            fdpass.send_fds(self.sock, b"fds", fds)
        command = {"code": textwrap.dedent(code), "fds": bool(fds)}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def wait(self) -> tuple[Any, list[int]]:
        """The answer to the snippet started last: its result and the descriptors it sent."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"agent died:\n{err}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"agent snippet failed:\n{reply['error']}")
        received = fdpass.recv_fds(self.sock)[1] if reply["sent"] else []
        return reply["result"], received

    def run_fds(self, code: str, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        self.start(code, fds)
        return self.wait()

    def run(self, code: str, fds: Sequence[int] = ()) -> Any:
        result, received = self.run_fds(code, fds)
        for fd in received:
            os.close(fd)
        assert not received, "the snippet sent descriptors nobody asked for"
        return result

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.killed = True
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        """End the agent (EOF on its stdin) and check it exited cleanly."""
        if self.proc.poll() is None:
            try:
                _, err = self.proc.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
        else:
            _, err = self.proc.communicate(timeout=30)
        self.sock.close()
        if not self.killed:
            assert self.proc.returncode == 0, f"agent failed:\n{err}"


def agent_pool() -> Iterator[Callable[[DaemonProcess], Agent]]:
    """A factory of agents connected to a daemon, for a fixture: ended and checked after."""
    started: list[Agent] = []

    def make(daemon: DaemonProcess) -> Agent:
        agent = Agent(daemon.socket_path)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture
def agents() -> Iterator[Callable[[DaemonProcess], Agent]]:
    """Start agents connected to a daemon; they are ended (and checked) after the test."""
    yield from agent_pool()


# --- helpers --------------------------------------------------------------------------------


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno `fn` fails with (it must fail)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno is not None, f"no errno: {e.value!r}"
    return e.value.errno


def exported(
    dev: Device, fill: bytes = b"", size: int = SIZE, flags: int = DRM_CLOEXEC | DRM_RDWR
) -> tuple[int, int]:
    """(handle, dma-buf fd) of a fresh BO whose first bytes are `fill`."""
    handle = dev.gem_create(size)
    if fill:
        with dev.mmap_bo(handle) as mp:
            mp[0 : len(fill)] = fill
    return handle, dev.prime_handle_to_fd(handle, flags)


def ino(fd: int) -> int:
    return os.fstat(fd).st_ino


def dma_buf_mmap_request(
    dev: Device, fd: int, offset: int, length: int, prot: int = RW, flags: int = MAP_SHARED
) -> Any:
    """A raw DMA_BUF_MMAP; closes the descriptor the reply carries."""
    return dev.ioctl(
        Op.DMA_BUF_MMAP,
        m.XedMmap(offset=offset, length=length, prot=prot, flags=flags),
        fds=[fd],
    )


def llseek(dev: Device, fd: int, offset: int, whence: int) -> int:
    reply: m.DmaBufLlseekReply = dev.ioctl(
        Op.DMA_BUF_LLSEEK, m.DmaBufLlseek(offset=offset, whence=whence), fds=[fd]
    )
    return reply.offset


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


# --- errors ---------------------------------------------------------------------------------


def test_import_closed_fd_is_ebadf(dev: Device) -> None:
    """A closed descriptor: EBADF from sendmsg for import, mmap and sync; the connection lives."""
    _, fd = exported(dev)
    os.close(fd)
    assert errno_of(dev.prime_fd_to_handle, fd) == errno.EBADF
    assert errno_of(dev.dmabuf_mmap, fd, PAGE_SIZE) == errno.EBADF
    assert errno_of(dev.dmabuf_sync, fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW) == errno.EBADF
    assert dev.version() is not None


def _memfd() -> list[int]:
    fd = os.memfd_create("not-a-dma-buf")
    os.ftruncate(fd, SIZE)
    return [fd]


def _pipe_read() -> list[int]:
    r, w = os.pipe()
    return [r, w]


def _pipe_write() -> list[int]:
    r, w = os.pipe()
    return [w, r]


def _regular_file(tmp_path: Path) -> list[int]:
    path = tmp_path / "regular"
    path.write_bytes(bytes(SIZE))
    return [os.open(path, os.O_RDWR)]


def _socketpair_dead_peer() -> list[int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    return [ours.detach()]


def _stream_socketpair() -> list[int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return [ours.detach(), theirs.detach()]


def _dev_null() -> list[int]:
    return [os.open(os.devnull, os.O_RDWR)]


WRONG_KINDS: dict[str, Callable[[Path], list[int]]] = {
    "memfd": lambda _: _memfd(),
    "pipe-read-end": lambda _: _pipe_read(),
    "pipe-write-end": lambda _: _pipe_write(),
    "regular-file": _regular_file,
    "dev-null": lambda _: _dev_null(),
    "seqpacket-socketpair-dead-peer": lambda _: _socketpair_dead_peer(),
    "stream-socketpair": lambda _: _stream_socketpair(),
}


@pytest.mark.parametrize("kind", sorted(WRONG_KINDS))
def test_import_of_wrong_kind_of_fd_is_einval(dev: Device, tmp_path: Path, kind: str) -> None:
    """A descriptor that is not a dma-buf imports as EINVAL; the connection keeps working."""
    fds = WRONG_KINDS[kind](tmp_path)
    try:
        assert errno_of(dev.prime_fd_to_handle, fds[0]) == errno.EINVAL
        assert dev.version() is not None
    finally:
        for fd in fds:
            os.close(fd)


def test_import_of_silent_seqpacket_socket_is_einval(dev: Device) -> None:
    """One end of a socketpair whose other end is open but never answers: EINVAL."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert errno_of(dev.prime_fd_to_handle, ours.fileno()) == errno.EINVAL
        assert dev.version() is not None
    finally:
        ours.close()
        theirs.close()


def test_import_of_own_daemon_connection_is_einval(daemon: DaemonProcess) -> None:
    """Importing the client's own daemon connection socket: EINVAL, and the connection lives."""
    # the daemon must not speak on it: whoever read the answer first decided the outcome,
    # so one try could pass by luck
    for _ in range(8):
        with Device.open(daemon.socket_path) as dev:
            err = errno_of(dev.prime_fd_to_handle, dev.transport.sock.fileno())
            assert err == errno.EINVAL
            handle = dev.gem_create(PAGE_SIZE)
            dev.gem_close(handle)


def test_import_of_another_connection_socket_is_einval(dev: Device, daemon: DaemonProcess) -> None:
    """Another live daemon connection (of this daemon) is not a dma-buf either: EINVAL."""
    with Device.open(daemon.socket_path) as other:
        assert errno_of(dev.prime_fd_to_handle, other.transport.sock.fileno()) == errno.EINVAL
        assert other.version() is not None
    assert dev.version() is not None


@pytest.mark.parametrize("op", ["mmap", "sync", "llseek"])
def test_dma_buf_ops_on_a_memfd_are_einval(dev: Device, op: str) -> None:
    """DMA_BUF_MMAP, DMA_BUF_IOCTL_SYNC and DMA_BUF_LLSEEK on a plain memfd: EINVAL."""
    (fd,) = _memfd()
    try:
        if op == "mmap":
            err = errno_of(dma_buf_mmap_request, dev, fd, 0, PAGE_SIZE)
        elif op == "sync":
            err = errno_of(dev.dmabuf_sync, fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
        else:
            err = errno_of(llseek, dev, fd, 0, SEEK_END)
        assert err == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "flags",
    [
        DRM_CLOEXEC - 1,
        DRM_CLOEXEC + 1,
        DRM_RDWR - 1,
        DRM_RDWR + 1,
        DRM_CLOEXEC | DRM_RDWR | 0x4,
        1 << 31,
        0xFFFF_FFFF,
    ],
    ids=["cloexec-1", "cloexec+1", "rdwr-1", "rdwr+1", "both+4", "bit31", "all"],
)
def test_export_with_unknown_flags_is_einval(dev: Device, flags: int) -> None:
    """PRIME_HANDLE_TO_FD flags other than DRM_CLOEXEC | DRM_RDWR: EINVAL."""
    handle = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.prime_handle_to_fd, handle, flags) == errno.EINVAL


def test_export_unknown_flags_checked_before_handle(dev: Device) -> None:
    """Bad flags on a handle that does not exist: EINVAL (flags are checked first)."""
    assert errno_of(dev.prime_handle_to_fd, 0xDEAD, DRM_CLOEXEC + 1) == errno.EINVAL


@pytest.mark.parametrize(
    "flags",
    [0, DRM_CLOEXEC, DRM_RDWR, DRM_CLOEXEC | DRM_RDWR],
    ids=["0", "cloexec", "rdwr", "both"],
)
def test_export_valid_flags_give_a_dma_buf(dev: Device, flags: int) -> None:
    """Each valid flag combination exports; the descriptor is close-on-exec iff DRM_CLOEXEC."""
    handle = dev.gem_create(2 * PAGE_SIZE)
    fd = dev.prime_handle_to_fd(handle, flags)
    try:
        assert dev.dmabuf_size(fd) == 2 * PAGE_SIZE
        assert os.get_inheritable(fd) == (not flags & DRM_CLOEXEC)
    finally:
        os.close(fd)


def test_export_of_unknown_handle_is_enoent(dev: Device) -> None:
    """PRIME_HANDLE_TO_FD of a handle that never existed, or was closed: ENOENT."""
    assert errno_of(dev.prime_handle_to_fd, 0xFFFF) == errno.ENOENT
    assert errno_of(dev.prime_handle_to_fd, 0) == errno.ENOENT
    handle = dev.gem_create(PAGE_SIZE)
    dev.gem_close(handle)
    assert errno_of(dev.prime_handle_to_fd, handle) == errno.ENOENT


def test_export_of_another_files_handle_is_enoent(dev: Device, daemon: DaemonProcess) -> None:
    """A handle number valid only in another file: ENOENT here."""
    with Device.open(daemon.socket_path) as other:
        theirs = other.gem_create(PAGE_SIZE)  # dev (a fresh file) holds no handle yet
        assert errno_of(dev.prime_handle_to_fd, theirs) == errno.ENOENT


def test_export_of_vm_private_bo_is_eperm(dev: Device) -> None:
    """A BO created private to a VM cannot be exported: EPERM."""
    vm = dev.vm_create()
    handle = dev.gem_create(PAGE_SIZE, vm_id=vm)
    assert errno_of(dev.prime_handle_to_fd, handle) == errno.EPERM
    assert errno_of(dev.prime_handle_to_fd, handle, 0) == errno.EPERM


def test_read_only_dma_buf_maps_read_only_and_writable_shared_is_eacces(
    daemon: DaemonProcess, dev: Device, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """No DRM_RDWR: maps read-only anywhere, writable shared is EACCES, re-export is read-only."""
    handle, fd = exported(dev, b"read-only", flags=DRM_CLOEXEC)
    again = dev.prime_handle_to_fd(handle, DRM_CLOEXEC | DRM_RDWR)
    try:
        assert ino(again) == ino(fd)
        with dev.dmabuf_mmap(fd, prot=PROT_READ) as mp:
            assert mp[0:9] == b"read-only"
        assert errno_of(dev.dmabuf_mmap, fd, prot=RW) == errno.EACCES
        assert errno_of(dev.dmabuf_mmap, again, prot=RW) == errno.EACCES
        assert errno_of(dev.dmabuf_mmap, fd, prot=PROT_WRITE) == errno.EACCES
        b = agents(daemon)
        result = b.run(
            """
            (fd,) = fds
            with dev.dmabuf_mmap(fd, prot=PROT_READ) as mp:
                seen = mp[0:9].decode()
            result = [seen, errno_of(dev.dmabuf_mmap, fd, prot=PROT_READ | PROT_WRITE)]
            os.close(fd)
            """,
            [fd],
        )
        assert result == ["read-only", errno.EACCES]
    finally:
        os.close(fd)
        os.close(again)


def test_read_only_dma_buf_mmap_descriptor_cannot_be_mapped_writable(dev: Device) -> None:
    """A read-only dma-buf's mmap descriptor is O_RDONLY: a writable shared mmap of it is EACCES."""
    handle, fd = exported(dev, b"sealed", flags=DRM_CLOEXEC)
    try:
        reply, fds = dev.ioctl_fds(
            Op.DMA_BUF_MMAP,
            m.XedMmap(offset=0, length=PAGE_SIZE, prot=PROT_READ, flags=MAP_SHARED),
            fds=[fd],
        )
        (memfd,) = fds
        try:
            assert fcntl.fcntl(memfd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            with mmap.mmap(memfd, PAGE_SIZE, mmap.MAP_SHARED, PROT_READ, offset=reply.offset) as ro:
                assert ro[0:6] == b"sealed"
            with pytest.raises(OSError) as e:
                mmap.mmap(memfd, PAGE_SIZE, mmap.MAP_SHARED, RW, offset=reply.offset)
            assert e.value.errno == errno.EACCES
        finally:
            os.close(memfd)
        with dev.mmap_bo(handle) as mine:
            assert mine[0:6] == b"sealed"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("offset", "length", "prot", "flags"),
    [
        (0, SIZE + PAGE_SIZE, RW, MAP_SHARED),
        (0, 2 * SIZE, RW, MAP_SHARED),
        (SIZE // 2, SIZE, RW, MAP_SHARED),
        (SIZE, PAGE_SIZE, RW, MAP_SHARED),
        (1 << 62, PAGE_SIZE, RW, MAP_SHARED),
        (PAGE_SIZE + 1, PAGE_SIZE, RW, MAP_SHARED),
        (PAGE_SIZE // 2, PAGE_SIZE, RW, MAP_SHARED),
        (0, 0, RW, MAP_SHARED),
        (0, PAGE_SIZE, RW, MAP_PRIVATE),
        (0, PAGE_SIZE, PROT_READ, MAP_PRIVATE),
        (0, PAGE_SIZE, RW, 0),
        (0, PAGE_SIZE, RW, MAP_SHARED | MAP_PRIVATE),
        (0, PAGE_SIZE, 0x8, MAP_SHARED),
    ],
    ids=[
        "length-beyond-end",
        "twice-the-size",
        "offset+length-beyond",
        "offset-at-end",
        "offset-far-away",
        "unaligned-offset",
        "half-page-offset",
        "length-zero",
        "private",
        "private-read-only",
        "no-share-flag",
        "shared+private",
        "unknown-prot",
    ],
)
def test_dma_buf_mmap_bad_arguments_are_einval(
    dev: Device, offset: int, length: int, prot: int, flags: int
) -> None:
    """DMA_BUF_MMAP beyond the end, unaligned, empty, private or with bad prot: EINVAL."""
    _, fd = exported(dev)
    try:
        err = errno_of(dma_buf_mmap_request, dev, fd, offset, length, prot, flags)
        assert err == errno.EINVAL
    finally:
        os.close(fd)


def test_dma_buf_mmap_of_the_last_page_works(dev: Device) -> None:
    """The largest legal range ending exactly at the end of the buffer maps."""
    _, fd = exported(dev)
    try:
        reply = dma_buf_mmap_request(dev, fd, SIZE - PAGE_SIZE, PAGE_SIZE)
        assert (reply.offset, reply.length) == (SIZE - PAGE_SIZE, PAGE_SIZE)
    finally:
        os.close(fd)


def test_dma_buf_llseek_tells_the_size(dev: Device) -> None:
    """llseek (0, SEEK_END) is the size for 4 KiB << i, (0, SEEK_SET) is 0 (IGT llseek-size)."""
    for i in range(10):
        size = PAGE_SIZE << i
        handle = dev.gem_create(size)
        fd = dev.prime_handle_to_fd(handle)
        try:
            assert llseek(dev, fd, 0, SEEK_END) == size
            assert llseek(dev, fd, 0, SEEK_SET) == 0
            assert dev.dmabuf_size(fd) == size
        finally:
            os.close(fd)
            dev.gem_close(handle)


@pytest.mark.parametrize(
    ("offset", "whence"),
    [
        (-1, SEEK_END),
        (1, SEEK_END),
        (1, SEEK_SET),
        (SIZE, SEEK_SET),
        (SIZE + 1, SEEK_SET),
        (SIZE - 1, SEEK_SET),
        (0, 1),  # SEEK_CUR
        (0, 3),  # SEEK_DATA
        (0, 4),  # SEEK_HOLE
        (0, 0xFFFF_FFFF),
    ],
    ids=[
        "minus-1-end",
        "plus-1-end",
        "1-set",
        "size-set",
        "size+1-set",
        "size-1-set",
        "cur",
        "data",
        "hole",
        "whence-max",
    ],
)
def test_dma_buf_llseek_anything_else_is_einval(dev: Device, offset: int, whence: int) -> None:
    """llseek other than offset 0 with SEEK_SET or SEEK_END: EINVAL (IGT basic-llseek-bad)."""
    _, fd = exported(dev)
    try:
        assert errno_of(llseek, dev, fd, offset, whence) == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "flags",
    [
        DMA_BUF_SYNC_VALID_FLAGS_MASK + 1,
        0xFFFF_FFFF_FFFF_FFFF,
        DMA_BUF_SYNC_END,
        DMA_BUF_SYNC_START,
        DMA_BUF_SYNC_RW | 0x10,
        1 << 63,
    ],
    ids=["mask+1", "all-ones", "end-alone", "zero", "rw+0x10", "bit63"],
)
def test_dma_buf_sync_bad_flags_are_einval(dev: Device, flags: int) -> None:
    """DMA_BUF_IOCTL_SYNC with unknown bits, or neither READ nor WRITE: EINVAL."""
    _, fd = exported(dev)
    try:
        assert errno_of(dev.dmabuf_sync, fd, flags) == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "direction", [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW], ids=["r", "w", "rw"]
)
def test_dma_buf_sync_valid_flags_are_accepted(dev: Device, direction: int) -> None:
    """START and END with READ, WRITE or RW are accepted, on a mapped dma-buf."""
    _, fd = exported(dev)
    try:
        with dev.dmabuf_mmap(fd) as mp:
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_START | direction)
            mp[0:2] = b"ok"
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
    finally:
        os.close(fd)


def test_dma_buf_sync_end_without_start_is_accepted(dev: Device) -> None:
    """END without a START is not an error (the kernel keeps no such state)."""
    _, fd = exported(dev)
    try:
        for direction in (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW):
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
            dev.dmabuf_sync(fd, DMA_BUF_SYNC_END | direction)
    finally:
        os.close(fd)


# --- foreign imports: a dma-buf of another daemon ---------------------------------------


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


def wait_for(daemon: DaemonProcess, predicate: Callable[[tuple[int, Any]], bool]) -> Any:
    """Poll baseline() (up to ~10 s) until `predicate` holds; return the last reading."""
    current = baseline(daemon)
    for _ in range(500):
        if predicate(current):
            break
        time.sleep(0.02)
        current = baseline(daemon)
    return current


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
