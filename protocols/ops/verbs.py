"""The IB-like aux driver's ops (clients/ib), served on its own socket, not the daemon's."""

from __future__ import annotations

from errno import (
    E2BIG,
    EBUSY,
    EFAULT,
    EINVAL,
    EIO,
    ENOENT,
    EPERM,
    EPROTO,
)

from .. import messages as m
from .spec import Op, OpSpec, Role

_VERBS = frozenset({Role.VERBS})
_NO_CONTEXT = (EPROTO, "no IBV_OPEN_CONTEXT yet on this connection")
_DEAD_CONTEXT = (
    EIO,
    "the daemon behind the context went away (it restarted), or its device was unplugged: close it",
)


SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        op=Op.IBV_OPEN_CONTEXT,
        request=m.IbvOpenContext,
        reply=m.IbvOpenContextReply,
        roles=_VERBS,
        fds_in=1,
        doc="Open a context with our exported VM attached; the aux driver imports it "
        "from the daemon on behalf of our pid (from SO_PEERCRED). While the daemon is "
        "away (restarting), the answer waits for it to come back.",
        errors=(
            (
                EIO,
                "the daemon went away (during the import, or since this connection's "
                "context was opened: it is dead)",
            ),
            (EBUSY, "this connection has a context already"),
            (EINVAL, "not a VM descriptor of the aux driver's daemon"),
            (EPERM, "we are not the process that exported the VM"),
            (ENOENT, "the VM is closed"),
        ),
    ),
    OpSpec(
        op=Op.IBV_REG_MR,
        request=m.IbvRegMr,
        reply=m.IbvRegMrReply,
        roles=_VERBS,
        doc="Register [addr, addr+length) of our VM: the aux driver maps the BOs there. "
        "Access 0 is local only (read): a peer reaches the region only with the rkey "
        "and REMOTE_WRITE / REMOTE_READ granted here. lkey and rkey are random.",
        errors=(
            (EIO, "the daemon behind the context went away (before or during the call)"),
            _NO_CONTEXT,
            (EINVAL, "unknown access flags, REMOTE_WRITE without LOCAL_WRITE, or length 0"),
            (EFAULT, "some address of the range is not bound to a BO"),
            (EFAULT, "memory the driver cannot map safely, or read-only with write access"),
            (E2BIG, "more than 8 BOs behind the range, or more than 64 bindings"),
        ),
    ),
    OpSpec(
        op=Op.IBV_DEREG_MR,
        request=m.IbvDeregMr,
        reply=m.Empty,
        roles=_VERBS,
        doc="Forget a memory region.",
        errors=(_DEAD_CONTEXT, _NO_CONTEXT, (ENOENT, "no such lkey in this context")),
    ),
    OpSpec(
        op=Op.IBV_CREATE_QP,
        request=m.IbvCreateQp,
        reply=m.IbvCreateQpReply,
        roles=_VERBS,
        fds_out=1,
        doc="A queue pair; its completion queue is the attached shared-memory ring.",
        errors=(_DEAD_CONTEXT, _NO_CONTEXT),
    ),
    OpSpec(
        op=Op.IBV_CONNECT_QP,
        request=m.IbvConnectQp,
        reply=m.Empty,
        roles=_VERBS,
        doc="Name a QP on the same aux driver as our QP's remote. Two-sided, as RC "
        "QPs are: the pair is connected (work can be posted) once the remote QP has "
        "named ours too; naming it again is allowed.",
        errors=(
            _DEAD_CONTEXT,
            _NO_CONTEXT,
            (ENOENT, "no such QP (ours or the remote one)"),
            (EINVAL, "our QP itself"),
            (EBUSY, "our QP named another already, or the remote QP named another"),
        ),
    ),
    OpSpec(
        op=Op.IBV_POST_SEND,
        request=m.IbvPostSend,
        reply=m.Empty,
        roles=_VERBS,
        doc="RDMA WRITE or READ between our MR and the peer's, one memcpy between the "
        "mapped pages; the outcome is a completion in the QP's ring: LOC_PROT_ERR for "
        "an lkey not ours or a range outside it (or a READ into a region without "
        "LOCAL_WRITE), REM_ACCESS_ERR for an rkey not of the connected peer's "
        "context, without the REMOTE_WRITE / REMOTE_READ the op needs, or a range "
        "outside it, RETRY_EXC_ERR once the peer's context is closed.",
        errors=(
            _DEAD_CONTEXT,
            _NO_CONTEXT,
            (ENOENT, "no such QP"),
            (EINVAL, "unknown opcode, or the QP is not connected (both sides named)"),
        ),
    ),
)
