"""Host memory and MAP_USERPTR as the ioctls see them: registration, HOST_MEMORY_INVALIDATE
and the kernel's bind checks. Batches at work on host memory and the notifier under them are
in test_userptr_batches.py, which imports the rig, fixtures and helpers from here (as
test_aux_userptr.py and test_ib_userptr.py do).

The test process is the application; the daemon is a real process of its own. Host
memory is a real memfd the client library maps and registers.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from errno import EACCES, EBUSY, EFAULT, EINVAL
from pathlib import Path
from typing import Any

import pytest
from conftest import baseline

from clients import Batch, Device, XeError, user_fence
from clients.daemon import DaemonProcess
from clients.host_memory import HostMemory
from protocols import Event, Op
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_FLAG_NULL,
    DRM_XE_VM_BIND_OP_MAP_USERPTR,
    PAGE_SIZE,
)
from xed.config import DeviceConfig

WAIT = 5_000_000_000  # ns: an upper bound, never an expectation
BATCH_VA = 0x1_0000_0000  # batch BO: fence qword at 0, batches from 0x100
BATCH_SIZE = 4 * PAGE_SIZE
DATA_VA = 0x2_0000_0000  # a BO the batches copy into
DATA_SIZE = 4 * PAGE_SIZE
USERPTR_VA = 0x3_0000_0000  # host memory bound here
HOST_SIZE = 4 * PAGE_SIZE
HUGE_PAGE = 2 << 20
MARK = 0xEE

START, END_REPLACED, END_FREED = 1, 2, 3


def errno_of(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno a refused call raised (fails the test if it succeeded)."""
    with pytest.raises(XeError) as info:
        call(*args, **kwargs)
    assert info.value.errno is not None
    return info.value.errno


def register(dev: Device, fd: int, size: int) -> None:
    """HOST_MEMORY_REGISTER of `fd` as sent (no client-side checks)."""
    dev.ioctl(Op.HOST_MEMORY_REGISTER, m.XedHostMemoryRegister(size=size), [fd])


def invalidate(dev: Device, addr: int, length: int, event: int) -> None:
    """HOST_MEMORY_INVALIDATE as sent: START and END at the test's pace."""
    dev.ioctl(
        Op.HOST_MEMORY_INVALIDATE, m.XedHostMemoryInvalidate(addr=addr, length=length, event=event)
    )


def userptr_op(obj_offset: int, addr: int, range: int, obj: int = 0, flags: int = 0) -> Any:
    return m.DrmXeVmBindOp(
        obj=obj, obj_offset=obj_offset, range=range, addr=addr,
        op=DRM_XE_VM_BIND_OP_MAP_USERPTR, flags=flags,
    )  # fmt: skip


