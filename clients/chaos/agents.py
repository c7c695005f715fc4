"""The processes `xec load chaos` lets loose: workers doing real work, and the hostile.

    python -m clients.chaos.agents KIND DAEMON_SOCKET VERBS_SOCKET SEED

Each runs until it is killed (most are, with SIGKILL, at a moment of the parent's
choosing) and writes JSON lines on stdout as it goes, so that nothing it found is lost
with it: {"unclean": why} at once for every answer that is not a clean errno the op
table lists (or the daemon dropping a client that did nothing wrong), and {"ops": n}
now and then.

- worker: BOs, mmap, exec with user fences, dma-buf export/import between two of its
  connections, VM export to the aux driver and RDMA between two regions, userptr with
  host memory replaced under it. Only the public library.
- fuzz: clients.chaos.fuzz.
- forger: forged dma-bufs (a socketpair it answers itself, any size, any memfd), and
  exported descriptors abused: empty datagrams, floods, closes with answers unread.
- hog: takes all it may (BOs to its limit, replies with descriptors left unread,
  endless fence waits, batches of large copies, GPU mappings or MMIO regions to their
  limits), then sits there.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from errno import ENODEV
from functools import partial
from typing import Any

import msgpack

from protocols import PROTOCOL_VERSION, Op, encode_reply, pack_fds
from protocols import messages as m
from protocols.constants import DRM_XE_VM_BIND_OP_MAP as OP_MAP
from protocols.constants import IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_WRITE, PAGE_SIZE

from ..batch import Batch
from ..device import Device, user_fence
from ..errors import DaemonGone, XeError
from ..host_memory import HostMemory
from ..ib.verbs import IbContext
from .fuzz import Fuzzer, allowed_errnos

VA = 0x1_0000_0000
ONE_SECOND_NS = 1_000_000_000


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def unclean(what: str) -> None:
    say(unclean=what)


def open_device(path: str) -> Device:
    """A new connection; while the device is unplugged HELLO is ENODEV: wait it out."""
    while True:
        try:
            return Device.open(path)
        except XeError as exc:
            if exc.errno != ENODEV:
                raise
        time.sleep(0.02)


def unplugged(dev: Device) -> bool:
    """Whether the device of `dev` was unplugged (its memory then reads zeros)."""
    try:
        dev.version()
    except XeError as exc:
        return exc.errno == ENODEV
    return False


def checked(call: Callable[[], Any]) -> Any:
    """Run one library call; a refusal is fine if the op may answer with that errno."""
    try:
        return call()
    except XeError as exc:
        if exc.errno not in allowed_errnos(int(Op[exc.op])):
            unclean(f"{exc.op}: errno {exc.errno} is not one it may answer ({exc.detail})")
        return None


# --- worker ----------------------------------------------------------------------------------
class Worker:
    def __init__(self, path: str, verbs: str, rng: random.Random) -> None:
        self.path, self.verbs, self.rng = path, verbs, rng
        self.dev = open_device(path)
        self.host: HostMemory | None = None  # registered once per connection
        self.seq = 0

    def cycle(self) -> None:
        step = self.rng.choice([self.bos, self.exec, self.dma_buf, self.vm_export, self.userptr])
        try:
            step()
        except XeError as exc:
            if exc.errno not in allowed_errnos(int(Op[exc.op])):
                unclean(f"{exc.op}: errno {exc.errno} ({exc.detail})")
            self._fresh()  # what the cycle held is dropped with the connection
        except DaemonGone as exc:
            unclean(f"the daemon dropped a worker: {exc}")
            self._fresh()

    def _fresh(self) -> None:
        with contextlib.suppress(OSError):
            self.dev.close()
        self.dev = open_device(self.path)
        self.host = None

    def bos(self) -> None:
        handles = [self.dev.gem_create(self.rng.choice([4096, 65536, 1 << 20])) for _ in range(4)]
        for handle in handles:
            with self.dev.mmap_bo(handle) as cpu:
                cpu[0:8] = b"chaos!!!"
            self.dev.gem_close(handle)

    def exec(self) -> None:
        dev = self.dev
        vm = dev.vm_create()
        bo = dev.gem_create(65536)
        dev.vm_bind(vm, bo, VA)
        queue = dev.exec_queue_create(vm)
        with dev.mmap_bo(bo) as cpu:
            self.seq += 1
            batch = Batch().store_dword(VA + 64, self.seq).end().tobytes()
            cpu[0x100 : 0x100 + len(batch)] = batch
            dev.exec(queue, VA + 0x100, syncs=[user_fence(VA, self.seq)])
            dev.wait_user_fence(cpu.user_address(0), self.seq, timeout=10 * ONE_SECOND_NS)
            if cpu.read_u32(64) != self.seq and not unplugged(dev):
                unclean("a batch's store did not land")
        dev.exec_queue_destroy(queue)
        dev.vm_destroy(vm)
        dev.gem_close(bo)

    def dma_buf(self) -> None:
        other = open_device(self.path)
        try:
            bo = self.dev.gem_create(65536)
            fd = self.dev.prime_handle_to_fd(bo)
            try:
                imported = other.prime_fd_to_handle(fd)
                with self.dev.cpu_access(fd), self.dev.dmabuf_mmap(fd) as cpu:
                    cpu[0:4] = b"dmab"
                other.gem_close(imported)
            finally:
                os.close(fd)
            self.dev.gem_close(bo)
        finally:
            other.close()

    def vm_export(self) -> None:
        dev = self.dev
        vm = dev.vm_create()
        bo = dev.gem_create(2 * PAGE_SIZE)
        dev.vm_bind(vm, bo, VA)
        fd = dev.vm_export(vm)
        try:
            ib = IbContext.open(self.verbs, fd)
        except (XeError, OSError) as exc:  # the aux driver may be away or refuse
            if isinstance(exc, XeError) and exc.errno not in allowed_errnos(int(Op[exc.op])):
                unclean(f"{exc.op}: errno {exc.errno}")
            os.close(fd)
            return
        os.close(fd)
        try:
            access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
            src = ib.reg_mr(VA, PAGE_SIZE, access)
            dst = ib.reg_mr(VA + PAGE_SIZE, PAGE_SIZE, access)
            a, b = ib.create_qp(), ib.create_qp()
            a.connect(b.num)  # RC: both sides name each other
            b.connect(a.num)
            a.rdma_write(src, dst.addr, dst.rkey, 64)
            a.wait_cq(timeout=10)
        finally:
            ib.close()

    def userptr(self) -> None:
        dev = self.dev
        if self.host is None:
            self.host = dev.host_memory(4 * PAGE_SIZE)
        host = self.host
        vm = dev.vm_create()
        dev.vm_bind_userptr(vm, host, 0, VA, 4 * PAGE_SIZE)
        queue = dev.exec_queue_create(vm)
        self.seq += 1
        batch_bo = dev.gem_create(PAGE_SIZE)
        dev.vm_bind(vm, batch_bo, VA + (1 << 20))
        with dev.mmap_bo(batch_bo) as cpu:
            batch = Batch().store_dword(VA + 128, self.seq).end().tobytes()
            cpu[0 : len(batch)] = batch
            dev.exec(queue, VA + (1 << 20), syncs=[user_fence(VA + (1 << 20) + 512, self.seq)])
            host.replace(0, b"\0" * 64)  # the notifier, racing the batch
            dev.wait_user_fence(cpu.user_address(512), self.seq, timeout=10 * ONE_SECOND_NS)
        dev.exec_queue_destroy(queue)
        dev.vm_destroy(vm)
        dev.gem_close(batch_bo)


# --- forger ----------------------------------------------------------------------------------
def _forged_peer(size: int, memfd: int) -> int:
    """One end of a socketpair that answers DMA_BUF_ATTACH as a dma-buf would, lying."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def serve() -> None:
        with ours:
            while True:
                try:
                    data = ours.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                ident = msgpack.unpackb(data)[0]
                reply = m.DmaBufAttachReply(
                    size=size, writable=1, device=m.DeviceIdentity(name="forged")
                )
                with contextlib.suppress(OSError):
                    ours.sendmsg(
                        [encode_reply(ident, Op.DMA_BUF_ATTACH, 0, reply)], pack_fds([memfd])
                    )

    threading.Thread(target=serve, daemon=True).start()
    return theirs.detach()


