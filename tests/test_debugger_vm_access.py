"""The debugger's DEBUG_VM_ACCESS over BO and userptr VMAs, racing invalidations
included: what a debugger attached to a target reads and writes through the target's VM,
and what it is refused.

The targets, fixtures and helpers are debugger_support.py's, as test_debugger.py's are.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from errno import EFAULT, EINVAL, ENOENT, ENOMEM
from pathlib import Path

import debugger_support
import msgpack
import pytest
from debugger_support import (
    BO_PATTERN,
    BO_SIZE,
    BO_VA,
    HOLE_VA,
    HOST_PATTERN,
    HOST_SIZE,
    MAX_ACCESS,
    NULL_VA,
    UP_VA,
    Target,
    access,
    errno_of,
)
from helpers import next_reply

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.codec import to_wire
from protocols.constants import PAGE_SIZE

# debugger_support's fixtures, for this module's tests too
dbg, targets = debugger_support.dbg, debugger_support.targets


# --- DEBUG_VM_ACCESS ---------------------------------------------------------------------------


@pytest.fixture
def attached(
    daemon: DaemonProcess, dbg: Device, targets: Callable[[DaemonProcess], Target]
) -> Target:
    """A target in the usual state, with `dbg` attached to it."""
    target = targets(daemon).setup()
    dbg.debug_attach(target.pid)
    return target


def test_read_bo_through_the_vm(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS reads a target's BO at its GPU address."""
    t = attached
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 64) == BO_PATTERN[:64]
    tail = dbg.debug_vm_read(t.client_id, t.vm, BO_VA + 0x1234, 0x200)
    assert tail == BO_PATTERN[0x1234:0x1434]
    assert access(dbg, t.client_id, t.vm, BO_VA, 8).retries == 0


def test_patch_bo_target_cpu_mapping_sees_it(dbg: Device, attached: Target) -> None:
    """A DEBUG_VM_ACCESS write lands in the BO: the target's own CPU mapping sees it."""
    t = attached
    assert dbg.debug_vm_write(t.client_id, t.vm, BO_VA + PAGE_SIZE - 4, b"patched!") == 8
    seen = t.run(f"result = cpu[{PAGE_SIZE - 8}:{PAGE_SIZE + 8}].hex()")
    assert (
        bytes.fromhex(seen)
        == BO_PATTERN[PAGE_SIZE - 8 : PAGE_SIZE - 4]
        + b"patched!"
        + (BO_PATTERN[PAGE_SIZE + 4 : PAGE_SIZE + 8])
    )
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA + PAGE_SIZE - 4, 8) == b"patched!"


def test_read_and_write_userptr(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS reads and writes a userptr VMA: the target sees it in host memory."""
    t = attached
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 0x3000, 32) == HOST_PATTERN[0x3000:0x3020]
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x10, b"written by dbg")
    assert t.run("result = hm[0x10:0x1e].hex()") == b"written by dbg".hex()


def test_access_across_a_bo_and_a_userptr_in_one_call(dbg: Device, attached: Target) -> None:
    """One DEBUG_VM_ACCESS spans a BO VMA and the userptr VMA after it, reading and writing."""
    t = attached
    data = dbg.debug_vm_read(t.client_id, t.vm, UP_VA - 16, 32)
    assert data == BO_PATTERN[-16:] + HOST_PATTERN[:16]
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA - 8, b"BObytes!HOSTmem!")
    seen = t.run(f"result = [cpu[{BO_SIZE - 8}:{BO_SIZE}].hex(), hm[0:8].hex()]")
    assert seen == [b"BObytes!".hex(), b"HOSTmem!".hex()]


def test_read_of_32_kib_across_vmas(dbg: Device, attached: Target) -> None:
    """A read of exactly 32 KiB (the limit) across the BO and the userptr is served whole."""
    t = attached
    data = dbg.debug_vm_read(t.client_id, t.vm, BO_VA + PAGE_SIZE, MAX_ACCESS)
    assert data == BO_PATTERN[PAGE_SIZE:] + HOST_PATTERN[: MAX_ACCESS - PAGE_SIZE]


@pytest.mark.parametrize(
    "addr,length",
    [
        (HOLE_VA, 8),  # nothing bound
        (BO_VA - 8, 16),  # starts in the hole before the BO
        (0, PAGE_SIZE),
    ],
)
def test_access_of_unmapped_address_is_einval(
    dbg: Device, attached: Target, addr: int, length: int
) -> None:
    """DEBUG_VM_ACCESS starting at an address with nothing bound is EINVAL, read or
    write, as xe_eudebug_vm_access answers an offset no VMA holds (even one whose range
    runs on into a binding)."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, addr, length) == EINVAL
    assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, addr, b"x" * length) == EINVAL


