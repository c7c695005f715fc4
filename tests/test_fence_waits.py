"""Parked WAIT_USER_FENCEs cost the daemon next to nothing, whatever their number: they
are woken by the device's write of their own fence, by their queue's reset, or by a look
at their word that slows down while the word stays put; and one client may park only
limits.fence_waits of them.

The cost tests run the daemon's own Connection and XeDevice in trio, in this process,
over a real socketpair, under trio's MockClock: time passes only when every task
sleeps, so "nothing ran for a minute" and "the reply came without any time passing"
are facts, not timings. Nothing is mocked but the clock.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import socket
import struct
from collections.abc import AsyncIterator
from errno import ENOMEM, ETIME
from typing import Any

import pytest
import trio
import trio.testing
from conftest import baseline

from clients import Batch, Device, user_fence
from protocols import (
    PROTOCOL_VERSION,
    EventMessage,
    Op,
    Reply,
    decode_incoming,
    encode_request,
    unpack_fds,
)
from protocols import messages as m
from protocols.constants import MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, XE_PLACEMENT_SYSMEM
from xed.config import Config
from xed.connection import Connection
from xed.device.device import XeDevice
from xed.device.ufence import LOOK_TICK, SLOW_LOOK

WAITERS = 1000
BATCH_VA = 0x1_0000_0000
NEVER = 0xFFFF  # a fence value nobody writes


class TaskSteps(trio.abc.Instrument):
    """How many times each kind of task ran, by name."""

    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name.rsplit(".", 1)[-1]] += 1


class RawClient:
    """The client side of the socketpair: requests sent as they are, replies read
    without blocking the trio loop the daemon runs in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ops: dict[int, Op] = {}
        self.replies: dict[int, Reply] = {}
        self.maps: list[mmap.mmap] = []
        self._next = 0

    def send(self, op: Op, args: Any) -> int:
        self._next += 1
        self.ops[self._next] = op
        self.sock.send(encode_request(self._next, op, args))
        return self._next

    async def reply(self, ident: int) -> Reply:
        while ident not in self.replies:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            fds, _ = unpack_fds(anc)
            message = decode_incoming(data, tuple(fds), self.ops)
            if not isinstance(message, EventMessage):
                self.replies[message.id] = message
        return self.replies.pop(ident)

    async def call(self, op: Op, args: Any) -> Any:
        reply = await self.reply(self.send(op, args))
        assert not reply.errno, (op, reply)
        return reply.result if not reply.fds else (reply.result, reply.fds)

    def wait(self, addr: int, value: int) -> int:
        """Send an endless WAIT_USER_FENCE for `value` at `addr`; its reply comes later."""
        args = m.DrmXeWaitUserFence(addr=addr, value=value, timeout=-1)
        return self.send(Op.XE_WAIT_USER_FENCE, args)


