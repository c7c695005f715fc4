"""Connection state on the daemon side: the handshake, the role, the patience left.

One table says which ops a connection may send in which state; nothing else in the
daemon tests handshake flags.
"""

from __future__ import annotations

import enum
from errno import EACCES, EINVAL, EPROTO

import attrs

from .codec import PlainOps, Request, decode_request, plain_ops
from .errors import ProtocolError
from .messages import Hello
from .ops import HELLO_ROLES, SPECS, Node, Op, Role
from .version import compatible

_HELLO_ROLE_NAMES = frozenset(role.value for role in HELLO_ROLES)
_NODE_NAMES = frozenset(node.value for node in Node)
MAX_STRIKES = 8  # consecutive malformed messages before the peer is disconnected


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    READY = "ready"


def _ops_for(role: Role, node: Node) -> frozenset[Op]:
    return frozenset(
        op
        for op, spec in SPECS.items()
        if role in spec.roles
        and op is not Op.HELLO
        and (spec.render_allow or node is Node.PRIMARY or role is not Role.DRM)
    )


# what each role may send on each node once the handshake is done: one set lookup per
# request (drm_ioctl_permit: a render node answers only DRM_RENDER_ALLOW ioctls)
_OPS_FOR = {(role, node): _ops_for(role, node) for role in Role for node in Node}
# the same, less the ops that take descriptors, by number: what plain_request() reads
_PLAIN_FOR = {key: plain_ops(ops) for key, ops in _OPS_FOR.items()}


@attrs.define
class ServerConnection:
    state: State = State.AWAIT_HELLO
    role: Role | None = None
    node: Node = Node.PRIMARY
    strikes: int = 0
    allowed: frozenset[Op] = frozenset()  # ops that pass as they are, in this state
    plain: PlainOps = attrs.field(factory=dict)  # those of them without descriptors

    @property
    def exhausted(self) -> bool:
        """The peer keeps sending garbage: hang up."""
        return self.strikes >= MAX_STRIKES

    def receive(self, data: bytes, fds: tuple[int, ...], truncated: bool = False) -> Request:
        """Decode one datagram and check it is allowed now; raise ProtocolError if not."""
        try:
            request = decode_request(data, fds, truncated)
        except ProtocolError:
            self.strikes += 1
            raise
        self.strikes = 0
        if request.op in self.allowed:
            return request
        if request.op is Op.HELLO:
            if self.state is not State.AWAIT_HELLO:
                raise ProtocolError(EPROTO, "HELLO was already sent", request.id)
            self._check_hello(request)
            return request
        if self.state is State.AWAIT_HELLO:
            raise ProtocolError(EPROTO, f"{request.op.name} before HELLO", request.id)
        role = self.role.value if self.role else "none"  # READY: `allowed` is the role's ops
        if self.role is Role.DRM and self.role in SPECS[request.op].roles:
            message = f"{request.op.name} is not allowed on a {self.node.value} node"
            raise ProtocolError(EACCES, message, request.id)
        raise ProtocolError(EACCES, f"{request.op.name} is not for role {role!r}", request.id)

    def _check_hello(self, request: Request) -> None:
        hello: Hello = request.args
        if not compatible(hello.version[0]):
            raise ProtocolError(
                EPROTO, f"protocol major {hello.version[0]} unsupported", request.id
            )
        if hello.role not in _HELLO_ROLE_NAMES:
            raise ProtocolError(EINVAL, f"unknown role {hello.role!r}", request.id)
        if hello.node not in _NODE_NAMES:
            raise ProtocolError(EINVAL, f"unknown node {hello.node!r}", request.id)
        if hello.join and hello.role != Role.DRM.value:
            raise ProtocolError(EINVAL, "only a drm connection joins a drm file", request.id)

    def accept(self, role: Role, node: Node = Node.PRIMARY) -> None:
        """The daemon admitted the peer in `role` on `node` (credentials checked there)."""
        if self.state is not State.AWAIT_HELLO:
            raise RuntimeError("handshake already done")
        self.state = State.READY
        self.role = role
        self.node = node
        self.allowed = _OPS_FOR[role, node]
        self.plain = _PLAIN_FOR[role, node]
