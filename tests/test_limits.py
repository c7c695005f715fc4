"""[limits]: what one client may hold, and the descriptors the daemon keeps for everyone.

A client at one of its limits gets ENOMEM (EMFILE where the call hands a descriptor
back) and nobody else notices; a daemon down to its descriptor reserve still accepts
connections and serves the admin role; one with no descriptor at all answers a new
connection rather than leaving it in the backlog. Every connection here has a socket
timeout, so a daemon that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import time
from errno import EMFILE, ENOMEM
from typing import Any

import attrs
import pytest
from conftest import baseline
from helpers import NobodyChild, errno_of, needs_root, open_to_nobody
from test_vm_export import SETTLE, settle_to

from clients import Device, XeError, syncobj
from clients.daemon import DaemonProcess
from clients.transport import SeqpacketTransport
from protocols import (
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    SPECS,
    Event,
    EventMessage,
    Op,
    decode_incoming,
    encode_reply,
    encode_request,
    pack_fds,
)
from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_BIND_OP_MAP,
    DRM_XE_VM_BIND_OP_UNMAP,
    DRM_XE_VM_BIND_OP_UNMAP_ALL,
    PAGE_SIZE,
    SEEK_END,
)
from xed.device.limits import OPENS_DESCRIPTORS, out_of_errno
from xed.ioctl import ADMIN_CLIENTS_LISTED

TIMEOUT = 10.0
LIMITS = """
[limits]
bos = 4
vms = 2
exec_queues = 3
exported = 2
"""
NOFILE = 96  # the daemon's descriptor limit in the reserve tests
RESERVE = 16


def connect(daemon: DaemonProcess, role: str = "drm") -> Device:
    """A connection whose every call is bounded by TIMEOUT."""
    transport = SeqpacketTransport.connect(daemon.socket_path)
    transport.sock.settimeout(TIMEOUT)
    return Device(transport, role)


def status(daemon: DaemonProcess) -> m.XedAdminStatusReply:
    with connect(daemon, "admin") as adm:
        return adm.admin_status()


def client_info(daemon: DaemonProcess, client_id: int) -> m.XedClientInfo:
    with connect(daemon, "admin") as adm:
        (info,) = [c for c in adm.admin_clients() if c.client_id == client_id]
        return info


def exported_settles(daemon: DaemonProcess, client_id: int, count: int) -> int:
    """Poll the client's live exports until `count` (release is asynchronous); the last."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = client_info(daemon, client_id).exported
        if seen == count or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


# --- per-client limits ------------------------------------------------------------------------
def test_gem_create_past_limits_bos_is_enomem(make_daemon: Any) -> None:
    """The (limits.bos+1)th GEM handle of a file is ENOMEM; another file gets its own;
    a closed handle makes room; the admin view shows the limits."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon) as other:
        bos = [hog.gem_create(PAGE_SIZE) for _ in range(4)]
        assert errno_of(hog.gem_create, PAGE_SIZE) == ENOMEM
        assert len([other.gem_create(PAGE_SIZE) for _ in range(4)]) == 4
        hog.gem_close(bos.pop())
        bos.append(hog.gem_create(PAGE_SIZE))
        assert errno_of(hog.gem_create, PAGE_SIZE) == ENOMEM
        with connect(daemon, "admin") as adm:
            reply = adm.ioctl(Op.ADMIN_CLIENTS, m.XedAdminClients())
            assert reply.limits.bos == 4 and reply.limits.exported == 2
            assert adm.admin_status().limits_hit == 2
    assert settle_to(daemon, before) == before
    assert '"limit": "bos"' in daemon.log_text()


def test_prime_import_past_limits_bos_is_enomem(make_daemon: Any) -> None:
    """Importing a dma-buf is a new handle, ENOMEM past limits.bos; importing one the file
    already has a handle for is not."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon) as other:
        bos = [hog.gem_create(PAGE_SIZE) for _ in range(4)]
        theirs = other.prime_handle_to_fd(other.gem_create(PAGE_SIZE))
        ours = hog.prime_handle_to_fd(bos[0])
        try:
            assert errno_of(hog.prime_fd_to_handle, theirs) == ENOMEM
            assert hog.prime_fd_to_handle(ours) == bos[0]
            assert other.prime_fd_to_handle(ours)  # the other file has room
        finally:
            os.close(theirs)
            os.close(ours)
    assert settle_to(daemon, before) == before


