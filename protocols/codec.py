"""The sans-I/O codec: (bytes, descriptors) in, messages out, and back.

Frames are msgpack arrays: a request is `[id, op, args]`, a reply `[id, errno, result]`,
an event `[0, event, data]`. `args`, `result` and `data` are maps keyed by the record's
field names. Descriptors travel beside the bytes (SCM_RIGHTS) and are handed over as
plain integers; this module never opens, closes or sends anything.
"""

from __future__ import annotations

from collections.abc import Callable
from errno import EINVAL, EMSGSIZE, ENOTTY, EPROTO
from typing import Any, NamedTuple

import attrs
import msgpack

from .errors import LocalProtocolError, ProtocolError
from .fields import FieldError, full_map_lines, generate
from .messages import ErrorInfo
from .ops import ANY_FDS, EVENTS, SPECS, Event, Op

MAX_DATAGRAM = 64 * 1024
MAX_FDS = 8
MAX_REQUEST_ID = 0xFFFF_FFFF
_OPS = {int(op): op for op in Op}
# op number -> (op, descriptors it takes): one lookup per request
_REQUESTS = {int(op): (op, spec.fds_in) for op, spec in SPECS.items()}
# op -> (its argument record, its number): an IntEnum packs by msgpack's slow path
_REQUEST_RECORDS = {op: (spec.request, int(op)) for op, spec in SPECS.items()}
_REPLIES = {op: spec.reply for op, spec in SPECS.items()}
# op -> (its reply record, the descriptors a reply carries): what a client checks
_REPLY_SHAPES = {op: (spec.reply, spec.fds_out) for op, spec in SPECS.items()}
_ITEMS = 4096  # the longest array or map a frame may hold, at any depth


# A request and a reply are envelopes around a record that checked itself, built once per
# message on each side: immutable tuples, which cost a fifth of a frozen attrs class.
class Request(NamedTuple):
    id: int
    op: Op
    args: Any
    fds: tuple[int, ...] = ()


class Reply(NamedTuple):
    id: int
    errno: int
    result: Any  # the op's reply record, or ErrorInfo when errno != 0
    fds: tuple[int, ...] = ()


@attrs.frozen
class EventMessage:
    event: Event
    data: Any


_tuple_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function around it


# --- records <-> maps -----------------------------------------------------------------
# One pair of functions per record class, written from its fields' metadata the first
# time the class travels (the hot path: a loop over the fields cost more than the
# socket). The values themselves are checked by the record's own checks (fields.py):
# inline in from_wire for a map holding every field, in `__init__` for any other.
class _Compiled(dict[type, Any]):
    """Record class -> its compiled function, compiled at its first lookup: `table[cls]`
    is one dict lookup on the hot path, where a helper to look up or compile was a call
    more on every message."""

    def __init__(self, compile_for: Callable[[type], Any]) -> None:
        super().__init__()
        self._compile_for = compile_for

    def __missing__(self, cls: type) -> Any:
        return self._compile_for(cls)  # which stores it


def _per_op(compile_for: Callable[[Op], Any]) -> dict[Op, Any]:
    """Op -> its compiled function, in a plain dict holding a stand-in for every op: the
    stand-in's first call compiles the function (compile_for stores it in the table)
    and calls it. Where the table is looked up on every message: subscripting a dict
    subclass (_Compiled) costs twice a plain dict's, and at 64 client processes, which
    evict each other's caches, every object a round trip touches shows."""

    def stand_in(op: Op) -> Callable[..., Any]:
        def first_call(*args: Any) -> Any:
            return compile_for(op)(*args)

        return first_call

    return {op: stand_in(op) for op in SPECS}


_TO_WIRE: dict[type, Callable[[Any], dict[str, Any]]] = _Compiled(lambda cls: _compile_to_wire(cls))
_FROM_WIRE: dict[type, Callable[[Any], Any]] = _Compiled(lambda cls: _compile_from_wire(cls))


def to_wire(record: Any) -> dict[str, Any]:
    return _TO_WIRE[type(record)](record)


def from_wire(cls: type, obj: Any) -> Any:
    """Build `cls` from a peer's map; missing fields are zero, as in a memset struct.
    The map is the record's from then on (its `__dict__`, when it holds every field):
    hand over a map nothing else holds."""
    return _FROM_WIRE[cls](obj)


