"""The xed wire protocol: message records, the sans-I/O codec, constants and errnos.

No I/O happens in this package (memfd.py asks the kernel about a descriptor, but reads
none of it); the daemon (`xed`) and the clients (`clients`) each bring their own
sockets and share everything else from here.
"""

from . import constants, messages
from .ancillary import pack_fds, unpack_fds
from .codec import (
    MAX_DATAGRAM,
    MAX_FDS,
    REPLY_ENCODERS,
    REPLY_READERS,
    REQUEST_ENCODERS,
    EventMessage,
    PlainOps,
    Reply,
    Request,
    decode_incoming,
    decode_request,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
    from_wire,
    peek_op,
    peek_request_id,
    plain_ops,
    plain_request,
    reply_record,
    to_wire,
)
from .connection import MAX_STRIKES, ServerConnection, State
from .errors import SHORTAGE, LocalProtocolError, ProtocolError, errno_name
from .ops import COMMON_ERRORS, EVENTS, FDS_OUT_ERRORS, SPECS, Event, Node, Op, OpSpec, Role
from .version import PROTOCOL_VERSION

__all__ = [
    "COMMON_ERRORS",
    "EVENTS",
    "FDS_OUT_ERRORS",
    "MAX_DATAGRAM",
    "MAX_FDS",
    "MAX_STRIKES",
    "PROTOCOL_VERSION",
    "SHORTAGE",
    "SPECS",
    "Event",
    "EventMessage",
    "LocalProtocolError",
    "Node",
    "Op",
    "OpSpec",
    "ProtocolError",
    "Reply",
    "Request",
    "Role",
    "ServerConnection",
    "State",
    "constants",
    "decode_incoming",
    "decode_request",
    "encode_error",
    "encode_event",
    "encode_reply",
    "encode_request",
    "errno_name",
    "from_wire",
    "messages",
    "pack_fds",
    "peek_op",
    "peek_request_id",
    "PlainOps",
    "plain_ops",
    "plain_request",
    "REPLY_ENCODERS",
    "REPLY_READERS",
    "REQUEST_ENCODERS",
    "reply_record",
    "to_wire",
    "unpack_fds",
]