def test_vm_create_past_limits_vms_is_enomem(make_daemon: Any) -> None:
    """The (limits.vms+1)th VM of a file is ENOMEM; another file is not affected; a
    destroyed VM makes room."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon) as other:
        vms = [hog.vm_create(), hog.vm_create()]
        assert errno_of(hog.vm_create) == ENOMEM
        assert other.vm_create() and other.vm_create()
        hog.vm_destroy(vms.pop())
        vms.append(hog.vm_create())
    assert settle_to(daemon, before) == before


def test_exec_queue_create_past_limits_exec_queues_is_enomem(make_daemon: Any) -> None:
    """The (limits.exec_queues+1)th queue of a file is ENOMEM, whichever VM it is on;
    another file is not affected; a destroyed queue makes room; a disconnect frees all."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon) as other:
        vm, vm2 = hog.vm_create(), hog.vm_create()
        queues = [hog.exec_queue_create(vm) for _ in range(3)]
        assert errno_of(hog.exec_queue_create, vm2) == ENOMEM
        other_vm = other.vm_create()
        assert len([other.exec_queue_create(other_vm) for _ in range(3)]) == 3
        hog.exec_queue_destroy(queues.pop())
        queues.append(hog.exec_queue_create(vm2))
        assert errno_of(hog.exec_queue_create, vm) == ENOMEM
    assert settle_to(daemon, before) == before


