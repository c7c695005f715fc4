"""VM export (proposal "drm/xe: support sharing VM info between XE drivers"), daemon side:
XE_VM_EXPORT and its errnos, VM_DESTROY while exported or registered, the reference the
export holds (the VM object only: the VM closes with the file that created it), and who
may be an aux driver.

The test process plays the application and, on a connection of role `aux`, the auxiliary
driver; other applications are spawned agent processes (tests/agent.py) that hand
descriptors to the test over SCM_RIGHTS. AUX_VM_IMPORT is in test_vm_export_aux.py,
AUX_VM_RESOLVE and the invalidation events in test_vm_export_resolve.py.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import socket
import stat
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from agent import Agent
from conftest import baseline

from clients import Batch, Device, user_fence
from clients.daemon import DaemonProcess
from protocols import MAX_DATAGRAM, Event, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.constants import (
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DRM_XE_VM_CREATE_FLAG_LR_MODE,
    PAGE_SIZE,
)

BASE = 0x1_0000_0000  # where tests bind their BOs
BATCH_VA = 0x2_0000_0000  # the batch BO of the ban test: fence qword first, batch after
SIZE = 4 * PAGE_SIZE
WAIT_NS = 5_000_000_000  # an upper bound, never an expectation
SETTLE = 10.0  # seconds the daemon gets to process a close (release is asynchronous)
NOBODY = 65534


# --- helpers ---------------------------------------------------------------------------------


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno `fn` fails with (it must fail)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno is not None, f"no errno: {e.value!r}"
    return e.value.errno


def counts(daemon: DaemonProcess) -> Any:
    """The daemon's object counts, from a short admin visit."""
    return baseline(daemon)[1]


def wait_until(daemon: DaemonProcess, check: Callable[[Any], bool]) -> Any:
    """Poll the object counts until `check` holds (bounded); return the last counts."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = counts(daemon)
        if check(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def settle_to(daemon: DaemonProcess, target: tuple[int, Any]) -> tuple[int, Any]:
    """Poll (descriptors, counts) until they equal `target` (bounded); return the last."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = baseline(daemon)
        if seen == target or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def vm_with_bo(dev: Device, fill: bytes = b"", size: int = SIZE) -> tuple[int, int]:
    """(vm, bo): a fresh VM with a fresh BO bound at BASE whose first bytes are `fill`."""
    vm = dev.vm_create()
    bo = dev.gem_create(size)
    if fill:
        with dev.mmap_bo(bo) as mp:
            mp[0 : len(fill)] = fill
    dev.vm_bind(vm, bo, BASE)
    return vm, bo


def raw_export(dev: Device, **fields: Any) -> None:
    """XE_VM_EXPORT with explicit fields; closes a descriptor that comes back."""
    _, fds = dev.ioctl_fds(Op.XE_VM_EXPORT, m.DrmXeVmExport(**fields))
    for fd in fds:
        os.close(fd)


def read_through_resolve(aux: Device, handle: int, va: int, length: int) -> bytes:
    """The bytes behind [va, va+length) as the aux driver sees them (one BO)."""
    spans, fds = aux.aux_vm_resolve(handle, va, length)
    try:
        (span,) = spans
        with mmap.mmap(fds[span.fd_index], 0, mmap.MAP_SHARED) as mm:
            return mm[span.offset : span.offset + span.length]
    finally:
        for fd in fds:
            os.close(fd)


# --- XE_VM_EXPORT ------------------------------------------------------------------------------


def test_vm_export_returns_a_vm_descriptor(fresh_daemon: DaemonProcess) -> None:
    """VM_EXPORT answers with a descriptor (a socket) and the daemon counts one export."""
    with Device.open(fresh_daemon.socket_path) as dev:
        vm, _ = vm_with_bo(dev)
        assert counts(fresh_daemon).vm_exports == 0
        fd = dev.vm_export(vm)
        try:
            assert stat.S_ISSOCK(os.fstat(fd).st_mode)
            assert counts(fresh_daemon).vm_exports == 1
        finally:
            os.close(fd)


