"""Channels: a connection acting on another connection's drm file (HELLO.join).

A program's descriptor is its drm file's connection; a forked child that uses it gets a
channel of its own. Pinned here: a channel acts on the shared file and is answered on
the channel; closing it releases nothing of the file; the file is released when its own
connection's last copy closes, and then the daemon closes its channels; the join rules
and errnos; per-connection state (unread descriptors, blocking ops) stays the channel's;
the admin view and the debugger see the file, once.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any

import pytest
from conftest import baseline
from helpers import ForkedChild, NobodyChild, errno_of, needs_root, open_to_nobody

from clients import DaemonGone, Device, XeError
from clients.daemon import DaemonProcess
from protocols import PROTOCOL_VERSION, Event, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.constants import MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, UfenceOp

WAIT = 10.0  # s: an upper bound, never an expectation
CLOSED = 10.0  # s: how long a channel may take to see its file's release


def poll_until(check: Callable[[], bool]) -> None:
    """Bounded polling for what the daemon does on its own schedule."""
    for _ in range(1000):
        if check():
            return
        select.select([], [], [], 0.01)
    raise AssertionError("never happened")


def file_info(daemon: DaemonProcess, client_id: int) -> m.XedClientInfo | None:
    """The drm file with that id (ids are reused: the admin visit may take a freed one)."""
    return next((c for c in drm_clients(daemon) if c.client_id == client_id), None)


def drm_clients(daemon: DaemonProcess) -> list[m.XedClientInfo]:
    with Device.open(daemon.socket_path, role="admin") as adm:
        return [c for c in adm.admin_clients() if c.role == "drm"]


def wait_closed(dev: Device) -> None:
    """The daemon closed this connection (its drm file was released): EOF comes."""
    with pytest.raises(DaemonGone):
        dev.wait_event(timeout=CLOSED)


def hello_errno(daemon: DaemonProcess, **fields: Any) -> int:
    return errno_of(Device.open, daemon.socket_path, **fields)


# --- a forked child and its parent's file ------------------------------------------------------


def test_forked_child_joining_sees_the_same_handles(fresh_daemon: DaemonProcess) -> None:
    """A forked child joining its parent's file maps the parent's BO by the parent's handle,
    and its own BO is a handle of the same file; the admin view shows that file once, with
    one channel, and nothing leaks once both are gone."""
    before = baseline(fresh_daemon)
    parent = Device.open(fresh_daemon.socket_path)
    handle = parent.gem_create(PAGE_SIZE)
    with parent.mmap_bo(handle) as cpu:
        cpu[0:8] = b"parent!!"
    token, path = parent.token, fresh_daemon.socket_path

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        with Device.open(path, join=token) as channel:
            with channel.mmap(channel.gem_mmap_offset(handle), PAGE_SIZE) as cpu:
                seen = bytes(cpu[0:8])
            mine = channel.gem_create(PAGE_SIZE)
            report({"seen": seen.hex(), "mine": mine, "client_id": channel.client_id})
            wait_go()

    child = ForkedChild(path, work)
    try:
        state = child.report()
        assert bytes.fromhex(state["seen"]) == b"parent!!"
        assert state["mine"] != handle
        assert state["client_id"] == parent.client_id  # the file's id, not the channel's
        parent.gem_mmap_offset(state["mine"])  # the child's BO is a handle of our file
        (info,) = drm_clients(fresh_daemon)
        assert (info.client_id, info.pid, info.bos, info.channels) == (
            parent.client_id,
            os.getpid(),
            2,
            1,
        )
    finally:
        assert child.join() == 0
    poll_until(lambda: drm_clients(fresh_daemon)[0].channels == 0)
    assert drm_clients(fresh_daemon)[0].bos == 2  # the channel's close released nothing
    parent.close()
    poll_until(lambda: baseline(fresh_daemon) == before)


def test_file_and_channel_issue_ioctls_at_once(fresh_daemon: DaemonProcess) -> None:
    """The parent on its file and a forked child on a channel of it create BOs at the same
    time: every handle is distinct, each side got its own answers, the file holds all."""
    parent = Device.open(fresh_daemon.socket_path)
    token, path, each = parent.token, fresh_daemon.socket_path, 300

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        with Device.open(path, join=token) as channel:
            report({"ready": True})
            wait_go()
            report({"handles": [channel.gem_create(PAGE_SIZE) for _ in range(each)]})

    child = ForkedChild(path, work)
    try:
        child.report()
        child.go()
        ours = [parent.gem_create(PAGE_SIZE) for _ in range(each)]
        theirs = child.report()["handles"]
    finally:
        assert child.join() == 0
    assert len(set(ours) | set(theirs)) == 2 * each
    info = file_info(fresh_daemon, parent.client_id)
    assert info is not None and info.bos == 2 * each
    parent.close()


def test_file_lives_while_a_child_holds_its_descriptor(fresh_daemon: DaemonProcess) -> None:
    """The parent closing its socket does not release the file while a forked child holds
    the inherited copy: the child's channel still works. Once the child closes that copy
    too the file is released, the daemon closes the channel, and nothing leaks."""
    before = baseline(fresh_daemon)
    parent = Device.open(fresh_daemon.socket_path)
    handle = parent.gem_create(PAGE_SIZE)
    token, path = parent.token, fresh_daemon.socket_path
    inherited = parent.transport.sock.fileno()

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        channel = Device.open(path, join=token)
        report({"joined": True})
        wait_go()  # the parent has closed its copy of the file's socket
        channel.gem_mmap_offset(handle)  # the file lives: our inherited copy holds it
        os.close(inherited)  # the last copy: the file's connection reads EOF
        wait_closed(channel)
        channel.close()
        report({"closed_by_daemon": True})

    child = ForkedChild(path, work, keep=[inherited])
    try:
        child.report()
        parent.close()
        assert file_info(fresh_daemon, parent.client_id) is not None
        child.go()
        assert child.report() == {"closed_by_daemon": True}
    finally:
        assert child.join() == 0
    poll_until(lambda: baseline(fresh_daemon) == before)


# --- in one process: the rules ------------------------------------------------------------------


def test_closing_the_channel_releases_nothing(fresh_daemon: DaemonProcess) -> None:
    """A channel's BOs and VMs are the file's: they outlive the channel."""
    with Device.open(fresh_daemon.socket_path) as dev:
        with Device.open(fresh_daemon.socket_path, join=dev.token) as channel:
            bo = channel.gem_create(PAGE_SIZE)
            vm = channel.vm_create()
        poll_until(
            lambda: (file_info(fresh_daemon, dev.client_id) or m.XedClientInfo()).channels == 0
        )
        dev.gem_mmap_offset(bo)
        dev.vm_destroy(vm)
        info = file_info(fresh_daemon, dev.client_id)
        assert info is not None and info.bos == 1


def test_file_release_closes_its_channels(fresh_daemon: DaemonProcess) -> None:
    """Closing the file's own connection releases the file and closes every channel."""
    before = baseline(fresh_daemon)
    dev = Device.open(fresh_daemon.socket_path)
    channels = [Device.open(fresh_daemon.socket_path, join=dev.token) for _ in range(3)]
    channels[0].gem_create(PAGE_SIZE)
    dev.close()
    for channel in channels:
        wait_closed(channel)
        channel.close()
    poll_until(lambda: baseline(fresh_daemon) == before)