def test_exports_count_against_their_creator_until_freed(make_daemon: Any) -> None:
    """limits.exported counts the dma-bufs and VM exports a file created that are alive:
    exporting the same BO again is the same dma-buf, closing the handle does not give the
    charge back (the dma-buf lives on in its descriptors), closing those does."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon) as other:
        a, b = hog.gem_create(PAGE_SIZE), hog.gem_create(PAGE_SIZE)
        fds = [hog.prime_handle_to_fd(a), hog.prime_handle_to_fd(a)]
        fds.append(hog.vm_export(hog.vm_create()))
        try:
            assert client_info(daemon, hog.client_id).exported == 2
            assert errno_of(hog.prime_handle_to_fd, b) == ENOMEM
            assert errno_of(hog.vm_export, hog.vm_create()) == ENOMEM
            os.close(other.prime_handle_to_fd(other.gem_create(PAGE_SIZE)))  # room there
            hog.gem_close(a)
            assert errno_of(hog.prime_handle_to_fd, b) == ENOMEM
            for fd in fds[:2]:
                os.close(fd)
            del fds[:2]
            assert exported_settles(daemon, hog.client_id, 1) == 1
            os.close(hog.prime_handle_to_fd(b))
        finally:
            for fd in fds:
                os.close(fd)
    assert settle_to(daemon, before) == before


def test_an_export_outliving_its_file_is_freed_cleanly(make_daemon: Any) -> None:
    """A dma-buf whose creator disconnected stays alive in its descriptor, can be
    imported, and gives back everything when that descriptor closes."""
    daemon = make_daemon(LIMITS)
    before = baseline(daemon)
    with connect(daemon) as creator:
        fd = creator.prime_handle_to_fd(creator.gem_create(PAGE_SIZE))
    try:
        with connect(daemon) as importer:
            assert importer.prime_fd_to_handle(fd)
        assert status(daemon).objects.dma_bufs == before[1].dma_bufs + 1
    finally:
        os.close(fd)
    assert settle_to(daemon, before) == before


VMA_LIMITS = """
[limits]
vmas = 6
"""
VA = 1 << 32


def test_vm_bind_past_limits_vmas_is_enomem(make_daemon: Any) -> None:
    """limits.vmas counts a file's GPU mappings over all its VMs. A bind array that may
    take it past is ENOMEM with nothing changed: a MAP counts two (it may split what it
    lands inside), an UNMAP inside a mapping one (it splits it), an UNMAP of whole
    mappings nothing, so a file at its limit can always unmap; another file has its own
    count; a destroyed VM gives its mappings back."""
    daemon = make_daemon(VMA_LIMITS)
    before = baseline(daemon)
    page = PAGE_SIZE

    def held(dev: Device) -> int:
        return client_info(daemon, dev.client_id).vmas

    with connect(daemon) as hog, connect(daemon) as other:
        bo = hog.gem_create(8 * page)
        vm, vm2 = hog.vm_create(), hog.vm_create()
        hog.vm_bind(vm, bo, VA)  # one mapping of eight pages
        for n in range(1, 4):
            hog.vm_bind(vm, bo, VA + n * 16 * page, size=page)
        hog.vm_bind(vm2, bo, VA, size=page)
        assert held(hog) == 5
        # a MAP counts two: 5 + 2 > 6, refused before anything changes
        assert errno_of(hog.vm_bind, vm, bo, VA + 64 * page, size=page) == ENOMEM
        two = [
            m.DrmXeVmBindOp(op=DRM_XE_VM_BIND_OP_UNMAP, addr=VA + 16 * page, range=page),
            m.DrmXeVmBindOp(obj=bo, op=DRM_XE_VM_BIND_OP_MAP, addr=VA + 64 * page, range=page),
        ]
        assert errno_of(hog.vm_bind_ops, vm, two) == ENOMEM
        assert held(hog) == 5 and hog.vm_unbind(vm, VA + 16 * page, page) is None
        hog.vm_bind(vm, bo, VA + 16 * page, size=page)  # mapped again: 4 + 2 <= 6
        # an UNMAP inside the eight pages splits them: one more, to 6
        hog.vm_unbind(vm, VA + page, page)
        assert held(hog) == 6
        assert errno_of(hog.vm_unbind, vm, VA + 4 * page, page) == ENOMEM  # 7 > 6
        hog.vm_unbind(vm, VA + 2 * page, 6 * page)  # the tail, whole: at the limit, allowed
        assert held(hog) == 5
        hog.vm_bind_ops(vm2, [m.DrmXeVmBindOp(obj=bo, op=DRM_XE_VM_BIND_OP_UNMAP_ALL)])
        assert held(hog) == 4
        assert other.vm_bind(other.vm_create(), other.gem_create(page), VA) is None
        assert held(other) == 1  # its own count
        hog.vm_bind(vm2, bo, VA, size=page)  # 4 + 2 <= 6
        hog.vm_destroy(vm)  # four mappings go with it
        assert held(hog) == 1
    assert settle_to(daemon, before) == before
    assert '"limit": "vmas"' in daemon.log_text()


UID_LIMITS = """
[limits]
objects_per_uid = 12
"""


def test_objects_per_uid_bounds_all_connections_of_a_uid(make_daemon: Any) -> None:
    """limits.objects_per_uid counts what every connection of one uid holds together:
    GEM handles, VMs, exec queues, GPU mappings, syncobjs, jobs not done. At the limit
    each kind's create (and VM_BIND, EXEC) is ENOMEM on every connection of the uid,
    whatever each holds itself; another uid has its own account; closing gives back."""
    needs_root()
    daemon = make_daemon(UID_LIMITS)
    before = baseline(daemon)

    def uid_held(dev: Device) -> int:
        return client_info(daemon, dev.client_id).uid_objects

    with connect(daemon) as a, connect(daemon) as b:
        bos = [a.gem_create(PAGE_SIZE) for _ in range(4)]
        a.vm_create()  # 5
        bo, vm = b.gem_create(PAGE_SIZE), b.vm_create()  # 7
        queue = b.exec_queue_create(vm)  # 8
        syncobj.create(b)  # 9
        b.vm_bind(vm, bo, 1 << 32)  # may add two: 9 + 2 <= 12; adds one, 10
        bos += [a.gem_create(PAGE_SIZE) for _ in range(2)]  # 12
        assert uid_held(a) == uid_held(b) == 12
        assert errno_of(a.gem_create, PAGE_SIZE) == ENOMEM
        assert errno_of(b.vm_create) == ENOMEM
        assert errno_of(b.exec_queue_create, vm) == ENOMEM
        assert errno_of(syncobj.create, b) == ENOMEM
        assert errno_of(b.vm_bind, vm, bo, 1 << 33) == ENOMEM
        nothing = m.DrmXeExec(exec_queue_id=queue, num_batch_buffer=0)
        assert errno_of(b.ioctl, Op.XE_EXEC, nothing) == ENOMEM  # a job is one too
        b.vm_unbind(vm, 1 << 32, PAGE_SIZE)  # at the limit a client can still unmap
        b.ioctl(Op.XE_EXEC, nothing)  # 11 + 1
        a.gem_close(bos.pop())
        assert a.gem_create(PAGE_SIZE)

        def other_uid(report: Any, _wait_go: Any) -> None:
            with Device.open(name) as dev:  # uid 65534: an account of its own
                report({"bo": dev.gem_create(PAGE_SIZE), "vm": dev.vm_create()})

        name = open_to_nobody(daemon)
        child = NobodyChild(daemon.socket_path, other_uid)
        try:
            assert child.report() == {"bo": 1, "vm": 1}
        finally:
            assert child.join() == 0
    with connect(daemon) as fresh:
        assert uid_held(fresh) == 0  # everything the uid held was given back
    assert settle_to(daemon, before) == before
    assert '"limit": "objects_per_uid"' in daemon.log_text()


# --- the descriptor reserve -------------------------------------------------------------------
def fill_to_reserve(dev: Device) -> list[int]:
    """BOs until the daemon refuses for want of descriptors (ENOMEM, never EIO)."""
    bos: list[int] = []
    while True:
        try:
            bos.append(dev.gem_create(PAGE_SIZE))
        except XeError as exc:
            assert exc.errno == ENOMEM, exc
            return bos
        assert len(bos) < NOFILE, "the daemon never ran short"


def test_a_client_at_the_descriptor_reserve_leaves_room_for_others(make_daemon: Any) -> None:
    """A client creating BOs until the daemon is down to descriptor_reserve gets ENOMEM,
    then EMFILE for calls that hand a descriptor back; meanwhile a new client connects
    and is served and the admin role works; its disconnect frees everything."""
    daemon = make_daemon(f"[limits]\ndescriptor_reserve = {RESERVE}\n", nofile=NOFILE)
    before = baseline(daemon)
    with connect(daemon) as hog:
        bos = fill_to_reserve(hog)
        assert errno_of(hog.mmap, hog.gem_mmap_offset(bos[0]), PAGE_SIZE) == EMFILE
        assert errno_of(hog.prime_handle_to_fd, bos[0]) == EMFILE
        vm = hog.vm_create()  # costs no descriptor: still served
        assert errno_of(hog.vm_export, vm) == EMFILE
        with connect(daemon) as newcomer, connect(daemon, "admin") as adm:
            assert newcomer.version().name == "xe"
            assert adm.admin_status().limits_hit == 4
        assert daemon.open_fds() >= NOFILE - RESERVE
    assert settle_to(daemon, before) == before
    assert "descriptors_low" in daemon.log_text()


def test_debug_attach_at_the_descriptor_reserve_is_enomem(make_daemon: Any) -> None:
    """DEBUG_ATTACH keeps the target's pidfd while attached: at the reserve it is ENOMEM
    before anything is opened; once descriptors come back it attaches."""
    daemon = make_daemon(f"[limits]\ndescriptor_reserve = {RESERVE}\n", nofile=NOFILE)
    before = baseline(daemon)
    with connect(daemon) as hog, connect(daemon, "debugger") as debugger:
        bos = fill_to_reserve(hog)
        assert errno_of(debugger.debug_attach, os.getpid()) == ENOMEM
        for bo in bos[:8]:
            hog.gem_close(bo)
        assert debugger.debug_attach(os.getpid()).vms == ()
        debugger.debug_detach(os.getpid())
    assert settle_to(daemon, before) == before


def test_a_full_descriptor_table_answers_new_connections(make_daemon: Any) -> None:
    """With no descriptor left at all, a new connection is accepted into the spare one
    and its HELLO answered EMFILE (a silent one gets a PROTOCOL_ERROR event) rather than
    hanging in the backlog; descriptors attached to requests that find no room are
    ENOMEM / EMFILE; a connection closing makes room again."""
    daemon = make_daemon(f"[limits]\ndescriptor_reserve = {RESERVE}\n", nofile=NOFILE)
    before = baseline(daemon)
    held: list[Device] = []
    with connect(daemon) as hog:
        bos = fill_to_reserve(hog)
        dma_buf = os.memfd_create("not-a-dma-buf")
        try:
            while True:  # each connection costs the daemon one descriptor of its reserve
                try:
                    held.append(connect(daemon))
                except XeError as exc:
                    assert exc.errno == EMFILE and exc.op == "HELLO"
                    break
                assert len(held) <= RESERVE
            assert errno_of(hog.prime_fd_to_handle, dma_buf) == ENOMEM
            assert errno_of(hog.dmabuf_mmap, dma_buf, PAGE_SIZE) == EMFILE
            assert _silent_connection_is_told(daemon) == EMFILE
            held.pop().close()
            _connect_eventually(daemon).close()
            assert hog.gem_mmap_offset(bos[0])  # the hog itself is still served
        finally:
            os.close(dma_buf)
            for dev in held:
                dev.close()
    # room for an admin visit first: the daemon learns of the closes asynchronously
    assert _fds_settle_below(daemon, NOFILE - RESERVE) < NOFILE - RESERVE
    assert settle_to(daemon, before) == before
    assert status(daemon).limits_hit >= 5
    assert "connection_refused" in daemon.log_text()


def _silent_connection_is_told(daemon: DaemonProcess) -> int:
    """Connect and say nothing: the errno of the PROTOCOL_ERROR event that comes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(daemon.socket_path))
        message = decode_incoming(sock.recv(4096), (), {})
        assert isinstance(message, EventMessage) and message.event is Event.PROTOCOL_ERROR
        assert sock.recv(4096) == b""  # and hung up
        errno: int = message.data.errno
        return errno