@contextlib.asynccontextmanager
async def _in_process() -> AsyncIterator[tuple[XeDevice, RawClient]]:
    """A device and one connection to it, served in this trio run; all closed after."""
    device = XeDevice(Config())
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (client, server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
    raw = RawClient(client)
    try:
        async with trio.open_nursery() as nursery:
            device.attach(nursery)
            nursery.start_soon(Connection(device, server, 1).run)
            await raw.call(Op.HELLO, m.Hello(version=PROTOCOL_VERSION, role="drm"))
            yield device, raw
            nursery.cancel_scope.cancel()
    finally:
        for cpu in raw.maps:
            cpu.close()
        client.close()


async def _fence_page(raw: RawClient) -> tuple[int, int, mmap.mmap]:
    """A one-page BO: its handle, its user address, and our own CPU mapping of it."""
    args = m.DrmXeGemCreate(size=PAGE_SIZE, placement=XE_PLACEMENT_SYSMEM, cpu_caching=1)
    created = await raw.call(Op.XE_GEM_CREATE, args)
    offset = await raw.call(Op.XE_GEM_MMAP_OFFSET, m.DrmXeGemMmapOffset(handle=created.handle))
    args = m.XedMmap(
        offset=offset.offset, length=PAGE_SIZE, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED
    )
    _, (fd,) = await raw.call(Op.MMAP, args)
    try:
        cpu = mmap.mmap(fd, PAGE_SIZE)
    finally:
        os.close(fd)
    raw.maps.append(cpu)
    return created.handle, offset.offset, cpu


def _mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_a_thousand_parked_waits_never_run_and_are_looked_at_ever_less() -> None:
    """1,000 endless waits on words nobody writes: for a minute no waiter task runs, the
    device task wakes a bounded number of times whatever the number of waiters, and
    once backed off each word is looked at every SLOW_LOOK."""

    async def main() -> None:
        counter = TaskSteps()
        async with _in_process() as (device, raw):
            _, addr, cpu = await _fence_page(raw)
            for i in range(WAITERS):
                raw.wait(addr + 8 * (i % (PAGE_SIZE // 8)), NEVER)
            await trio.sleep(1)  # every wait had ample time to park
            trio.lowlevel.add_instrument(counter)
            for _ in range(60):
                await trio.sleep(1)
                assert counter.steps["_answer_blocking"] == 0, counter.steps
            looks_before, steps_before = device.ufences.looks, counter.steps["run"]
            await trio.sleep(10 * SLOW_LOOK)
            looks = device.ufences.looks - looks_before
            assert looks <= WAITERS * 11, looks  # one per SLOW_LOOK each, at most
            # the looks task itself woke once per grid point, not once per waiter
            assert counter.steps["run"] - steps_before <= 11 + 4, counter.steps
            assert len(device.ufences.parked) == WAITERS

    trio.run(main, clock=_mock_clock())


def test_a_device_fence_write_wakes_only_the_waiters_it_satisfies() -> None:
    """An EXEC's user fence wakes the one waiter whose test the written value passes, at
    once (no time passes: no look was needed); waiters on other words, and on the same
    word for another value, do not run."""

    async def main() -> None:
        counter = TaskSteps()
        async with _in_process() as (device, raw):
            handle, addr, cpu = await _fence_page(raw)
            vm = await raw.call(Op.XE_VM_CREATE, m.DrmXeVmCreate())
            bind = m.DrmXeVmBindOp(obj=handle, range=PAGE_SIZE, addr=BATCH_VA)
            await raw.call(Op.XE_VM_BIND, m.DrmXeVmBind(vm_id=vm.vm_id, binds=(bind,)))
            eci = m.DrmXeEngineClassInstance(engine_class=0, engine_instance=0, gt_id=0)
            queue = await raw.call(
                Op.XE_EXEC_QUEUE_CREATE,
                m.DrmXeExecQueueCreate(width=1, num_placements=1, vm_id=vm.vm_id, instances=(eci,)),
            )
            batch = Batch().end().tobytes()
            cpu[0x800 : 0x800 + len(batch)] = batch
            for i in range(WAITERS // 2):  # other words
                raw.wait(addr + 8 + 8 * (i % 200), NEVER)
            for _ in range(WAITERS // 2):  # the fence's word, for a value it will not get
                raw.wait(addr, 2)
            mine = raw.wait(addr, 1)
            await trio.sleep(1)
            trio.lowlevel.add_instrument(counter)
            wakeups = device.ufences.wakeups
            start = trio.current_time()
            raw.send(
                Op.XE_EXEC,
                m.DrmXeExec(
                    exec_queue_id=queue.exec_queue_id,
                    address=BATCH_VA + 0x800,
                    num_batch_buffer=1,
                    syncs=(user_fence(BATCH_VA, 1),),
                ),
            )
            reply = await raw.reply(mine)
            assert reply.errno == 0
            assert trio.current_time() == start  # woken by the write itself
            assert counter.steps["_answer_blocking"] <= 2, counter.steps
            assert device.ufences.wakeups - wakeups == 1
            assert len(device.ufences.parked) == WAITERS

    trio.run(main, clock=_mock_clock())


def test_a_cpu_write_reaches_a_long_idle_waiter_within_slow_look() -> None:
    """A waiter parked for a minute on a still word still passes on a CPU write, at the
    next look: at most SLOW_LOOK later."""

    async def main() -> None:
        async with _in_process() as (device, raw):
            _, addr, cpu = await _fence_page(raw)
            waiting = raw.wait(addr, 5)
            await trio.sleep(60)
            written = trio.current_time()
            struct.pack_into("<Q", cpu, 0, 5)
            reply = await raw.reply(waiting)
            assert reply.errno == 0
            assert trio.current_time() - written <= SLOW_LOOK

    trio.run(main, clock=_mock_clock())


def test_a_busy_word_is_looked_at_every_tick() -> None:
    """A word that keeps changing (a CPU-side progress counter) is looked at every
    LOOK_TICK, however long the waiter has been parked: its final value is seen at once."""

    async def main() -> None:
        async with _in_process() as (device, raw):
            _, addr, cpu = await _fence_page(raw)
            waiting = raw.wait(addr, 1000)
            await trio.sleep(60)  # backed off to SLOW_LOOK
            for n in range(1, 100):
                struct.pack_into("<Q", cpu, 0, n)
                await trio.sleep(SLOW_LOOK if n < 3 else LOOK_TICK)
            written = trio.current_time()
            struct.pack_into("<Q", cpu, 0, 1000)
            reply = await raw.reply(waiting)
            assert reply.errno == 0
            assert trio.current_time() - written <= LOOK_TICK + 1e-9

    trio.run(main, clock=_mock_clock())


# --- the per-client limit, on a real daemon ---------------------------------------------


def _send_wait(dev: Device, ident: int, addr: int, value: int, timeout: int = -1) -> None:
    args = m.DrmXeWaitUserFence(addr=addr, value=value, timeout=timeout)
    dev.transport.sock.send(encode_request(ident, Op.XE_WAIT_USER_FENCE, args))


def _read_reply(dev: Device, pending: dict[int, Op]) -> Reply:
    dev.transport.sock.settimeout(10)
    try:
        while True:
            data, fds = dev.transport.recv()
            message = decode_incoming(data, tuple(fds), pending)
            if isinstance(message, Reply):
                return message
    finally:
        dev.transport.sock.settimeout(None)


LIMIT = 4


def test_fence_waits_past_the_limit_are_enomem(make_daemon: Any) -> None:
    """One client's waits asleep at once stop at limits.fence_waits: one more is ENOMEM
    and counted (limits_hit); waits that need not sleep, and other clients, are not
    affected; once the waits end the client may park as many again."""
    daemon = make_daemon(f"[limits]\nfence_waits = {LIMIT}\n")
    before = baseline(daemon)
    with (
        Device.open(daemon.socket_path) as dev,
        Device.open(daemon.socket_path) as other,
        Device.open(daemon.socket_path, role="admin") as admin,
    ):
        bo = dev.gem_create(PAGE_SIZE)
        cpu = dev.mmap_bo(bo)
        addr = dev.user_address(cpu.user_address(0))
        pending = {ident: Op.XE_WAIT_USER_FENCE for ident in range(1000, 1000 + LIMIT + 1)}
        for ident in pending:
            _send_wait(dev, ident, addr, 1)
        refused = _read_reply(dev, pending)  # the others sleep: only the refusal comes
        assert refused.errno == ENOMEM
        assert admin.admin_status().limits_hit >= 1
        # at the limit, a wait that looks once, or finds its value, does not sleep
        assert dev.wait_user_fence(cpu.user_address(8), 0, timeout=-1) > 0
        with pytest.raises(OSError) as info:
            dev.wait_user_fence(cpu.user_address(0), 1, timeout=0)
        assert info.value.errno == ETIME
        # another client has its own
        theirs = other.gem_create(PAGE_SIZE)
        their_cpu = other.mmap_bo(theirs)
        their_cpu.write_u64(0, 7)
        other.wait_user_fence(their_cpu.user_address(0), 7, timeout=-1)
        # the fence passes: the sleeping ones return, and the budget is whole again
        cpu.write_u64(0, 1)
        answered = [_read_reply(dev, pending) for _ in range(LIMIT)]
        assert [r.errno for r in answered] == [0] * LIMIT
        assert {r.id for r in answered} | {refused.id} == set(pending)
        again = {ident: Op.XE_WAIT_USER_FENCE for ident in range(2000, 2000 + LIMIT)}
        for ident in again:
            _send_wait(dev, ident, addr, 2)
        cpu.write_u64(0, 2)
        assert [_read_reply(dev, again).errno for _ in range(LIMIT)] == [0] * LIMIT
        cpu.close()
        their_cpu.close()
    # the daemon notices the hang-ups on its own schedule: look until it has caught up
    for _ in range(200):
        now = baseline(daemon)
        if now == before:
            break
    assert now == before