@pytest.mark.parametrize(
    "fields",
    [{"pad": 1}, {"pad1": 1}, {"reserved": (1, 0)}, {"reserved": (0, 1 << 63)}],
    ids=["pad", "pad1", "reserved0", "reserved1"],
)
def test_vm_export_nonzero_pad_or_reserved_is_einval(dev: Device, fields: dict[str, Any]) -> None:
    """VM_EXPORT with pad, pad1 or reserved[] not zero is EINVAL, and exports nothing."""
    vm, _ = vm_with_bo(dev)
    assert errno_of(raw_export, dev, vm_id=vm, **fields) == errno.EINVAL
    fd = dev.vm_export(vm)  # nothing was exported by the refused call
    os.close(fd)


def test_vm_export_unknown_vm_is_einval(dev: Device) -> None:
    """VM_EXPORT of a vm_id this file does not have (never, or no longer) is EINVAL."""
    assert errno_of(dev.vm_export, 0) == errno.EINVAL
    assert errno_of(dev.vm_export, 0xFFFF) == errno.EINVAL
    vm = dev.vm_create()
    dev.vm_destroy(vm)
    assert errno_of(dev.vm_export, vm) == errno.EINVAL


def test_vm_export_of_another_files_vm_is_einval(daemon: DaemonProcess, dev: Device) -> None:
    """A VM id is per file: another connection's VM is an unknown vm_id (EINVAL)."""
    with Device.open(daemon.socket_path) as other:
        vm = other.vm_create()  # dev's file has no VM at all
        assert errno_of(dev.vm_export, vm) == errno.EINVAL
        os.close(other.vm_export(vm))


def fault_lr_queue(dev: Device) -> tuple[int, int]:
    """(vm, queue): an LR-mode VM whose exec queue ran a faulting batch and was banned."""
    vm = dev.vm_create(DRM_XE_VM_CREATE_FLAG_LR_MODE)
    bo = dev.gem_create(SIZE)
    dev.vm_bind(vm, bo, BATCH_VA)
    queue = dev.exec_queue_create(vm)
    with dev.mmap_bo(bo) as cpu:
        batch = Batch().raw(0x1F << 23).end().tobytes()  # an instruction nobody knows
        cpu[0x100 : 0x100 + len(batch)] = batch
        dev.exec(queue, BATCH_VA + 0x100, syncs=[user_fence(BATCH_VA, 1)])
        # a long-running job's user fence is never written when it faults: a wait on
        # its queue ends EIO once the queue is banned
        wait = partial(dev.wait_user_fence, cpu.user_address(0), 1, WAIT_NS, exec_queue=queue)
        assert errno_of(wait) == errno.EIO
    event = dev.wait_event(timeout=SETTLE)
    assert event.event == Event.EXEC_QUEUE_BANNED
    assert event.data.exec_queue_id == queue
    return vm, queue


def test_an_lr_vm_outlives_its_faulting_queue(dev: Device) -> None:
    """xe ends the faulting queue alone (IGT xe_exec_reset cm-cat-error unbinds after):
    the LR VM still binds, unbinds and exports, and another queue of it still runs."""
    vm, queue = fault_lr_queue(dev)
    other = dev.gem_create(PAGE_SIZE)
    dev.vm_bind(vm, other, BASE)
    dev.vm_unbind(vm, BASE, PAGE_SIZE)
    dev.vm_unbind(vm, BATCH_VA, SIZE)
    dev.vm_bind(vm, other, BATCH_VA)
    again = dev.exec_queue_create(vm)
    with dev.mmap_bo(other) as cpu:
        batch = Batch().store_dword(BATCH_VA + 0x80, 0xC0FFEE).end().tobytes()
        cpu[0x100 : 0x100 + len(batch)] = batch
        dev.exec(again, BATCH_VA + 0x100, syncs=[user_fence(BATCH_VA, 1)])
        dev.wait_user_fence(cpu.user_address(0), 1, WAIT_NS, exec_queue=again)
        assert cpu.read_u32(0x80) == 0xC0FFEE
    os.close(dev.vm_export(vm))
    dev.exec_queue_destroy(again)
    dev.exec_queue_destroy(queue)
    dev.vm_destroy(vm)