def test_channel_requests_are_answered_on_the_channel(fresh_daemon: DaemonProcess) -> None:
    """A request sent on a channel is answered there, never on the file's connection."""
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path, join=dev.token) as channel,
    ):
        channel.transport.sock.send(encode_request(77, Op.VERSION, m.DrmVersion()))
        ready, _, _ = select.select([channel.transport.sock], [], [], WAIT)
        assert ready
        data, fds = channel.transport.recv()
        reply = decode_incoming(data, tuple(fds), {77: Op.VERSION})
        assert isinstance(reply, Reply) and reply.id == 77
        ready, _, _ = select.select([dev.transport.sock], [], [], 0)
        assert not ready


def test_a_channel_joins_on_the_files_node(fresh_daemon: DaemonProcess) -> None:
    """A channel of a render-node file is a render node whatever its HELLO says."""
    with (
        Device.open(fresh_daemon.socket_path, node="render") as dev,
        Device.open(fresh_daemon.socket_path, join=dev.token, node="primary") as channel,
    ):
        bo = channel.gem_create(PAGE_SIZE)
        assert errno_of(channel.gem_flink, bo) == errno.EACCES


def test_channel_has_no_token_of_its_own(fresh_daemon: DaemonProcess) -> None:
    """Only the file's own HELLO answers a token; a channel's is empty."""
    with Device.open(fresh_daemon.socket_path) as dev:
        assert len(dev.token) == 32
        with Device.open(fresh_daemon.socket_path, join=dev.token) as channel:
            assert channel.token == ""
        with Device.open(fresh_daemon.socket_path, role="admin") as adm:
            assert adm.token == ""


