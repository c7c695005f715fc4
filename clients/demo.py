"""`make demo`: a daemon and several client processes exercising what xed emulates.

Each client is a separate process (`python -m clients.demo worker NAME SOCKET ...`) that
prints one JSON line of findings; the parent starts the daemon, runs the workers, and
tells the story.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

from protocols import errno_name
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    PAGE_SIZE,
    XE_BAR0_INFO_SIZE,
    XE_INFO_DEVICE_ID,
    XE_INFO_TIMESTAMP,
)

from . import fdpass
from .batch import Batch
from .daemon import AuxDriverProcess, DaemonProcess
from .device import Device, user_fence
from .ib import IbContext

GPU_BASE = 0x1_0000_0000
COUNTER_INCREMENTS = 200


def _attempt(call: Any) -> str:
    """The errno a call fails with (from the daemon or the kernel itself), or "allowed"."""
    try:
        call()
    except OSError as exc:
        return errno_name(exc.errno or 0)
    return "allowed"


def worker_alice(dev: Device) -> dict[str, Any]:
    """Create, map, bind, execute, wait: the whole path, then leave an offset for bob."""
    bo = dev.gem_create(1 << 20)
    m = dev.mmap_bo(bo)
    m[0:21] = b"written by the CPU..."
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, GPU_BASE)
    queue = dev.exec_queue_create(vm)
    batch = (
        Batch()
        .store_dword(GPU_BASE + 0x1000, 0xC0FFEE)
        .mem_copy(GPU_BASE + 0x2000, GPU_BASE, 21)
        .atomic_inc(GPU_BASE + 0x3000)
        .atomic_inc(GPU_BASE + 0x3000)
        .end()
    )
    m[0x8000 : 0x8000 + len(batch)] = batch.tobytes()
    dev.exec(queue, GPU_BASE + 0x8000, syncs=[user_fence(GPU_BASE + 0x4000, 1)])
    left = dev.wait_user_fence(m.user_address(0x4000), 1)
    return {
        "store": hex(m.read_u32(0x1000)),
        "copy": bytes(m[0x2000 : 0x2000 + 21]).decode(),
        "counter": m.read_u32(0x3000),
        "fence_wait_left_ms": round(left / 1e6, 1),
        "offset": dev.gem_mmap_offset(bo),
        "handle": bo,
        "vm": vm,
    }


def worker_bob(dev: Device, offset: str, handle: str, vm: str) -> dict[str, Any]:
    """Try to reach alice's objects by replaying her numbers; keep our own private."""
    mine = dev.gem_create(4096)
    with dev.mmap_bo(mine) as m:
        m[0:4] = b"bob!"
        own = bytes(m[0:4]).decode()
    return {
        "map_alice_offset": _attempt(lambda: dev.mmap(int(offset), 4096)),
        "offset_of_handle": _attempt(lambda: dev.gem_mmap_offset(int(handle) + 1)),
        "bind_into_alice_vm": _attempt(lambda: dev.vm_bind(int(vm), mine, GPU_BASE)),
        "own_handle": mine,
        "own_bo": own,
    }


def worker_carol(dev: Device) -> dict[str, Any]:
    """Submit a batch with a bad instruction: the queue is banned, the daemon lives on."""
    bo = dev.gem_create(0x10000)
    m = dev.mmap_bo(bo)
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, GPU_BASE)
    queue = dev.exec_queue_create(vm)
    batch = Batch().raw(0xDEADBEEF).end()
    m[0 : len(batch)] = batch.tobytes()
    dev.exec(queue, GPU_BASE, syncs=[user_fence(GPU_BASE + 0x1000, 1)])
    dev.wait_user_fence(m.user_address(0x1000), 1)
    again = _attempt(lambda: dev.exec(queue, GPU_BASE))
    events = [e.data.reason for e in dev.events]
    return {"events": events, "exec_after_ban": again}