def test_vm_export_twice_is_eexist(dev: Device) -> None:
    """A VM exported already (its descriptor open) cannot be exported again: EEXIST."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        assert errno_of(dev.vm_export, vm) == errno.EEXIST
        other, _ = vm_with_bo(dev)  # another VM of the same file exports fine
        os.close(dev.vm_export(other))
    finally:
        os.close(fd)


def test_vm_export_while_registered_with_aux_is_eexist(fresh_daemon: DaemonProcess) -> None:
    """Exported, imported by an aux driver, descriptor closed: exporting again is EEXIST."""
    path = fresh_daemon.socket_path
    with Device.open(path) as dev, Device.open(path, role="aux") as aux:
        vm, _ = vm_with_bo(dev)
        fd = dev.vm_export(vm)
        try:
            reply = aux.aux_vm_import(fd, os.getpid())
        finally:
            os.close(fd)
        seen = wait_until(fresh_daemon, lambda c: c.vm_exports == 0)
        assert (seen.vm_exports, seen.aux_registrations) == (0, 1)
        assert errno_of(dev.vm_export, vm) == errno.EEXIST
        aux.aux_vm_release(reply.vm_handle)
        assert counts(fresh_daemon).aux_registrations == 0
        fd = dev.vm_export(vm)  # nothing holds it now
        os.close(fd)


def test_vm_export_again_after_last_copy_closed(fresh_daemon: DaemonProcess) -> None:
    """The export ends when the last copy closes: then VM_EXPORT works again, and DESTROY."""
    with Device.open(fresh_daemon.socket_path) as dev:
        vm, _ = vm_with_bo(dev)
        fd = dev.vm_export(vm)
        copy = os.dup(fd)
        os.close(fd)
        assert errno_of(dev.vm_export, vm) == errno.EEXIST  # a copy still holds it
        assert errno_of(dev.vm_destroy, vm) == errno.EBUSY
        os.close(copy)
        assert wait_until(fresh_daemon, lambda c: c.vm_exports == 0).vm_exports == 0
        again = dev.vm_export(vm)
        assert counts(fresh_daemon).vm_exports == 1
        os.close(again)
        assert wait_until(fresh_daemon, lambda c: c.vm_exports == 0).vm_exports == 0
        before = counts(fresh_daemon).vms
        dev.vm_destroy(vm)
        assert counts(fresh_daemon).vms == before - 1
        assert errno_of(dev.vm_export, vm) == errno.EINVAL


# --- XE_VM_DESTROY ------------------------------------------------------------------------------


def test_vm_destroy_while_exported_is_ebusy(dev: Device) -> None:
    """VM_DESTROY of a VM whose descriptor is open is EBUSY; the VM keeps working."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        assert errno_of(dev.vm_destroy, vm) == errno.EBUSY
        dev.vm_unbind(vm, BASE, PAGE_SIZE)  # still this file's VM
    finally:
        os.close(fd)


def test_vm_destroy_while_registered_is_ebusy(fresh_daemon: DaemonProcess) -> None:
    """Descriptor closed but the VM registered with an aux driver: VM_DESTROY is EBUSY."""
    path = fresh_daemon.socket_path
    with Device.open(path) as dev, Device.open(path, role="aux") as aux:
        vm, _ = vm_with_bo(dev)
        fd = dev.vm_export(vm)
        try:
            handle = aux.aux_vm_import(fd, os.getpid()).vm_handle
        finally:
            os.close(fd)
        assert wait_until(fresh_daemon, lambda c: c.vm_exports == 0).vm_exports == 0
        assert errno_of(dev.vm_destroy, vm) == errno.EBUSY
        aux.aux_vm_release(handle)
        dev.vm_destroy(vm)


def test_vm_destroy_after_export_closed_and_nothing_registered(
    fresh_daemon: DaemonProcess,
) -> None:
    """Once the descriptor is closed and no aux driver holds the VM, VM_DESTROY frees it."""
    with Device.open(fresh_daemon.socket_path) as dev:
        start = baseline(fresh_daemon)
        vm, bo = vm_with_bo(dev)
        os.close(dev.vm_export(vm))
        assert wait_until(fresh_daemon, lambda c: c.vm_exports == 0).vm_exports == 0
        dev.vm_destroy(vm)
        dev.gem_close(bo)
        assert settle_to(fresh_daemon, start) == start