def _fds_settle_below(daemon: DaemonProcess, count: int) -> int:
    """Poll the daemon's open descriptors (from /proc) until fewer than `count`."""
    deadline = time.monotonic() + SETTLE
    while True:
        seen = daemon.open_fds()
        if seen < count or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


def _connect_eventually(daemon: DaemonProcess) -> Device:
    """A connection, once the daemon has seen a close that makes room (asynchronous)."""
    deadline = time.monotonic() + SETTLE
    while True:
        try:
            return connect(daemon)
        except XeError as exc:
            if exc.errno != EMFILE or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def test_running_out_inside_an_ioctl_is_emfile_not_eio(make_daemon: Any) -> None:
    """Descriptors that run out halfway through an ioctl (past the reserve check: a
    dma-buf needs three) answer EMFILE, counted and logged as a limit, not a crash."""
    daemon = make_daemon("[limits]\ndescriptor_reserve = 1\n", nofile=64)
    before = baseline(daemon)
    with connect(daemon) as hog:
        bos = fill_to_reserve(hog)  # one descriptor left
        hog.gem_close(bos.pop())  # two: the reserve check passes, a socketpair takes both
        assert errno_of(hog.prime_handle_to_fd, bos[0]) == EMFILE
    assert _fds_settle_below(daemon, 64 - 1) < 64 - 1  # room for an admin visit
    assert settle_to(daemon, before) == before
    assert status(daemon).limits_hit == 2
    assert "daemon descriptors" in daemon.log_text()


