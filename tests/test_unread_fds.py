"""Descriptors left unread: a client that leaves replies with descriptors unread is
capped (EMFILE) and hurts nobody else; a send the kernel refuses for descriptors fails
that request (EMFILE), never the connection.

The kernel caps the descriptors a sending user has in flight at its RLIMIT_NOFILE unless
it has CAP_SYS_RESOURCE or CAP_SYS_ADMIN; the sender is the daemon. The adversarial
tests run the daemon as the shipped unit does, without capabilities: as a uid of its
own (no other process shares its budget) with a small descriptor limit.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import ROOT, _check_log, baseline
from helpers import errno_of

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Event, EventMessage, Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.constants import MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE

NOBODY = 65534
DAEMON_UID = 40000 + os.getpid() % 20000  # a uid no other process runs as
WAIT = 10.0  # s: an upper bound, never an expectation


def mmap_request(request_id: int, offset: int) -> bytes:
    args = m.XedMmap(offset=offset, length=PAGE_SIZE, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED)
    return encode_request(request_id, Op.MMAP, args)


def receive(dev: Device, ops: dict[int, Op]) -> Reply | EventMessage:
    """The next datagram on the connection, read past the library; its fds are closed."""
    ready, _, _ = select.select([dev.transport.sock], [], [], WAIT)
    assert ready, "nothing came from the daemon"
    data, fds = dev.transport.recv()
    for fd in fds:
        os.close(fd)
    return decode_incoming(data, tuple(fds), ops)


def limits_hit(daemon: DaemonProcess) -> int:
    with Device.open(daemon.socket_path, role="admin") as adm:
        return adm.admin_status().limits_hit


def poll_until(check: Callable[[], bool]) -> None:
    """Bounded polling for what the daemon does on its own schedule."""
    for _ in range(1000):
        if check():
            return
        select.select([], [], [], 0.01)
    raise AssertionError("never happened")


def mmaps_answered(daemon: DaemonProcess) -> int:
    with Device.open(daemon.socket_path, role="admin") as adm:
        stats: m.XedAdminStatsReply = adm.ioctl(Op.ADMIN_STATS, m.XedAdminStats())
    return sum(s.count for s in stats.ops if s.op == Op.MMAP.name)


def await_mmaps_answered(daemon: DaemonProcess, count: int) -> None:
    poll_until(lambda: mmaps_answered(daemon) >= count)


# --- the caps, with the client library and the raw socket beside it ------------------------


def test_replies_beyond_the_connections_cap_are_emfile(make_daemon: Any) -> None:
    """Past limits.unread_descriptors left unread on a connection, MMAP answers EMFILE with
    no descriptor; once the client has read them, MMAP gives descriptors again."""
    daemon = make_daemon("[limits]\nunread_descriptors = 8\n")
    with Device.open(daemon.socket_path) as dev:
        offset = dev.gem_mmap_offset(dev.gem_create(PAGE_SIZE))
        ids = {1000 + i: Op.MMAP for i in range(12)}
        for request_id in ids:
            dev.transport.sock.send(mmap_request(request_id, offset))
        await_mmaps_answered(daemon, len(ids))  # every reply waits in the socket, unread
        got = []
        for _ in ids:
            reply = receive(dev, ids)
            assert isinstance(reply, Reply)
            got.append((reply.id, reply.errno, len(reply.fds)))
        assert got == [(i, 0, 1) for i in range(1000, 1008)] + [
            (i, errno.EMFILE, 0) for i in range(1008, 1012)
        ]
        assert limits_hit(daemon) == 4
        dev.mmap_bo(dev.gem_create(PAGE_SIZE)).close()  # all read: the cap is far again
        assert limits_hit(daemon) == 4


def test_the_uids_cap_spans_its_connections(make_daemon: Any) -> None:
    """limits.unread_descriptors_per_uid counts every connection of the uid: a second
    connection gets EMFILE for what the first left unread; closing the first frees it."""
    daemon = make_daemon("[limits]\nunread_descriptors = 8\nunread_descriptors_per_uid = 12\n")
    first, second = Device.open(daemon.socket_path), Device.open(daemon.socket_path)
    try:
        ids = {1000 + i: Op.MMAP for i in range(8)}
        offset = first.gem_mmap_offset(first.gem_create(PAGE_SIZE))
        for request_id in ids:
            first.transport.sock.send(mmap_request(request_id, offset))
        await_mmaps_answered(daemon, 8)  # eight descriptors left unread
        offset = second.gem_mmap_offset(second.gem_create(PAGE_SIZE))

        def five_unread_then_read() -> list[tuple[int, int]]:
            answered = mmaps_answered(daemon)
            for request_id in list(ids)[:5]:
                second.transport.sock.send(mmap_request(request_id, offset))
            await_mmaps_answered(daemon, answered + 5)
            return [(r.errno, len(r.fds)) for r in (receive(second, ids) for _ in range(5))]

        assert five_unread_then_read() == [(0, 1)] * 4 + [(errno.EMFILE, 0)]  # 8 + 4
        first.close()
        with Device.open(daemon.socket_path, role="admin") as adm:
            poll_until(lambda: first.client_id not in {c.client_id for c in adm.admin_clients()})
        assert five_unread_then_read() == [(0, 1)] * 5  # what the first left went with it
    finally:
        first.close()
        second.close()


def test_replies_read_on_another_connection_do_not_count(make_daemon: Any) -> None:
    """Replies the uid's other connection has read stop counting against the uid's cap,
    though that connection has asked for nothing since: this one may use the whole cap."""
    daemon = make_daemon("[limits]\nunread_descriptors = 12\nunread_descriptors_per_uid = 12\n")
    with Device.open(daemon.socket_path) as first, Device.open(daemon.socket_path) as second:
        bo = first.gem_create(PAGE_SIZE)
        for _ in range(8):
            first.mmap_bo(bo).close()  # each reply read
        ids = {1000 + i: Op.MMAP for i in range(12)}
        offset = second.gem_mmap_offset(second.gem_create(PAGE_SIZE))
        for request_id in ids:
            second.transport.sock.send(mmap_request(request_id, offset))
        await_mmaps_answered(daemon, 8 + 12)
        assert [(r.errno, len(r.fds)) for r in (receive(second, ids) for _ in ids)] == [
            (0, 1)
        ] * 12
    assert limits_hit(daemon) == 0


def test_unread_events_are_not_descriptors(make_daemon: Any) -> None:
    """A client that always has an event unread when its next MMAP is answered, but has
    read every earlier reply, never reaches limits.unread_descriptors."""
    daemon = make_daemon("[limits]\nunread_descriptors = 2\n")
    with Device.open(daemon.socket_path) as dev:
        offset = dev.gem_mmap_offset(dev.gem_create(PAGE_SIZE))
        for request_id in range(1000, 1008):
            # request id 0 cannot be answered: a PROTOCOL_ERROR event, sent before the
            # MMAP after it is answered; both are read only once both are sent
            dev.transport.sock.send(msgpack.packb([0, int(Op.VERSION), {}]))
            dev.transport.sock.send(mmap_request(request_id, offset))
            event = receive(dev, {})
            assert isinstance(event, EventMessage) and event.event is Event.PROTOCOL_ERROR
            reply = receive(dev, {request_id: Op.MMAP})
            assert isinstance(reply, Reply) and (reply.errno, len(reply.fds)) == (0, 1)
    assert limits_hit(daemon) == 0


# --- a daemon without capabilities, a hostile client, a bystander -----------------------------


class UnprivilegedDaemon(DaemonProcess):
    """`xed serve` as DAEMON_UID (gid 65534, no capabilities) with RLIMIT_NOFILE `nofile`,
    its socket in a directory of its own that uid 65534 may reach."""

    def __init__(self, where: Path, config: str, nofile: int) -> None:
        (where / "xed.toml").write_text(config)
        os.chown(where, DAEMON_UID, NOBODY)
        os.chmod(where, 0o750)  # the group (65534) may reach the socket, mode 0660
        super().__init__(
            socket_path=where / "xed.sock",
            config=where / "xed.toml",
            log_path=where / "daemon.log",
            extra_args=("--log-level", "debug"),
            nofile=nofile,
        )
        as_daemon = [f"--reuid={DAEMON_UID}", f"--regid={NOBODY}", "--clear-groups"]
        self._args = ["setpriv", *as_daemon, *self._args]

    def start(self) -> UnprivilegedDaemon:
        os.chmod(self._tmp.name, 0o711)  # where its NOTIFY_SOCKET is
        umask = os.umask(0)  # ... which it may then write to
        try:
            super().start()
        finally:
            os.umask(umask)
        return self


@pytest.fixture
def unprivileged() -> Iterator[Callable[[str, int], UnprivilegedDaemon]]:
    """Start unprivileged daemons; each is stopped and its log checked after the test."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon and a client as other uids")
    started: list[tuple[UnprivilegedDaemon, str]] = []

    def start(config: str, nofile: int) -> UnprivilegedDaemon:
        where = tempfile.mkdtemp(prefix="xed-unread-")  # pytest's tmp_path is root's only
        daemon = UnprivilegedDaemon(Path(where), config, nofile)
        started.append((daemon, where))
        return daemon.start()

    yield start
    for daemon, where in started:
        daemon.stop()
        _check_log(daemon)
        daemon.cleanup()
        shutil.rmtree(where)