def _map_of(cls: type) -> str:
    """The expression building record `r`'s map (names the globals `_to_wire`)."""
    items = []
    for field in attrs.fields(cls):
        name, kind = field.name, field.metadata["kind"]
        if kind == "records":
            items.append(f"'{name}': [_to_wire(item) for item in r.{name}]")
        elif kind == "nested":
            items.append(f"'{name}': _to_wire(r.{name})")
        else:  # scalars as they are; tuples pack as msgpack arrays
            items.append(f"'{name}': r.{name}")
    return f"{{{', '.join(items)}}}"


def _compile_to_wire(cls: type) -> Callable[[Any], dict[str, Any]]:
    body = [f"return {_map_of(cls)}"]
    g = {"_to_wire": to_wire}
    encode = _TO_WIRE[cls] = generate(f"to_wire[{cls.__qualname__}]", "to_wire(r)", body, g)
    return encode  # type: ignore[no-any-return]


# A frame `[head, code, map of r]` packed by one function per record class: the map
# built, packed and its size checked in one call, where to_wire and a packing helper
# were three on every message.
_FRAMES: dict[type, Callable[[int, int, Any], bytes]] = _Compiled(lambda cls: _compile_frame(cls))
# One packer for the process: packb() would build a new one per frame. Packing holds the
# GIL from start to end, so threads cannot interleave inside it.
_PACKER = msgpack.Packer(use_bin_type=True)


def _frame_lines(cls: type, code: str) -> list[str]:
    """Statements packing `[head, code, map of r]` and checking its size (a flat
    record's map is its own __dict__, which holds its fields and nothing else)."""
    flat = all(f.metadata["kind"] not in ("records", "nested") for f in attrs.fields(cls))
    return [
        f"data = _pack([head, {code}, {'r.__dict__' if flat else _map_of(cls)}])",
        f"if _len(data) > {MAX_DATAGRAM}: raise _too_big(data)",
        "return data",
    ]


def _frame_globals() -> dict[str, Any]:
    return {"_to_wire": to_wire, "_pack": _PACKER.pack, "_len": len, "_too_big": _too_big}


def _compile_frame(cls: type) -> Callable[[int, int, Any], bytes]:
    body, g = _frame_lines(cls, "code"), _frame_globals()
    encode = _FRAMES[cls] = generate(f"frame[{cls.__qualname__}]", "frame(head, code, r)", body, g)
    return encode  # type: ignore[no-any-return]


def _compile_from_wire(cls: type) -> Callable[[Any], Any]:
    g: dict[str, Any] = {}
    lines = _from_wire_lines(cls, g)
    qualname = f"from_wire[{cls.__qualname__}]"
    decode = _FROM_WIRE[cls] = generate(qualname, "from_wire(_map)", lines, g)
    return decode  # type: ignore[no-any-return]


def _from_wire_lines(cls: type, g: dict[str, Any]) -> list[str]:
    """Statements building `cls` from the map `_map` and returning it (from_wire's body,
    and the end of an op's reply reader); adds to `g` what they refer to."""
    # the checks' own globals (_type, _list, _FieldError...) come with full_map_lines
    g.update(_dict=dict, _from_wire=from_wire)
    lines = [
        "if _type(_map) is not _dict:",
        f"    raise _FieldError('{cls.__name__} must be a map')",
    ]
    for field in attrs.fields(cls):
        name, kind = field.name, field.metadata["kind"]
        if kind == "records":
            g[f"_cls_{name}"] = field.metadata["record"]
            lines += [
                f"if '{name}' in _map:",
                f"    if _type(_map['{name}']) is not _list:",
                f"        raise _FieldError('{name} must be a list')",
                f"    _map['{name}'] = [_from_wire(_cls_{name}, i) for i in _map['{name}']]",
            ]
        elif kind == "nested":
            g[f"_cls_{name}"] = field.metadata["nested"]
            lines += [
                f"if '{name}' in _map:",
                f"    _map['{name}'] = _from_wire(_cls_{name}, _map['{name}'])",
            ]
    lines += full_map_lines(cls, g)
    lines.append("return _self")

    def keywords(obj: dict[str, Any]) -> Any:  # a map that is not every field, exactly
        try:
            return cls(**obj)
        except TypeError as exc:  # a key that is no field (the checks raise FieldError)
            raise _no_such_field(cls, obj, exc) from None

    g["_fallback"] = keywords
    return lines