def test_requests_lending_one_descriptor_again_and_again_cannot_fill_the_daemons_table(
    make_daemon: Any,
) -> None:
    """A client that sends DMA_BUF_LLSEEK after DMA_BUF_LLSEEK, each with a copy of one
    socket whose peer never answers (each waits PEER_TIMEOUT for it), holds a few dozen
    of the daemon's descriptors at most, not one per request: another client is served
    meanwhile, and everything is let go after."""
    daemon = make_daemon(nofile=1024)
    before = baseline(daemon)
    silent, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        hog.connect(str(daemon.socket_path))
        hello = m.Hello(version=PROTOCOL_VERSION, role="drm")
        hog.sendmsg([encode_request(1, Op.HELLO, hello)])
        hog.recv(MAX_DATAGRAM)
        hog.setblocking(False)
        seek = m.DmaBufLlseek(offset=0, whence=SEEK_END)
        sent, deadline = 0, time.monotonic() + 1.0
        while time.monotonic() < deadline and sent < 5000:
            try:
                hog.sendmsg(
                    [encode_request(sent + 2, Op.DMA_BUF_LLSEEK, seek)], pack_fds([silent.fileno()])
                )
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
        assert daemon.open_fds() < before[0] + 64
        with connect(daemon) as other:
            assert other.gem_create(PAGE_SIZE)
    finally:
        hog.close()
        silent.close()
        kept.close()
    assert settle_to(daemon, before) == before