def worker_counter(dev: Device) -> dict[str, Any]:
    """Many small batches on one queue, each incrementing a counter, then one fence."""
    bo = dev.gem_create(0x10000)
    m = dev.mmap_bo(bo)
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, GPU_BASE)
    queue = dev.exec_queue_create(vm)
    batch = Batch().atomic_inc(GPU_BASE + 0x1000).end()
    m[0 : len(batch)] = batch.tobytes()
    for _ in range(COUNTER_INCREMENTS - 1):
        dev.exec(queue, GPU_BASE)
    dev.exec(queue, GPU_BASE, syncs=[user_fence(GPU_BASE + 0x2000, 1)])
    dev.wait_user_fence(m.user_address(0x2000), 1, timeout=30_000_000_000)
    return {"counter": m.read_u32(0x1000)}


def worker_dave(dev: Device, peer_fd: str) -> dict[str, Any]:
    """Export a BO as a dma-buf and hand it to others over a socket; watch it change."""
    peer = socket.socket(fileno=int(peer_fd))
    bo = dev.gem_create(1 << 16)
    m = dev.mmap_bo(bo)
    m[0:12] = b"dave's words"
    fd = dev.prime_handle_to_fd(bo)
    fdpass.send_fds(peer, b"dma-buf", [fd])
    fdpass.send_fds(peer, b"dma-buf", [fd])  # one copy for each reader
    peer.recv(16)  # both are done
    return {"bytes": bytes(m[0:12]).decode(), "ino": os.fstat(fd).st_ino}


def worker_erin(dev: Device, peer_fd: str) -> dict[str, Any]:
    """Receive a dma-buf, import it, write through her own mapping of the same pages."""
    peer = socket.socket(fileno=int(peer_fd))
    _msg, (fd,) = fdpass.recv_fds(peer)
    handle = dev.prime_fd_to_handle(fd)
    with dev.dmabuf_mmap(fd) as m, dev.cpu_access(fd):
        m[0:4] = b"ERIN"
    return {"handle": handle, "size": dev.dmabuf_size(fd)}


def worker_frank(dev: Device, peer_fd: str) -> dict[str, Any]:
    """On another daemon: import the dma-buf (foreign, zero copy), let a batch write it."""
    peer = socket.socket(fileno=int(peer_fd))
    _msg, (fd,) = fdpass.recv_fds(peer)
    bo = dev.prime_fd_to_handle(fd)
    with dev.mmap_bo(bo) as cpu:  # as on xe: the mapping is made, and faults when touched
        touched = _touch_in_child(cpu.address)
    scratch = dev.gem_create(0x10000)
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, GPU_BASE)
    dev.vm_bind(vm, scratch, GPU_BASE + 0x100000)
    queue = dev.exec_queue_create(vm)
    batch = Batch().store_dword(GPU_BASE + 8, int.from_bytes(b"FRNK", "little")).end()
    with dev.mmap_bo(scratch) as m:
        m[0 : len(batch)] = batch.tobytes()
        dev.exec(queue, GPU_BASE + 0x100000, syncs=[user_fence(GPU_BASE + 0x101000, 1)])
        dev.wait_user_fence(m.user_address(0x1000), 1)
    peer.send(b"done")
    return {"gem_mmap_of_import": touched, "device": dev.identity.instance}