def memfd(size: int, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) -> int:
    """A memfd of `size` bytes with `seals` (as the library seals host memory)."""
    fd = os.memfd_create("test-host-memory", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


class Rig:
    """A VM with a batch BO, a data BO, this connection's host memory bound as a
    userptr at USERPTR_VA, and an exec queue."""

    def __init__(self, dev: Device, bind_userptr: bool = True) -> None:
        self.dev = dev
        self.hm = dev.host_memory(HOST_SIZE)
        self.vm = dev.vm_create()
        self.batch_bo = dev.gem_create(BATCH_SIZE)
        dev.vm_bind(self.vm, self.batch_bo, BATCH_VA)
        self.cpu = dev.mmap_bo(self.batch_bo)
        self.data_bo = dev.gem_create(DATA_SIZE)
        dev.vm_bind(self.vm, self.data_bo, DATA_VA)
        self.data = dev.mmap_bo(self.data_bo)
        self.data[0:DATA_SIZE] = bytes([MARK]) * DATA_SIZE
        if bind_userptr:
            dev.vm_bind_userptr(self.vm, self.hm, 0, USERPTR_VA, HOST_SIZE)
        self.queue = dev.exec_queue_create(self.vm)
        self._offset = 0x100
        self._seq = 0

    def place(self, batch: Batch) -> int:
        data = batch.tobytes()
        if self._offset + len(data) > BATCH_SIZE:
            self._offset = 0x100
        offset = self._offset
        self.cpu[offset : offset + len(data)] = data
        self._offset = (offset + len(data) + 63) & ~63
        return BATCH_VA + offset

    def submit(self, batch: Batch, queue: int | None = None) -> int:
        self._seq += 1
        fence = user_fence(BATCH_VA, self._seq)
        self.dev.exec(queue or self.queue, self.place(batch), syncs=[fence])
        return self._seq

    def wait(self, seq: int, timeout: int = WAIT) -> None:
        self.dev.wait_user_fence(self.cpu.user_address(0), seq, timeout=timeout)

    def run(self, batch: Batch, queue: int | None = None) -> None:
        self.wait(self.submit(batch, queue))

    def ban_events(self) -> list[m.ExecQueueBanned]:
        return [e.data for e in self.dev.events if e.event == Event.EXEC_QUEUE_BANNED]

    def close(self) -> None:
        self.cpu.close()
        self.data.close()
        self.hm.mapping.close()


@pytest.fixture
def rig(dev: Device) -> Iterator[Rig]:
    r = Rig(dev)
    yield r
    r.close()


@pytest.fixture
def hm(dev: Device) -> Iterator[HostMemory]:
    host = dev.host_memory(HOST_SIZE)
    yield host
    host.mapping.close()


# --- HOST_MEMORY_REGISTER ------------------------------------------------------------------


def test_host_memory_register_returns_a_page_aligned_user_address(hm: HostMemory) -> None:
    """HOST_MEMORY_REGISTER answers with a page-aligned user address naming its first byte."""
    assert hm.base > 0
    assert hm.base % PAGE_SIZE == 0
    assert hm.user_address(PAGE_SIZE) == hm.base + PAGE_SIZE


def test_host_memory_register_twice_is_ebusy(dev: Device, hm: HostMemory) -> None:
    """A connection registers its host memory once: a second HOST_MEMORY_REGISTER is EBUSY."""
    fd = memfd(PAGE_SIZE)
    try:
        assert errno_of(register, dev, fd, PAGE_SIZE) == EBUSY
    finally:
        os.close(fd)
    hm[0:4] = b"kept"  # the first registration is untouched
    assert hm[0:4] == b"kept"


def test_host_memory_register_on_another_connection_is_independent(
    daemon: DaemonProcess, hm: HostMemory
) -> None:
    """Once per connection, not per process: another connection of ours registers its own."""
    with Device.open(daemon.socket_path) as other:
        mine = other.host_memory(PAGE_SIZE)
        assert mine.base != hm.base
        mine.mapping.close()


@pytest.mark.parametrize("size", [0, 100, PAGE_SIZE + 1])
def test_host_memory_register_size_zero_or_unaligned_is_einval(dev: Device, size: int) -> None:
    """HOST_MEMORY_REGISTER of size 0 or not page aligned (even the memfd's own) is EINVAL."""
    fd = memfd(size)
    try:
        assert errno_of(register, dev, fd, size) == EINVAL
    finally:
        os.close(fd)
    fd = memfd(PAGE_SIZE)  # the connection can still register afterwards
    try:
        register(dev, fd, PAGE_SIZE)
    finally:
        os.close(fd)


def test_host_memory_register_pipe_is_einval(dev: Device) -> None:
    """HOST_MEMORY_REGISTER of a pipe (not a memfd) is EINVAL."""
    read_end, write_end = os.pipe()
    try:
        assert errno_of(register, dev, read_end, PAGE_SIZE) == EINVAL
    finally:
        os.close(read_end)
        os.close(write_end)


def test_host_memory_register_regular_file_is_einval(dev: Device, tmp_path: Path) -> None:
    """HOST_MEMORY_REGISTER of a regular file on disk (not a memfd) is EINVAL."""
    path = tmp_path / "not-a-memfd"
    path.write_bytes(bytes(PAGE_SIZE))
    fd = os.open(path, os.O_RDWR)
    try:
        assert errno_of(register, dev, fd, PAGE_SIZE) == EINVAL
    finally:
        os.close(fd)


def test_host_memory_register_socket_is_einval(dev: Device) -> None:
    """HOST_MEMORY_REGISTER of a socket (not a memfd) is EINVAL."""
    a, b = socket.socketpair()
    try:
        assert errno_of(register, dev, a.fileno(), PAGE_SIZE) == EINVAL
    finally:
        a.close()
        b.close()


def test_host_memory_register_write_sealed_memfd_is_einval(dev: Device) -> None:
    """HOST_MEMORY_REGISTER of a write-sealed memfd (cannot be mapped shared writable) is EINVAL."""
    fd = os.memfd_create("sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, PAGE_SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert errno_of(register, dev, fd, PAGE_SIZE) == EINVAL
    finally:
        os.close(fd)


def test_host_memory_register_read_only_memfd_is_einval(dev: Device) -> None:
    """HOST_MEMORY_REGISTER of an O_RDONLY descriptor of a memfd is EINVAL."""
    fd = memfd(PAGE_SIZE)
    try:
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert errno_of(register, dev, ro, PAGE_SIZE) == EINVAL
        finally:
            os.close(ro)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [PAGE_SIZE, 3 * PAGE_SIZE])
def test_host_memory_register_size_not_the_memfds_is_einval(dev: Device, size: int) -> None:
    """HOST_MEMORY_REGISTER whose size differs from the memfd's (smaller or larger) is EINVAL."""
    fd = memfd(2 * PAGE_SIZE)
    try:
        assert errno_of(register, dev, fd, size) == EINVAL
    finally:
        os.close(fd)


def _unsealable(size: int) -> int:
    fd = os.memfd_create("test-host-memory", os.MFD_CLOEXEC)  # seals: F_SEAL_SEAL alone
    os.ftruncate(fd, size)
    return fd


SHRINKABLE = {
    "memfd-without-sealing": _unsealable,
    "no-seal": lambda size: memfd(size, seals=0),
    "F_SEAL_GROW-only": lambda size: memfd(size, seals=fcntl.F_SEAL_GROW),
}


@pytest.mark.parametrize("kind", sorted(SHRINKABLE))
def test_host_memory_register_memfd_that_can_shrink_is_einval(
    fresh_daemon: DaemonProcess, kind: str
) -> None:
    """HOST_MEMORY_REGISTER of a memfd not sealed F_SEAL_SHRINK (the client could truncate
    it under the daemon's mapping, which would die of SIGBUS) is EINVAL; nothing is kept."""
    d = fresh_daemon
    fd = SHRINKABLE[kind](HOST_SIZE)
    try:
        with Device.open(d.socket_path) as dev:
            before = baseline(d)
            assert errno_of(register, dev, fd, HOST_SIZE) == EINVAL
            os.ftruncate(fd, 0)  # what it kept the right to do
            assert dev.version() is not None
            assert baseline(d) == before
    finally:
        os.close(fd)


def test_host_memory_register_hugetlb_memfd_is_einval(dev: Device) -> None:
    """HOST_MEMORY_REGISTER of a hugetlb memfd, even sealed, is EINVAL: its pages can run
    out under a mapping (SIGBUS)."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | os.MFD_HUGETLB
    try:
        fd = os.memfd_create("test-host-memory", flags)
    except OSError as exc:
        pytest.skip(f"this machine cannot create a hugetlb memfd: {exc.strerror}")
    try:
        os.ftruncate(fd, HUGE_PAGE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        assert errno_of(register, dev, fd, HUGE_PAGE) == EINVAL
    finally:
        os.close(fd)


def test_host_memory_register_beyond_the_device_is_einval(fresh_daemon: DaemonProcess) -> None:
    """HOST_MEMORY_REGISTER of more than the device could ever hold (a sparse memfd) is
    EINVAL: the daemon never maps that much for one client."""
    d = fresh_daemon
    size = DeviceConfig().vram_size + DeviceConfig().system_memory + PAGE_SIZE
    fd = memfd(size)
    try:
        with Device.open(d.socket_path) as dev:
            before = baseline(d)
            assert errno_of(register, dev, fd, size) == EINVAL
            assert baseline(d) == before
    finally:
        os.close(fd)


def host_memfd(hm: HostMemory) -> int:
    """A descriptor of `hm`'s memfd, opened again through the mapping (as any process
    can for its own mappings): what a client has in hand to resize its host memory.
    The caller closes it."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    (line,) = [ln for ln in maps if ln.startswith(f"{hm.mapping.address:x}-")]
    return os.open(f"/proc/self/map_files/{line.split()[0]}", os.O_RDWR)