def _no_such_field(cls: type, obj: dict[Any, Any], exc: TypeError) -> FieldError:
    unknown = obj.keys() - {field.name for field in attrs.fields(cls)}
    if unknown:
        return FieldError(f"{cls.__name__} has no field {sorted(map(str, unknown))[0]!r}")
    return FieldError(str(exc))


def _too_big(data: bytes) -> LocalProtocolError:
    return LocalProtocolError(f"message of {len(data)} bytes exceeds {MAX_DATAGRAM}")


# what msgpack.unpackb raises on bytes that are no frame, whatever they hold
_UNPACK_ERRORS = (ValueError, msgpack.UnpackException, TypeError, RecursionError)


def _unpack(data: bytes) -> list[Any]:
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(EMSGSIZE, f"datagram larger than {MAX_DATAGRAM} bytes")
    try:
        # unpackb's own limits default to len(data), which was just bounded: no string
        # can outgrow the datagram. Keys are str only (strict_map_key) and text is UTF-8
        # (raw=False), msgpack's defaults. Passed as literals, not **kwargs: a dict
        # spread on every frame cost more than the decoding.
        frame = msgpack.unpackb(data, max_ext_len=0, max_array_len=_ITEMS, max_map_len=_ITEMS)
    except _UNPACK_ERRORS as exc:
        raise ProtocolError(EINVAL, f"not a msgpack frame: {exc}") from exc
    if type(frame) is not list or len(frame) != 3:
        raise ProtocolError(EINVAL, "a frame is a 3-element array")
    if type(frame[0]) is not int or not 0 <= frame[0] <= MAX_REQUEST_ID:
        raise ProtocolError(EINVAL, "frame id must be a u32")
    return frame


# --- requests ---------------------------------------------------------------------------
def encode_request(request_id: int, op: Op, args: Any) -> bytes:
    return REQUEST_ENCODERS[op](request_id, args)


# op -> encode(request id, args): encode_request() for that op, in one call: the library's
# round trip is its encoder, its reply reader and little else (a call through to a
# record's frame was a tenth of the library's CPU, with both processes on one CPU)
REQUEST_ENCODERS: dict[Op, Callable[[int, Any], bytes]] = _per_op(lambda op: _compile_request(op))


def _compile_request(op: Op) -> Callable[[int, Any], bytes]:
    cls, number = _REQUEST_RECORDS[op]
    check_id = f"if not 0 < head <= {MAX_REQUEST_ID}: raise _error('request ids are non-zero u32')"
    encode = REQUEST_ENCODERS[op] = _checked_frame(
        f"request[{op.name}]", cls, str(number), f"{op.name} takes {cls.__name__}", check_id
    )
    return encode


def _checked_frame(
    qualname: str, cls: type, code: str, wrong: str, *checks: str
) -> Callable[[int, Any], bytes]:
    """encode(head, r): LocalProtocolError(`wrong`) unless r is a `cls`, then `checks`,
    then the frame `[head, code, map of r]`."""
    g = _frame_globals() | {"_type": type, "_cls": cls, "_error": LocalProtocolError}
    body = [f"if _type(r) is not _cls: raise _error({wrong!r})", *checks, *_frame_lines(cls, code)]
    return generate(qualname, "encode(head, r)", body, g)  # type: ignore[no-any-return]


def _peek(data: bytes, items: int) -> list[Any]:
    """The first `items` elements of a (possibly truncated) request frame, or []."""
    unpacker = msgpack.Unpacker(
        max_buffer_size=MAX_DATAGRAM, max_ext_len=0, max_array_len=_ITEMS, max_map_len=_ITEMS
    )
    unpacker.feed(data[:MAX_DATAGRAM])
    try:
        if unpacker.read_array_header() != 3:
            return []
        return [unpacker.unpack() for _ in range(items)]
    except (ValueError, msgpack.UnpackException, TypeError):
        return []


def peek_request_id(data: bytes) -> int:
    """The id at the head of a (possibly truncated) request frame, or 0."""
    head = _peek(data, 1)
    ident = head[0] if head else 0
    return ident if type(ident) is int and 0 < ident <= MAX_REQUEST_ID else 0


def peek_op(data: bytes) -> Op | None:
    """The op of a request frame that cannot be decoded whole (its descriptors were
    dropped on the way), or None."""
    head = _peek(data, 2)
    return _OPS.get(head[1]) if len(head) == 2 and type(head[1]) is int else None