def test_vm_destroy_right_after_the_last_close_succeeds(fresh_daemon: DaemonProcess) -> None:
    """close(2) of the last copy releases the export at once, as in the kernel: a
    VM_DESTROY on the very next line succeeds, every time (it raced the daemon noticing
    the hangup, and answered EBUSY now and then); nothing is left behind."""
    with Device.open(fresh_daemon.socket_path) as dev:
        start = baseline(fresh_daemon)
        for _ in range(200):
            vm = dev.vm_create()
            os.close(dev.vm_export(vm))
            dev.vm_destroy(vm)
        assert settle_to(fresh_daemon, start) == start


# --- lifetime: the VM closes with the file that created it -------------------------------------

APP = f"""
vm = dev.vm_create()
bo = dev.gem_create({SIZE})
with dev.mmap_bo(bo) as mp:
    mp[0:16] = b"written by app A"
dev.vm_bind(vm, bo, {BASE})
send = [dev.vm_export(vm)]
result = os.getpid()
"""
VA_BITS = 48  # the default device's


def test_exported_vm_closes_with_the_exporting_process(
    fresh_daemon: DaemonProcess, agents: Callable[[DaemonProcess], Agent]
) -> None:
    """The app exports its VM and exits: the VM closes with its file (xe_file_close), its
    BO goes, the descriptor keeps a closed VM only: importing it is ENOENT."""
    start = baseline(fresh_daemon)
    app = agents(fresh_daemon)
    app_pid, (fd,) = app.run_fds(APP)
    assert app_pid == app.pid
    app.close()  # the application exits; its file is released
    seen = wait_until(fresh_daemon, lambda c: c.files == start[1].files)
    assert seen.files == start[1].files
    # the closed VM object is still counted while the descriptor holds it; its BO is gone
    assert (seen.vms, seen.bos, seen.vm_exports) == (start[1].vms + 1, start[1].bos, 1)
    try:
        with Device.open(fresh_daemon.socket_path, role="aux") as aux:
            assert errno_of(aux.aux_vm_import, fd, app_pid) == errno.ENOENT
            assert counts(fresh_daemon).aux_registrations == 0
    finally:
        os.close(fd)
    assert settle_to(fresh_daemon, start) == start


@pytest.mark.parametrize("let_go", ["release", "disconnect"])
def test_registered_aux_driver_hears_the_vm_close_once(
    fresh_daemon: DaemonProcess, let_go: str
) -> None:
    """The exporter's file closes while an aux driver holds the VM: the aux driver gets one
    AUX_RANGE_INVALIDATED of the whole range (reason vm_closed); then resolving any range
    (BO or userptr) is ENOENT, a new import is ENOENT, and letting go leaves nothing."""
    path = fresh_daemon.socket_path
    start = baseline(fresh_daemon)
    dev = Device.open(path)
    aux = Device.open(path, role="aux")
    try:
        vm, _bo = vm_with_bo(dev, b"secret of app A")
        host = dev.host_memory(SIZE)
        host[0:6] = b"userpt"
        dev.vm_bind_userptr(vm, host, 0, BASE + SIZE, SIZE)
        fd = dev.vm_export(vm)
        try:
            handle = aux.aux_vm_import(fd, os.getpid()).vm_handle
            for va in (BASE, BASE + SIZE):  # watched, and the host pages held
                _, fds = aux.aux_vm_resolve(handle, va, SIZE)
                for held in fds:
                    os.close(held)
            host.mapping.close()
            dev.close()  # the exporter's file closes (this process lives on)

            event = aux.wait_event(timeout=SETTLE)
            assert event.event == Event.AUX_RANGE_INVALIDATED
            data = event.data
            assert (data.vm_handle, data.va, data.length, data.reason) == (
                handle,
                0,
                1 << VA_BITS,
                "vm_closed",
            )
            for va in (BASE, BASE + SIZE, 0):
                assert errno_of(aux.aux_vm_resolve, handle, va, SIZE) == errno.ENOENT
            with Device.open(path, role="aux") as other:
                assert errno_of(other.aux_vm_import, fd, os.getpid()) == errno.ENOENT
            aux.aux_vm_invalidate_done(handle, data.seqno)  # acknowledging it is harmless
            aux.version()
            assert not aux.events, f"more than one event: {list(aux.events)}"
            seen = counts(fresh_daemon)
            assert (seen.bos, seen.vm_exports, seen.aux_registrations) == (start[1].bos, 1, 1)
            if let_go == "release":
                aux.aux_vm_release(handle)
                assert errno_of(aux.aux_vm_resolve, handle, BASE, SIZE) == errno.ENOENT
            else:
                aux.close()
        finally:
            os.close(fd)
    finally:
        aux.close()
        dev.close()
    assert settle_to(fresh_daemon, start) == start