def test_access_running_off_the_end_of_a_binding_is_short(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS running from the userptr into the hole after it reads and writes
    the userptr's part and answers that count, no error (xe's eudebug VM file: pread
    and pwrite return the bytes done before the VMA they could not reach)."""
    t = attached
    end = UP_VA + HOST_SIZE
    assert dbg.debug_vm_read(t.client_id, t.vm, end - 8, 16) == HOST_PATTERN[-8:]
    reply = access(dbg, t.client_id, t.vm, end - 8, 16)
    assert (reply.data, reply.length) == (HOST_PATTERN[-8:], 8)
    assert dbg.debug_vm_write(t.client_id, t.vm, end - 8, b"userptr!nothing!") == 8
    assert t.run("result = hm[HOST_SIZE - 8:HOST_SIZE].hex()") == b"userptr!".hex()


def test_access_of_null_binding_is_efault(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS of a NULL binding is EFAULT, read or write."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, NULL_VA, 8) == EFAULT
    assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, NULL_VA + 8, b"12345678") == EFAULT


def test_write_through_a_read_only_binding_lands(dbg: Device, attached: Target) -> None:
    """A READONLY binding of the BO takes the debugger's write, as xe's eudebug writes
    through the BO whatever the VMA's flags (a GPU store there still faults: test_vm);
    the target sees the bytes through its own mapping."""
    t = attached
    ro_va = 0x5_0000_0000
    t.run(f"dev.vm_bind(vm, bo, {ro_va}, flags=DRM_XE_VM_BIND_FLAG_READONLY)")
    assert dbg.debug_vm_write(t.client_id, t.vm, ro_va + 16, b"breakpt!") == 8
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA + 16, 8) == b"breakpt!"
    assert t.run("result = cpu[16:24].hex()") == b"breakpt!".hex()


@pytest.mark.parametrize("length", [0, MAX_ACCESS + 1, 1 << 40])
def test_read_length_zero_or_above_32_kib_is_einval(
    dbg: Device, attached: Target, length: int
) -> None:
    """DEBUG_VM_ACCESS reading 0 bytes or more than 32 KiB is EINVAL."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, BO_VA, length) == EINVAL


def test_write_of_no_data_is_einval(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS writing no data (length 0) is EINVAL."""
    t = attached
    args = m.XedDebugVmAccess(client_id=t.client_id, vm_id=t.vm, addr=BO_VA, write=1, data=b"")
    assert errno_of(dbg.ioctl, Op.DEBUG_VM_ACCESS, args) == EINVAL


def test_write_above_32_kib_is_einval(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS writing more than 32 KiB (raw frame) is EINVAL and writes nothing."""
    t = attached
    args = m.XedDebugVmAccess(client_id=t.client_id, vm_id=t.vm, addr=BO_VA, write=1, data=b"w")
    wire = dict(to_wire(args), data=b"w" * (MAX_ACCESS + 1))
    dbg.transport.sock.send(msgpack.packb([77, int(Op.DEBUG_VM_ACCESS), wire], use_bin_type=True))
    while True:
        data, fds = dbg.transport.recv()
        assert data, "the daemon hung up"
        reply = decode_incoming(data, tuple(fds), {77: Op.DEBUG_VM_ACCESS})
        if isinstance(reply, Reply):
            break
    assert (reply.id, reply.errno) == (77, EINVAL)
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 8) == BO_PATTERN[:8]
    assert t.run("result = cpu[0:8].hex()") == BO_PATTERN[:8].hex()