# uid 65534: `conns` connections with a BO each, `each` MMAP requests on each, no reply read
HOSTILE = r"""
import json, os, sys
from clients import Device
from protocols import Op, decode_incoming, encode_request, messages as m
from protocols.constants import MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE
name, conns, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = {1000 + i: Op.MMAP for i in range(each)}
devs = []
for _ in range(conns):
    dev = Device.open(name)
    args = m.XedMmap(offset=dev.gem_mmap_offset(dev.gem_create(PAGE_SIZE)),
                     length=PAGE_SIZE, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED)
    try:
        for request_id in ids:
            dev.transport.sock.send(encode_request(request_id, Op.MMAP, args))
    except BrokenPipeError:  # hung up on (what a daemon did before EMFILE replies)
        pass
    devs.append(dev)
print(json.dumps([dev.client_id for dev in devs]), flush=True)
if sys.stdin.readline().strip() == "read":  # else: exit with every reply unread
    got = []
    for dev in devs:
        counts = {}
        for _ in ids:
            data, fds = dev.transport.recv()
            reply = decode_incoming(data, tuple(fds), ids)
            key = f"{reply.errno}:{len(fds)}"
            counts[key] = counts.get(key, 0) + 1
            for fd in fds:
                os.close(fd)
        got.append(counts)
    for dev in devs:
        dev.close()
    with Device.open(name) as dev:  # what the closed connections held is the uid's again
        dev.mmap_bo(dev.gem_create(PAGE_SIZE)).close()
    print(json.dumps(got), flush=True)
"""


