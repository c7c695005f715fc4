"""The IB-like auxiliary driver: a process of its own between applications and the GPU.

It connects to the daemon as role `aux` and serves applications on its own socket, the
way /dev/infiniband/uverbs0 does. An application opens a context by handing over its
exported VM; the driver imports it from the daemon on behalf of that application (pid
from SO_PEERCRED). Registering a memory region resolves a range of the application's
GPU address space to the BOs bound there, which the driver maps (zero copy). RDMA WRITE
and READ between two registered regions are one memcpy between mapped pages. When the
daemon reports a bind or unbind under a region, the region is invalidated: its pages
are let go and later work on it completes with an error status.

A region over userptr ranges maps the application's host memory itself, with nothing
pinned, as on-demand paging does. When that memory is about to change the daemon says
so (reason "userptr"): the region lets its pages go at once and acknowledges, and the
next work request on it faults them in again (the daemon waits out the change), or
completes with an error status if the memory was freed.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import socket
import struct
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    SPECS,
    Event,
    EventMessage,
    Op,
    ProtocolError,
    Role,
    decode_request,
    encode_error,
    encode_reply,
    pack_fds,
    unpack_fds,
)
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_FLAGS,
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_WC_LOC_PROT_ERR,
    IBV_WC_REM_ACCESS_ERR,
    IBV_WC_RETRY_EXC_ERR,
    IBV_WC_SUCCESS,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
    PAGE_SIZE,
)
from protocols.memfd import UnsafeMemory, check_memfd

from ..errors import DaemonGone, XeError
from .cq import CQ_ENTRIES, CompletionRing
from .link import DaemonLink

log = structlog.get_logger("xec.ib")
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
_PEERCRED = struct.Struct("3i")


class VerbsError(Exception):
    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


def _refuse_if(condition: object, err: int, message: str) -> None:
    if condition:
        raise VerbsError(err, message)


# --- memory regions ------------------------------------------------------------------------
class MemoryRegion:
    """Mapped pages behind [addr, addr+length) of one context's VM."""

    def __init__(
        self, context: Context, addr: int, length: int, access: int, lkey: int, rkey: int
    ) -> None:
        self.context = context
        self.addr = addr
        self.length = length
        self.access = access
        self.lkey = lkey
        self.rkey = rkey
        self.valid = True
        self.evicted = False  # pages let go for a userptr change: fault them in again
        self._maps: list[mmap.mmap] = []
        self._spans: list[tuple[int, int, memoryview]] = []  # (va, length, pages)

    def map(self, spans: tuple[m.XedAuxSpan, ...], fds: list[int]) -> None:
        """Map the spans' pages; EFAULT (nothing mapped) for memory not safe to map."""
        maps = _map_safely(spans, fds, self.access)
        self._maps = maps
        self.evicted = False
        for span in spans:
            whole = memoryview(maps[span.fd_index])
            self._spans.append(
                (span.va, span.length, whole[span.offset : span.offset + span.length])
            )
            whole.release()

    def covers(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.length

    def overlaps(self, start: int, length: int) -> bool:
        return start < self.addr + self.length and self.addr < start + length

    def pieces(self, addr: int, length: int) -> list[memoryview]:
        """The mapped pages of [addr, addr+length), in order."""
        out = []
        end = addr + length
        for va, span_len, pages in self._spans:
            lo, hi = max(addr, va), min(end, va + span_len)
            if lo < hi:
                out.append(pages[lo - va : hi - va])
        return out

    def invalidate(self) -> None:
        """Let the pages go: nothing of this region is touched again."""
        self.valid = False
        self.evict()

    def evict(self) -> None:
        """Let the pages go until the next fault maps them again."""
        self.evicted = True
        for _va, _len, pages in self._spans:
            pages.release()
        self._spans.clear()
        for mapping in self._maps:
            mapping.close()
        self._maps.clear()


def _map_safely(spans: tuple[m.XedAuxSpan, ...], fds: list[int], access: int) -> list[mmap.mmap]:
    """Map each descriptor as far as the spans reach into it, after judging it as the
    daemon judges what clients send (protocols.memfd): memory someone could shrink under
    us, hugetlbfs, or a span beyond the memory would end this process with SIGBUS, so
    they fail the region (EFAULT, as ib_umem_get fails on pages it cannot get). A
    read-only descriptor maps read-only, for a region that never receives bytes."""
    ends = [0] * len(fds)
    for span in spans:
        _refuse_if(span.fd_index >= len(fds), errno.EFAULT, "a span without its memory")
        ends[span.fd_index] = max(ends[span.fd_index], span.offset + span.length)
    writes = access & (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
    maps: list[mmap.mmap] = []
    try:
        for fd, end in zip(fds, ends, strict=True):
            size = -(-end // PAGE_SIZE) * PAGE_SIZE
            try:
                writable = check_memfd(fd, size)
            except UnsafeMemory as exc:
                raise VerbsError(errno.EFAULT, f"memory not safe to map: {exc}") from None
            _refuse_if(writes and not writable, errno.EFAULT, "read-only memory, write access")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            try:
                maps.append(mmap.mmap(fd, size, mmap.MAP_SHARED, prot))
            except OSError as exc:
                raise VerbsError(errno.EFAULT, f"cannot map it: {exc.strerror}") from None
    except VerbsError:
        for mapping in maps:
            mapping.close()
        raise
    return maps


def copy_pieces(dst: list[memoryview], src: list[memoryview]) -> int:
    """One memcpy per overlap of the two piece lists (they cover equal lengths)."""
    moved = 0
    di = si = 0
    doff = soff = 0
    while di < len(dst) and si < len(src):
        n = min(len(dst[di]) - doff, len(src[si]) - soff)
        dst[di][doff : doff + n] = src[si][soff : soff + n]
        moved += n
        doff += n
        soff += n
        if doff == len(dst[di]):
            di, doff = di + 1, 0
        if soff == len(src[si]):
            si, soff = si + 1, 0
    return moved


# --- queue pairs and contexts --------------------------------------------------------------
@attrs.define(eq=False)
class QueuePair:
    context: Context
    num: int
    cq: CompletionRing
    peer: QueuePair | None = None
    closed: bool = False

    def complete(self, wr_id: int, status: int, opcode: int, byte_len: int) -> None:
        self.cq.push(wr_id, status, opcode, byte_len)


class Context:
    def __init__(self, driver: IbDriver, pid: int, vm_handle: int) -> None:
        self.driver = driver
        self.pid = pid
        self.vm_handle = vm_handle
        self.mrs: dict[int, MemoryRegion] = {}
        self.qps: dict[int, QueuePair] = {}
        self.notifier_seq = 0  # moves with every invalidation the daemon sends


class IbDriver:
    def __init__(self, link: DaemonLink, nursery: trio.Nursery) -> None:
        self.link = link
        self.nursery = nursery  # where acknowledgements go out from
        self.contexts: dict[int, Context] = {}  # by vm_handle
        self.rkeys: dict[int, MemoryRegion] = {}
        self.qps: dict[int, QueuePair] = {}
        self._keys = itertools.count(0x1000)
        self._qp_nums = itertools.count(1)
        self.stats = {"rdma_bytes": 0, "invalidations": 0, "evictions": 0, "faults": 0}

    # --- daemon events: the MMU-notifier side ----------------------------------------------
    def on_daemon_event(self, event: EventMessage) -> None:
        """Runs as the event arrives, between two work requests (they never await while
        copying), so no copy is in flight: let the pages go, then acknowledge."""
        if event.event is not Event.AUX_RANGE_INVALIDATED:
            return
        data = event.data
        context = self.contexts.get(data.vm_handle)
        if context is None:
            return  # released: the daemon waits for nothing from us there
        context.notifier_seq += 1
        for mr in context.mrs.values():
            if not mr.valid or not mr.overlaps(data.va, data.length):
                continue
            if data.reason == "userptr":
                if not mr.evicted:
                    mr.evict()
                    self.stats["evictions"] += 1
                    log.info("mr_evicted", lkey=mr.lkey, va=data.va, length=data.length)
            else:
                mr.invalidate()
                self.stats["invalidations"] += 1
                log.info("mr_invalidated", lkey=mr.lkey, va=data.va, reason=data.reason)
        self.nursery.start_soon(self._acknowledge, data.vm_handle, data.seqno)

    async def _acknowledge(self, vm_handle: int, seqno: int) -> None:
        # a registration released meanwhile, or the daemon gone: nobody waits any more
        with contextlib.suppress(XeError, OSError, DaemonGone):
            await self.link.call(
                Op.AUX_VM_INVALIDATE_DONE,
                m.XedAuxVmInvalidateDone(vm_handle=vm_handle, seqno=seqno),
            )

    async def _resolve(self, context: Context, addr: int, length: int) -> tuple[Any, list[int]]:
        try:
            return await self.link.call(
                Op.AUX_VM_RESOLVE,
                m.XedAuxVmResolve(vm_handle=context.vm_handle, va=addr, length=length),
            )
        except XeError as exc:
            raise VerbsError(exc.errno or errno.EIO, exc.detail) from exc

    async def _fault_in(self, mr: MemoryRegion) -> None:
        """Map an evicted region's pages again, as the daemon resolves them now (it waits
        out a change in progress). An invalidation that arrives while we wait makes the
        answer stale: the region stays evicted and the caller tries again."""
        begun = mr.context.notifier_seq
        reply, fds = await self._resolve(mr.context, mr.addr, mr.length)
        try:
            if mr.valid and mr.evicted and mr.context.notifier_seq == begun:
                mr.map(reply.spans, fds)
                self.stats["faults"] += 1
                log.info("mr_faulted", lkey=mr.lkey, va=mr.addr, length=mr.length)
        finally:
            for fd in fds:
                os.close(fd)

    # --- the verbs ----------------------------------------------------------------------------
    async def open_context(self, pid: int, vm_fd: int) -> tuple[Context, m.IbvOpenContextReply]:
        try:
            reply, _ = await self.link.call(
                Op.AUX_VM_IMPORT, m.XedAuxVmImport(on_behalf_of_pid=pid), [vm_fd]
            )
        except XeError as exc:
            raise VerbsError(exc.errno or errno.EIO, exc.detail) from exc
        context = Context(self, pid, reply.vm_handle)
        self.contexts[reply.vm_handle] = context
        log.info("context_opened", pid=pid, vm_handle=reply.vm_handle)
        return context, m.IbvOpenContextReply(va_bits=reply.va_bits)

    async def reg_mr(self, context: Context, args: m.IbvRegMr) -> m.IbvRegMrReply:
        _refuse_if(args.access & ~IBV_ACCESS_FLAGS, errno.EINVAL, "unknown access flags")
        _refuse_if(not args.length, errno.EINVAL, "length zero")
        begun = context.notifier_seq
        reply, fds = await self._resolve(context, args.addr, args.length)
        lkey, rkey = next(self._keys), next(self._keys)
        mr = MemoryRegion(context, args.addr, args.length, args.access, lkey, rkey)
        try:
            if context.notifier_seq == begun:
                mr.map(reply.spans, fds)
            else:  # stale before it was mapped: the first work request faults it in
                mr.evicted = True
        finally:
            for fd in fds:
                os.close(fd)
        context.mrs[lkey] = mr
        self.rkeys[rkey] = mr
        return m.IbvRegMrReply(lkey=lkey, rkey=rkey)

    def dereg_mr(self, context: Context, lkey: int) -> None:
        mr = context.mrs.pop(lkey, None)
        _refuse_if(mr is None, errno.ENOENT, f"no lkey {lkey}")
        assert mr is not None
        self.rkeys.pop(mr.rkey, None)
        mr.invalidate()

    def create_qp(self, context: Context) -> tuple[int, int]:
        """A new QP: its number and its completion ring's descriptor (caller closes)."""
        ring, fd = CompletionRing.create()
        qp = QueuePair(context, next(self._qp_nums), ring)
        context.qps[qp.num] = self.qps[qp.num] = qp
        return qp.num, fd

    def connect_qp(self, context: Context, num: int, remote: int) -> None:
        """Pair our QP with a remote one; a QP paired with another cannot be taken over."""
        qp, peer = context.qps.get(num), self.qps.get(remote)
        _refuse_if(qp is None or peer is None or peer.closed, errno.ENOENT, "no such QP")
        assert qp is not None and peer is not None
        _refuse_if(peer is qp, errno.EINVAL, "a QP cannot connect to itself")
        _refuse_if(
            (qp.peer not in (None, peer)) or (peer.peer not in (None, qp)),
            errno.EBUSY,
            "one of the QPs is connected to another",
        )
        qp.peer, peer.peer = peer, qp

    async def post_send(self, context: Context, wr: m.IbvPostSend) -> None:
        qp = context.qps.get(wr.qp_num)
        _refuse_if(qp is None, errno.ENOENT, f"no QP {wr.qp_num}")
        assert qp is not None
        _refuse_if(wr.opcode not in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ), errno.EINVAL, "opcode")
        _refuse_if(qp.peer is None, errno.EINVAL, "the QP is not connected")
        qp.complete(wr.wr_id, await self._transfer(qp, wr), wr.opcode, wr.length)

    async def _transfer(self, qp: QueuePair, wr: m.IbvPostSend) -> int:
        """Do the work request; return its completion status. Evicted regions are faulted
        in first, and everything is checked again after each wait: the copy itself runs
        with no wait between the last check and its end."""
        while True:
            status, local, remote = self._check(qp, wr)
            if status != IBV_WC_SUCCESS:
                return status
            assert local is not None and remote is not None
            evicted = next((mr for mr in (local, remote) if mr.evicted), None)
            if evicted is None:
                break
            try:
                await self._fault_in(evicted)
            except VerbsError as exc:  # freed host memory (EFAULT), or the VM is gone
                log.info("mr_fault_failed", lkey=evicted.lkey, errno=exc.errno, why=exc.message)
                return IBV_WC_LOC_PROT_ERR if evicted is local else IBV_WC_REM_ACCESS_ERR
        writing = wr.opcode == IBV_WR_RDMA_WRITE
        src, dst = (local, remote) if writing else (remote, local)
        src_addr, dst_addr = (
            (wr.local_addr, wr.remote_addr) if writing else (wr.remote_addr, wr.local_addr)
        )
        moved = copy_pieces(dst.pieces(dst_addr, wr.length), src.pieces(src_addr, wr.length))
        self.stats["rdma_bytes"] += moved
        return IBV_WC_SUCCESS

    def _check(
        self, qp: QueuePair, wr: m.IbvPostSend
    ) -> tuple[int, MemoryRegion | None, MemoryRegion | None]:
        """The work request's status if it cannot be done, else success and its regions."""
        if qp.peer is None or qp.peer.closed:
            return IBV_WC_RETRY_EXC_ERR, None, None
        local = qp.context.mrs.get(wr.lkey)
        if local is None or not local.valid or not local.covers(wr.local_addr, wr.length):
            return IBV_WC_LOC_PROT_ERR, None, None
        remote = self.rkeys.get(wr.rkey)
        writing = wr.opcode == IBV_WR_RDMA_WRITE
        needed = IBV_ACCESS_REMOTE_WRITE if writing else IBV_ACCESS_REMOTE_READ
        if (
            remote is None
            or remote.context is not qp.peer.context
            or not remote.valid
            or not remote.access & needed
            or not remote.covers(wr.remote_addr, wr.length)
        ):
            return IBV_WC_REM_ACCESS_ERR, None, None
        if not writing and not local.access & IBV_ACCESS_LOCAL_WRITE:
            return IBV_WC_LOC_PROT_ERR, None, None
        return IBV_WC_SUCCESS, local, remote

    async def close_context(self, context: Context) -> None:
        for mr in context.mrs.values():
            self.rkeys.pop(mr.rkey, None)
            mr.invalidate()
        for qp in context.qps.values():
            qp.closed = True
            qp.cq.close()
            self.qps.pop(qp.num, None)
        self.contexts.pop(context.vm_handle, None)
        # the daemon gone, or forgetting already, holds nothing either way
        with contextlib.suppress(XeError, OSError, DaemonGone):
            await self.link.call(Op.AUX_VM_RELEASE, m.XedAuxVmRelease(vm_handle=context.vm_handle))

    # --- one application ----------------------------------------------------------------------
    async def serve_app(self, sock: socket.socket) -> None:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid = _PEERCRED.unpack(raw)[0]
        sock.setblocking(False)
        context: Context | None = None
        try:
            while True:
                data, ancdata, flags, _ = await _recvmsg(sock)
                fds, _junk = unpack_fds(ancdata)
                if not data and not fds:
                    break
                try:
                    request = decode_request(data, tuple(fds))
                    if Role.VERBS not in SPECS[request.op].roles:
                        raise ProtocolError(
                            errno.ENOTTY, f"{request.op.name} is not a verb", request.id
                        )
                except ProtocolError as exc:
                    for fd in fds:
                        os.close(fd)
                    if exc.request_id:
                        await _send(sock, encode_error(exc.request_id, exc.errno, exc.message))
                    continue
                out: list[int] = []
                try:
                    result, context = await self._answer(pid, context, request)
                    if isinstance(result, tuple):
                        result, out = result
                    reply = encode_reply(request.id, request.op, 0, result)
                except VerbsError as exc:
                    reply = encode_error(request.id, exc.errno, exc.message)
                finally:
                    for fd in fds:
                        os.close(fd)
                try:
                    await _send(sock, reply, out)
                finally:
                    for fd in out:
                        os.close(fd)
        except OSError:
            pass  # the application went away mid-request: tidy up below
        except Exception:
            # a bug, or an application that corrupted what it shares with us: drop that
            # one application, never the driver and everyone else with it
            log.exception("app_dropped", pid=pid)
        finally:
            if context is not None:
                with trio.CancelScope(shield=True):
                    await self.close_context(context)
            sock.close()

    async def _answer(
        self, pid: int, context: Context | None, request: Any
    ) -> tuple[Any, Context | None]:
        op, args = request.op, request.args
        if op is Op.IBV_OPEN_CONTEXT:
            _refuse_if(context is not None, errno.EBUSY, "a context is open already")
            context, reply = await self.open_context(pid, request.fds[0])
            return reply, context
        _refuse_if(context is None, errno.EPROTO, "open a context first")
        assert context is not None
        if op is Op.IBV_REG_MR:
            return await self.reg_mr(context, args), context
        if op is Op.IBV_DEREG_MR:
            self.dereg_mr(context, args.lkey)
        elif op is Op.IBV_CREATE_QP:
            num, fd = self.create_qp(context)
            return (m.IbvCreateQpReply(qp_num=num, cq_entries=CQ_ENTRIES), [fd]), context
        elif op is Op.IBV_CONNECT_QP:
            self.connect_qp(context, args.qp_num, args.remote_qp_num)
        elif op is Op.IBV_POST_SEND:
            await self.post_send(context, args)
        return m.Empty(), context


# Straight to the non-blocking socket, parking in trio only on EAGAIN (as the daemon
# does): a verb's round trip is the two system calls. A request that was already waiting
# gives the other tasks a turn first; one that had to be waited for has given it.
async def _recvmsg(sock: socket.socket) -> tuple[bytes, list[Any], int, Any]:
    await trio.lowlevel.checkpoint_if_cancelled()
    parked = False
    while True:
        try:
            message = sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            parked = True
            continue
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return message


async def _send(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    while True:
        try:
            sock.sendmsg([data], pack_fds(fds or []))
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


def bind_verbs_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


async def serve(
    verbs_path: Path,
    daemon_path: Path,
    *,
    task_status: trio.TaskStatus[IbDriver] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve applications on `verbs_path` as the daemon's aux driver, until cancelled."""
    link = await DaemonLink.connect(daemon_path)
    listener = bind_verbs_socket(verbs_path)
    tlistener = trio.socket.from_stdlib_socket(listener)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            await link.hello("aux")
            driver = IbDriver(link, nursery)
            link.on_event = driver.on_daemon_event
            log.info(
                "ib_ready", socket=str(verbs_path), device=link.identity and link.identity.name
            )
            task_status.started(driver)
            while True:
                conn, _ = await tlistener.accept()
                nursery.start_soon(driver.serve_app, socket.socket(fileno=conn.detach()))
    finally:
        tlistener.close()
        link.close()
        verbs_path.unlink(missing_ok=True)