def test_host_memory_cannot_shrink_under_the_device(fresh_daemon: DaemonProcess) -> None:
    """The library's host memory is sealed: its ftruncate(0) is EPERM, and then a fence wait
    in it, a batch through a userptr binding of it and a VM_BIND user fence in it work."""
    d = fresh_daemon
    with Device.open(d.socket_path) as dev:
        r = Rig(dev)
        try:
            r.hm[0:16] = b"host memory here"
            fd = host_memfd(r.hm)
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)
                assert os.fstat(fd).st_size == HOST_SIZE
            finally:
                os.close(fd)
            r.hm.mapping.write_u64(0x300, 5)
            dev.wait_user_fence(r.hm.mapping.user_address(0x300), 5, timeout=0)
            r.run(Batch().mem_copy(DATA_VA, USERPTR_VA, 16).end())
            assert r.data[0:16] == b"host memory here"
            dev.exec(r.queue, r.place(Batch().end()), syncs=[user_fence(USERPTR_VA + 0x100, 77)])
            dev.wait_user_fence(r.hm.mapping.user_address(0x100), 77, timeout=WAIT)
            fence = user_fence(r.hm.mapping.user_address(0x200), 0xFE)
            dev.vm_bind(r.vm, r.data_bo, 0x6_0000_0000, syncs=[fence])
            dev.wait_user_fence(r.hm.mapping.user_address(0x200), 0xFE, timeout=WAIT)
            assert not r.ban_events()
        finally:
            r.close()
    assert d.proc is not None and d.proc.poll() is None, "the daemon died"


