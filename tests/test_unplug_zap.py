"""Unplug zaps mappings (drm_dev_unplug): every existing CPU mapping of the device (BO,
dma-buf, MMIO region, barrier page; the library's and one made by hand) reads zeros as
soon as the unplug is answered, with no fault; once the library has put its private
zero pages under them, what a process writes reaches nobody else (the kernel's dummy
page); barrier and doorbell writes are never counted again; the device stops (parked
fence waits answer ENODEV, debuggers are detached).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from agent import Agent
from conftest import Holder
from test_fence_waits import _read_reply, _send_wait
from test_unplug import TIMEOUT, UNWATCHED_WINDOW

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Event, Op
from protocols.constants import PAGE_SIZE, PCI_BARRIER_IDLE

WAITED = f"assert dev.wait_unplugged({TIMEOUT})\n"


def counted(admin: Device, client_id: int) -> tuple[int, int, int]:
    """(the file's barriers, its doorbell rings, the device's barriers) as admin sees them."""
    (info,) = [c for c in admin.admin_clients() if c.client_id == client_id]
    return info.barriers, info.doorbell_rings, admin.admin_status().barriers


# --- zeros, at once, without a fault ----------------------------------------------------------


def test_unplug_empties_every_mapping_at_once(holder: Holder, fresh_admin: Device) -> None:
    """Once UNPLUG is answered, the BO (library and by hand), info block, doorbell and
    barrier mappings of a live process read zeros (the barrier page no more 0xdeadbeef);
    nobody faults."""
    before = holder.run(
        "out = [bytes(bo_map[0:4]).decode(), info.read_u32(XE_INFO_DEVICE_ID), "
        "barrier.read_u32(0), barrier_hand.load_u32(64)]"
    )
    assert before == ["live", 0xE20B, PCI_BARRIER_IDLE, PCI_BARRIER_IDLE]
    fresh_admin.admin_unplug()
    out = holder.run(
        """
out = {
    "bo": bytes(bo_map[0:0x4000]) == bytes(0x4000),
    "bo_hand": bytes(bo_hand.raw) == bytes(0x4000),
    "device_id": info.read_u32(XE_INFO_DEVICE_ID),
    "timestamp": info.read_u64(XE_INFO_TIMESTAMP),
    "bell": [bell.read_u32(0), bell_hand.load_u32(0x80)],
    "barrier": [barrier.read_u32(0), barrier_hand.load_u32(64)],
}
"""
    )
    zeros = {"device_id": 0, "timestamp": 0, "bell": [0, 0], "barrier": [0, 0]}
    assert out == {"bo": True, "bo_hand": True, **zeros}
    assert holder.alive()


# --- what is written afterwards reaches nobody -----------------------------------------------


EXPORTER = """
handle = dev.gem_create(4 * PAGE_SIZE)
mp = dev.mmap_bo(handle)
mp[0:6] = b"shared"
send = [dev.prime_handle_to_fd(handle)]
"""
IMPORTER = """
(fd,) = fds
mp = dev.dmabuf_mmap(fd)
os.close(fd)
result = bytes(mp[0:6]).decode()
"""


def test_writes_after_unplug_reach_no_other_process(
    fresh_daemon: DaemonProcess,
    agents: Callable[[DaemonProcess], Agent],
    fresh_admin: Device,
) -> None:
    """Two processes sharing a BO (GEM mmap and dma-buf mmap): after the unplug each one's
    writes stay in its own zero page; neither sees the other's, nor the old contents."""
    a, b = agents(fresh_daemon), agents(fresh_daemon)
    _, (fd,) = a.run_fds(EXPORTER)
    try:
        assert b.run(IMPORTER, [fd]) == "shared"
    finally:
        os.close(fd)
    fresh_admin.admin_unplug()
    for agent in (a, b):
        agent.run(WAITED)
    a.run("mp[0:6] = b'from a'")
    b.run("mp[64:70] = b'from b'")
    look = "result = [bytes(mp[0:6]).decode(), bytes(mp[64:70]).decode()]"
    assert a.run(look) == ["from a", "\0" * 6]
    assert b.run(look) == ["\0" * 6, "from b"]