def test_admin_clients_with_520_connections_lists_what_fits(
    fresh_daemon: DaemonProcess,
) -> None:
    """ADMIN_CLIENTS under 520 connections (any uid may open them) lists the first ones,
    as many as one reply holds; the whole list did not fit and ended the daemon."""
    held = []
    try:
        for _ in range(520):
            held.append(connect(fresh_daemon))
        with connect(fresh_daemon, "admin") as adm:
            listed = adm.admin_clients()
            assert len(listed) == ADMIN_CLIENTS_LISTED
            assert [c.client_id for c in listed] == sorted(c.client_id for c in listed)
            assert adm.admin_status().objects.files == 521  # the count says how many
    finally:
        for dev in held:
            dev.close()


def test_admin_clients_reply_at_its_largest_fits_one_datagram() -> None:
    """The largest ADMIN_CLIENTS reply (ADMIN_CLIENTS_LISTED clients, every field at its
    widest) encodes."""
    widest = {
        field.name: "x" * field.metadata["max_len"]
        if field.metadata["wire"] == "str"
        else (1 << int(field.metadata["wire"][1:])) - 1
        for field in attrs.fields(m.XedClientInfo)
    }
    limits = m.XedLimits(**{field.name: 2**64 - 1 for field in attrs.fields(m.XedLimits)})
    reply = m.XedAdminClientsReply(
        clients=(m.XedClientInfo(**widest),) * ADMIN_CLIENTS_LISTED, limits=limits
    )
    assert len(encode_reply(2**32 - 1, Op.ADMIN_CLIENTS, 0, reply)) <= MAX_DATAGRAM


@pytest.mark.parametrize("op", sorted(OPENS_DESCRIPTORS), ids=lambda op: op.name)
def test_ops_refused_at_the_reserve_list_it(op: Op) -> None:
    """Every op refused at the descriptor reserve lists that errno in the op table:
    EMFILE where it hands a descriptor back, ENOMEM otherwise."""
    expected = EMFILE if SPECS[op].fds_out else ENOMEM
    assert out_of_errno(op) == expected
    assert any(e == expected and "descriptor_reserve" in why for e, why in SPECS[op].errors)