# --- the aux role ------------------------------------------------------------------------------


def _aux_hello_as(socket_path: Path, uid: int, gid: int) -> dict[str, Any]:
    """Fork; the child drops to uid/gid, connects as role aux and tries AUX_VM_RELEASE."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.chdir(socket_path.parent)  # as root: the path above may be closed to others
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
            try:
                aux = Device.open(socket_path.name, role="aux")
            except OSError as exc:
                out["hello"] = exc.errno
            else:
                out["hello"] = 0
                with aux:
                    try:
                        aux.aux_vm_release(1)
                    except OSError as exc:
                        out["release"] = exc.errno
            os.write(write_end, json.dumps(out).encode())
            code = 0
        except BaseException as exc:  # report anything to the parent
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data or b"{}")
    result["status"] = status
    return result


def _open_socket_to(path: Path, gid: int) -> None:
    """Let a process of group `gid` reach the daemon's socket (mode 0660)."""
    os.chmod(path.parent, 0o711)
    os.chown(path, 0, gid)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uid in a child")


def test_aux_role_as_root_is_allowed(daemon: DaemonProcess) -> None:
    """HELLO role aux from root is admitted and aux ops are answered (ENOENT, not EACCES)."""
    if os.geteuid() != 0:
        pytest.skip("the test process is not root")
    with Device.open(daemon.socket_path, role="aux") as aux:
        assert aux.version().name == "xe"
        assert errno_of(aux.aux_vm_release, 1) == errno.ENOENT


@needs_root
def test_aux_role_from_unlisted_uid_is_eacces(fresh_daemon: DaemonProcess) -> None:
    """HELLO role aux from a uid that is not root, the daemon's, or configured: EACCES."""
    _open_socket_to(fresh_daemon.socket_path, NOBODY)
    result = _aux_hello_as(fresh_daemon.socket_path, NOBODY, NOBODY)
    assert result.get("status") == 0, result
    assert (result["uid"], result["hello"]) == (NOBODY, errno.EACCES)
    seen = wait_until(fresh_daemon, lambda c: c.files == 1)
    assert seen.files == 1  # only the admin visitor: the refused connection left nothing


@needs_root
def test_aux_role_from_allowed_uid_works(make_daemon: Callable[..., DaemonProcess]) -> None:
    """[aux] allowed_uids lists the uid: HELLO role aux is admitted, aux ops answered."""
    daemon = make_daemon(f"[aux]\nallowed_uids = [{NOBODY}]\n")
    _open_socket_to(daemon.socket_path, NOBODY)
    result = _aux_hello_as(daemon.socket_path, NOBODY, NOBODY)
    assert result.get("status") == 0, result
    assert (result["uid"], result["hello"], result["release"]) == (NOBODY, 0, errno.ENOENT)


@needs_root
def test_aux_role_from_allowed_gid_works(make_daemon: Callable[..., DaemonProcess]) -> None:
    """[aux] allowed_gids lists the peer's gid: HELLO role aux is admitted; another gid is not."""
    daemon = make_daemon("[aux]\nallowed_gids = [4242]\n")
    _open_socket_to(daemon.socket_path, 4242)
    result = _aux_hello_as(daemon.socket_path, NOBODY, 4242)
    assert result.get("status") == 0, result
    assert (result["gid"], result["hello"], result["release"]) == (4242, 0, errno.ENOENT)
    _open_socket_to(daemon.socket_path, NOBODY)
    other = _aux_hello_as(daemon.socket_path, NOBODY, NOBODY)
    assert other.get("status") == 0, other
    assert other["hello"] == errno.EACCES