def test_a_forked_childs_mapping_falls_too(holder: Holder, fresh_admin: Device) -> None:
    """A child forked before the unplug inherits the BO and barrier mappings; after it,
    the child's writes reach neither its parent nor the device (its own zero pages)."""
    child = holder.run(
        f"""
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    ok = dev.wait_unplugged({TIMEOUT})
    bo_map[0:4] = b"kid!"
    barrier.write_u32(0, 0x1234)
    os.write(done_w, json.dumps([ok, bytes(bo_map[0:4]).decode()]).encode())
    os._exit(0)
os.read(ready_r, 1)
out = pid
"""
    )
    fresh_admin.admin_unplug()
    out = holder.run(
        f"""
os.write(go_w, b"g")
child_saw = json.loads(os.read(done_r, 100))
os.waitpid({child}, 0)
out = [child_saw, bytes(bo_map[0:4]).decode(), bo_hand.load_u32(0), barrier.read_u32(0)]
"""
    )
    assert out == [[True, "kid!"], "\0" * 4, 0, 0]


# --- barriers and doorbells are never seen again ----------------------------------------------


def test_barrier_and_doorbell_writes_after_unplug_are_never_counted(
    holder: Holder, fresh_admin: Device
) -> None:
    """Barrier stores and doorbell rings made after the unplug (through the library's
    mappings and through mappings made by hand, which still reach the emptied pages) are
    neither answered nor counted, then or after REPLUG: nothing restores 0xdeadbeef or
    clears the bell."""
    before = counted(fresh_admin, holder.client_id)
    assert before[0] == 1  # the store the holder made at start
    fresh_admin.admin_unplug()
    write = (
        WAITED + "barrier.write_u32(0, 0x0BADF00D)\nbarrier_hand.store_u32(0, 0x0BADF00D)\n"
        "bell.write_u32(0, 0xD00B)\nbell_hand.store_u32(0, 0xD00B)\n"
    )
    holder.run(write)
    fresh_admin.admin_replug()
    stayed = holder.run(
        f"""
out = [
    stays(lambda: barrier.read_u32(0), 0x0BADF00D, {UNWATCHED_WINDOW}),
    stays(lambda: barrier_hand.load_u32(0), 0x0BADF00D, {UNWATCHED_WINDOW}),
    stays(lambda: bell.read_u32(0), 0xD00B, {UNWATCHED_WINDOW}),
    stays(lambda: bell_hand.load_u32(0), 0xD00B, {UNWATCHED_WINDOW}),
]
"""
    )
    assert stayed == [True] * 4, "a write made after the unplug was acted upon"
    assert counted(fresh_admin, holder.client_id) == before


# --- the device stops ------------------------------------------------------------------------


def test_a_parked_fence_wait_answers_enodev(make_daemon: Any) -> None:
    """A WAIT_USER_FENCE asleep when the device is unplugged wakes at once with ENODEV
    (the stopped device will never write the fence), not at its timeout."""
    daemon = make_daemon("[limits]\nfence_waits = 1\n")
    with (
        Device.open(daemon.socket_path) as dev,
        Device.open(daemon.socket_path, role="admin") as admin,
    ):
        cpu = dev.mmap_bo(dev.gem_create(PAGE_SIZE))
        addr = dev.user_address(cpu.user_address(0))
        pending = {1000: Op.XE_WAIT_USER_FENCE, 1001: Op.XE_WAIT_USER_FENCE}
        for ident in pending:  # 30 s: long past the reply's bound below
            _send_wait(dev, ident, addr, 1, timeout=30_000_000_000)
        refused = _read_reply(dev, pending)  # the limit: so the other one is asleep
        assert refused.errno == errno.ENOMEM
        admin.admin_unplug()
        woken = _read_reply(dev, pending)
        assert (woken.id, woken.errno) == (({*pending} - {refused.id}).pop(), errno.ENODEV)
        cpu.close()
        admin.admin_replug()


def test_unplug_detaches_every_debugger(
    fresh_daemon: DaemonProcess, holder: Holder, fresh_admin: Device
) -> None:
    """A debugger attached to a process is told at the unplug (a detach event saying so)
    and is attached to nothing afterwards."""
    with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
        dbg.debug_attach(holder.proc.pid)
        fresh_admin.admin_unplug()
        message = dbg.wait_event(TIMEOUT)
        assert message.event == Event.DEBUG_EVENT
        assert (message.data.kind, message.data.pid) == ("detach", holder.proc.pid)
        assert message.data.detail == "the device was unplugged"