def decode_request(data: bytes, fds: tuple[int, ...] = (), truncated: bool = False) -> Request:
    """Raise ProtocolError (with the request id when it could be read) on any defect.

    `truncated`: the transport cut the datagram (it was over the limit). The caller owns
    `fds` and closes them all when this raises.
    """
    if truncated or len(data) > MAX_DATAGRAM:
        raise ProtocolError(
            EMSGSIZE, f"datagram larger than {MAX_DATAGRAM} bytes", peek_request_id(data)
        )
    request_id, op_number, args = _unpack(data)
    if request_id == 0:
        raise ProtocolError(EINVAL, "request id 0 is reserved for events")
    if type(op_number) is not int:
        raise ProtocolError(EINVAL, "op must be an integer", request_id)
    entry = _REQUESTS.get(op_number)
    if entry is None:
        raise ProtocolError(ENOTTY, f"unknown op {op_number:#x}", request_id)
    op, fds_in = entry
    if len(fds) != fds_in:
        raise ProtocolError(
            EINVAL, f"{op.name} takes {fds_in} descriptors, got {len(fds)}", request_id
        )
    decode = _REQUEST_DECODERS[op]  # from_wire(), inline
    try:
        record = decode(args)
    except FieldError as exc:
        raise ProtocolError(EINVAL, f"{op.name}: {exc}", request_id) from exc
    return _tuple_new(Request, (request_id, op, record, fds))


def _request_decoder(op: Op) -> Callable[[Any], Any]:
    decode = _REQUEST_DECODERS[op] = _FROM_WIRE[SPECS[op].request]
    return decode


# op -> from_wire() of its argument record: looked up by op, in a plain dict
_REQUEST_DECODERS: dict[Op, Callable[[Any], Any]] = _per_op(_request_decoder)


# op number -> op, for the ops a connection may send as they are (no descriptors) in its
# state: what plain_request() looks an op up in
PlainOps = dict[int, Op]


def plain_ops(ops: frozenset[Op]) -> PlainOps:
    """The PlainOps table of `ops` (those taking descriptors left out)."""
    return {int(op): op for op in ops if not SPECS[op].fds_in}