def test_token_is_never_logged(fresh_daemon: DaemonProcess) -> None:
    """The token opens the file: it appears nowhere in the daemon's log."""
    with Device.open(fresh_daemon.socket_path) as dev:
        Device.open(fresh_daemon.socket_path, join=dev.token).close()
        assert dev.token not in fresh_daemon.log_text()


# --- join errors -------------------------------------------------------------------------------


def test_join_unknown_token_is_enoent(fresh_daemon: DaemonProcess) -> None:
    """A token no drm file has: ENOENT."""
    assert hello_errno(fresh_daemon, join="0" * 32) == errno.ENOENT


def test_join_released_file_is_enoent(fresh_daemon: DaemonProcess) -> None:
    """The token of a file that was released: ENOENT."""
    dev = Device.open(fresh_daemon.socket_path)
    token, client_id = dev.token, dev.client_id
    dev.close()
    poll_until(lambda: file_info(fresh_daemon, client_id) is None)
    assert hello_errno(fresh_daemon, join=token) == errno.ENOENT


def test_join_another_daemons_token_is_enoent(make_daemon: Any) -> None:
    """A token of another daemon's file: ENOENT (tokens are per daemon)."""
    first, second = make_daemon(name="a"), make_daemon(name="b")
    with Device.open(first.socket_path) as dev:
        assert hello_errno(second, join=dev.token) == errno.ENOENT


@pytest.mark.parametrize("role", ["admin", "aux", "debugger"])
def test_join_with_another_role_is_einval(fresh_daemon: DaemonProcess, role: str) -> None:
    """join with a role other than drm: EINVAL, even with a live token."""
    with Device.open(fresh_daemon.socket_path) as dev:
        assert hello_errno(fresh_daemon, role=role, join=dev.token) == errno.EINVAL


def test_join_after_unplug_is_enodev(fresh_daemon: DaemonProcess) -> None:
    """The device unplugged: a join is ENODEV, as any drm HELLO."""
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path, role="admin") as adm,
    ):
        adm.admin_unplug()
        try:
            assert hello_errno(fresh_daemon, join=dev.token) == errno.ENODEV
        finally:
            adm.admin_replug()