def test_mmap_of_host_memory_offset_is_einval(dev: Device, hm: HostMemory) -> None:
    """MMAP at the host memory's offset is EINVAL: the client maps its own memfd."""
    assert errno_of(dev.mmap, hm.base, PAGE_SIZE) == EINVAL
    assert errno_of(dev.mmap, hm.base, HOST_SIZE) == EINVAL


def test_mmap_of_another_connections_host_memory_is_eacces(
    daemon: DaemonProcess, hm: HostMemory
) -> None:
    """MMAP of another connection's host-memory offset is EACCES (not its file's)."""
    with Device.open(daemon.socket_path) as other:
        assert errno_of(other.mmap, hm.base, PAGE_SIZE) == EACCES


def test_host_memory_is_the_clients_own_memory(rig: Rig) -> None:
    """Bytes the application writes in host memory are what the device reads (shared memfd)."""
    rig.hm[0:16] = b"host memory here"
    rig.run(Batch().mem_copy(DATA_VA, USERPTR_VA, 16).end())
    assert rig.data[0:16] == b"host memory here"


# --- HOST_MEMORY_INVALIDATE ----------------------------------------------------------------


def test_host_memory_invalidate_without_host_memory_is_einval(dev: Device) -> None:
    """HOST_MEMORY_INVALIDATE on a connection with no host memory is EINVAL."""
    assert errno_of(invalidate, dev, 0x10_0000, PAGE_SIZE, START) == EINVAL


@pytest.mark.parametrize(
    "offset,length",
    [
        (-PAGE_SIZE, PAGE_SIZE),
        (HOST_SIZE, PAGE_SIZE),
        (HOST_SIZE - PAGE_SIZE, 2 * PAGE_SIZE),
        (0, 0),
    ],
)
def test_host_memory_invalidate_outside_the_range_is_einval(
    dev: Device, hm: HostMemory, offset: int, length: int
) -> None:
    """HOST_MEMORY_INVALIDATE of a range not inside the host memory (or empty) is EINVAL."""
    assert errno_of(invalidate, dev, hm.base + offset, length, START) == EINVAL


@pytest.mark.parametrize("event", [0, 4])
def test_host_memory_invalidate_unknown_event_is_einval(
    dev: Device, hm: HostMemory, event: int
) -> None:
    """HOST_MEMORY_INVALIDATE with an event other than START/END_REPLACED/END_FREED is EINVAL."""
    assert errno_of(invalidate, dev, hm.base, PAGE_SIZE, event) == EINVAL


# --- MAP_USERPTR checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("obj_offset", 8),
        ("obj_offset", PAGE_SIZE // 2),
        ("addr", 0x800),
        ("range", 0x100),
        ("range", PAGE_SIZE + 8),
    ],
)
def test_map_userptr_unaligned_is_einval(
    dev: Device, hm: HostMemory, field: str, value: int
) -> None:
    """MAP_USERPTR with obj_offset, addr or range not page aligned is EINVAL."""
    vm = dev.vm_create()
    fields = dict(obj_offset=hm.base, addr=USERPTR_VA, range=PAGE_SIZE)
    fields[field] = fields[field] + value if field != "range" else value
    assert errno_of(dev.vm_bind_ops, vm, [userptr_op(**fields)]) == EINVAL


