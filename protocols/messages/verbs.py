"""Verbs: an application and the IB-like aux driver, on the aux driver's own socket."""

from __future__ import annotations

from ..fields import frozen, u32, u64


@frozen
class IbvOpenContext:
    """Hand the aux driver our exported VM (attached): it imports it on our behalf."""


@frozen
class IbvOpenContextReply:
    va_bits: int = u32()


@frozen
class IbvRegMr:
    addr: int = u64("GPU virtual address in our VM")
    length: int = u64()
    access: int = u32("IBV_ACCESS_LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ; 0: local only")


@frozen
class IbvRegMrReply:
    lkey: int = u32()
    rkey: int = u32("random: give it to the connected peer to let it reach this region")


@frozen
class IbvDeregMr:
    lkey: int = u32()


@frozen
class IbvCreateQp:
    """A queue pair with its completion queue."""


@frozen
class IbvCreateQpReply:
    """The attached descriptor is the QP's completion ring (clients/ib/cq.py): polling
    it is a read of shared memory, as with real verbs."""

    qp_num: int = u32()
    cq_entries: int = u32()


@frozen
class IbvConnectQp:
    qp_num: int = u32()
    remote_qp_num: int = u32("a QP on this aux driver, that must name ours too")


@frozen
class IbvPostSend:
    qp_num: int = u32()
    wr_id: int = u64("comes back in the completion")
    opcode: int = u32("IBV_WR_RDMA_WRITE or IBV_WR_RDMA_READ")
    lkey: int = u32()
    local_addr: int = u64()
    length: int = u64()
    remote_addr: int = u64()
    rkey: int = u32()


@frozen
class IbvWc:
    """One completion, as the ring holds it."""

    wr_id: int = u64()
    status: int = u32("IBV_WC_*")
    opcode: int = u32()
    byte_len: int = u64()