def test_join_another_uids_file_is_eacces(fresh_daemon: DaemonProcess) -> None:
    """uid 65534 joining a file opened by uid 0: EACCES; the file is untouched."""
    needs_root()
    name = open_to_nobody(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        token = dev.token

        def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
            try:
                Device.open(name, join=token).close()
                report({"errno": 0})
            except XeError as exc:
                report({"errno": exc.errno})

        child = NobodyChild(fresh_daemon.socket_path, work)
        assert child.report() == {"errno": errno.EACCES}
        assert child.join() == 0
        info = file_info(fresh_daemon, dev.client_id)
        assert info is not None and info.channels == 0


def test_root_joins_another_uids_file(fresh_daemon: DaemonProcess) -> None:
    """Root may join a file opened by uid 65534, and sees its handles."""
    needs_root()
    name = open_to_nobody(fresh_daemon)

    def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
        with Device.open(name) as dev:
            report({"token": dev.token, "bo": dev.gem_create(PAGE_SIZE)})
            wait_go()

    child = NobodyChild(fresh_daemon.socket_path, work)
    try:
        state = child.report()
        with Device.open(fresh_daemon.socket_path, join=state["token"]) as channel:
            assert channel.gem_mmap_offset(state["bo"])
    finally:
        assert child.join() == 0


# --- what stays the channel's own ---------------------------------------------------------------


def mmap_request(request_id: int, offset: int) -> bytes:
    args = m.XedMmap(offset=offset, length=PAGE_SIZE, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED)
    return encode_request(request_id, Op.MMAP, args)


def mmaps_answered(daemon: DaemonProcess) -> int:
    with Device.open(daemon.socket_path, role="admin") as adm:
        stats: m.XedAdminStatsReply = adm.ioctl(Op.ADMIN_STATS, m.XedAdminStats())
    return sum(s.count for s in stats.ops if s.op == Op.MMAP.name)


def test_unread_descriptors_are_counted_per_channel(make_daemon: Any) -> None:
    """A channel that leaves limits.unread_descriptors replies unread is refused EMFILE;
    its file's own connection, reading its replies, still maps."""
    daemon = make_daemon("[limits]\nunread_descriptors = 4\n")
    with Device.open(daemon.socket_path) as dev:
        offset = dev.gem_mmap_offset(dev.gem_create(PAGE_SIZE))
        with Device.open(daemon.socket_path, join=dev.token) as channel:
            ids = {1000 + i: Op.MMAP for i in range(6)}
            for request_id in ids:
                channel.transport.sock.send(mmap_request(request_id, offset))
            poll_until(lambda: mmaps_answered(daemon) >= len(ids))
            dev.mmap(offset, PAGE_SIZE).close()  # the file's connection has its own count
            got = []
            for _ in ids:
                data, fds = channel.transport.recv()
                for fd in fds:
                    os.close(fd)
                reply = decode_incoming(data, tuple(fds), ids)
                assert isinstance(reply, Reply)
                got.append((reply.errno, len(reply.fds)))
            assert got == [(0, 1)] * 4 + [(errno.EMFILE, 0)] * 2


def test_channel_close_cancels_its_blocking_ops(make_daemon: Any) -> None:
    """A channel's WAIT_USER_FENCE ends with the channel: with fence_waits = 1, the file
    can park a wait of its own again once the channel is gone (and not before)."""
    daemon = make_daemon("[limits]\nfence_waits = 1\n")
    with Device.open(daemon.socket_path) as dev:
        bo = dev.gem_create(PAGE_SIZE)
        cpu = dev.mmap_bo(bo)
        fence = cpu.user_address(0)
        channel = Device.open(daemon.socket_path, join=dev.token)
        try:
            wait = m.DrmXeWaitUserFence(
                addr=dev.user_address(fence), op=UfenceOp.EQ, value=1, timeout=-1
            )
            channel.transport.sock.send(encode_request(5, Op.XE_WAIT_USER_FENCE, wait))
            # answered after the wait's task ran up to its sleep (a request taken from the
            # socket lets every task started before it run first): the wait is parked
            channel.version()

            def file_wait_errno() -> int:
                return errno_of(dev.wait_user_fence, fence, 1, timeout=1_000_000)

            assert file_wait_errno() == errno.ENOMEM  # the file's one wait is the channel's
        finally:
            channel.close()
        poll_until(lambda: (file_info(daemon, dev.client_id) or m.XedClientInfo()).channels == 0)
        assert file_wait_errno() == errno.ETIME
        cpu.close()


# --- the debugger sees the file -----------------------------------------------------------------


def test_debugger_sees_a_channels_requests_as_the_files(fresh_daemon: DaemonProcess) -> None:
    """A debugger attached to the process that opened the file hears a VM a forked
    child's channel creates as the file's (its pid and client id), and reads it."""
    dev = Device.open(fresh_daemon.socket_path)
    dbg = Device.open(fresh_daemon.socket_path, role="debugger")
    try:
        dbg.debug_attach(os.getpid())
        token, path = dev.token, fresh_daemon.socket_path

        def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
            with Device.open(path, join=token) as channel:
                vm = channel.vm_create()
                bo = channel.gem_create(PAGE_SIZE)
                with channel.mmap(channel.gem_mmap_offset(bo), PAGE_SIZE) as cpu:
                    cpu[0:8] = b"child!!!"
                channel.vm_bind(vm, bo, 0x10000, size=PAGE_SIZE)
                report({"vm": vm})

        child = ForkedChild(path, work)
        vm = child.report()["vm"]
        assert child.join() == 0
        event = dbg.wait_event(timeout=WAIT)
        while event.data.kind != "vm_create":
            event = dbg.wait_event(timeout=WAIT)
        assert event.event == Event.DEBUG_EVENT
        assert (event.data.pid, event.data.client_id, event.data.vm_id) == (
            os.getpid(),
            dev.client_id,
            vm,
        )
        assert dbg.debug_vm_read(dev.client_id, vm, 0x10000, 8) == b"child!!!"
    finally:
        dbg.close()
        dev.close()


# --- the wire: HELLO fields ---------------------------------------------------------------------


def test_hello_without_node_or_join_opens_a_primary_file(fresh_daemon: DaemonProcess) -> None:
    """A HELLO carrying neither node nor join (an older client) opens a primary-node file."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(WAIT)
    try:
        sock.connect(str(fresh_daemon.socket_path))
        sock.send(encode_request(1, Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm")))
        reply = decode_incoming(sock.recv(65536), (), {1: Op.HELLO})
        assert isinstance(reply, Reply) and reply.errno == 0 and len(reply.result.token) == 32
        info = file_info(fresh_daemon, reply.result.client_id)
        assert info is not None and info.node == "primary"
    finally:
        sock.close()
