"""The IB-like auxiliary driver: a process of its own between applications and the GPU.

It connects to the daemon as role `aux` and serves applications on its own socket, the
way /dev/infiniband/uverbs0 does. An application opens a context by handing over its
exported VM; the driver imports it from the daemon on behalf of that application (pid
from SO_PEERCRED). Registering a memory region resolves a range of the application's
GPU address space to the BOs bound there, which the driver maps (zero copy). RDMA WRITE
and READ between two registered regions are one memcpy between mapped pages. When the
daemon reports a bind or unbind under a region, the region is invalidated: its pages
are let go and later work on it completes with an error status.

One application reaches another's region only as RC verbs allow: through a QP pair
both of them connected (naming a QP is one half of that), with an rkey (a random
secret) of a region the other registered with the remote access the op needs (none
unless asked).

A region over userptr ranges maps the application's host memory itself, with nothing
pinned, as on-demand paging does. When that memory is about to change the daemon says
so (reason "userptr"): the region lets its pages go at once and acknowledges, and the
next work request on it faults them in again (the daemon waits out the change), or
completes with an error status if the memory was freed.

The VM lives only as long as the application's drm file that created it: when that
closes, the daemon invalidates the whole range (reason "vm_closed"). Every region of
the context is invalidated, work on them completes with an error status, and
registering a new one fails (ENOENT) until the application opens a new context.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
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
)

from ..errors import DaemonGone, XeError
from .cq import CQ_ENTRIES, CompletionRing
from .errors import VerbsError
from .errors import refuse_if as _refuse_if
from .link import DaemonLink
from .mr import Keys, MemoryRegion, copy_pieces

log = structlog.get_logger("xec.ib")
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
_PEERCRED = struct.Struct("3i")
_DEAD = "the daemon this context's VM came from is gone: close it, open a new one"


# --- queue pairs and contexts --------------------------------------------------------------
@attrs.define(eq=False)
class QueuePair:
    """An RC queue pair. Connecting is two-sided, as modify_qp to RTR on both ends is:
    naming a remote QP only makes ours ready to receive from it; the pair is connected
    (ready to send) once the remote QP has named ours too. Until then nothing can be
    posted, so naming somebody's QP gives no way into its context's regions."""

    context: Context
    num: int
    cq: CompletionRing
    remote: QueuePair | None = None  # the QP ours named; for life, as an RC QP's dest
    closed: bool = False

    @property
    def connected(self) -> bool:
        return self.remote is not None and self.remote.remote is self

    def complete(self, wr_id: int, status: int, opcode: int, byte_len: int) -> None:
        self.cq.push(wr_id, status, opcode, byte_len)


class Context:
    """One application's verbs context (its protection domain too): the VM imported on
    its behalf through `link`, its regions by lkey, its QPs. `dead` once that daemon
    is gone: every VM descriptor it lent is gone with it."""

    def __init__(self, driver: IbDriver, link: DaemonLink, pid: int, vm_handle: int) -> None:
        self.driver = driver
        self.link = link
        self.pid = pid
        self.vm_handle = vm_handle
        self.mrs: dict[int, MemoryRegion] = {}
        self.qps: dict[int, QueuePair] = {}
        self.notifier_seq = 0  # moves with every invalidation the daemon sends
        self.dead = False


class IbDriver:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery  # where acknowledgements go out from
        self.link: DaemonLink | None = None  # None while the daemon is away
        self._up = trio.Event()  # set while `link` is there
        self.contexts: dict[int, Context] = {}  # by vm_handle, of the daemon at `link`
        self.rkeys: dict[int, MemoryRegion] = {}
        self.qps: dict[int, QueuePair] = {}
        self.keys = Keys()
        self._qp_nums = itertools.count(1)
        self.stats = {"rdma_bytes": 0, "invalidations": 0, "evictions": 0, "faults": 0}

    # --- the daemon coming and going ---------------------------------------------------------
    def attach(self, link: DaemonLink) -> None:
        """Serve new contexts against the daemon at the other end of `link`."""
        link.on_event = self.on_daemon_event
        self.link = link
        self._up.set()

    def daemon_lost(self, link: DaemonLink) -> int:
        """The daemon at `link` is gone, and every VM it lent us with it: each context
        imported through it dies. Its regions and QPs go now; the application learns it
        from its next verb (EIO, see _answer). Returns how many contexts died."""
        if self.link is link:
            self.link = None
            self._up = trio.Event()
        dead = [context for context in self.contexts.values() if context.link is link]
        for context in dead:
            context.dead = True
            self._forget(context)
        return len(dead)

    async def _daemon(self) -> DaemonLink:
        """The daemon link, waiting while it is away (the driver exits if it stays away)."""
        while self.link is None:
            await self._up.wait()
        return self.link

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
        if data.reason == "vm_closed":
            # the application's file that created the VM closed, and the VM with it:
            # every region is invalidated below, and registering more fails (ENOENT)
            log.info("context_vm_closed", pid=context.pid, vm_handle=data.vm_handle)
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
        self.nursery.start_soon(self._acknowledge, context.link, data.vm_handle, data.seqno)

    async def _acknowledge(self, link: DaemonLink, vm_handle: int, seqno: int) -> None:
        # a registration released meanwhile, or the daemon gone: nobody waits any more
        with contextlib.suppress(XeError, OSError, DaemonGone):
            await link.call(
                Op.AUX_VM_INVALIDATE_DONE,
                m.XedAuxVmInvalidateDone(vm_handle=vm_handle, seqno=seqno),
            )

    async def _resolve(self, context: Context, addr: int, length: int) -> tuple[Any, list[int]]:
        try:
            return await context.link.call(
                Op.AUX_VM_RESOLVE,
                m.XedAuxVmResolve(vm_handle=context.vm_handle, va=addr, length=length),
            )
        except XeError as exc:
            raise VerbsError(exc.errno or errno.EIO, exc.detail) from exc
        except DaemonGone as exc:
            raise VerbsError(errno.EIO, _DEAD) from exc

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
        link = await self._daemon()
        try:
            reply, _ = await link.call(
                Op.AUX_VM_IMPORT, m.XedAuxVmImport(on_behalf_of_pid=pid), [vm_fd]
            )
        except XeError as exc:
            raise VerbsError(exc.errno or errno.EIO, exc.detail) from exc
        except DaemonGone as exc:
            raise VerbsError(errno.EIO, "the daemon went away during the import") from exc
        # the daemon went away as it answered: the VM went with it (nothing to release)
        _refuse_if(link is not self.link, errno.EIO, "the daemon went away during the import")
        context = Context(self, link, pid, reply.vm_handle)
        self.contexts[reply.vm_handle] = context
        log.info("context_opened", pid=pid, vm_handle=reply.vm_handle)
        return context, m.IbvOpenContextReply(va_bits=reply.va_bits)

    async def reg_mr(self, context: Context, args: m.IbvRegMr) -> m.IbvRegMrReply:
        """Checks, in order: unknown access bits, or REMOTE_WRITE without LOCAL_WRITE (as
        ib_check_mr_access refuses it): EINVAL; length zero: EINVAL; the range, as the
        daemon resolves it (EFAULT, E2BIG); the daemon gone meanwhile: EIO."""
        _refuse_if(args.access & ~IBV_ACCESS_FLAGS, errno.EINVAL, "unknown access flags")
        _refuse_if(
            args.access & IBV_ACCESS_REMOTE_WRITE and not args.access & IBV_ACCESS_LOCAL_WRITE,
            errno.EINVAL,
            "REMOTE_WRITE needs LOCAL_WRITE",
        )
        _refuse_if(not args.length, errno.EINVAL, "length zero")
        begun = context.notifier_seq
        reply, fds = await self._resolve(context, args.addr, args.length)
        try:
            _refuse_if(context.dead, errno.EIO, _DEAD)
            lkey, rkey = self.keys.take(), self.keys.take()
            mr = MemoryRegion(context, args.addr, args.length, args.access, lkey, rkey)
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

    async def dereg_mr(self, context: Context, lkey: int) -> None:
        """Checks: no such lkey: ENOENT. The daemon stops watching the region's range
        (AUX_VM_UNWATCH, as the kernel removes a region's notifier with it) unless another
        region of the context lies over it; a registration watches at most
        MAX_WATCHES ranges, and one that only ever registered would reach it."""
        mr = context.mrs.pop(lkey, None)
        _refuse_if(mr is None, errno.ENOENT, f"no lkey {lkey}")
        assert mr is not None
        self._drop_mr(mr)
        end = mr.addr + mr.length
        if context.dead or any(
            other.addr < end and mr.addr < other.addr + other.length
            for other in context.mrs.values()
        ):
            return
        # the region is gone whatever the answer: a daemon gone takes its watches along
        with contextlib.suppress(XeError, DaemonGone):
            await context.link.call(
                Op.AUX_VM_UNWATCH,
                m.XedAuxVmRange(vm_handle=context.vm_handle, va=mr.addr, length=mr.length),
            )

    def _drop_mr(self, mr: MemoryRegion) -> None:
        self.rkeys.pop(mr.rkey, None)
        self.keys.give_back(mr.lkey, mr.rkey)
        mr.invalidate()

    def create_qp(self, context: Context) -> tuple[int, int]:
        """A new QP: its number and its completion ring's descriptor (caller closes)."""
        ring, fd = CompletionRing.create()
        qp = QueuePair(context, next(self._qp_nums), ring)
        context.qps[qp.num] = self.qps[qp.num] = qp
        return qp.num, fd

    def connect_qp(self, context: Context, num: int, remote: int) -> None:
        """Name `remote` as our QP's destination. Checks, in order: our QP or the remote
        one unknown (or closed): ENOENT; the remote is our QP itself: EINVAL; our QP named
        another already, or the remote QP named another: EBUSY. Naming the same QP again
        is allowed. The pair is connected once both have named each other."""
        qp, peer = context.qps.get(num), self.qps.get(remote)
        _refuse_if(qp is None or peer is None or peer.closed, errno.ENOENT, "no such QP")
        assert qp is not None and peer is not None
        _refuse_if(peer is qp, errno.EINVAL, "a QP cannot connect to itself")
        _refuse_if(
            (qp.remote not in (None, peer)) or (peer.remote not in (None, qp)),
            errno.EBUSY,
            "one of the QPs is connected to another",
        )
        qp.remote = peer
        log.info("qp_connected" if qp.connected else "qp_ready", qp=qp.num, remote=peer.num)

    async def post_send(self, context: Context, wr: m.IbvPostSend) -> None:
        qp = context.qps.get(wr.qp_num)
        _refuse_if(qp is None, errno.ENOENT, f"no QP {wr.qp_num}")
        assert qp is not None
        _refuse_if(wr.opcode not in (IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ), errno.EINVAL, "opcode")
        _refuse_if(
            not qp.connected, errno.EINVAL, "the QP is not connected (both sides must name it)"
        )
        status = await self._transfer(qp, wr)
        _refuse_if(context.dead, errno.EIO, _DEAD)  # gone during a fault: its ring too
        qp.complete(wr.wr_id, status, wr.opcode, wr.length)

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
        """The work request's status if it cannot be done, else success and its regions.
        The lkey is looked up in our context only; the rkey must name a region of the
        connected peer's context (its protection domain) whose access allows the op."""
        peer = qp.remote
        if peer is None or peer.closed or peer.remote is not qp:
            return IBV_WC_RETRY_EXC_ERR, None, None
        local = qp.context.mrs.get(wr.lkey)
        if local is None or not local.valid or not local.covers(wr.local_addr, wr.length):
            return IBV_WC_LOC_PROT_ERR, None, None
        remote = self.rkeys.get(wr.rkey)
        writing = wr.opcode == IBV_WR_RDMA_WRITE
        needed = IBV_ACCESS_REMOTE_WRITE if writing else IBV_ACCESS_REMOTE_READ
        if (
            remote is None
            or remote.context is not peer.context
            or not remote.valid
            or not remote.access & needed
            or not remote.covers(wr.remote_addr, wr.length)
        ):
            return IBV_WC_REM_ACCESS_ERR, None, None
        if not writing and not local.access & IBV_ACCESS_LOCAL_WRITE:
            return IBV_WC_LOC_PROT_ERR, None, None
        return IBV_WC_SUCCESS, local, remote

    def _forget(self, context: Context) -> None:
        """Everything of the context's on our side: its regions, keys and QPs."""
        for mr in context.mrs.values():
            self._drop_mr(mr)
        context.mrs.clear()
        for qp in context.qps.values():
            qp.closed = True
            qp.cq.close()
            self.qps.pop(qp.num, None)
        context.qps.clear()
        if self.contexts.get(context.vm_handle) is context:  # a new daemon may reuse it
            del self.contexts[context.vm_handle]

    async def close_context(self, context: Context) -> None:
        self._forget(context)
        if context.dead:
            return  # its daemon went away with the VM: nothing to release
        # the daemon gone, or forgetting already, holds nothing either way
        with contextlib.suppress(XeError, OSError, DaemonGone):
            await context.link.call(
                Op.AUX_VM_RELEASE, m.XedAuxVmRelease(vm_handle=context.vm_handle)
            )

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
        # a dead context answers EIO to everything, as uverbs does once its device is
        # disassociated: the application closes it and opens a new one
        _refuse_if(context is not None and context.dead, errno.EIO, _DEAD)
        if op is Op.IBV_OPEN_CONTEXT:
            _refuse_if(context is not None, errno.EBUSY, "a context is open already")
            context, reply = await self.open_context(pid, request.fds[0])
            return reply, context
        _refuse_if(context is None, errno.EPROTO, "open a context first")
        assert context is not None
        if op is Op.IBV_REG_MR:
            return await self.reg_mr(context, args), context
        if op is Op.IBV_DEREG_MR:
            await self.dereg_mr(context, args.lkey)
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