def _touch_in_child(address: int) -> str:
    """Read a byte at `address` in a forked child: "read", or the signal it died of."""
    pid = os.fork()
    if pid == 0:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.string_at(address, 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "read"


BARRIERS = 10_000


def worker_henry(dev: Device) -> Iterator[dict[str, Any]]:
    """BAR0: the info block, a doorbell, the barrier page; then life through an unplug."""
    regs = dev.mmap_mmio(dev.mmio_open("info"))
    bell = dev.mmap_mmio(dev.mmio_open("doorbell"), writable=True)
    first = regs.read_u64(XE_INFO_TIMESTAMP)
    bell.write_u32(0, 0x600D)
    for _ in range(BARRIERS):
        dev.pci_barrier()
    dev.pci_barrier_drain()
    moved = regs.read_u64(XE_INFO_TIMESTAMP) - first
    writable = _attempt(lambda: dev.mmap(dev.mmio_open("info").offset, XE_BAR0_INFO_SIZE))
    yield {
        "device_id": hex(regs.read_u32(XE_INFO_DEVICE_ID)),
        "timestamp_moved": moved > 0,
        "written": dev.barriers_written,
        "client_id": dev.client_id,
        "info_writable_map": writable,
    }
    # the parent has unplugged the device by now: his mappings fall onto zero pages
    dev.wait_unplugged(10)
    zeros = regs.read_u32(XE_INFO_DEVICE_ID) == 0 and bell.read_u32(0) == 0
    bell.write_u32(0, 1)  # a doorbell rung into the void: nothing crashes, nobody hears
    yield {"ioctl": _attempt(dev.version), "mappings_read_zeros": zeros}


NOTES_VA = GPU_BASE + (1 << 20)  # ivy's page of host memory, bound as a userptr


def _rdma_app(
    dev: Device, verbs: str, fill: bytes, access: int
) -> tuple[Any, Any, Any, Any, int]:
    bo = dev.gem_create(1 << 20)
    mapping = dev.mmap_bo(bo)
    mapping[0 : 1 << 20] = fill * (1 << 20)
    vm = dev.vm_create()
    dev.vm_bind(vm, bo, GPU_BASE)
    ib = IbContext.open(verbs, dev.vm_export(vm))
    return ib, ib.reg_mr(GPU_BASE, 1 << 20, access), ib.create_qp(), mapping, vm


Steps = Generator[dict[str, Any], list[str], None]  # each go-ahead line's words come in


def worker_ivy(dev: Device, verbs: str) -> Steps:
    """Export her VM to the IB-like driver, register her BO (jack may write it) and a
    page of her host memory (userptr; jack may read it), connect her QP to jack's once
    she learns its number; wait for jack's RDMA; then rewrite that page under the driver."""
    ib, mr, qp, mapping, vm = _rdma_app(
        dev, verbs, b"i", IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
    )
    notes = dev.host_memory(PAGE_SIZE)
    notes[0:16] = b"ivy's notes, v1."
    dev.vm_bind_userptr(vm, notes, 0, NOTES_VA, PAGE_SIZE)
    notes_mr = ib.reg_mr(NOTES_VA, PAGE_SIZE, IBV_ACCESS_REMOTE_READ)
    (jack_qp,) = yield {"qp": qp.num, "rkey": mr.rkey, "notes_rkey": notes_mr.rkey}
    qp.connect(int(jack_qp))  # connecting takes both sides, as with RC queue pairs
    yield {"connected": True}
    notes.replace(0, b"ivy's notes, v2.")  # returns once the driver let the page go
    yield {"got": bytes(mapping[0x1000:0x1010]).decode()}


def worker_jack(dev: Device, verbs: str, qp_num: str, rkey: str, notes_rkey: str) -> Steps:
    """RDMA WRITE from his BO into ivy's, through the aux driver: one memcpy; RDMA READ
    of ivy's host memory into his BO, before and after she rewrites it."""
    _ib, mr, qp, mapping, _vm = _rdma_app(dev, verbs, b"j", IBV_ACCESS_LOCAL_WRITE)
    mapping[0:16] = b"jack was here..."
    qp.connect(int(qp_num))
    yield {"qp": qp.num}  # ivy connects hers to it
    qp.rdma_write(mr, GPU_BASE + 0x1000, int(rkey), 16)
    (wc,) = qp.poll_cq()

    def read_notes() -> str:
        qp.rdma_read(mr, NOTES_VA, int(notes_rkey), 16, local_addr=GPU_BASE + 0x2000)
        read = qp.wait_cq()
        return bytes(mapping[0x2000:0x2010]).decode() if read.status == 0 else str(read.status)

    yield {"status": wc.status, "bytes": wc.byte_len, "notes": read_notes()}
    yield {"notes": read_notes()}


WORKERS: dict[str, Callable[..., Any]] = {
    "alice": worker_alice,
    "bob": worker_bob,
    "carol": worker_carol,
    "counter": worker_counter,
    "dave": worker_dave,
    "erin": worker_erin,
    "frank": worker_frank,
    "henry": worker_henry,
    "ivy": worker_ivy,
    "jack": worker_jack,
}


def _worker_main(name: str, socket_path: str, args: list[str]) -> int:
    """Print each result as a JSON line; a worker that yields several waits for a line
    on stdin between them. Hold everything until the parent closes our stdin."""
    with Device.open(socket_path) as dev:
        outcome = WORKERS[name](dev, *args)
        if not isinstance(outcome, Generator):
            print(json.dumps(outcome), flush=True)
            sys.stdin.read()
            return 0
        print(json.dumps(next(outcome)), flush=True)
        for line in sys.stdin:  # the parent's go-ahead for each next step, with words
            try:
                result = outcome.send(line.split()[1:])
            except StopIteration:
                break
            print(json.dumps(result), flush=True)
        sys.stdin.read()
    return 0


def _spawn(
    name: str, socket_path: str, *args: object, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "clients.demo", "worker", name, socket_path]
    return subprocess.Popen(
        [*command, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )


def _result(proc: subprocess.Popen[str], release: bool = True) -> dict[str, Any]:
    """The worker's findings; with `release`, let it exit and wait for it."""
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise DemoFailed(f"a demo worker failed with status {proc.returncode}")
    if release:
        proc.stdin.close()
        proc.wait(timeout=60)
    result: dict[str, Any] = json.loads(line)
    return result


class DemoFailed(Exception):
    pass


def _go(proc: subprocess.Popen[str], *words: object) -> None:
    """Let a worker that yields several results take its next step (told `words`)."""
    assert proc.stdin is not None
    proc.stdin.write(" ".join(["go", *map(str, words)]) + "\n")
    proc.stdin.flush()


def _result_release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=60)


def main() -> int:
    try:
        return _story()
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1


def _story() -> int:
    print("xed demo: one emulated Xe device, several client processes\n")
    with DaemonProcess(extra_args=("--log-level", "warning")) as daemon:
        sock = str(daemon.socket_path)
        with Device.open(sock, role="admin") as admin:
            before = admin.admin_status().objects
            print(f"daemon pid {daemon.pid} listening on {sock}")

            alice_proc = _spawn("alice", sock)
            alice = _result(alice_proc, release=False)  # she stays, holding her objects
            print("\n[alice] created a 1 MiB BO, mapped it, bound it at GPU 0x1_0000_0000")
            print(f"        a batch stored {alice['store']}, copied {alice['copy']!r}")
            print(f"        and incremented a counter to {alice['counter']};")
            print(f"        her user fence woke her with {alice['fence_wait_left_ms']} ms to spare")

            bob = _result(_spawn("bob", sock, alice["offset"], alice["handle"], alice["vm"]))
            _result_release(alice_proc)
            print("\n[bob]   replayed alice's numbers from his own process:")
            print(
                f"        mmap of her fake offset {alice['offset']:#x}: {bob['map_alice_offset']}"
            )
            print(f"        GEM_MMAP_OFFSET of a handle he lacks: {bob['offset_of_handle']}")
            print(f"        VM_BIND into her VM id {alice['vm']}: {bob['bind_into_alice_vm']}")
            print(
                f"        his own BO got handle {bob['own_handle']} (handles are per file) "
                f"and holds {bob['own_bo']!r}"
            )

            carol = _result(_spawn("carol", sock))
            print("\n[carol] submitted a batch with an unknown instruction:")
            print(f"        event: exec queue banned ({', '.join(carol['events'])})")
            print(f"        her next EXEC on that queue: {carol['exec_after_ban']}")

            counters = [_spawn("counter", sock) for _ in range(4)]
            totals = [_result(p)["counter"] for p in counters]
            print(
                f"\n[4 concurrent processes] each ran {COUNTER_INCREMENTS} batches of MI_ATOMIC INC"
            )
            print(f"        counters seen in their own mappings: {totals}")

            dave_end, readers_end = fdpass.socketpair()
            erin_end, frank_end = readers_end, os.dup(readers_end.fileno())
            with DaemonProcess(extra_args=("--log-level", "warning")) as second:
                dave = _spawn("dave", sock, dave_end.fileno(), pass_fds=(dave_end.fileno(),))
                erin = _result(
                    _spawn("erin", sock, erin_end.fileno(), pass_fds=(erin_end.fileno(),))
                )
                frank = _result(
                    _spawn("frank", str(second.socket_path), frank_end, pass_fds=(frank_end,))
                )
                dave_said = _result(dave)
            for end in (dave_end, readers_end):
                end.close()
            os.close(frank_end)
            print("\n[dave]  exported a BO as a dma-buf and sent the descriptor over a socket")
            print(f"[erin]  imported it (handle {erin['handle']}, {erin['size']} bytes), mapped")
            print("        the dma-buf itself and wrote inside DMA_BUF_IOCTL_SYNC brackets")
            print("[frank] on a second daemon: a foreign import, the same pages, zero copy;")
            print(
                "        GEM mmap of the import: mapped, first touch "
                f"{frank['gem_mmap_of_import']}, as on xe (map the dma-buf)"
            )
            print("        a batch on the second device wrote into it")
            print(f"[dave]  now reads {dave_said['bytes']!r} in his own mapping")

            henry_proc = _spawn("henry", sock)
            henry = _result(henry_proc, release=False)
            counted = {c.client_id: c.barriers for c in admin.admin_clients()}[henry["client_id"]]
            print("\n[henry] opened BAR0's info block and a doorbell page of his own")
            print(
                f"        device id {henry['device_id']}, the timestamp moves: "
                f"{henry['timestamp_moved']}; a writable map of the info block: "
                f"{henry['info_writable_map']}"
            )
            print(
                f"        wrote {henry['written']:,} PCI barriers as page stores; "
                f"the device counted {counted:,} for his file"
            )
            admin.admin_unplug()
            _go(henry_proc)
            unplugged = _result(henry_proc)
            admin.admin_replug()
            print("[admin] unplugged the device while henry held his mappings:")
            print(
                f"        his next ioctl: {unplugged['ioctl']}; his mappings read zeros, "
                f"no fault: {unplugged['mappings_read_zeros']}; replugged (a new device)"
            )

            with AuxDriverProcess(daemon.socket_path) as aux:
                verbs = str(aux.socket_path)
                ivy_proc = _spawn("ivy", sock, verbs)
                ivy = _result(ivy_proc, release=False)
                jack_proc = _spawn("jack", sock, verbs, ivy["qp"], ivy["rkey"], ivy["notes_rkey"])
                jack_qp = _result(jack_proc, release=False)
                _go(ivy_proc, jack_qp["qp"])
                _result(ivy_proc, release=False)  # her QP named his: connected
                _go(jack_proc)
                jack = _result(jack_proc, release=False)
                _go(ivy_proc)
                ivy_got = _result(ivy_proc, release=False)  # she stays for jack's read
                _go(jack_proc)
                jack_again = _result(jack_proc)
                _result_release(ivy_proc)
            print("\n[ivy, jack] exported their VMs to the IB-like aux driver (its own process)")
            print(
                f"        jack's RDMA WRITE completed with status {jack['status']} "
                f"({jack['bytes']} bytes); ivy reads {ivy_got['got']!r} in her own BO"
            )
            print(
                f"        jack's RDMA READ of ivy's host memory (userptr, nothing pinned): "
                f"{jack['notes']!r}\n        ivy rewrote it (her call returned once the "
                f"driver had let the page go); jack reads again: {jack_again['notes']!r}"
            )

            after = admin.admin_status()
            print("\n[admin] every client has exited; what the daemon still holds:")
            print(
                f"        BOs {after.objects.bos}, dma-bufs {after.objects.dma_bufs}, "
                f"VMs {after.objects.vms}, "
                f"exec queues {after.objects.exec_queues} (before: {before.bos}/{before.vms}/"
                f"{before.exec_queues}); batches run {after.execs}, queues banned {after.bans}"
            )
    ok = (
        alice["store"] == "0xc0ffee"
        and bob["map_alice_offset"] == "EACCES"
        and carol["exec_after_ban"] == "ECANCELED"
        and totals == [COUNTER_INCREMENTS] * 4
        and after.objects.bos == before.bos
        and after.objects.dma_bufs == before.dma_bufs
        and dave_said["bytes"] == "ERIN's wFRNK"
        and frank["gem_mmap_of_import"] == "SIGBUS"
        and counted == henry["written"] == BARRIERS
        and henry["info_writable_map"] == "EACCES"
        and unplugged["ioctl"] == "ENODEV"
        and unplugged["mappings_read_zeros"]
        and jack["status"] == 0
        and ivy_got["got"] == "jack was here..."
        and jack["notes"] == "ivy's notes, v1."
        and jack_again["notes"] == "ivy's notes, v2."
    )
    print("\nall as expected" if ok else "\nSOMETHING WENT WRONG: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit(main())