def test_map_userptr_zero_range_is_einval(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR of range 0 is EINVAL."""
    vm = dev.vm_create()
    assert errno_of(dev.vm_bind_ops, vm, [userptr_op(hm.base, USERPTR_VA, 0)]) == EINVAL


def test_map_userptr_range_beyond_the_vm_is_einval(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR at an address range past the end of the VM is EINVAL."""
    vm = dev.vm_create()
    top = 1 << 48
    op = userptr_op(hm.base, top - PAGE_SIZE, 2 * PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_map_userptr_null_flag_is_einval(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR with DRM_XE_VM_BIND_FLAG_NULL is EINVAL (NULL is for MAP only)."""
    vm = dev.vm_create()
    op = userptr_op(0, USERPTR_VA, PAGE_SIZE, flags=DRM_XE_VM_BIND_FLAG_NULL)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


def test_map_userptr_with_obj_is_einval(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR naming a GEM object (obj non-zero) is EINVAL, as xe's check_args has it."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    assert errno_of(dev.vm_bind_ops, vm, [userptr_op(hm.base, USERPTR_VA, PAGE_SIZE, bo)]) == EINVAL


def test_map_userptr_with_unknown_obj_is_einval(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR naming any obj is EINVAL before the handle is looked up (not ENOENT)."""
    vm = dev.vm_create()
    op = userptr_op(hm.base, USERPTR_VA, PAGE_SIZE, obj=0xBAD)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EINVAL


@pytest.mark.parametrize(
    "offset,length",
    [
        (HOST_SIZE, PAGE_SIZE),  # just past the end
        (HOST_SIZE - PAGE_SIZE, 2 * PAGE_SIZE),  # runs past the end
        (-PAGE_SIZE, PAGE_SIZE),  # just before the start
        (-PAGE_SIZE, 2 * PAGE_SIZE),  # starts before it
        (1 << 30, PAGE_SIZE),  # far away
    ],
)
def test_map_userptr_outside_host_memory_is_efault(
    dev: Device, hm: HostMemory, offset: int, length: int
) -> None:
    """MAP_USERPTR of user addresses not inside this connection's host memory is EFAULT."""
    vm = dev.vm_create()
    op = userptr_op(hm.base + offset, USERPTR_VA, length)
    assert errno_of(dev.vm_bind_ops, vm, [op]) == EFAULT


def test_map_userptr_of_a_bo_mapping_is_efault(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR of a BO's fake offset (mapped, but not host memory) is EFAULT."""
    vm = dev.vm_create()
    bo = dev.gem_create(PAGE_SIZE)
    with dev.mmap_bo(bo) as cpu:
        op = userptr_op(cpu.fake_offset, USERPTR_VA, PAGE_SIZE)
        assert errno_of(dev.vm_bind_ops, vm, [op]) == EFAULT


def test_map_userptr_without_host_memory_is_efault(dev: Device) -> None:
    """MAP_USERPTR on a connection that registered no host memory is EFAULT."""
    vm = dev.vm_create()
    assert errno_of(dev.vm_bind_ops, vm, [userptr_op(0x10_0000, USERPTR_VA, PAGE_SIZE)]) == EFAULT


def test_map_userptr_of_another_connections_host_memory_is_efault(
    daemon: DaemonProcess, hm: HostMemory
) -> None:
    """MAP_USERPTR of user addresses of another connection's host memory is EFAULT."""
    with Device.open(daemon.socket_path) as other:
        mine = other.host_memory(PAGE_SIZE)
        vm = other.vm_create()
        op = userptr_op(hm.base, USERPTR_VA, PAGE_SIZE)
        assert errno_of(other.vm_bind_ops, vm, [op]) == EFAULT
        mine.mapping.close()


def test_map_userptr_over_freed_pages_is_efault(dev: Device, hm: HostMemory) -> None:
    """MAP_USERPTR over host memory the application freed is EFAULT; the rest still binds."""
    vm = dev.vm_create()
    hm.free(PAGE_SIZE, PAGE_SIZE)
    assert errno_of(dev.vm_bind_userptr, vm, hm, 0, USERPTR_VA, 2 * PAGE_SIZE) == EFAULT
    assert errno_of(dev.vm_bind_userptr, vm, hm, PAGE_SIZE, USERPTR_VA, PAGE_SIZE) == EFAULT
    dev.vm_bind_userptr(vm, hm, 0, USERPTR_VA, PAGE_SIZE)
    dev.vm_bind_userptr(vm, hm, 2 * PAGE_SIZE, USERPTR_VA + PAGE_SIZE, 2 * PAGE_SIZE)


def test_map_userptr_refused_changes_nothing(rig: Rig) -> None:
    """A VM_BIND refused for an EFAULT userptr leaves the other binds of the array undone."""
    ops = [
        m.DrmXeVmBindOp(obj=rig.data_bo, range=PAGE_SIZE, addr=0x5_0000_0000),
        userptr_op(rig.hm.base + HOST_SIZE, 0x5_0000_1000, PAGE_SIZE),
    ]
    assert errno_of(rig.dev.vm_bind_ops, rig.vm, ops) == EFAULT
    rig.run(Batch().store_dword(DATA_VA + 0x80, 1).end())  # the queue is healthy...
    seq = rig.submit(Batch().store_dword(0x5_0000_0000, 2).end())
    rig.wait(seq)
    rig.wait(seq)  # a second blocking wait: the ban event is out before its reply
    assert [e.address for e in rig.ban_events()] == [0x5_0000_0000]  # ...the BO was not bound
    assert rig.data[0:4] == bytes([MARK]) * 4