class Hostile:
    """The hostile client: a process of uid 65534 running HOSTILE."""

    def __init__(self, daemon: DaemonProcess, conns: int, each: int) -> None:
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-c", HOSTILE, daemon.socket_path.name, str(conns), str(each)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=daemon.socket_path.parent, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        self.client_ids: list[int] = self.line()
        self.requests = conns * each

    def answered(self, daemon: DaemonProcess) -> None:
        """Wait until the daemon has answered every request of ours, or hung up on us."""

        def done() -> bool:
            with Device.open(daemon.socket_path, role="admin") as adm:
                ids = {c.client_id for c in adm.admin_clients()}
            return not set(self.client_ids) <= ids or mmaps_answered(daemon) >= self.requests

        poll_until(done)

    def line(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the hostile client failed:\n{err}")
        return json.loads(line)

    def finish(self, command: str) -> str:
        """Tell it to read its replies ("read") or to leave them; wait for it to end."""
        out, err = self.proc.communicate(command + "\n", timeout=60)
        assert self.proc.returncode == 0, err
        return out


def test_hostile_uid_is_capped_and_a_bystander_maps(
    unprivileged: Callable[[str, int], UnprivilegedDaemon],
) -> None:
    """An unprivileged daemon: a uid leaving MMAP replies unread over four connections gets
    EMFILE past its caps, so the daemon's budget of descriptors in flight is never spent
    and another client's MMAP works; the caps are the uid's again once it has read."""
    daemon = unprivileged(
        "[limits]\nunread_descriptors = 24\nunread_descriptors_per_uid = 48\n"
        "descriptor_reserve = 8\n",  # below the small table: the in-flight budget bites
        128,
    )
    before = baseline(daemon)
    hostile = Hostile(daemon, conns=4, each=40)  # 160 descriptors: more than the 128
    hostile.answered(daemon)
    with Device.open(daemon.socket_path) as bystander:
        bo = bystander.gem_create(PAGE_SIZE)
        for _ in range(8):
            with bystander.mmap_bo(bo) as cpu:
                cpu[0:4] = b"mine"
        bystander.version()
    with Device.open(daemon.socket_path, role="admin") as adm:
        ids = {c.client_id for c in adm.admin_clients()}
    assert set(hostile.client_ids) <= ids  # capped, not hung up on
    got = json.loads(hostile.finish("read"))
    granted = [c.get("0:1", 0) for c in got]
    assert all(n <= 24 for n in granted) and sum(granted) == 48
    assert [c.get(f"{errno.EMFILE}:0", 0) for c in got] == [40 - n for n in granted]
    assert limits_hit(daemon) == 4 * 40 - 48
    poll_until(lambda: baseline(daemon) == before)  # the daemon releases them on its own


def test_descriptors_refused_by_the_kernel_fail_that_request_only(
    unprivileged: Callable[[str, int], UnprivilegedDaemon],
) -> None:
    """When the kernel refuses the daemon more descriptors in flight (ETOOMANYREFS), the
    reply that needed them is EMFILE and no connection is dropped, the hostile's or a
    bystander's; once the hostile's unread replies are gone, MMAP works again."""
    # the default caps lie far above the kernel's limit; a reserve below the small table
    daemon = unprivileged("[limits]\ndescriptor_reserve = 8\n", 64)
    hostile = Hostile(daemon, conns=2, each=50)  # 100 descriptors: more than the 64
    hostile.answered(daemon)
    with Device.open(daemon.socket_path) as bystander:
        bo = bystander.gem_create(PAGE_SIZE)
        assert errno_of(bystander.mmap_bo, bo) == errno.EMFILE
        bystander.version()  # still connected
        with Device.open(daemon.socket_path, role="admin") as adm:
            ids = {c.client_id for c in adm.admin_clients()}
        assert set(hostile.client_ids) <= ids
        assert limits_hit(daemon) > 1  # the hostile's own, and the bystander's
        hostile.finish("leave")  # its sockets close: what they held unread goes with them
        with bystander.mmap_bo(bo) as cpu:
            cpu[0:4] = b"mine"
    assert "fds_in_flight_refused" in daemon.log_text()