def test_aux_ops_from_drm_connection_are_eacces(dev: Device) -> None:
    """A drm-role connection sending AUX_VM_IMPORT / RESOLVE / UNWATCH / RELEASE: EACCES."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        assert errno_of(dev.aux_vm_import, fd, os.getpid()) == errno.EACCES
    finally:
        os.close(fd)
    assert errno_of(dev.aux_vm_resolve, 1, BASE, PAGE_SIZE) == errno.EACCES
    assert errno_of(dev.aux_vm_unwatch, 1, BASE, PAGE_SIZE) == errno.EACCES
    assert errno_of(dev.aux_vm_release, 1) == errno.EACCES
    assert dev.version().name == "xe"


def test_vm_export_from_aux_connection_is_eacces(aux: Device) -> None:
    """An aux-role connection cannot create or export VMs (drm ops): EACCES."""
    assert errno_of(aux.vm_create) == errno.EACCES
    assert errno_of(aux.vm_export, 1) == errno.EACCES


def test_aux_peer_pid_in_admin_view(daemon: DaemonProcess, aux: Device, admin: Device) -> None:
    """The admin view lists the aux connection with its role and this process's pid."""
    (me,) = [c for c in admin.admin_clients() if c.client_id == aux.client_id]
    assert (me.role, me.pid) == ("aux", os.getpid())


# --- the VM descriptor is no dma-buf -----------------------------------------------------------


def test_vm_descriptor_as_dma_buf_is_einval(dev: Device) -> None:
    """PRIME import, DMA_BUF_MMAP, LLSEEK and SYNC of a VM descriptor: EINVAL."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    try:
        assert errno_of(dev.prime_fd_to_handle, fd) == errno.EINVAL
        assert errno_of(dev.dmabuf_mmap, fd, PAGE_SIZE) == errno.EINVAL
        assert errno_of(dev.dmabuf_size, fd) == errno.EINVAL
        assert errno_of(dev.dmabuf_sync, fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW) == errno.EINVAL
    finally:
        os.close(fd)


def test_vm_descriptor_prime_import_at_another_daemon_is_einval(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Another daemon asked to import a VM descriptor as a dma-buf: EINVAL (the VM refuses)."""
    one, two = make_daemon(name="one"), make_daemon(name="two")
    with Device.open(one.socket_path) as dev, Device.open(two.socket_path) as other:
        vm, _ = vm_with_bo(dev)
        fd = dev.vm_export(vm)
        try:
            assert errno_of(other.prime_fd_to_handle, fd) == errno.EINVAL
            assert counts(two).bos == 0
            assert errno_of(dev.vm_export, vm) == errno.EEXIST  # still exported, unharmed
        finally:
            os.close(fd)


def test_requests_spoken_on_the_vm_descriptor_are_refused(dev: Device) -> None:
    """A holder speaking on the VM descriptor itself: DMA_BUF_ATTACH is EINVAL, an op of
    another role EACCES, garbage ignored; the export is unharmed."""
    vm, _ = vm_with_bo(dev)
    fd = dev.vm_export(vm)
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.settimeout(SETTLE)
        sock.send(encode_request(5, Op.DMA_BUF_ATTACH, m.DmaBufAttach()))
        reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), {5: Op.DMA_BUF_ATTACH})
        assert isinstance(reply, Reply) and reply.errno == errno.EINVAL
        sock.send(b"\xc1 not msgpack")
        sock.send(encode_request(6, Op.XE_VM_DESTROY, m.DrmXeVmDestroy(vm_id=vm)))
        reply = decode_incoming(sock.recv(MAX_DATAGRAM), (), {6: Op.XE_VM_DESTROY})
        assert isinstance(reply, Reply) and reply.errno == errno.EACCES
        assert errno_of(dev.vm_destroy, vm) == errno.EBUSY
    finally:
        sock.close()
        os.close(fd)