def test_access_unknown_client_id_is_enoent(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS naming a connection that does not exist is ENOENT."""
    assert errno_of(dbg.debug_vm_read, 0xFFFF_FFF0, attached.vm, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_read, 0, attached.vm, BO_VA, 8) == ENOENT


def test_access_client_of_process_not_attached_is_enoent(
    daemon: DaemonProcess,
    dbg: Device,
    dev: Device,
    attached: Target,
    targets: Callable[[DaemonProcess], Target],
) -> None:
    """DEBUG_VM_ACCESS on a connection of a process we are not attached to is ENOENT."""
    other = targets(daemon).setup()
    assert errno_of(dbg.debug_vm_read, other.client_id, other.vm, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_write, other.client_id, other.vm, BO_VA, b"no") == ENOENT
    mine = dev.vm_create()  # the debugger process's own drm connection: not attached either
    bo = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(mine, bo, BO_VA)
    assert errno_of(dbg.debug_vm_read, dev.client_id, mine, BO_VA, 8) == ENOENT
    assert errno_of(dbg.debug_vm_read, dbg.client_id, 1, BO_VA, 8) == ENOENT  # itself


def test_access_unknown_vm_is_enoent(dbg: Device, attached: Target) -> None:
    """DEBUG_VM_ACCESS on a VM id the target connection does not have is ENOENT."""
    t = attached
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm + 100, BO_VA, 8) == ENOENT
    destroyed = t.run("v = dev.vm_create(); dev.vm_destroy(v); result = v")
    assert errno_of(dbg.debug_vm_read, t.client_id, destroyed, BO_VA, 8) == ENOENT


def test_access_of_freed_host_memory_is_efault(dbg: Device, attached: Target) -> None:
    """Access to host memory the target freed is EFAULT; kept pages and the BO still work."""
    t = attached
    t.run("hm.free(PAGE_SIZE, PAGE_SIZE)")
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA + PAGE_SIZE, 8) == EFAULT
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA, 2 * PAGE_SIZE) == EFAULT
    write = dbg.debug_vm_write
    assert errno_of(write, t.client_id, t.vm, UP_VA + PAGE_SIZE + 8, b"freed") == EFAULT
    assert t.run("result = hm[PAGE_SIZE:PAGE_SIZE + 8].hex()") == bytes(8).hex()
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA, 16) == HOST_PATTERN[:16]
    assert (
        dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 2 * PAGE_SIZE, 16)
        == (HOST_PATTERN[2 * PAGE_SIZE : 2 * PAGE_SIZE + 16])
    )
    assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 16) == BO_PATTERN[:16]


def test_access_after_replace_reads_the_new_contents(dbg: Device, attached: Target) -> None:
    """After the target replaces host memory under its userptr, a read sees the new bytes."""
    t = attached
    t.run("hm.replace(0, b'R' * PAGE_SIZE)")
    assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA, PAGE_SIZE) == b"R" * PAGE_SIZE


def test_access_of_a_userptr_split_by_a_partial_unbind(dbg: Device, attached: Target) -> None:
    """A userptr split by a partial unbind lists as two VMAs and its tail reads the right bytes."""
    t = attached
    t.run("dev.vm_unbind(vm, UP_VA + PAGE_SIZE, PAGE_SIZE)")
    dbg.debug_detach(t.pid)
    (vm,) = dbg.debug_attach(t.pid).vms
    userptrs = sorted((b.va, b.range, b.userptr) for b in vm.bindings if b.kind == "userptr")
    assert userptrs == [
        (UP_VA, PAGE_SIZE, t.host),
        (UP_VA + 2 * PAGE_SIZE, HOST_SIZE - 2 * PAGE_SIZE, t.host + 2 * PAGE_SIZE),
    ]
    tail = dbg.debug_vm_read(t.client_id, t.vm, UP_VA + 2 * PAGE_SIZE, 16)
    assert tail == HOST_PATTERN[2 * PAGE_SIZE : 2 * PAGE_SIZE + 16]
    hole = UP_VA + PAGE_SIZE  # the page unbound: nothing there, as at any hole
    assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, hole, 8) == EINVAL


RACE = """
stop = argv_stop
i = 0
while not os.path.exists(stop) and i < 1_000_000:
    i += 1
    hm.replace(0, bytes([i % 250 + 1]) * HOST_SIZE)
result = {"replaces": i, "last": i % 250 + 1}
"""


def test_read_racing_invalidation_retries_and_is_current(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Reads racing replace() retry at least once, never return torn pages, end on the last fill."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    retries = 0
    reads = 0
    try:
        while reads < 500 and (not retries or reads < 50):  # at least 50, to look for tears
            reply = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE)
            reads += 1
            retries += reply.retries
            assert len(reply.data) == HOST_SIZE
            for page in range(0, HOST_SIZE, PAGE_SIZE):
                chunk = reply.data[page : page + PAGE_SIZE]
                if chunk == HOST_PATTERN[page : page + PAGE_SIZE]:
                    continue  # not replaced yet when this page was read
                fills = set(chunk)
                assert len(fills) == 1, f"read {reads}: page {page // PAGE_SIZE} is torn"
                assert 1 <= fills.pop() <= 250, f"read {reads}: page {page // PAGE_SIZE} freed?"
    finally:
        stop.touch()
        done = t.wait()
    assert retries > 0, f"no retry in {reads} reads racing {done['replaces']} replaces"
    final = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE)
    assert final.data == bytes([done["last"]]) * HOST_SIZE
    assert final.retries == 0


def test_write_racing_invalidation_lands_in_current_memory(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Debugger writes racing replace() are served, and a later write shows in host memory."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    try:
        for n in range(50):
            dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x100, n.to_bytes(4, "little"))
    finally:
        stop.touch()
        t.wait()
    dbg.debug_vm_write(t.client_id, t.vm, UP_VA + 0x100, b"last")
    assert t.run("result = hm[0x100:0x104].hex()") == b"last".hex()


MIN_READS = 200  # reads racing the replaces, at least (old code tore about 1 in 6)
MAX_READS = 5000  # the bound, should the target's replaces be slow to come


def one_generation(data: bytes) -> int | None:
    """The fill (1 to 250) every byte of `data` has, or None if it is not one fill."""
    fills = set(data)
    if len(fills) != 1:
        return None
    fill = fills.pop()
    return fill if 1 <= fill <= 250 else None


def test_read_racing_invalidation_sees_one_generation(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """Each 32 KiB read racing replace() sees one generation of the userptr's pages, whole
    (the kernel copies under the notifier lock), never pages of two replaces."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    seen: set[int] = set()
    reads = 0
    try:
        while reads < MAX_READS and (reads < MIN_READS or len(seen) < 3):
            data = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE).data
            reads += 1
            if data == HOST_PATTERN:
                continue  # before the first replace
            fill = one_generation(data)
            pages = [data[p] for p in range(0, HOST_SIZE, PAGE_SIZE)]
            assert fill is not None, f"read {reads} mixes generations: page fills {pages}"
            seen.add(fill)
    finally:
        stop.touch()
        t.wait()
    assert len(seen) >= 3, f"{reads} reads saw only generations {seen}: no race"