def plain_request(data: bytes, plain: PlainOps) -> tuple[int, Op, Any] | None:
    """(id, op, args record) of a request that passes every check decode_request makes
    and is for an op of `plain` (allowed now, and carrying no descriptor); None for
    anything else (a defect, an op not allowed, one that takes descriptors), which
    decode_request and the handshake then refuse with their errno. The caller has seen
    that the datagram came whole and without descriptors.

    The daemon's twin of reply_record: nearly every request is one of these, and one
    pass with no envelope is the cost of its round trip (the layers and the Request
    built around each were a tenth of the daemon's CPU, with both processes on one
    CPU; _unpack() called from here, and three lookups where `plain` does with one,
    were a tenth more)."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        frame = msgpack.unpackb(data, max_ext_len=0, max_array_len=_ITEMS, max_map_len=_ITEMS)
    except _UNPACK_ERRORS:
        return None
    if type(frame) is not list or len(frame) != 3:
        return None
    request_id, number, args = frame
    # an id that is no u32 or is 0; an op that is a bool, a float, unhashable
    if type(request_id) is not int or not 0 < request_id <= MAX_REQUEST_ID:
        return None
    if type(number) is not int:
        return None
    op = plain.get(number)
    if op is None:
        return None
    try:
        return request_id, op, _REQUEST_DECODERS[op](args)
    except FieldError:
        return None


# --- replies and events -----------------------------------------------------------------
def encode_reply(request_id: int, op: Op | None, errno: int, result: Any) -> bytes:
    if not errno:
        if op is None:
            raise LocalProtocolError("a success reply answers an op")
        return REPLY_ENCODERS[op](request_id, result)
    if type(result) is not ErrorInfo:
        raise LocalProtocolError("an error reply carries ErrorInfo")
    return _FRAMES[ErrorInfo](request_id, errno, result)


# op -> encode(request id, result): encode_reply() of a success in one call, as the
# daemon answers nearly every request
REPLY_ENCODERS: dict[Op, Callable[[int, Any], bytes]] = _per_op(lambda op: _compile_reply(op))


def _compile_reply(op: Op) -> Callable[[int, Any], bytes]:
    cls = _REPLIES[op]
    wrong = f"{op.name} answers with {cls.__name__}"
    encode = REPLY_ENCODERS[op] = _checked_frame(f"reply[{op.name}]", cls, "0", wrong)
    return encode


def encode_error(request_id: int, errno: int, message: str) -> bytes:
    return encode_reply(request_id, None, errno, ErrorInfo(message=message[:1024]))


def encode_event(event: Event, data: Any) -> bytes:
    if type(data) is not EVENTS[event]:
        raise LocalProtocolError(f"{event.name} carries {EVENTS[event].__name__}")
    return _FRAMES[type(data)](0, int(event), data)


def reply_record(data: bytes, fds: tuple[int, ...], request_id: int, op: Op) -> Any:
    """The record of the success reply to `request_id` (an `op`), if `data` is exactly
    that with every check decode_incoming makes; None for anything else (an event, a
    refusal, a defect, a reply with any number of descriptors), which decode_incoming
    then says; ProtocolError (EPROTO) for a success reply with a bad field.

    A client with one request in flight waits for nothing else nearly always, and this
    is the cost of its round trip: one pass, no envelope (a Reply built and read was a
    tenth of the library's time, with both processes on one CPU)."""
    return REPLY_READERS[op](data, fds, request_id)


# op -> read(data, descriptors, request id): reply_record() for that op in one call, the
# frame's checks and its record's in one function (a reader calling the record's
# decoder was a tenth of the library's CPU)
REPLY_READERS: dict[Op, Callable[[bytes, tuple[int, ...], int], Any]] = _per_op(
    lambda op: _compile_reader(op)
)


def _compile_reader(op: Op) -> Callable[[bytes, tuple[int, ...], int], Any]:
    cls, fds_out = _REPLY_SHAPES[op]
    g: dict[str, Any] = {
        "_unpackb": msgpack.unpackb,
        "_UNPACK_ERRORS": _UNPACK_ERRORS,
        "_ProtocolError": ProtocolError,
    }
    if fds_out == ANY_FDS:  # the count is the reply's to say: decode_incoming reads it
        body = ["return None"]
    else:
        body = [
            f"if _len(fds) != {fds_out} or _len(data) > {MAX_DATAGRAM}: return None",
            "try:",
            f"    frame = _unpackb(data, max_ext_len=0, max_array_len={_ITEMS}, "
            f"max_map_len={_ITEMS})",
            "except _UNPACK_ERRORS:",
            "    return None",
            "if _type(frame) is not _list or _len(frame) != 3: return None",
            "ident, code, _map = frame",
            # the request's id (an int: 1 == True) and errno 0 (an int: 0 == 0.0 == False)
            "if ident != request_id or _type(ident) is not _int: return None",
            "if code != 0 or _type(code) is not _int: return None",
            "try:",
            *[f"    {line}" for line in _from_wire_lines(cls, g)],
            "except ValueError as exc:  # FieldError: a value that does not fit its field",
            f"    raise _ProtocolError({EPROTO}, f'bad message from daemon: {{exc}}') from exc",
        ]
    head = "read(data, fds, request_id)"
    read = REPLY_READERS[op] = generate(f"read_reply[{op.name}]", head, body, g)
    return read  # type: ignore[no-any-return]


def decode_incoming(
    data: bytes, fds: tuple[int, ...], op_of: dict[int, Op]
) -> Reply | EventMessage:
    """Decode what the daemon sent a client: a reply to one of `op_of`'s ids, or an event."""
    ident, code, body = _unpack(data)
    try:
        if ident == 0:
            event = Event(code)
            return EventMessage(event, from_wire(EVENTS[event], body))
        op = op_of.get(ident)
        if op is None:
            raise ProtocolError(EPROTO, f"reply to unknown request {ident}")
        if type(code) is not int or code < 0:
            raise ProtocolError(EPROTO, "errno must be a non-negative integer")
        if code:
            return Reply(ident, code, from_wire(ErrorInfo, body), fds)
        cls, fds_out = _REPLY_SHAPES[op]
        if len(fds) != fds_out and not (fds_out == ANY_FDS and len(fds) <= MAX_FDS):
            raise ProtocolError(EPROTO, f"{op.name} reply with {len(fds)} descriptors")
        return _tuple_new(Reply, (ident, 0, from_wire(cls, body), fds))
    except (FieldError, ValueError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(EPROTO, f"bad message from daemon: {exc}") from exc