def forger(path: str, rng: random.Random) -> None:
    dev = open_device(path)
    while True:
        if unplugged(dev):  # its connection is the old device's for good: the next one
            dev.close()
            dev = open_device(path)
        memfd = os.memfd_create("forged", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(memfd, rng.choice([4096, 65536]))
        size = rng.choice([4096, 65536, 1 << 30, 2**64 - 4096, 0, 4097])
        fd = _forged_peer(size, memfd)
        handle = checked(partial(dev.prime_fd_to_handle, fd))
        if rng.random() < 0.5:
            os.ftruncate(memfd, 0)  # shrink what was imported (refused if sealed)
        if handle:
            checked(partial(dev.gem_mmap_offset, handle))
            checked(partial(dev.dmabuf_size, fd))
        os.close(fd)
        os.close(memfd)
        vm = checked(dev.vm_create)
        if vm:
            exported = checked(partial(dev.vm_export, vm))
            if exported:
                sock = socket.socket(fileno=exported)
                with contextlib.suppress(OSError):
                    if rng.random() < 0.3:
                        sock.send(b"")  # an empty datagram is not a close
                    else:
                        for _ in range(rng.choice([1, 500])):  # answered, and left unread
                            sock.send(msgpack.packb([1, int(Op.DMA_BUF_ATTACH), {}]))
                sock.close()
                checked(partial(dev.vm_destroy, vm))
        say(ops=1)


# --- hog -------------------------------------------------------------------------------------
def hog(path: str, rng: random.Random) -> None:
    # first, while the daemon still has descriptors for the BO and the regions
    checked(lambda: rng.choice((_mappings, _regions))(path))
    dev = open_device(path)
    held = 0
    while held < 100_000:  # until a limit says no
        try:
            dev.gem_create(4096)
        except XeError as exc:
            if exc.errno not in allowed_errnos(int(Op.XE_GEM_CREATE)):
                unclean(f"XE_GEM_CREATE at {held} BOs: errno {exc.errno}")
            break
        held += 1
    say(ops=held)
    checked(lambda: _unread_replies(path))
    checked(lambda: _long_copies(path))
    checked(lambda: _endless_waits(path))
    threading.Event().wait()  # sit on it all until killed


def _until_refused(op: Op, call: Callable[[], Any], most: int) -> int:
    """Make `call` until the daemon says no (with an errno the op table lists for
    `op`: anything else is unclean) or `most` times; how many it made."""
    for made in range(most):
        try:
            call()
        except XeError as exc:
            if exc.errno not in allowed_errnos(int(op)):
                unclean(f"{op.name} after {made}: errno {exc.errno}")
            return made
    return most


def _mappings(path: str) -> None:
    """One-page mappings of one BO, 256 a call, until a limit (limits.vmas or the
    uid's objects) says no."""
    dev = open_device(path)
    vm, bo = dev.vm_create(), dev.gem_create(PAGE_SIZE)
    starts = iter(range(VA, VA + (1 << 40), 2 * PAGE_SIZE))

    def bind_many() -> None:
        ops = [
            m.DrmXeVmBindOp(obj=bo, op=OP_MAP, addr=next(starts), range=PAGE_SIZE)
            for _ in range(256)
        ]
        dev.vm_bind_ops(vm, ops)

    say(ops=_until_refused(Op.XE_VM_BIND, bind_many, 2048))
    _KEEP.append(dev)


def _regions(path: str) -> None:
    """The read-only MMIO info region opened until the daemon says no."""
    dev = open_device(path)
    say(ops=_until_refused(Op.XE_MMIO_REGION_OPEN, lambda: dev.mmio_open("info"), 1000))
    _KEEP.append(dev)


def _raw(path: str) -> socket.socket:
    """A drm connection spoken to by hand, to do what the library never would."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    hello = {"version": list(PROTOCOL_VERSION), "role": "drm"}
    sock.send(msgpack.packb([1, int(Op.HELLO), hello]))
    sock.recv(65536)
    return sock


def _unread_replies(path: str) -> None:
    """MMAP replies carry descriptors: ask for thousands and never read one."""
    dev = open_device(path)
    offset = dev.gem_mmap_offset(dev.gem_create(4096))
    raw = _raw(path)
    args = {"offset": offset, "length": 4096, "prot": 3, "flags": 1}
    for ident in range(2, 2000):
        with contextlib.suppress(OSError):
            raw.send(msgpack.packb([ident, int(Op.MMAP), args]), socket.MSG_DONTWAIT)
    _KEEP.extend([dev, raw])


def _long_copies(path: str) -> None:
    """Batches of large copies, to hold the device as long as a batch may."""
    gpu = open_device(path)
    vm = gpu.vm_create()
    big = gpu.gem_create(64 << 20)
    gpu.vm_bind(vm, big, VA)
    queue = gpu.exec_queue_create(vm)
    batch = Batch()
    for _ in range(8):
        batch.mem_copy(VA + (32 << 20), VA, 16 << 20)
    code = batch.end().tobytes()
    with gpu.mmap_bo(big) as cpu:
        cpu[(48 << 20) : (48 << 20) + len(code)] = code
    for _ in range(4):
        gpu.exec(queue, VA + (48 << 20))
    _KEEP.append(gpu)


def _endless_waits(path: str) -> None:
    """Fence waits that never end, as many as the daemon lets one client park."""
    raw = _raw(path)
    create = {"size": 4096, "placement": 1, "cpu_caching": 1}
    handle = _raw_call(raw, Op.XE_GEM_CREATE, create)["handle"]
    addr = _raw_call(raw, Op.XE_GEM_MMAP_OFFSET, {"handle": handle})["offset"]
    wait = {"addr": addr, "op": 0, "value": 1, "mask": 2**64 - 1, "timeout": -1}
    for ident in range(10, 3000):
        with contextlib.suppress(OSError):
            raw.send(msgpack.packb([ident, int(Op.XE_WAIT_USER_FENCE), wait]), socket.MSG_DONTWAIT)
    _KEEP.append(raw)


def _raw_call(sock: socket.socket, op: Op, args: dict[str, Any]) -> Any:
    sock.send(msgpack.packb([2, int(op), args]))
    ident, err, result = msgpack.unpackb(sock.recv(65536))
    if err:
        raise XeError(err, op.name, str(result))
    return result


_KEEP: list[Any] = []  # what the hog sits on until it is killed


def main(argv: list[str]) -> int:
    kind, path, verbs, seed = argv
    rng = random.Random(int(seed))
    try:
        if kind == "worker":
            worker = Worker(path, verbs, rng)
            done = 0
            while True:
                worker.cycle()
                done += 1
                if done % 20 == 0:
                    say(ops=20)
                    worker._fresh()  # let everything go now and then
        elif kind == "fuzz":
            while True:
                tally = Fuzzer(path, rng, unclean).run(200)
                say(ops=tally.sent)
        elif kind == "forger":
            forger(path, rng)
        elif kind == "hog":
            hog(path, rng)
        else:
            print(f"unknown agent {kind}", file=sys.stderr)
            return 2
    except DaemonGone as exc:
        unclean(f"{kind}: the daemon went away: {exc}")
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