def test_write_racing_invalidation_lands_once_and_whole(
    daemon: DaemonProcess,
    dbg: Device,
    targets: Callable[[DaemonProcess], Target],
    tmp_path: Path,
) -> None:
    """A 32 KiB debugger write racing replace() lands whole in one generation: read back
    at once, the range is all of that write, or all of a later replace, never part of each."""
    t = targets(daemon).setup()
    dbg.debug_attach(t.pid)
    stop = tmp_path / "stop"
    t.start(f"argv_stop = {str(stop)!r}\n" + textwrap.dedent(RACE))
    landed = replaced = 0
    n = 0
    try:
        while n < MAX_READS and (n < MIN_READS or not landed or not replaced):
            n += 1
            stamp = (n.to_bytes(4, "little") + b"dbg!") * (HOST_SIZE // 8)
            access(dbg, t.client_id, t.vm, UP_VA, data=stamp)
            back = access(dbg, t.client_id, t.vm, UP_VA, HOST_SIZE).data
            if back == stamp:
                landed += 1
                continue
            pages = [back[p : p + 8] for p in range(0, HOST_SIZE, PAGE_SIZE)]
            assert one_generation(back) is not None, f"write {n} torn: pages start {pages}"
            replaced += 1  # a replace came after the write, over all of it
    finally:
        stop.touch()
        done = t.wait()
    assert landed and replaced, f"{n} writes: {landed} read back, {replaced} replaced: no race"
    final = (b"last" + b"dbg!") * (HOST_SIZE // 8)
    access(dbg, t.client_id, t.vm, UP_VA, data=final)
    assert t.run("result = hm[0:HOST_SIZE].hex()") == final.hex()
    assert done["replaces"] > 0


def test_userptr_access_disabled_is_einval_bo_still_works(
    make_daemon: Callable[..., DaemonProcess], targets: Callable[[DaemonProcess], Target]
) -> None:
    """With [debugger] userptr_access = false userptr ranges are EINVAL while BO ranges work."""
    daemon = make_daemon("[debugger]\nuserptr_access = false\n")
    t = targets(daemon).setup()
    with Device.open(daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(t.pid)
        assert errno_of(dbg.debug_vm_read, t.client_id, t.vm, UP_VA, 8) == EINVAL
        assert dbg.debug_vm_read(t.client_id, t.vm, UP_VA - 8, 16) == BO_PATTERN[-8:]  # short
        assert errno_of(dbg.debug_vm_write, t.client_id, t.vm, UP_VA + 8, b"nope") == EINVAL
        assert t.run("result = hm[8:12].hex()") == HOST_PATTERN[8:12].hex()
        assert dbg.debug_vm_read(t.client_id, t.vm, BO_VA, 16) == BO_PATTERN[:16]
        dbg.debug_vm_write(t.client_id, t.vm, BO_VA, b"still ok")
        assert t.run("result = cpu[0:8].hex()") == b"still ok".hex()


def test_userptr_access_disabled_write_across_bo_and_userptr_is_short(
    make_daemon: Callable[..., DaemonProcess], targets: Callable[[DaemonProcess], Target]
) -> None:
    """With userptr access off, a BO+userptr write writes the BO part and answers its
    count (the userptr VMA refused after it: a short write), host memory untouched."""
    daemon = make_daemon("[debugger]\nuserptr_access = false\n")
    t = targets(daemon).setup()
    with Device.open(daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(t.pid)
        assert dbg.debug_vm_write(t.client_id, t.vm, UP_VA - 8, b"B" * 16) == 8
        assert t.run(f"result = cpu[{BO_SIZE - 8}:{BO_SIZE}].hex()") == (b"B" * 8).hex()
        assert t.run("result = hm[0:8].hex()") == HOST_PATTERN[:8].hex()


def test_userptr_access_default_is_on(daemon: DaemonProcess, dbg: Device, attached: Target) -> None:
    """Without configuration the daemon serves userptr ranges to the debugger."""
    assert dbg.debug_vm_read(attached.client_id, attached.vm, UP_VA, 4) == HOST_PATTERN[:4]


CHANGE = """
dev.ioctl(Op.HOST_MEMORY_INVALIDATE,
          m.XedHostMemoryInvalidate(addr=hm.base, length=PAGE_SIZE, event={event}))
"""


def test_accesses_waiting_on_a_change_count_against_fence_waits(
    make_daemon: Callable[..., DaemonProcess], targets: Callable[[DaemonProcess], Target]
) -> None:
    """A DEBUG_VM_ACCESS meeting host memory mid-change sleeps until the change ends,
    a wait like any other: past [limits] fence_waits of the debugger's file the next
    is ENOMEM at once, and the one asleep reads the page once the change ends."""
    daemon = make_daemon("[limits]\nfence_waits = 1\n")
    t = targets(daemon).setup()
    with Device.open(daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(t.pid)
        t.run(CHANGE.format(event=1))  # START: the page is mid-change until END
        read = m.XedDebugVmAccess(
            client_id=t.client_id, vm_id=t.vm, addr=UP_VA, length=16, write=0, data=b""
        )
        sock = dbg.transport.sock
        sock.settimeout(30)
        pending = {1000: Op.DEBUG_VM_ACCESS, 1001: Op.DEBUG_VM_ACCESS}
        for request_id in pending:
            sock.send(encode_request(request_id, Op.DEBUG_VM_ACCESS, read))

        assert next_reply(sock, pending).errno == ENOMEM  # the second, while the first sleeps
        t.run(CHANGE.format(event=2))  # END (the pages stay): the sleeper reads them
        last = next_reply(sock, pending)
        assert (last.errno, last.result.data) == (0, HOST_PATTERN[:16])
