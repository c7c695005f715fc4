"""The application's side of the IB-like aux driver: ibverbs-shaped and synchronous.

ib = IbContext.open(aux_socket, vm_fd)        # vm_fd from dev.vm_export(vm)
mr = ib.reg_mr(gpu_addr, length)              # local only: for a peer, pass the
                                              # REMOTE_WRITE / REMOTE_READ it needs
qp = ib.create_qp()
qp.connect(peer_qp_num)                       # and the peer connects its QP to qp.num
qp.rdma_write(mr, remote_addr, rkey, length)
(wc,) = qp.poll_cq()                          # wc.status == IBV_WC_SUCCESS

As with libibverbs, registering asks for the least by default (access 0: the region
can be read by our own work requests, and nothing else), and a QP can post once both
it and its peer have connected to each other.
"""

from __future__ import annotations

import os
import time
from types import TracebackType

import attrs

from protocols import Op
from protocols import messages as m
from protocols.constants import (
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
)

from ..rpc import RpcConnection
from ..transport import SeqpacketTransport
from .cq import CompletionRing

LOCAL_ONLY = 0  # ibv_reg_mr's access 0: our own work requests may read the region
ALL_ACCESS = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ


@attrs.frozen
class MemoryRegion:
    addr: int
    length: int
    lkey: int
    rkey: int


class QueuePair:
    def __init__(self, context: IbContext, num: int, ring: CompletionRing) -> None:
        self.context = context
        self.num = num
        self.cq = ring
        self._wr_ids = 0

    def connect(self, remote_qp_num: int) -> None:
        """Name the peer's QP; posting works once the peer has named ours too."""
        self.context.call(
            Op.IBV_CONNECT_QP, m.IbvConnectQp(qp_num=self.num, remote_qp_num=remote_qp_num)
        )

    def post(
        self,
        opcode: int,
        mr: MemoryRegion,
        remote_addr: int,
        rkey: int,
        length: int,
        local_addr: int | None = None,
        wr_id: int | None = None,
    ) -> int:
        """Post one work request; its outcome comes back from poll_cq(). Returns wr_id."""
        if wr_id is None:
            self._wr_ids += 1
            wr_id = self._wr_ids
        self.context.call(
            Op.IBV_POST_SEND,
            m.IbvPostSend(
                qp_num=self.num, wr_id=wr_id, opcode=opcode, lkey=mr.lkey,
                local_addr=mr.addr if local_addr is None else local_addr,
                length=length, remote_addr=remote_addr, rkey=rkey,
            ),
        )  # fmt: skip
        return wr_id

    def rdma_write(
        self, mr: MemoryRegion, remote_addr: int, rkey: int, length: int, **kw: int
    ) -> int:
        return self.post(IBV_WR_RDMA_WRITE, mr, remote_addr, rkey, length, **kw)

    def rdma_read(
        self, mr: MemoryRegion, remote_addr: int, rkey: int, length: int, **kw: int
    ) -> int:
        return self.post(IBV_WR_RDMA_READ, mr, remote_addr, rkey, length, **kw)

    def poll_cq(self, max_entries: int = 16) -> tuple[m.IbvWc, ...]:
        """Take up to max_entries completions: a read of the shared ring, no request."""
        return self.cq.poll(max_entries)

    def wait_cq(self, timeout: float = 5.0) -> m.IbvWc:
        """Spin on the ring until one completion arrives (work requests complete before
        post returns here, so this is for symmetry with real, asynchronous hardware)."""
        deadline = time.monotonic() + timeout
        while True:
            (completion,) = self.cq.poll(1) or (None,)
            if completion is not None:
                return completion
            if time.monotonic() > deadline:
                raise TimeoutError(f"no completion on QP {self.num}")


class IbContext:
    """A connection to the aux driver with our VM imported: ibv_open_device + ibv_alloc_pd."""

    def __init__(self, rpc: RpcConnection, va_bits: int) -> None:
        self.rpc = rpc
        self.va_bits = va_bits
        self._qps: list[QueuePair] = []

    @classmethod
    def open(cls, aux_socket: str | os.PathLike[str], vm_fd: int) -> IbContext:
        rpc = RpcConnection(SeqpacketTransport.connect(aux_socket), peer="the aux driver")
        try:
            reply, _ = rpc.call(Op.IBV_OPEN_CONTEXT, m.IbvOpenContext(), [vm_fd])
        except BaseException:
            rpc.close()
            raise
        return cls(rpc, reply.va_bits)

    def call(self, op: Op, args: object) -> object:
        result, fds = self.rpc.call(op, args)
        for fd in fds:
            os.close(fd)
        return result

    def reg_mr(self, addr: int, length: int, access: int = LOCAL_ONLY) -> MemoryRegion:
        reply = self.call(Op.IBV_REG_MR, m.IbvRegMr(addr=addr, length=length, access=access))
        assert isinstance(reply, m.IbvRegMrReply)
        return MemoryRegion(addr, length, reply.lkey, reply.rkey)

    def dereg_mr(self, mr: MemoryRegion) -> None:
        self.call(Op.IBV_DEREG_MR, m.IbvDeregMr(lkey=mr.lkey))

    def create_qp(self) -> QueuePair:
        reply, (fd,) = self.rpc.call(Op.IBV_CREATE_QP, m.IbvCreateQp())
        try:
            ring = CompletionRing(fd)
        finally:
            os.close(fd)
        qp = QueuePair(self, reply.qp_num, ring)
        self._qps.append(qp)
        return qp

    def close(self) -> None:
        for qp in self._qps:
            qp.cq.close()
        self.rpc.close()

    def __enter__(self) -> IbContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
